"""Export one head (its mesh and armature, nothing else) to GLB or FBX. Main thread only.

Both writers get explicit options: shape keys with their current values, skin weights, no leaf bones,
modifiers not applied (applying them would drop the shape keys), and the head's animation when it has one (its
shape keys' and armature's active actions, an imported Live Link take for instance): sampled once per frame, so a
take keyed one row per frame keeps one key per row (glTF: one animation of the morph weights and joint
rotations; FBX: baked over the scene's frame range). The file is written next to the target under a temporary
name and moved into place, so a failed export leaves no half-written file; it gets the user's normal file
permissions (0666 less the umask). The user's selection and active object are restored afterwards.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import bpy


class ExportError(Exception):
    """An export could not be written; the message is one sentence for the user."""


def head_parts(mesh_obj: bpy.types.Object) -> tuple[bpy.types.Object, bpy.types.Object]:
    """The head mesh and the armature that deforms it."""
    for modifier in mesh_obj.modifiers:
        if modifier.type == "ARMATURE" and modifier.object is not None:
            return mesh_obj, modifier.object
    raise ExportError(f"The object '{mesh_obj.name}' has no armature; export a head built by Pixel3DMM.")


def is_animated(mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object) -> bool:
    """True when the head's shape keys or its armature have an action."""
    blocks = (mesh_obj.data.shape_keys, armature_obj)
    return any(b is not None and b.animation_data is not None and b.animation_data.action is not None for b in blocks)


def export_glb(context: bpy.types.Context, mesh_obj: bpy.types.Object, filepath: str) -> Path:
    """Write the head as binary glTF (+Y up): morph targets with their weights, skin, baked texture, and the
    head's animation (one glTF animation, a key per frame) when it has one.

    The joint nodes carry the current pose (inverse bind matrices hold the rest pose), so a viewer shows the
    fitted head: skinned morphed positions equal the evaluated Blender mesh in FLAME's +Y-up frame. Key times are
    frames over the scene's frame rate, ``fps / fps_base``: the glTF exporter (Blender 4.2 to 5.0) divides by
    ``fps * fps_base`` instead, so ``fps_base`` is inverted while it writes (29.97 fps clips keep their timing).
    """
    animated = is_animated(*head_parts(mesh_obj))

    def write(tmp: str) -> None:
        render = context.scene.render
        base = render.fps_base
        render.fps_base = 1.0 / base
        try:
            bpy.ops.export_scene.gltf(
                filepath=tmp,
                export_format="GLB",
                use_selection=True,
                export_yup=True,
                export_apply=False,
                export_morph=True,
                export_morph_normal=True,
                export_skins=True,
                export_rest_position_armature=False,
                # no leaf bones: the glTF exporter adds none by default (its export_leaf_bone option, new in
                # Blender 4.3, is not passed so that Blender 4.2 accepts the call)
                export_animations=animated,
                export_morph_animation=animated,
                export_animation_mode="ACTIVE_ACTIONS",  # the shape keys' and the armature's actions as one animation
                export_force_sampling=True,
                export_optimize_animation_size=False,  # a key per frame, also where values repeat
                export_anim_slide_to_zero=True,  # the first frame at time 0
                export_materials="EXPORT",
                export_normals=True,
                export_texcoords=True,
            )
        finally:
            render.fps_base = base

    return _export(context, mesh_obj, filepath, ".glb", write)


def export_fbx(context: bpy.types.Context, mesh_obj: bpy.types.Object, filepath: str) -> Path:
    """Write the head as FBX: blend shapes with their values, skin, face smoothing groups, embedded texture, and
    the head's animation baked over the scene's frame range (a key per frame) when it has one."""
    animated = is_animated(*head_parts(mesh_obj))

    def write(tmp: str) -> None:
        bpy.ops.export_scene.fbx(
            filepath=tmp,
            use_selection=True,
            object_types={"ARMATURE", "MESH"},
            use_mesh_modifiers=False,
            mesh_smooth_type="FACE",
            add_leaf_bones=False,
            bake_anim=animated,
            bake_anim_use_all_bones=True,
            bake_anim_use_nla_strips=False,
            bake_anim_use_all_actions=False,
            bake_anim_force_startend_keying=True,
            bake_anim_step=1.0,
            bake_anim_simplify_factor=0.0,
            primary_bone_axis="Y",
            secondary_bone_axis="X",
            armature_nodetype="NULL",
            path_mode="COPY",
            embed_textures=True,
        )

    return _export(context, mesh_obj, filepath, ".fbx", write)


def _export(context, mesh_obj, filepath: str, suffix: str, write) -> Path:
    target = Path(bpy.path.abspath(filepath))
    if target.suffix.lower() != suffix:
        target = target.with_name(target.name + suffix)
    if not target.parent.is_dir():
        raise ExportError(f"The folder {target.parent} does not exist; choose an existing folder.")
    parts = head_parts(mesh_obj)
    try:
        tmp = _new_file(target.parent, f".{target.stem}-", suffix)
    except OSError as exc:
        raise ExportError(f"Cannot write into the folder {target.parent} ({exc.strerror or exc}); choose a folder "
                          "you can write to.") from exc
    try:
        with _selected_only(context, parts):
            write(tmp)
        if os.path.getsize(tmp) == 0:
            raise ExportError(f"The exporter wrote nothing to {target}; check the console for its messages.")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _new_file(folder: Path, prefix: str, suffix: str) -> str:
    """Create an empty file with a fresh random name in ``folder`` and the user's normal permissions.

    Unlike ``tempfile.mkstemp`` (owner-only, 0600) it asks for 0666, which the process umask reduces as for any
    new file (0644 with the usual umask 022); the exporters overwrite the file and keep that mode.
    """
    path = folder / f"{prefix}{secrets.token_hex(8)}{suffix}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return str(path)


@contextmanager
def _selected_only(context, objects):
    view_layer = context.view_layer
    previous_selection = {obj for obj in view_layer.objects if obj.select_get()}
    previous_active = view_layer.objects.active
    try:
        for obj in previous_selection:
            obj.select_set(False)
        for obj in objects:
            if view_layer.objects.get(obj.name) is None:
                raise ExportError(f"The object '{obj.name}' is not in the current view layer; show it and retry.")
            obj.select_set(True)
        view_layer.objects.active = objects[0]
        yield
    finally:
        for obj in view_layer.objects:
            obj.select_set(obj in previous_selection)
        view_layer.objects.active = previous_active
