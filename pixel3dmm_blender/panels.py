"""The "Pixel3DMM" tab in the 3D viewport's sidebar. Drawing only; every action is an operator."""

from __future__ import annotations

import bpy

from . import jobs, operators, preferences


def draw_source(layout, context, settings) -> None:
    layout.row().prop(settings, "image_source", expand=True)
    if settings.image_source == "EDITOR":
        image = operators.editor_image(context)
        if image is None:
            layout.label(text="Open the photo in an Image Editor", icon="INFO")
        else:
            layout.label(text=image.name, icon="IMAGE_DATA")
    elif settings.image_source == "IMAGE":
        layout.template_ID(settings, "image", open="image.open")
    else:
        layout.prop(settings, "filepath", text="")


def draw_assets(layout, prefs) -> None:
    report = preferences.asset_report(prefs)
    missing = [state.spec.title for state in report.states if not state.ok]
    row = layout.row(align=True)
    if missing:
        row.label(text=f"Missing: {', '.join(missing)}", icon="ERROR")
    else:
        row.label(text="All assets found", icon="CHECKMARK")
    row.operator("preferences.addon_show", text="", icon="PREFERENCES").module = preferences.ADDON_ID


def draw_run(layout, settings) -> None:
    if jobs.active_job() is None:
        layout.operator("pixel3dmm.reconstruct_face", icon="USER")
        layout.operator("pixel3dmm.track_video", icon="FILE_MOVIE")
        return
    row = layout.row(align=True)
    row.progress(factor=settings.progress, type="BAR", text=f"{settings.stage} {round(100 * settings.progress)}%")
    row.operator("pixel3dmm.cancel_reconstruction", text="", icon="CANCEL")


class P3DMM_PT_main(bpy.types.Panel):
    bl_idname = "P3DMM_PT_main"
    bl_label = "Pixel3DMM"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Pixel3DMM"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.p3dmm
        prefs = preferences.get_preferences(context)
        draw_source(layout.box(), context, settings)
        draw_assets(layout, prefs)
        column = layout.column()
        column.use_property_split = True
        column.prop(settings, "quality")
        column.prop(settings, "mode")
        column.prop(prefs, "device")
        column.prop(settings, "texture_size")
        column.prop(settings, "face_index")
        draw_run(layout, settings)
        row = layout.row(align=True)
        row.operator("pixel3dmm.export_glb", icon="EXPORT")
        row.operator("pixel3dmm.export_fbx", icon="EXPORT")


CLASSES = (P3DMM_PT_main,)
