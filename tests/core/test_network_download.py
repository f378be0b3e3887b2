"""Downloading the networks with huggingface_hub's real client against a local stand-in Hub.

Nothing here reaches the internet: :mod:`hub_standin` serves small stand-in checkpoints on 127.0.0.1 the way
huggingface.co serves large files (a 302 from ``/resolve`` to a CDN that honours ranges). Every failure must be
one sentence and leave no final file behind.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch

from core.errors import CheckpointError, DiskFullError, DownloadError, OperationCancelled
from core.network import download, get_config, write_synthetic_checkpoint
from core.network.checkpoint import inspect_network_file
from core.network.download import RemoteFile, convert_downloads, delete_originals, download_networks
from diskfull import ENOSPCWriter, fill
from hub_standin import StandInHub

ROOT = Path(__file__).resolve().parents[2]
REPO, REVISION = "pixel3dmm-tests/Pixel3dmm", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    return {
        "uv.ckpt": write_synthetic_checkpoint(folder / "uv.ckpt", "tiny", seed=1, prediction_type="uv_map").read_bytes(),
        "pretrained_weights/normals.ckpt": write_synthetic_checkpoint(
            folder / "normals.ckpt", "tiny", seed=2, prediction_type="normals").read_bytes(),
    }


def _specs(files: dict[str, bytes], **changes) -> tuple[RemoteFile, ...]:
    """The stand-in repository's files as the downloader's table (both repository layouts are tried)."""
    specs = []
    for repo_path, data in files.items():
        name = repo_path.rsplit("/", 1)[-1]
        key, kind = ("uv_checkpoint", "uv_map") if name.startswith("uv") else ("normals_checkpoint", "normals")
        fields = dict(key=key, filename=name, repo_paths=(name, f"pretrained_weights/{name}"), size=len(data),
                      sha256=hashlib.sha256(data).hexdigest(), prediction_type=kind)
        fields.update(changes.get(name, {}))
        specs.append(RemoteFile(**fields))
    return tuple(specs)


@pytest.fixture()
def online(monkeypatch):
    """The test session sets HF_HUB_OFFLINE; these tests are online (against 127.0.0.1 only)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture()
def hub(checkpoints, online):
    with StandInHub(REPO, REVISION, checkpoints) as server:
        yield server


def _download(hub, dest, files, **kwargs):
    return download_networks(dest, files=files, repo_id=REPO, revision=REVISION, endpoint=hub.url, **kwargs)


def _one_sentence(exc: BaseException) -> None:
    text = str(exc)
    assert text.count("; ") == 1 and text.endswith(".") and "\n" not in text, text


def test_downloads_both_layouts_verifies_and_reports_progress(hub, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_the_users_own_token")  # never sent: the repository is public
    seen = []
    paths = _download(hub, tmp_path / "dl", _specs(checkpoints), on_progress=lambda m, f: seen.append((m, f)))
    assert paths == {"uv_checkpoint": tmp_path / "dl" / "uv.ckpt",
                     "normals_checkpoint": tmp_path / "dl" / "normals.ckpt"}
    assert paths["uv_checkpoint"].read_bytes() == checkpoints["uv.ckpt"]
    assert paths["normals_checkpoint"].read_bytes() == checkpoints["pretrained_weights/normals.ckpt"]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["normals.ckpt", "uv.ckpt"]  # no partial files
    fractions = [f for _m, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("Downloading uv.ckpt") for m, _f in seen)
    assert any(m.startswith("Verifying normals.ckpt") for m, _f in seen)
    assert hub.authorizations == []
    heads = [path for server, method, path, _r in hub.requests if method == "HEAD"]
    assert heads == [f"/{REPO}/resolve/{REVISION}/uv.ckpt", f"/{REPO}/resolve/{REVISION}/normals.ckpt",
                     f"/{REPO}/resolve/{REVISION}/pretrained_weights/normals.ckpt"]
    # A second call finds verified files and transfers nothing.
    count = len(hub.requests)
    assert _download(hub, tmp_path / "dl", _specs(checkpoints)) == paths
    assert len(hub.requests) == count


def test_a_dropped_connection_resumes_with_a_range_request(hub, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.drop_after["uv.ckpt"] = 700_000
    paths = _download(hub, tmp_path, _specs({"uv.ckpt": checkpoints["uv.ckpt"]}))
    assert paths["uv_checkpoint"].read_bytes() == checkpoints["uv.ckpt"]
    first, second = hub.ranges()
    assert first is None and second.startswith("bytes=") and 0 < int(second[6:-1]) <= 700_000


def test_cancel_keeps_the_partial_file_and_the_next_call_resumes(hub, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    files = _specs({"uv.ckpt": checkpoints["uv.ckpt"]})
    progress = []
    with pytest.raises(OperationCancelled) as info:
        _download(hub, tmp_path, files, on_progress=lambda m, f: progress.append(f),
                  should_cancel=lambda: len(progress) > 0 and progress[-1] > 0.1)
    _one_sentence(info.value)
    (part,) = tmp_path.glob(".uv.ckpt.*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(checkpoints["uv.ckpt"]) and not (tmp_path / "uv.ckpt").exists()
    paths = _download(hub, tmp_path, files)
    assert paths["uv_checkpoint"].read_bytes() == checkpoints["uv.ckpt"]
    assert hub.ranges()[-1] == f"bytes={kept}-"
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("change, message", [
    ({"size": 123}, r"offers uv.ckpt with [\d,]+ bytes, but the published file has 123"),
    ({"sha256": "0" * 64}, "fails its sha256 check"),
    ({"repo_paths": ("weights/uv.ckpt",)}, "is not in the Hugging Face repository"),
])
def test_a_wrong_or_missing_file_is_one_sentence_and_leaves_nothing(hub, checkpoints, tmp_path, change, message):
    files = _specs({"uv.ckpt": checkpoints["uv.ckpt"]}, **{"uv.ckpt": change})
    with pytest.raises(DownloadError, match=message) as info:
        _download(hub, tmp_path, files)
    _one_sentence(info.value)
    assert list(tmp_path.iterdir()) == []


def test_html_instead_of_the_hub_or_the_file(hub, checkpoints, tmp_path):
    files = _specs({"uv.ckpt": checkpoints["uv.ckpt"]})
    hub.html_pages.add("uv.ckpt")
    with pytest.raises(DownloadError, match="did not answer like Hugging Face") as info:
        _download(hub, tmp_path, files)
    _one_sentence(info.value)
    hub.html_pages.clear()
    hub.html_bodies.add("uv.ckpt")
    with pytest.raises(DownloadError, match="sent a web page instead of uv.ckpt") as info:
        _download(hub, tmp_path, files)
    _one_sentence(info.value)
    assert list(tmp_path.iterdir()) == []


def test_no_network_and_offline_mode(checkpoints, online, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = _specs({"uv.ckpt": checkpoints["uv.ckpt"]})
    with pytest.raises(DownloadError, match="Could not connect to http://127.0.0.1") as info:
        download_networks(tmp_path, files=files, repo_id=REPO, revision=REVISION, endpoint=f"http://127.0.0.1:{port}")
    _one_sentence(info.value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE") as info:
        download_networks(tmp_path, files=files, repo_id=REPO, revision=REVISION, endpoint=f"http://127.0.0.1:{port}")
    _one_sentence(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_without_room_is_refused_before_downloading(hub, checkpoints, small_disk):
    disk = small_disk(1 << 20)
    with pytest.raises(DiskFullError, match="needs .* but .* has only") as info:
        _download(hub, disk, _specs(checkpoints))
    _one_sentence(info.value)
    assert list(disk.iterdir()) == [] and hub.requests == []


def test_a_disk_that_fills_up_during_the_download(hub, checkpoints, small_disk, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    disk = small_disk(8 << 20)
    hub.on_get = lambda path: fill(disk, leave=256 * 1024)  # another program takes the space
    with pytest.raises(DiskFullError, match="filled up while downloading uv.ckpt") as info:
        _download(hub, disk, _specs({"uv.ckpt": checkpoints["uv.ckpt"]}))
    _one_sentence(info.value)
    assert not (disk / "uv.ckpt").exists()


def test_enospc_during_the_download(hub, checkpoints, tmp_path, monkeypatch):
    """The same without a mountable tmpfs: the partial file's writes fail with ENOSPC after 200 kB."""
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: ENOSPCWriter(real_open(self, mode, *a, **k),
                                                                                    200_000) if mode == "ab" else
                        real_open(self, mode, *a, **k))
    with pytest.raises(DiskFullError, match="filled up while downloading uv.ckpt"):
        _download(hub, tmp_path, _specs({"uv.ckpt": checkpoints["uv.ckpt"]}))
    assert not (tmp_path / "uv.ckpt").exists()


def test_conversion_after_download_and_deleting_the_originals(hub, checkpoints, tmp_path):
    files = _specs(checkpoints)
    paths = _download(hub, tmp_path, files)
    seen = []
    converted = convert_downloads(paths, files, on_progress=lambda m, f: seen.append(f))
    assert converted == {"uv_checkpoint": tmp_path / "uv.safetensors",
                         "normals_checkpoint": tmp_path / "normals.safetensors"}
    assert seen[-1] == 1.0
    for key, kind in (("uv_checkpoint", "uv_map"), ("normals_checkpoint", "normals")):
        info = inspect_network_file(converted[key])
        assert info.kind == "converted" and info.cfg.prediction_type == kind
        assert all(t.dtype.is_floating_point is False or t.dtype.itemsize == 2
                   for t in safetensors.torch.load_file(str(converted[key])).values())
    sizes = sum(p.stat().st_size for p in paths.values())
    assert delete_originals(paths) == sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normals.safetensors", "uv.safetensors"]


def test_a_network_of_the_other_type_is_not_converted_into_its_slot(tmp_path):
    wrong = write_synthetic_checkpoint(tmp_path / "uv.ckpt", "tiny", prediction_type="normals")
    with pytest.raises(CheckpointError, match="holds a 'normals' network instead of 'uv_map'"):
        convert_downloads({"uv_checkpoint": wrong}, download.NETWORK_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uv.ckpt"]


def test_consent_names_the_licence_and_the_size():
    text = download.consent_text()
    assert "CC BY-NC 4.0" in text and "3.72 GB" in text and "uv.ckpt and normals.ckpt" in text
    assert download.total_size() == 2_246_794_577 + 1_469_022_184


CLI_SCRIPT = textwrap.dedent("""
    import json, sys
    import core.network.download as download
    from core.network.download import RemoteFile
    specs = json.loads(sys.argv[1])
    download.HF_REPO_ID, download.HF_REVISION = sys.argv[2], sys.argv[3]
    download.NETWORK_FILES = tuple(RemoteFile(**{**s, "repo_paths": tuple(s["repo_paths"])}) for s in specs)
    from core.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def test_cli_downloads_through_hf_endpoint_converts_and_says_how_to_configure(hub, checkpoints, tmp_path):
    """The published table is swapped for the stand-in's; HF_ENDPOINT alone sends the real client to the stand-in."""
    import dataclasses
    import json

    specs = json.dumps([dataclasses.asdict(s) for s in _specs(checkpoints)])
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, NO_PROXY="127.0.0.1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    dest = tmp_path / "networks"
    cmd = [sys.executable, "-c", CLI_SCRIPT, specs, REPO, REVISION, "assets", "--download-networks", "--dest",
           str(dest), "--yes", "--delete-originals"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CC BY-NC 4.0" in proc.stdout and "Downloading uv.ckpt" in proc.stdout and "100%" in proc.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["normals.safetensors", "uv.safetensors"]
    assert f'uv_checkpoint = "{(dest / "uv.safetensors").as_posix()}"' in proc.stdout
    assert {(s, m) for s, m, _p, _r in hub.requests} == {("hub", "HEAD"), ("cdn", "GET")}, hub.requests
    # Without --yes and without a terminal there is no consent: nothing is fetched.
    count = len(hub.requests)
    proc = subprocess.run(cmd[:-2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "run again with --yes" in proc.stderr
    assert len(hub.requests) == count
