"""Registration, preferences and asset status, the panel's drawing, the bridge, and the code rules."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import addon_utils
import bpy
import numpy as np
import pytest

import core.assets
import core.pipeline
from core.errors import AssetInvalidError, FitCancelled
from core.rig import build_rig
from heads import random_fit, synthetic_head
from pixel3dmm_blender import bridge, jobs, panels, preferences

PACKAGE = Path(preferences.__file__).resolve().parent


class Recorder:
    """Stands in for bpy's UILayout: records every call, returns a child recorder, accepts attributes."""

    def __init__(self, log=None):
        self.__dict__["log"] = [] if log is None else log

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.log.append((name, args, kwargs))
            return Recorder(self.log)

        return call

    def __setattr__(self, name, value):
        self.log.append(("set " + name, (value,), {}))

    def calls(self, name):
        return [(args, kwargs) for n, args, kwargs in self.log if n == name]


def draw_panel():
    layout = Recorder()
    panels.P3DMM_PT_main.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    return layout


def write_assets(folder: Path) -> dict[str, Path]:
    """Valid stand-ins for the four assets (a small synthetic FLAME head, tiny Lightning checkpoints)."""
    from core.flame import write_synthetic_flame
    from core.network import write_synthetic_checkpoint

    flame = write_synthetic_flame(folder, size="small", seed=0)
    return {
        "flame_model": flame["plain"],
        "uv_template": flame["obj"],
        "uv_checkpoint": write_synthetic_checkpoint(folder / "uv.ckpt", "tiny", prediction_type="uv_map"),
        "normals_checkpoint": write_synthetic_checkpoint(folder / "normals.ckpt", "tiny", prediction_type="normals"),
    }


@pytest.fixture()
def prefs():
    prefs = preferences.get_preferences(bpy.context)
    yield prefs
    for _key, prop, _label in preferences.ASSET_PROPERTIES:
        setattr(prefs, prop, "")
    prefs.device = "auto"


def test_fixed_names():
    assert bpy.ops.pixel3dmm.reconstruct_face.get_rna_type().name == "Reconstruct Face"
    assert bpy.ops.pixel3dmm.export_glb.get_rna_type().name == "Export GLB"
    assert bpy.ops.pixel3dmm.export_fbx.get_rna_type().name == "Export FBX"
    panel = bpy.types.P3DMM_PT_main
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "Pixel3DMM")
    assert preferences.P3DMM_AddonPreferences.bl_idname == "pixel3dmm_blender"
    assert isinstance(bpy.context.scene.p3dmm, bpy.types.PropertyGroup)


def test_unregister_is_symmetric():
    addon_utils.disable("pixel3dmm_blender", default_set=True)
    try:
        assert not hasattr(bpy.types.Scene, "p3dmm")
        assert not hasattr(bpy.types, "P3DMM_PT_main")
        assert "reconstruct_face" not in dir(bpy.ops.pixel3dmm)
    finally:
        addon_utils.enable("pixel3dmm_blender", default_set=True)
    assert hasattr(bpy.types.Scene, "p3dmm") and hasattr(bpy.types, "P3DMM_PT_main")


def test_asset_status_follows_the_files(prefs, tmp_path):
    report = preferences.validated_report(prefs)
    assert not report.complete and all(s.status.value == "missing" for s in report.states)
    assert preferences.asset_report(prefs) == report  # the panel's cheap report agrees on missing files
    files = write_assets(tmp_path)
    for prop, path in files.items():
        setattr(prefs, prop, str(path))
    assert preferences.validated_report(prefs).complete
    files["uv_checkpoint"].write_text("<!DOCTYPE html><html>login</html>")
    state = preferences.validated_report(prefs)["uv_checkpoint"]
    assert state.status.value == "invalid" and "web page" in state.message
    prefs.uv_checkpoint = str(files["normals_checkpoint"])  # the other network in the UV slot
    state = preferences.validated_report(prefs)["uv_checkpoint"]
    assert state.status.value == "invalid" and "holds the normal network" in state.message
    files["flame_model"].write_bytes(files["flame_model"].read_bytes()[:3000])  # a truncated FLAME pickle
    state = preferences.validated_report(prefs)["flame"]
    assert state.status.value == "invalid" and "truncated" in state.message
    assert preferences.asset_report(prefs)["flame"].ok  # only a signature check: the panel's summary misses it


def test_asset_report_is_cached_until_a_file_changes(prefs, tmp_path, monkeypatch):
    files = write_assets(tmp_path)
    for prop, path in files.items():
        setattr(prefs, prop, str(path))
    calls = []
    real = bridge.validated_asset_report
    monkeypatch.setattr(bridge, "validated_asset_report", lambda paths: calls.append(paths) or real(paths))
    monkeypatch.setattr(preferences, "_report_cache", {})
    for _ in range(5):
        assert preferences.validated_report(prefs).complete
    assert len(calls) == 1
    os.utime(files["uv_template"], ns=(0, files["uv_template"].stat().st_mtime_ns + 10**9))
    assert preferences.validated_report(prefs).complete and len(calls) == 2


def _draw_preferences(prefs):
    layout = Recorder()
    values = {prop: getattr(prefs, prop) for _key, prop, _label in preferences.ASSET_PROPERTIES}
    prefs_self = type("P", (), {"layout": layout, "download_folder": prefs.download_folder, **values})()
    preferences.P3DMM_AddonPreferences.draw(prefs_self, bpy.context)
    return layout


def test_preferences_draw_each_asset_with_its_state_and_page(prefs, tmp_path):
    files = write_assets(tmp_path)
    prefs.uv_template = str(files["uv_template"])
    prefs.uv_checkpoint = str(files["normals_checkpoint"])
    layout = _draw_preferences(prefs)
    states = [(kwargs.get("icon"), kwargs["text"].split(":")[0]) for _args, kwargs in layout.calls("label")
              if kwargs.get("icon") in preferences.STATE_ICONS.values()]
    assert states == [("QUESTION", "Missing"), ("CHECKMARK", "Found"), ("ERROR", "Invalid"), ("QUESTION", "Missing")]
    assert [args[1] for args, _ in layout.calls("prop")] == ["flame_model", "uv_template", "uv_checkpoint",
                                                             "normals_checkpoint", "download_folder", "device"]
    urls = [args[0] for n, args, _ in layout.log if n == "set url"]
    assert [args[0] for args, _ in layout.calls("operator")][:4] == ["wm.url_open"] * 4
    assert urls == [core.assets.ASSETS[i].page for i in range(4)]
    assert urls[0].startswith("https://flame.is.tue.mpg.de") and "huggingface.co" in urls[2]
    downloads = [kwargs.get("text", "") for args, kwargs in layout.calls("operator")
                 if args[0] == "pixel3dmm.download_networks"]
    assert downloads == ["Download Networks (3.72 GB, CC BY-NC 4.0)"]


def test_panel_idle_shows_inputs_and_buttons(prefs):
    layout = draw_panel()
    operators = [args[0] for args, _ in layout.calls("operator")]
    assert operators == ["preferences.addon_show", "pixel3dmm.reconstruct_face", "pixel3dmm.track_video",
                         "pixel3dmm.export_glb", "pixel3dmm.export_fbx"]
    props = [args[1] for args, _ in layout.calls("prop")]
    assert props == ["image_source", "quality", "mode", "device", "texture_size", "face_index"]
    labels = [kwargs.get("text", "") for _args, kwargs in layout.calls("label")]
    assert any(text.startswith("Missing: FLAME model") for text in labels)
    assert layout.calls("progress") == []


def test_panel_while_running_shows_progress_and_cancel(prefs, tmp_path):
    for prop, path in write_assets(tmp_path).items():
        setattr(prefs, prop, str(path))
    bpy.context.scene.p3dmm.stage = "fit"
    bpy.context.scene.p3dmm.progress = 0.42
    gate = __import__("threading").Event()
    jobs.start_job(lambda on_progress, should_cancel: gate.wait(5.0))
    try:
        layout = draw_panel()
    finally:
        gate.set()
        jobs.cancel_active()
    ((_, progress),) = layout.calls("progress")
    assert progress["factor"] == pytest.approx(0.42) and progress["text"] == "fit 42%"
    operators = [args[0] for args, _ in layout.calls("operator")]
    assert "pixel3dmm.cancel_reconstruction" in operators and "pixel3dmm.reconstruct_face" not in operators
    assert "pixel3dmm.track_video" not in operators
    assert "All assets found" in [kwargs.get("text") for _args, kwargs in layout.calls("label")]


def test_bridge_passes_settings_and_preference_paths(monkeypatch, tmp_path):
    seen = {}
    flame, uv = synthetic_head(seed=1)
    fit = random_fit(flame, seed=2)
    texture = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    reconstruction = SimpleNamespace(flame=flame, uv=uv, fit=fit, texture=texture, landmark_embedding=None)

    def reconstruct(source, assets, settings, on_progress=None, should_cancel=None):
        seen.update(source=source, assets=assets, settings=settings, cancel=should_cancel)
        return reconstruction

    monkeypatch.setattr(core.pipeline, "reconstruct", reconstruct)
    monkeypatch.setenv("PIXEL3DMM_FLAME", str(tmp_path / "from_env.pkl"))
    request = bridge.ReconstructionRequest("photo.jpg", {"flame": ""}, "best", "cpu", 2048, str(tmp_path), face_index=1)
    stop = lambda: False  # noqa: E731
    result = bridge.run_reconstruction(request, should_cancel=stop)
    assert result.reconstruction is reconstruction
    np.testing.assert_array_equal(result.rig.rest_vertices, build_rig(flame, uv, fit).rest_vertices)
    # the texture in Blender's pixel order: RGBA, row 0 at the bottom
    assert result.texture.shape == (8, 8, 4) and np.all(result.texture[:, :, 3] == 1.0)
    np.testing.assert_array_equal(result.texture[::-1, :, :3], texture)
    settings = seen["settings"]
    assert (settings.quality, settings.device, settings.texture_size, settings.cache_dir, settings.face_index) == (
        "best", "cpu", 2048, str(tmp_path), 1)
    assert seen["source"] == "photo.jpg" and seen["cancel"] is stop
    assert seen["assets"].locate("flame") == (None, "not configured")  # preferences only, not the environment


def test_bridge_asset_helpers_for_headless_runs(tmp_path, monkeypatch):
    assert bridge.configured_assets() is None  # the test session configures nothing
    paths = bridge.standin_assets(tmp_path / "standins", network_size="tiny")
    assert sorted(paths) == sorted(key for key, _prop, _label in preferences.ASSET_PROPERTIES)
    assert bridge.asset_report(paths).complete
    for key, path in paths.items():
        monkeypatch.setenv(core.assets.ASSETS[[s.key for s in core.assets.ASSETS].index(key)].env_var, path)
    assert bridge.configured_assets() == paths
    monkeypatch.setenv("PIXEL3DMM_CACHE_DIR", str(tmp_path / "cache"))
    assert bridge.default_cache_dir() == str(tmp_path / "cache")


def test_bridge_messages():
    assert bridge.error_message(AssetInvalidError("The file is empty; download it again.")) == (
        "The file is empty; download it again.")
    assert "unexpected KeyError" in bridge.error_message(KeyError("x"))
    assert bridge.is_cancellation(FitCancelled("stop")) and not bridge.is_cancellation(ValueError())


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield from ((f"{base}.{alias.name}" if node.level and not node.module else base, node)
                        for alias in node.names)


def test_only_the_bridge_imports_core_and_only_lazily():
    """Explicit import statements a reader (and an import-graph tool) can follow, inside functions only, and no
    importlib: the vendored ``.core`` first, the checkout's ``core`` as the fallback, the same modules in both."""
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = list(_imports(tree))
        assert not any(name.split(".")[0] == "importlib" for name, _node in imports), path.name
        core_imports = [(name, node) for name, node in imports if re.match(r"^(\.?core)(\.|$)|^\.\.core", name)]
        if path.name != "bridge.py":
            assert core_imports == [], path.name
            continue
        in_functions = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
                        for node in ast.walk(function)}
        assert core_imports and all(id(node) in in_functions for _name, node in core_imports)
        vendored = sorted(a.name for _n, node in core_imports if node.level == 1 for a in node.names)
        checkout = sorted(a.name for _n, node in core_imports if node.level == 0 for a in node.names)
        assert vendored == checkout and {"assets", "errors", "pipeline", "rig", "texture"} <= set(vendored)


def test_drawing_the_panel_imports_no_torch(tmp_path):
    """The sidebar's asset summary is the cheap report: drawing the panel never loads torch (the preferences'
    validated rows do, once)."""
    flame = tmp_path / "generic_model.pkl"
    flame.write_bytes(b"\x80\x02}q\x00.")
    script = (
        "import sys, bpy, addon_utils\n"
        "addon_utils.enable('pixel3dmm_blender', default_set=True, handle_error=lambda e: sys.exit(repr(e)))\n"
        "from pixel3dmm_blender import panels, preferences\n"
        "prefs = preferences.get_preferences(bpy.context)\n"
        f"prefs.flame_model = {str(flame)!r}\n"
        "class Layout:\n"
        "    def __getattr__(self, name):\n"
        "        return lambda *a, **k: Layout()\n"
        "    def __setattr__(self, name, value):\n"
        "        pass\n"
        "panels.draw_assets(Layout(), prefs)\n"
        "print(preferences.asset_report(prefs)['flame'].status.value, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, check=True, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "found False"


def test_registering_the_addon_imports_no_core():
    """Registration stays cheap: a fresh Blender enabling the add-on has not imported any of core."""
    script = (
        "import sys, bpy, addon_utils\n"
        "addon_utils.enable('pixel3dmm_blender', default_set=True, handle_error=lambda e: sys.exit(repr(e)))\n"
        "assert 'pixel3dmm_blender' in bpy.context.preferences.addons\n"
        "loaded = sorted(m for m in sys.modules if m == 'core' or m.startswith(('core.', 'pixel3dmm_blender.core')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, check=True, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_print_in_addon_code():
    """headless.py is a command-line entry point (the lead's), whose output is its interface."""
    for path in PACKAGE.glob("*.py"):
        if path.name == "headless.py":
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        assert calls == [], path.name
