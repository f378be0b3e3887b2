"""End to end packaging: build a linux-x64 / Python 3.11 zip offline, install it into bpy, reconstruct.

The wheels are fetched once from the package registry into wheels/_offline (ignored by git), then
`build.py build --wheel-dir` builds from that folder without network. torch is left out (`--torch none`):
the test process already has the pinned torch, and the Linux torch set is several GB.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import build  # noqa: E402
import skimage  # noqa: E402

ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="the offline zip test builds linux-x64"
)

INSTALL_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys
    from pathlib import Path
    import bpy

    zip_path = sys.argv[-1]
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    name = "bl_ext.user_default.pixel3dmm_blender"
    out = {"enabled": name in bpy.context.preferences.addons}
    out["panel"] = hasattr(bpy.types, "P3DMM_PT_main")
    out["operator"] = hasattr(bpy.ops.pixel3dmm, "reconstruct_face")
    out["label"] = bpy.ops.pixel3dmm.reconstruct_face.get_rna_type().name if out["operator"] else None
    # Blender's own Python has none of these: hide the test venv's copies (torch and numpy stay, as the
    # zip was built with --torch none and numpy is Blender's; so do idna and certifi, which Blender ships for
    # its requests) so that only the bundled wheels can serve.
    import numpy, torch, torchvision, idna, certifi
    venv_site = str(Path(torch.__file__).parents[1])
    sys.path[:] = [p for p in sys.path if p != venv_site]
    bundled = ("cv2", "timm", "mediapipe", "safetensors", "huggingface_hub", "httpx2", "httpcore2", "yaml")
    for name in [m for m in sys.modules if m.split(".")[0] in bundled]:
        del sys.modules[name]
    import timm, cv2, mediapipe, safetensors, huggingface_hub.file_download, httpx2
    out["modules"] = {m.__name__: m.__file__ for m in (timm, cv2, mediapipe, safetensors, huggingface_hub, httpx2)}
    out["site"] = str(Path(bpy.utils.user_resource("EXTENSIONS")) / ".local")
    out["top_level_core"] = importlib.util.find_spec("core") is not None
    assets = importlib.import_module(name + ".core.assets")
    out["vendored_core"] = assets.__file__
    out["face_mesh"] = hasattr(mediapipe.solutions, "face_mesh")

    # End to end through the installed extension: stand-in assets (small synthetic head, tiny networks) given
    # the way a user gives them, a fitting schedule cut to 3 % of the fast preset, the headless runner's outputs.
    work = Path(sys.argv[-2])
    flame = importlib.import_module(name + ".core.flame").write_synthetic_flame(work / "assets", "small")
    net = importlib.import_module(name + ".core.network")
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.flame_model, prefs.uv_template = str(flame["plain"]), str(flame["obj"])
    prefs.uv_checkpoint = str(net.write_synthetic_checkpoint(work / "assets" / "uv.ckpt", "tiny", prediction_type="uv_map"))
    prefs.normals_checkpoint = str(net.write_synthetic_checkpoint(work / "assets" / "n.ckpt", "tiny",
                                                                  prediction_type="normals"))
    fit_config = importlib.import_module(name + ".core.fit.config").FitConfig
    preset = fit_config.preset
    fit_config.preset = classmethod(lambda cls, n: preset(n).with_steps(0.03))
    headless = importlib.import_module(name + ".headless")
    photo = Path(sys.argv[-3])
    out["headless_rc"] = headless.main([str(photo), "--out", str(work / "out"), "--quality", "fast", "--fbx"])
    out["written"] = sorted(p.name for p in (work / "out").iterdir())
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def offline_wheels() -> Path:
    """The linux-x64 cp311 runtime wheels (minus torch), fetched once into an ignored folder."""
    cache = build.WHEELS / "_offline" / "linux-x64-cp311"
    if not (any(cache.glob("mediapipe-*.whl")) and any(cache.glob("huggingface_hub-*.whl"))):
        fetched = build.download_wheels(build.venv_python(), build.PLATFORMS["linux-x64"], "3.11", "none", None)
        cache.mkdir(parents=True, exist_ok=True)
        for wheel in fetched:
            shutil.copy2(wheel, cache / wheel.name)
    return cache


@pytest.fixture(scope="module")
def built_zip(offline_wheels, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    rc = build.main(["build", "--platform", "linux-x64", "--python", "3.11", "--torch", "none",
                     "--wheel-dir", str(offline_wheels), "--out", str(out)])
    assert rc == 0
    (zip_path,) = out.glob("pixel3dmm_blender-*-linux_x64.zip")
    return zip_path


def test_zip_layout(built_zip):
    with zipfile.ZipFile(built_zip) as z:
        names = set(z.namelist())
        manifest = z.read("blender_manifest.toml").decode()
    assert "__init__.py" in names and "core/__init__.py" in names and "core/fit/__init__.py" in names
    assert not any(n.startswith("evaluation/") or n.endswith("/metrics.py") for n in names), \
        "evaluation code must not ship"
    assert not any(n.startswith("wheels/numpy-") for n in names), "numpy must never be bundled"
    assert any(n.startswith("wheels/mediapipe-0.10.21-cp311") for n in names)
    assert any(n.startswith("wheels/huggingface_hub-") for n in names)
    assert not any(n.startswith(("wheels/hf_xet-", "wheels/click-", "wheels/fsspec-")) for n in names)
    assert "network = " in manifest
    assert 'platforms = ["linux-x64"]' in manifest


def test_zip_installs_enables_and_reconstructs_in_bpy(built_zip, tmp_path):
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"),
               MESA_SHADER_CACHE_DIR=str(tmp_path / "mesa"), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    # cwd outside the repo so that the checkout's own top-level `core` cannot be imported by accident
    proc = subprocess.run([sys.executable, str(script), str(ASTRONAUT), str(tmp_path), str(built_zip)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["enabled"] and out["panel"] and out["operator"]
    assert out["label"] == "Reconstruct Face"
    for module, path in out["modules"].items():
        assert Path(path).is_relative_to(out["site"]), f"{module} imported from {path}, not the bundled wheel"
    assert out["face_mesh"]
    assert not out["top_level_core"], "a generic top-level `core` module leaked into Blender's path"
    assert "/extensions/user_default/pixel3dmm_blender/core/" in out["vendored_core"]
    assert out["headless_rc"] == 0
    assert out["written"] == ["head.blend", "head.fbx", "head.glb", "preview.png"]
    from pygltflib import GLTF2

    gltf = GLTF2().load(str(tmp_path / "out" / "head.glb"))
    (mesh,) = gltf.meshes
    assert len(mesh.primitives[0].targets) >= 10 and len(gltf.skins[0].joints) == 5
