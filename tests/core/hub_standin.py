"""A small local stand-in for the Hugging Face Hub, enough for huggingface_hub's real download client.

Two HTTP servers on 127.0.0.1 play the Hub and its file CDN, the way huggingface.co serves large (LFS) files:

- ``HEAD /{repo_id}/resolve/{revision}/{path}`` on the Hub answers ``302`` to the CDN with the headers the client
  reads (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, ``ETag``, ``Location``); an unknown file or
  revision answers ``404`` with ``X-Error-Code`` ``EntryNotFound`` / ``RevisionNotFound``;
- ``GET /cdn/{sha256}`` on the CDN serves the bytes, honouring ``Range: bytes=N-`` with ``206``.

Faults for the tests: :attr:`StandInHub.drop_after` closes the connection mid-file, :attr:`html_pages` answers a
resolve request with an HTML page (as a proxy or login wall does), :attr:`html_bodies` serves an HTML page from
the CDN instead of the file, and :attr:`on_get` runs before a CDN transfer (e.g. to fill a small disk).
Every request is logged in :attr:`requests` as ``(server, method, path, range header)``, and every Authorization
header in :attr:`authorizations`.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in to continue.</body></html>\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that drops its connection (a cancelled download) is expected; anything else is printed."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class StandInHub:
    """Serves ``files`` (repository path -> bytes) of ``repo_id`` at ``revision``; use as a context manager."""

    def __init__(self, repo_id: str, revision: str, files: dict[str, bytes]) -> None:
        self.repo_id, self.revision, self.files = repo_id, revision, dict(files)
        self.commit = hashlib.sha1(revision.encode()).hexdigest()
        self.drop_after: dict[str, int] = {}  # repo path -> bytes sent before the connection drops (once)
        self.html_pages: set[str] = set()
        self.html_bodies: set[str] = set()
        self.on_get: Callable[[str], None] | None = None
        self.requests: list[tuple[str, str, str, str | None]] = []
        self.authorizations: list[str] = []  # every Authorization header received
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "StandInHub":
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), self._handler(role))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        """The Hub's base URL (what ``HF_ENDPOINT`` is set to)."""
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def ranges(self, server: str = "cdn") -> list[str | None]:
        """The Range headers of the GET requests one server received, in order."""
        return [r for s, method, _path, r in self.requests if s == server and method == "GET"]

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _handler(self, role: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, role, head=True)

            def do_GET(self) -> None:
                hub._serve(self, role, head=False)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, role: str, head: bool) -> None:
        with self._lock:
            self.requests.append((role, "HEAD" if head else "GET", request.path, request.headers.get("Range")))
            if request.headers.get("Authorization"):
                self.authorizations.append(request.headers["Authorization"])
        if role == "hub":
            self._resolve(request, head)
        else:
            self._cdn(request, head)

    def _send(self, request, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        request.end_headers()
        if not head and body:
            request.wfile.write(body)

    def _resolve(self, request, head: bool) -> None:
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", request.path)
        if match is None or match["repo"] != self.repo_id:
            self._send(request, 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                       b"Repository not found", head)
            return
        if match["rev"] not in (self.revision, "main"):
            self._send(request, 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                       b"Invalid rev id", head)
            return
        path = match["path"]
        if path in self.html_pages:
            self._send(request, 200, {"Content-Type": "text/html; charset=utf-8"}, HTML, head)
            return
        if path not in self.files:
            self._send(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit,
                                      "X-Error-Message": "Entry not found"}, b"Entry not found", head)
            return
        sha = self.sha256(path)
        self._send(request, 302, {
            "X-Repo-Commit": self.commit, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(self.files[path])),
            "ETag": f'"{hashlib.sha1(self.files[path]).hexdigest()}"', "Location": f"{self.cdn_url}/cdn/{sha}",
        }, b"", head)

    def _cdn(self, request, head: bool) -> None:
        by_sha = {self.sha256(path): path for path in self.files}
        match = re.fullmatch(r"/cdn/(?P<sha>[0-9a-f]{64})", request.path)
        path = by_sha.get(match["sha"]) if match else None
        if path is None:
            self._send(request, 404, {}, b"Not found", head)
            return
        if not head and self.on_get is not None:
            self.on_get(path)
        body = HTML if path in self.html_bodies else self.files[path]
        start = 0
        header = request.headers.get("Range")
        if header and path not in self.html_bodies:
            start = int(re.fullmatch(r"bytes=(\d+)-", header)[1])
        chunk = body[start:]
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                   "Accept-Ranges": "bytes", "ETag": f'"{match["sha"]}"'}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        drop = None if head else self.drop_after.pop(path, None)
        request.send_response(206 if start else 200)
        for key, value in headers.items():
            request.send_header(key, value)
        request.end_headers()
        if head:
            return
        if drop is not None:
            request.wfile.write(chunk[:drop])
            request.wfile.flush()
            request.close_connection = True
            return
        request.wfile.write(chunk)
