"""The Expression and Animation panels under the Pixel3DMM sidebar tab, and the expression reset.

Expression: the head's ``fitted_expression`` slider, its 51 ARKit keys grouped by face region (brows, eyes,
cheeks, nose, jaw, mouth; weights 0..1) with a reset, and FLAME's own 100 expression and 2 eyelid keys in a
closed group for power users. Animation: Live Link Face takes and FLAME parameter files in and out (the
operators are in :mod:`.animation`). Drawing only; every action is an operator.
"""

from __future__ import annotations

import bpy

from . import operators, scene

GROUPS = (
    ("brows", "Brows", "brow"),
    ("eyes", "Eyes", "eye"),
    ("cheeks", "Cheeks", "cheek"),
    ("nose", "Nose", "nose"),
    ("jaw", "Jaw", "jaw"),
    ("mouth", "Mouth", "mouth"),
)
"""(id, title, name prefix) of each ARKit group, in the order the panel shows them."""


def arkit_keys(mesh: bpy.types.Object) -> list[bpy.types.ShapeKey]:
    """The head's ARKit keys (the names its record lists), in the mesh's order."""
    record = mesh.get(scene.RECORD)
    if record is None or mesh.data.shape_keys is None:
        return []
    names = set(record["arkit"].keys())
    return [key for key in mesh.data.shape_keys.key_blocks if key.name in names]


def flame_keys(mesh: bpy.types.Object) -> list[bpy.types.ShapeKey]:
    """FLAME's own expression and eyelid keys."""
    if mesh.data.shape_keys is None:
        return []
    return [key for key in mesh.data.shape_keys.key_blocks
            if key.name.startswith("expression_") or key.name.startswith("eyelid.")]


class P3DMM_OT_reset_expression(bpy.types.Operator):
    bl_idname = "pixel3dmm.reset_expression"
    bl_label = "Reset ARKit Keys"
    bl_description = "Set every ARKit key of the head to 0 (keyframes stay as they are)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        head = operators.find_head(context)
        return head is not None and bool(arkit_keys(head))

    def execute(self, context):
        for key in arkit_keys(operators.find_head(context)):
            key.value = 0.0
        return {"FINISHED"}


class _SubPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Pixel3DMM"
    bl_parent_id = "P3DMM_PT_main"

    @classmethod
    def poll(cls, context):
        return operators.find_head(context) is not None


class P3DMM_PT_expression(_SubPanel, bpy.types.Panel):
    bl_idname = "P3DMM_PT_expression"
    bl_label = "Expression"

    def draw(self, context):
        layout = self.layout
        head = operators.find_head(context)
        blocks = head.data.shape_keys.key_blocks if head.data.shape_keys is not None else {}
        fitted = blocks.get("fitted_expression")
        if fitted is not None:
            layout.prop(fitted, "value", text="Fitted Expression", slider=True)
        keys = arkit_keys(head)
        if not keys:
            layout.label(text="No ARKit keys: built without a landmark embedding", icon="INFO")
        for group, title, prefix in GROUPS:
            members = [key for key in keys if key.name.startswith(prefix)]
            if not members:
                continue
            header, body = layout.panel(f"p3dmm_arkit_{group}", default_closed=False)
            header.label(text=title)
            if body is not None:
                column = body.column(align=True)
                for key in members:
                    column.prop(key, "value", text=key.name, slider=True)
        if keys:
            layout.operator("pixel3dmm.reset_expression", icon="LOOP_BACK")
        components = flame_keys(head)
        if components:
            header, body = layout.panel("p3dmm_flame_keys", default_closed=True)
            header.label(text=f"FLAME Components ({len(components)})")
            if body is not None:
                column = body.column(align=True)
                for key in components:
                    column.prop(key, "value", text=key.name, slider=True)


class P3DMM_PT_animation(_SubPanel, bpy.types.Panel):
    bl_idname = "P3DMM_PT_animation"
    bl_label = "Animation"

    def draw(self, context):
        layout = self.layout
        layout.label(text="Live Link Face take (.csv)")
        row = layout.row(align=True)
        row.operator("pixel3dmm.import_livelink", text="Import", icon="IMPORT")
        row.operator("pixel3dmm.export_livelink", text="Export", icon="EXPORT")
        layout.label(text="FLAME parameters (.npz, .json)")
        row = layout.row(align=True)
        row.operator("pixel3dmm.import_flame_params", text="Import", icon="IMPORT")
        row.operator("pixel3dmm.export_flame_params", text="Export", icon="EXPORT")


CLASSES = (P3DMM_OT_reset_expression, P3DMM_PT_expression, P3DMM_PT_animation)
