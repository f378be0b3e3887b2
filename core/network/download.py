"""Download the published Pixel3DMM networks from Hugging Face: resumable, verified, cancellable, then converted.

The two checkpoints (``uv.ckpt``, ``normals.ckpt``, about 3.7 GB together, licensed CC BY-NC 4.0) live in a
public Hugging Face repository. The download runs huggingface_hub's own client (``get_hf_file_metadata`` for the
file's size, ETag and location, ``http_get`` for the bytes), which honours ``HF_ENDPOINT`` and proxies, and adds:

- resume across interruptions and sessions: bytes go to ``.<name>.<etag>.part`` in the destination folder, which a
  later call continues with an HTTP range request (huggingface_hub's own partial files do not survive a failed
  call);
- a free-space check before the first byte, and a full disk reported as one sentence;
- progress and cancellation through callbacks (the add-on's status bar, the CLI's percentage line);
- verification of the finished file (size, then sha256 when known) before it is renamed to its final name, so a
  truncated transfer, an error page or a different file is never left where a checkpoint is expected;
- no telemetry and no credentials: only the files' metadata and bytes are requested, and a Hugging Face token the
  user may have stored is never sent (the repository is public; the bytes come from a CDN).

Where the files are is data in one place, :data:`HF_REPO_ID`, :data:`HF_REVISION` and :data:`NETWORK_FILES`.
[unverified] The repository id and revision come from a third-party install guide and the sizes and digests
from a downstream measurement (``shared/reference/assets.md``); they could not be checked online from here, and
the files may sit at the repository root or under ``pretrained_weights/``, so both paths are tried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..assets import format_bytes, free_bytes, is_disk_full, require_free_space, sniff_kind
from ..errors import CheckpointError, DiskFullError, DownloadError, OperationCancelled
from .checkpoint import convert_checkpoint, inspect_network_file

logger = logging.getLogger(__name__)

#: [unverified] The public repository that mirrors the checkpoints (added by the author because of Drive quotas).
HF_REPO_ID = "SimonGiebenhain/Pixel3dmm"
#: [unverified] The revision a downstream project pins; the sizes and digests below belong to it.
HF_REVISION = "98608f33a2d8af6eed387ac354db6af2030a8f44"
#: Licence of the checkpoints, which the user accepts by downloading them.
LICENCE = "CC BY-NC 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-nc/4.0/"
REPO_URL = f"https://huggingface.co/{HF_REPO_ID}"
_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file to download.

    Attributes
    ----------
    key : the asset key it fills (``uv_checkpoint`` or ``normals_checkpoint``).
    filename : its name in the destination folder.
    repo_paths : paths inside the repository, tried in order until one exists.
    size : expected size in bytes (None: take the server's).
    sha256 : expected digest, lower-case hex (None: not checked).
    prediction_type : what its cfg must say (``cfg.model.prediction_type``).
    """

    key: str
    filename: str
    repo_paths: tuple[str, ...]
    size: int | None
    sha256: str | None
    prediction_type: str


#: [unverified] The published checkpoints (sizes and sha256 from a downstream measurement).
NETWORK_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("uv_checkpoint", "uv.ckpt", ("uv.ckpt", "pretrained_weights/uv.ckpt"), 2_246_794_577,
               "dff9d73feec47914b704759f57ebffb8c58d2aef550b426013fe31eae21707b8", "uv_map"),
    RemoteFile("normals_checkpoint", "normals.ckpt", ("normals.ckpt", "pretrained_weights/normals.ckpt"),
               1_469_022_184, "e856799d55db54c7537c8ee3c5a4938c13cc0b24082ce7e4e7f35f0d0f0e28da", "normals"),
)

ProgressFn = Callable[[str, float], None]
"""``on_progress(message, fraction)``: what is happening and the overall fraction in [0, 1]."""
CancelFn = Callable[[], bool]


def total_size(files: tuple[RemoteFile, ...] = NETWORK_FILES) -> int:
    """Bytes the download takes in all (unknown sizes count as 0)."""
    return sum(f.size or 0 for f in files)


def consent_text(files: tuple[RemoteFile, ...] = NETWORK_FILES, repo_id: str = HF_REPO_ID) -> str:
    """What the user agrees to before a download: files, size, source and licence, in one sentence."""
    names = " and ".join(f.filename for f in files)
    return (f"This downloads {names} (about {format_bytes(total_size(files))}) from huggingface.co/{repo_id}; they "
            f"are licensed {LICENCE} (non-commercial use only, {LICENCE_URL}), and downloading them means you accept "
            "that licence.")


def _hub():
    """huggingface_hub's download pieces, imported on first use (it is only needed for downloads).

    Its telemetry is switched off for this process: the user agreed to download two files, not to send library
    versions or to have the client fetch its agent-detection registry from the Hub.
    """
    import httpx2
    from huggingface_hub import constants, errors, file_download, utils

    constants.HF_HUB_DISABLE_TELEMETRY = True
    return httpx2, constants, errors, file_download, utils


def _progress_bar(report: Callable[[int], None], should_cancel: CancelFn | None):
    """A class with tqdm's interface (as ``http_get`` uses it) that forwards bytes and polls for cancellation."""

    class Bar:
        def __init__(self, *args, initial: int = 0, total: int | None = None, **kwargs) -> None:
            self.n = initial
            self.total = total

        def __enter__(self) -> "Bar":
            return self

        def __exit__(self, *exc) -> None:
            self.close()

        def update(self, n: int = 1) -> None:
            self.n += n
            report(self.n)
            if should_cancel is not None and should_cancel():
                raise OperationCancelled("The download was cancelled; it resumes where it stopped next time.")

        def close(self) -> None:
            pass

    return Bar


@dataclass(frozen=True)
class _Located:
    url: str  # where the bytes are (after the Hub's redirect)
    etag: str
    size: int | None


def _locate(spec: RemoteFile, repo_id: str, revision: str, endpoint: str | None) -> _Located:
    """HEAD the candidates of ``spec`` until one exists; every failure becomes one :class:`DownloadError`."""
    httpx2, _, errors, file_download, _ = _hub()
    for repo_path in spec.repo_paths:
        url = file_download.hf_hub_url(repo_id, repo_path, revision=revision, endpoint=endpoint)
        host = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        try:
            meta = file_download.get_hf_file_metadata(url, token=False, endpoint=endpoint)
        except errors.RemoteEntryNotFoundError:
            continue
        except errors.OfflineModeIsEnabled as exc:
            raise DownloadError(
                "Downloads are switched off (HF_HUB_OFFLINE is set); unset it and try again, or download the files by "
                f"hand from {REPO_URL}."
            ) from exc
        except (errors.RevisionNotFoundError, errors.RepositoryNotFoundError) as exc:
            raise DownloadError(
                f"The Hugging Face repository {repo_id} (revision {revision[:12]}) is not available; download "
                f"{spec.filename} by hand from {REPO_URL} and choose it in the settings."
            ) from exc
        except errors.FileMetadataError as exc:
            raise DownloadError(
                f"The server at {host} did not answer like Hugging Face (a proxy or a login page?); check the "
                f"connection, or download {spec.filename} by hand from {REPO_URL}."
            ) from exc
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise DownloadError(
                f"The server at {host} refused {spec.filename} (HTTP {status}); try again later, or download it by "
                f"hand from {REPO_URL}."
            ) from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise DownloadError(
                f"Could not connect to {host} ({type(exc).__name__}); check the internet connection and try again."
            ) from exc
        if meta.etag is None or meta.commit_hash is None:
                raise DownloadError(
                f"The server at {host} did not answer like Hugging Face (a proxy or a login page?); check the "
                f"connection, or download {spec.filename} by hand from {REPO_URL}."
            )
        return _Located(meta.location, meta.etag, meta.size)
    raise DownloadError(
        f"{spec.filename} is not in the Hugging Face repository {repo_id} at revision {revision[:12]}; download it "
        f"by hand from {REPO_URL} and choose it in the settings."
    )


def _part_path(dest: Path, spec: RemoteFile, etag: str) -> Path:
    tag = "".join(c for c in etag if c.isalnum())[:24] or "file"
    return dest / f".{spec.filename}.{tag}.part"


def _stale_parts(dest: Path, spec: RemoteFile, keep: Path) -> list[Path]:
    return [p for p in dest.glob(f".{spec.filename}.*.part") if p != keep]


def _sha256(path: Path, report: Callable[[int], None], should_cancel: CancelFn | None) -> str:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            done += len(block)
            report(done)
            if should_cancel is not None and should_cancel():
                raise OperationCancelled("The check of the download was cancelled; it resumes next time.")
    return digest.hexdigest()


def _verify(path: Path, spec: RemoteFile, expected_size: int | None, report: Callable[[int], None],
            should_cancel: CancelFn | None) -> None:
    """Check a finished transfer; a wrong file is deleted and reported as one sentence."""
    size = path.stat().st_size
    if sniff_kind(path) == "html":
        path.unlink()
        raise DownloadError(
            f"The server sent a web page instead of {spec.filename} (an error or login page); try again later, or "
            f"download it by hand from {REPO_URL}."
        )
    for wanted in {expected_size, spec.size} - {None}:
        if size != wanted:
            path.unlink()
            raise DownloadError(
                f"The downloaded {spec.filename} has {size:,} bytes instead of {wanted:,}, so it is not the published "
                f"file; download it again, or by hand from {REPO_URL}."
            )
    if spec.sha256 is not None and _sha256(path, report, should_cancel) != spec.sha256.lower():
        path.unlink()
        raise DownloadError(
            f"The downloaded {spec.filename} fails its sha256 check (it differs from the published file); download "
            f"it again, or by hand from {REPO_URL}."
        )


def download_file(spec: RemoteFile, dest: str | os.PathLike, *, repo_id: str = HF_REPO_ID,
                  revision: str = HF_REVISION, endpoint: str | None = None,
                  on_bytes: Callable[[str, int, int], None] | None = None,
                  should_cancel: CancelFn | None = None) -> Path:
    """Download one file into ``dest`` (resuming a partial download), verify it and give it its final name.

    Parameters
    ----------
    spec : the file.
    dest : the destination folder (created when missing).
    repo_id, revision : where it is on the Hub.
    endpoint : the Hub's base URL; None uses huggingface_hub's (``HF_ENDPOINT`` or huggingface.co).
    on_bytes : ``on_bytes(phase, done, total)`` with phase "download" or "verify".
    should_cancel : polled for every chunk; True stops with :class:`OperationCancelled`, keeping the partial file.

    Returns
    -------
    Path
        ``dest / spec.filename``. An existing file of the expected size and digest is kept, not downloaded again.

    Raises
    ------
    DownloadError, DiskFullError, OperationCancelled.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.filename
    report = on_bytes or (lambda phase, done, total: None)
    if final.is_file() and spec.size is not None and final.stat().st_size == spec.size:
        if spec.sha256 is None or _sha256(final, lambda n: report("verify", n, spec.size), should_cancel) == spec.sha256:
            logger.info("%s is already downloaded and verified", final)
            return final
        logger.warning("%s differs from the published file; downloading it again", final)
        final.unlink()
    httpx2, _, errors, file_download, utils = _hub()
    located = _locate(spec, repo_id, revision, endpoint)
    size = located.size if located.size is not None else spec.size
    if spec.size is not None and located.size is not None and located.size != spec.size:
        raise DownloadError(
            f"The server offers {spec.filename} with {located.size:,} bytes, but the published file has "
            f"{spec.size:,}; download it by hand from {REPO_URL} and choose it in the settings."
        )
    part = _part_path(dest, spec, located.etag)
    for stale in _stale_parts(dest, spec, part):
        stale.unlink()
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None:
        require_free_space(dest, size - have, spec.filename)
    if have:
        logger.info("resuming %s at %s", spec.filename, format_bytes(have))
    bar = _progress_bar(lambda n: report("download", n, size or 0), should_cancel)
    try:
        with part.open("ab") as f:
            file_download.http_get(located.url, f, resume_size=have, headers=utils.build_hf_headers(token=False),
                                   expected_size=size, displayed_filename=spec.filename, tqdm_class=bar)
    except OperationCancelled:
        raise
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DownloadError(
            f"The server refused {spec.filename} (HTTP {status}) after the download started; try again later (it "
            "resumes where it stopped)."
        ) from exc
    except (httpx2.HTTPError, OSError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(
                f"The disk at {dest} filled up while downloading {spec.filename} ({format_bytes(free_bytes(dest))} "
                "free); free some space and download again (it resumes where it stopped)."
            ) from exc
        if part.is_file() and sniff_kind(part) == "html":
            part.unlink()
            raise DownloadError(
                f"The server sent a web page instead of {spec.filename} (an error or login page); try again later, or "
                f"download it by hand from {REPO_URL}."
            ) from exc
        raise DownloadError(
            f"The download of {spec.filename} was interrupted ({type(exc).__name__}); check the connection and "
            "download again (it resumes where it stopped)."
        ) from exc
    _verify(part, spec, size, lambda n: report("verify", n, size or 0), should_cancel)
    os.replace(part, final)
    return final


def download_networks(dest: str | os.PathLike, *, files: tuple[RemoteFile, ...] = NETWORK_FILES,
                      repo_id: str = HF_REPO_ID, revision: str = HF_REVISION, endpoint: str | None = None,
                      on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
                      ) -> dict[str, Path]:
    """Download every file of ``files`` into ``dest`` (see :func:`download_file`), after one free-space check.

    Returns the downloaded paths by asset key. ``on_progress(message, fraction)`` gets the overall fraction over
    downloading and verifying all files.
    """
    dest = Path(dest)
    pending = [f for f in files if not ((dest / f.filename).is_file() and f.size is not None
                                         and (dest / f.filename).stat().st_size == f.size)]
    have = sum(p.stat().st_size for f in pending for p in dest.glob(f".{f.filename}.*.part") if p.is_file())
    need = sum(f.size or 0 for f in pending) - have
    if need > 0:
        require_free_space(dest, need, "the network download")
    # Each file counts its bytes twice: once downloaded, once verified.
    weights = [2 * (f.size or 1) for f in files]
    total = sum(weights)
    out: dict[str, Path] = {}
    last = [0.0]
    for index, spec in enumerate(files):
        before = sum(weights[:index])

        def on_bytes(phase: str, done: int, size: int, spec=spec, before=before) -> None:
            if on_progress is None or time.monotonic() - last[0] < 0.1 and done < size:
                return
            last[0] = time.monotonic()
            part = done / size if size else 0.0
            offset = 0 if phase == "download" else 1
            verb = "Downloading" if phase == "download" else "Verifying"
            on_progress(f"{verb} {spec.filename} ({format_bytes(done)} of {format_bytes(size)})",
                        (before + (offset + part) * (spec.size or 1)) / total)

        out[spec.key] = download_file(spec, dest, repo_id=repo_id, revision=revision, endpoint=endpoint,
                                      on_bytes=on_bytes, should_cancel=should_cancel)
    if on_progress is not None:
        on_progress("Downloaded the networks", 1.0)
    return out


def convert_downloads(paths: dict[str, Path], files: tuple[RemoteFile, ...] = NETWORK_FILES, *,
                      on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
                      ) -> dict[str, Path]:
    """Convert downloaded checkpoints to float16 ``.safetensors`` next to them (``uv.ckpt`` -> ``uv.safetensors``).

    Each checkpoint is first validated for its slot (a normal network where the UV network belongs is refused).
    Returns the converted paths by asset key; the originals are left in place (see :func:`delete_originals`).
    """
    out: dict[str, Path] = {}
    specs = [f for f in files if f.key in paths]
    for index, spec in enumerate(specs):
        src = Path(paths[spec.key])
        info = inspect_network_file(src)
        if info.cfg.prediction_type != spec.prediction_type:
            raise CheckpointError(
                f"The downloaded {src.name} holds a '{info.cfg.prediction_type}' network instead of "
                f"'{spec.prediction_type}'; report this to the add-on's authors and download the file by hand."
            )

        def step(fraction: float, index=index, name=src.name) -> None:
            if on_progress is not None:
                on_progress(f"Converting {name} to float16", (index + fraction) / len(specs))

        out[spec.key] = convert_checkpoint(src, src.with_suffix(".safetensors"), dtype="float16",
                                           on_progress=step, should_cancel=should_cancel)
    return out


def delete_originals(paths: dict[str, Path]) -> int:
    """Delete the downloaded checkpoints after their conversion; returns the bytes freed."""
    freed = 0
    for path in paths.values():
        path = Path(path)
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


__all__ = [
    "HF_REPO_ID", "HF_REVISION", "LICENCE", "LICENCE_URL", "NETWORK_FILES", "REPO_URL", "RemoteFile",
    "consent_text", "convert_downloads", "delete_originals", "download_file", "download_networks", "total_size",
]
