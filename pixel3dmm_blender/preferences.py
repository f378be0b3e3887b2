"""Add-on preferences: the licensed assets (path, validated state, where to get each), the network download, and
the compute device.

Each asset row shows its path, its state from the core's real validation (found / missing / invalid, with the
one-sentence reason: :func:`validated_report`) and a Get button that opens its download page. The sidebar panel's
one-line summary uses the cheap report (:func:`asset_report`: existence and file signatures), so that drawing the
viewport never imports torch. Both reports are cached until a path, or a file's size or modification time,
changes, so a redraw reads nothing again.
"""

from __future__ import annotations

import os
import textwrap

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
#: Icon of each asset state.
STATE_ICONS = {"found": "CHECKMARK", "missing": "QUESTION", "invalid": "ERROR"}
_WRAP = 100

_report_cache: dict[tuple, object] = {}


def _asset_path_property(label: str, description: str):
    return StringProperty(name=label, description=description, subtype="FILE_PATH")


class P3DMM_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    flame_model: _asset_path_property(
        "FLAME Model", "FLAME 2020, 2023 or 2023 Open from flame.is.tue.mpg.de: the downloaded zip, or "
                       "generic_model.pkl, flame2023.pkl or flame2023_Open.pkl"
    )
    uv_template: _asset_path_property(
        "FLAME UV Template", "head_template.obj with FLAME's texture coordinates (or a zip holding it)"
    )
    uv_checkpoint: _asset_path_property(
        "UV Network", "Pixel3DMM uv.ckpt (UV coordinate predictor) or its converted .safetensors"
    )
    normals_checkpoint: _asset_path_property(
        "Normal Network", "Pixel3DMM normals.ckpt (surface normal predictor) or its converted .safetensors"
    )
    download_folder: StringProperty(
        name="Download Folder", subtype="DIR_PATH",
        description="Where Download Networks puts the networks (empty: the extension's own user folder)",
    )
    device: EnumProperty(
        name="Device", description="Where the networks and the fit run", items=DEVICE_ITEMS, default="auto"
    )

    def draw(self, context):
        from . import downloads  # downloads imports this module

        layout = self.layout
        report = validated_report(self)
        pages = bridge.asset_pages()
        for key, prop, _label in ASSET_PROPERTIES:
            draw_asset(layout, self, prop, report[key], pages[key])
        downloads.draw_section(layout, context, self)
        layout.prop(self, "device")


def draw_asset(layout, prefs, prop: str, state, page: str) -> None:
    """One asset's box: the path with a Get button (its download page), then its state and reason."""
    box = layout.box()
    row = box.row(align=True)
    row.prop(prefs, prop)
    row.operator("wm.url_open", text="Get", icon="URL").url = page
    status = state.status.value
    lines = textwrap.wrap(f"{status.capitalize()}: {state.message}", _WRAP)
    for index, line in enumerate(lines):
        box.label(text=line, icon=STATE_ICONS[status] if index == 0 else "BLANK1")


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
    """The core's cheap asset report (existence, file signatures) for the preference paths, cached until a path or
    a file changes."""
    return _cached(prefs, "cheap", bridge.asset_report)


def validated_report(prefs: P3DMM_AddonPreferences):
    """The core's asset report with every file validated as a reconstruction loads it, cached until a path or a
    file changes (the first call imports torch and reads the files: about a second or two)."""
    return _cached(prefs, "validated", bridge.validated_asset_report)


def _cached(prefs: P3DMM_AddonPreferences, kind: str, make):
    paths = asset_paths(prefs)
    cache_key = (kind, *((key, path, _signature(path)) for key, path in sorted(paths.items())))
    report = _report_cache.get(cache_key)
    if report is None:
        report = make(paths)
        for stale in [k for k in _report_cache if k[0] == kind]:
            del _report_cache[stale]
        _report_cache[cache_key] = report
    return report


def _signature(path: str) -> tuple[int, int] | None:
    """A file's (size, modification time in ns), or None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def cache_dir() -> str | None:
    """The extension's user folder for converted assets, or None when not installed as an extension."""
    if not ADDON_ID.startswith("bl_ext."):
        return None
    return bpy.utils.extension_path_user(ADDON_ID, path="cache", create=True)


CLASSES = (P3DMM_AddonPreferences,)
