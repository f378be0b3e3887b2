"""Add-on preferences: where the licensed assets are, their validation status, and the compute device."""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, StringProperty

from . import bridge

ADDON_ID = __package__
"""The add-on's module name: ``bl_ext.<repo>.pixel3dmm_blender`` as an extension, the package name in dev."""

# Preference property per core asset key, with its label.
ASSET_PROPERTIES = (
    ("flame", "flame_model", "FLAME Model"),
    ("uv_template", "uv_template", "FLAME UV Template"),
    ("uv_checkpoint", "uv_checkpoint", "UV Network (uv.ckpt)"),
    ("normals_checkpoint", "normals_checkpoint", "Normal Network (normals.ckpt)"),
)
DEVICE_ITEMS = (
    ("auto", "Auto", "Use a GPU when one is available, else the CPU"),
    ("gpu", "GPU", "Use the GPU (CUDA or Apple Metal); fails when there is none"),
    ("cpu", "CPU", "Always use the CPU (slow but always available)"),
)

_report_cache: dict[tuple, object] = {}


def _asset_path_property(label: str, description: str):
    return StringProperty(name=label, description=description, subtype="FILE_PATH")


class P3DMM_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    flame_model: _asset_path_property(
        "FLAME Model", "FLAME 2020 generic_model.pkl, flame2023.pkl or flame2023_Open.pkl from flame.is.tue.mpg.de"
    )
    uv_template: _asset_path_property("FLAME UV Template", "head_template.obj with FLAME's texture coordinates")
    uv_checkpoint: _asset_path_property("UV Network", "Pixel3DMM uv.ckpt (UV coordinate predictor)")
    normals_checkpoint: _asset_path_property("Normal Network", "Pixel3DMM normals.ckpt (surface normal predictor)")
    device: EnumProperty(
        name="Device", description="Where the networks and the fit run", items=DEVICE_ITEMS, default="auto"
    )

    def draw(self, context):
        layout = self.layout
        report = asset_report(self)
        for key, prop, _label in ASSET_PROPERTIES:
            state = report[key]
            box = layout.box()
            box.prop(self, prop)
            row = box.row()
            row.label(text=state.message, icon="CHECKMARK" if state.ok else "ERROR")
        layout.prop(self, "device")


def get_preferences(context: bpy.types.Context) -> P3DMM_AddonPreferences:
    """This add-on's preferences (the add-on must be enabled)."""
    return context.preferences.addons[ADDON_ID].preferences


def asset_paths(prefs: P3DMM_AddonPreferences) -> dict[str, str]:
    """Absolute asset paths by core asset key; '' where unset."""
    return {
        key: bpy.path.abspath(getattr(prefs, prop)) if getattr(prefs, prop) else ""
        for key, prop, _label in ASSET_PROPERTIES
    }


def asset_report(prefs: P3DMM_AddonPreferences):
    """The core's asset report for the preference paths, cached until a path or a file's mtime changes."""
    paths = asset_paths(prefs)
    cache_key = tuple((key, path, _mtime(path)) for key, path in sorted(paths.items()))
    report = _report_cache.get(cache_key)
    if report is None:
        report = bridge.asset_report(paths)
        _report_cache.clear()
        _report_cache[cache_key] = report
    return report


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def cache_dir() -> str | None:
    """The extension's user folder for converted assets, or None when not installed as an extension."""
    if not ADDON_ID.startswith("bl_ext."):
        return None
    return bpy.utils.extension_path_user(ADDON_ID, path="cache", create=True)


CLASSES = (P3DMM_AddonPreferences,)
