"""The headless runner as a user runs it: its console output, the files it writes, Ctrl-C and a bad output folder.

Each run is a subprocess with the project's stand-in assets (tiny networks) configured through the environment,
as `python -m core assets` describes, and the fitting schedule cut to 5 % of the fast preset.
"""

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import bpy
import pytest
import skimage

from core.pipeline import write_standin_assets

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"
RUNNER = """
import os, sys
os.umask(0o022)
import core.fit.config
preset = core.fit.config.FitConfig.preset
core.fit.config.FitConfig.preset = classmethod(lambda cls, name: preset(name).with_steps(0.05))
from pixel3dmm_blender import headless
sys.exit(headless.main(sys.argv[1:]))
"""
ENV_NAMES = {"flame": "PIXEL3DMM_FLAME", "uv_template": "PIXEL3DMM_UV_TEMPLATE",
             "uv_checkpoint": "PIXEL3DMM_UV_CKPT", "normals_checkpoint": "PIXEL3DMM_NORMALS_CKPT"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    paths = write_standin_assets(tmp_path_factory.mktemp("standins"), network_size="tiny")
    return dict(os.environ, **{ENV_NAMES[key]: str(path) for key, path in paths.items()})


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", RUNNER, str(ASTRONAUT), "--out", str(out), "--quality", "fast", "--device", "cpu",
            *extra]


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("headless") / "out"
    proc = subprocess.run(_command(out, "--fbx"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_the_log_is_the_runners_own_and_names_the_files_that_exist(finished):
    proc, out = finished
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert all(line.startswith("[pixel3dmm] ") for line in lines), proc.stdout   # no Blender, mediapipe or EGL lines
    assert any(re.fullmatch(r"\[pixel3dmm\]  *\d+%  fitting the FLAME head", line) for line in lines)
    assert "[pixel3dmm] warning: The FLAME model is the project's synthetic stand-in" in proc.stdout
    last = re.fullmatch(r"\[pixel3dmm\] reconstructed in [\d.]+ s; wrote (.*) to (.*)", lines[-1])
    assert last is not None and Path(last[2]) == out
    assert sorted(last[1].split(", ")) == sorted(p.name for p in out.iterdir()) == [
        "head.blend", "head.fbx", "head.glb", "preview.png"]


def test_files_get_the_users_normal_mode(finished):
    _, out = finished
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {
        name: oct(0o644) for name in ("head.blend", "head.fbx", "head.glb", "preview.png")}


def test_the_blend_carries_its_photo(finished):
    _, out = finished
    bpy.ops.wm.open_mainfile(filepath=str(out / "head.blend"))
    assert bpy.utils.blend_paths(absolute=True) == []   # nothing outside the .blend, the venv's photo included
    camera = next(o for o in bpy.data.objects if o.type == "CAMERA")
    photo = camera.data.background_images[0].image
    assert photo.packed_file is not None and tuple(photo.size) == (512, 512)


def test_ctrl_c_is_one_sentence_and_leaves_nothing(env, tmp_path):
    out = tmp_path / "out"
    # a runner started in the background may ignore SIGINT, and a child inherits that: restore the default
    proc = subprocess.Popen(_command(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "fitting" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest + err
    assert err == "[pixel3dmm] Cancelled (Ctrl-C); nothing was written, so run the command again to start over.\n"
    assert not out.exists()


def test_an_unusable_output_folder_is_found_before_the_reconstruction(env, tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    proc = subprocess.run(_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"[pixel3dmm] error: Cannot write to the output folder {out}")
    assert proc.stderr.count("\n") == 1 and "reconstructing" not in proc.stdout
