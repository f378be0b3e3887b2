"""Download Networks in the add-on: online-access gate, consent dialog, worker thread, progress, stop, results.

Most tests replace the bridge's download with a fake to cover the add-on's own logic; one runs the real core
download against the local stand-in Hub (see tests/core/hub_standin.py) through the operator's synchronous path.
"""

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import bpy
import huggingface_hub.constants
import pytest

import core.network.download as core_download
from core.errors import DiskFullError, OperationCancelled
from core.network import write_synthetic_checkpoint
from pixel3dmm_blender import bridge, downloads, preferences

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from hub_standin import StandInHub  # noqa: E402

from test_addon import Recorder  # noqa: E402


@pytest.fixture()
def prefs(tmp_path):
    prefs = preferences.get_preferences(bpy.context)
    prefs.download_folder = str(tmp_path / "networks")
    yield prefs
    for _key, prop, _label in preferences.ASSET_PROPERTIES:
        setattr(prefs, prop, "")
    prefs.download_folder = ""


@pytest.fixture()
def online(monkeypatch):
    """Background Blender has online access off (bpy.app.online_access is read-only); these tests switch it on."""
    monkeypatch.setattr(downloads, "online_access", lambda: True)


def _fake_result(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    originals, converted = {}, {}
    for key, name in (("uv_checkpoint", "uv"), ("normals_checkpoint", "normals")):
        (folder / f"{name}.ckpt").write_bytes(b"x" * 1000)
        (folder / f"{name}.safetensors").write_bytes(b"y" * 100)
        originals[key], converted[key] = str(folder / f"{name}.ckpt"), str(folder / f"{name}.safetensors")
    return originals, converted


def test_nothing_is_fetched_while_blender_is_offline(prefs, monkeypatch):
    calls = []
    monkeypatch.setattr(bridge, "download_networks", lambda *a, **k: calls.append(a))
    assert bpy.app.online_access is False  # background Blender without --online-mode
    with pytest.raises(RuntimeError, match="online access is off, so nothing was downloaded; allow it in"):
        bpy.ops.pixel3dmm.download_networks()
    assert calls == [] and not Path(prefs.download_folder).exists()
    layout = Recorder()
    downloads.draw_section(layout, bpy.context, prefs)
    assert ("set enabled", (False,), {}) in layout.log  # the button is greyed out, with the reason below it
    assert any("online access is off" in kw.get("text", "") for _a, kw in layout.calls("label"))


def test_consent_dialog_names_the_licence_the_size_and_the_folder(prefs):
    folder = Path(prefs.download_folder)
    folder.mkdir(parents=True)
    (folder / ".uv.ckpt.0123abcd.part").write_bytes(b"z" * 2_500_000)
    layout = Recorder()
    downloads.P3DMM_OT_download_networks.draw(type("Op", (), {"layout": layout})(), bpy.context)
    text = " ".join(kw.get("text", "") for _a, kw in layout.calls("label"))
    assert "CC BY-NC 4.0" in text and "3.72 GB" in text and "huggingface.co/SimonGiebenhain/Pixel3dmm" in text
    assert f"Destination: {folder}" in text and "partial download (2.5 MB) is resumed" in text


def test_background_download_fills_the_preferences_and_can_delete_the_originals(prefs, online, monkeypatch):
    folder = Path(prefs.download_folder)
    seen = []

    def fake(dest, on_progress=None, should_cancel=None):
        seen.append((dest, threading.get_ident()))
        on_progress("Downloading uv.ckpt", 0.5)
        return _fake_result(Path(dest))

    monkeypatch.setattr(bridge, "download_networks", fake)
    assert bpy.ops.pixel3dmm.download_networks(delete_originals=True) == {"FINISHED"}
    assert seen == [(str(folder), threading.get_ident())]  # synchronous in background Blender
    assert prefs.uv_checkpoint == str(folder / "uv.safetensors")
    assert prefs.normals_checkpoint == str(folder / "normals.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["normals.safetensors", "uv.safetensors"]


def test_failures_are_one_sentence_and_change_nothing(prefs, online, monkeypatch):
    def fake(dest, on_progress=None, should_cancel=None):
        raise DiskFullError("Writing the network download needs 3.72 GB but /x has only 1.0 GB free; free some space "
                            "or choose another folder.")

    monkeypatch.setattr(bridge, "download_networks", fake)
    with pytest.raises(RuntimeError, match="needs 3.72 GB but /x has only 1.0 GB free"):
        bpy.ops.pixel3dmm.download_networks()
    assert prefs.uv_checkpoint == "" and prefs.normals_checkpoint == ""


def _wait(run, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = run.tick(bpy.context)
        if outcome is not None:
            return outcome
        time.sleep(0.01)
    raise AssertionError("the worker did not finish")


def test_threaded_download_shows_progress_then_fills_the_preferences(prefs, online, monkeypatch):
    release = threading.Event()
    main = threading.get_ident()
    seen = {}

    def fake(dest, on_progress=None, should_cancel=None):
        seen["thread"] = threading.get_ident()
        on_progress("Downloading uv.ckpt (1.0 GB of 2.25 GB)", 0.2)
        release.wait(5.0)
        return _fake_result(Path(dest))

    monkeypatch.setattr(bridge, "download_networks", fake)
    run = downloads.DownloadRun(bpy.context, prefs.download_folder)
    assert downloads.active_download() is run and not bpy.ops.pixel3dmm.download_networks.poll()
    deadline = time.monotonic() + 5.0
    while run.fraction != pytest.approx(0.2) and time.monotonic() < deadline:
        assert run.tick(bpy.context) is None
        time.sleep(0.01)
    assert run.message.startswith("Downloading uv.ckpt")
    layout = Recorder()
    downloads.draw_section(layout, bpy.context, prefs)  # the preferences show the bar and a Stop button
    ((_, bar),) = layout.calls("progress")
    assert bar["factor"] == pytest.approx(0.2) and bar["text"].endswith("20%")
    assert [a[0] for a, _ in layout.calls("operator")] == ["pixel3dmm.cancel_download"]
    assert prefs.uv_checkpoint == ""  # nothing changes while the worker runs
    release.set()
    outcome = _wait(run)
    assert outcome.status == {"FINISHED"} and seen["thread"] != main
    assert prefs.uv_checkpoint.endswith("uv.safetensors") and sorted(Path(p).name for p in outcome.originals) == [
        "normals.ckpt", "uv.ckpt"]
    assert downloads.active_download() is None


def test_stopping_waits_for_the_worker_and_keeps_the_partial_file(prefs, online, monkeypatch):
    stopped = threading.Event()

    def fake(dest, on_progress=None, should_cancel=None):
        Path(dest).mkdir(parents=True, exist_ok=True)
        (Path(dest) / ".uv.ckpt.etag.part").write_bytes(b"p" * 10)
        while not should_cancel():
            time.sleep(0.005)
        time.sleep(0.05)  # the worker finishes its chunk before it stops
        stopped.set()
        raise OperationCancelled("The download was cancelled; it resumes where it stopped next time.")

    monkeypatch.setattr(bridge, "download_networks", fake)
    run = downloads.DownloadRun(bpy.context, prefs.download_folder)
    assert run.tick(bpy.context) is None
    assert bpy.ops.pixel3dmm.cancel_download() == {"FINISHED"}  # the Stop button
    assert run.stopping and downloads.active_download() is run  # still active until the worker has stopped
    assert not bpy.ops.pixel3dmm.download_networks.poll()
    outcome = _wait(run)
    assert stopped.is_set()
    assert outcome.status == {"CANCELLED"} and outcome.reports == [("WARNING", downloads.STOPPED_MESSAGE)]
    assert downloads.partial_bytes(prefs.download_folder) == 10 and downloads.active_download() is None


def test_delete_downloaded_checkpoints(prefs, tmp_path):
    originals, _converted = _fake_result(tmp_path)
    paths = os.pathsep.join(originals.values())
    assert bpy.ops.pixel3dmm.delete_downloaded_checkpoints(paths=paths) == {"FINISHED"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normals.safetensors", "uv.safetensors"]


def test_real_download_through_the_operator(prefs, online, monkeypatch, tmp_path):
    """The operator, the bridge and the core download against the local stand-in Hub, end to end."""
    files = {"uv.ckpt": write_synthetic_checkpoint(tmp_path / "u.ckpt", "tiny", prediction_type="uv_map"),
             "pretrained_weights/normals.ckpt": write_synthetic_checkpoint(tmp_path / "n.ckpt", "tiny",
                                                                           prediction_type="normals")}
    data = {path: f.read_bytes() for path, f in files.items()}
    specs = tuple(core_download.RemoteFile(
        spec.key, spec.filename, spec.repo_paths, len(data[repo]), hashlib.sha256(data[repo]).hexdigest(),
        spec.prediction_type) for spec, repo in zip(core_download.NETWORK_FILES, data))
    with StandInHub("stand-in/Pixel3dmm", "f" * 40, data) as hub:
        # What HF_ENDPOINT does when huggingface_hub is imported (it already is in this process).
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(core_download, "NETWORK_FILES", specs)
        monkeypatch.setattr(core_download, "HF_REPO_ID", "stand-in/Pixel3dmm")
        monkeypatch.setattr(core_download, "HF_REVISION", "f" * 40)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert bpy.ops.pixel3dmm.download_networks() == {"FINISHED"}
    folder = Path(prefs.download_folder)
    assert prefs.uv_checkpoint == str(folder / "uv.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["normals.ckpt", "normals.safetensors", "uv.ckpt",
                                                        "uv.safetensors"]
    report = preferences.validated_report(prefs)
    assert report["uv_checkpoint"].ok and report["normals_checkpoint"].ok
    assert "converted network" in report["uv_checkpoint"].message
