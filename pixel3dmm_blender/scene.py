"""Copy a core ``Rig`` (plain numpy data, see ``core/rig.py``) into Blender scene data. Main thread only.

Every number comes from the rig; this module only chooses Blender names and display settings and writes the
arrays into datablocks.

Frames and units
----------------
The rig is in FLAME's canonical frame (metres, +y up, face towards +z) with the head pose ``[R | t]`` applied
outside it, and its camera sits at (0, 0, 1) looking down -z (OpenGL). Blender is Z-up, so every object built
here hangs under one conversion ``C`` = +90 degrees about X (FLAME +y becomes Blender +Z, the face looks
towards Blender -Y, i.e. into the front view):

* the armature object's world matrix is ``C @ rig.head_pose``; the head mesh is its child with an identity
  parent inverse, so mesh coordinates *are* FLAME coordinates and armature space *is* FLAME's canonical frame;
* the camera object's world matrix is ``C @ rig.camera.pose``.

The glTF exporter maps Blender Z-up back to +Y up with the inverse of ``C``, so an exported head's world
positions are ``R @ v + t`` in FLAME's own frame again.

Armature and keys
-----------------
Every bone rests with the identity orientation in armature space (tail = head + (0, length, 0), roll 0), as
the rig's joints do, so a bone's local pose rotation *is* the rig's joint rotation and Blender's deformation is
the rig's linear blend skinning. Shape keys are applied before the Armature modifier, as the rig's keys are
meant to be (see ``core/rig.py`` for how that relates to FLAME's forward pass). Each pose-corrective key takes
entry (row, col) of ``R - I`` of its joint, as the rig states; that entry is a quadratic form in the bone's
quaternion, written as a simple driver expression (no Python auto-run needed). The expressions divide by the
quaternion's squared norm, so they stay right for unnormalised quaternions, and are even in the quaternion, so
the sign ambiguity of a matrix-to-quaternion conversion does not matter.

Names: bones follow :data:`BONE_NAMES`; shape keys keep the rig's names and order after the ``Basis`` key (the
51 ARKit keys when the rig has them, ``fitted_expression``, ``expression_000`` ..., ``eyelid.L/R``,
``pose_<joint>_<row><col>``).

The head mesh object carries two custom properties: :data:`HEAD_TAG` and :data:`RECORD` (the core's
``head_record`` of the rig: the fitted FLAME parameters and what each ARKit key means in FLAME's terms), from
which the animation operators read FLAME parameters and takes back off the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import bridge

BONE_NAMES = {"root": "root", "neck": "neck", "jaw": "jaw", "left_eye": "eye.L", "right_eye": "eye.R"}
"""Blender bone of each rig joint name (the subject's left eye is on Blender's +X side, hence ``.L``)."""

BONE_LENGTHS = {"root": 0.06, "neck": 0.08, "jaw": 0.04, "left_eye": 0.02, "right_eye": 0.02}
"""Display length of each joint's bone in metres."""

MESH_UV_NAME = "UVMap"
HEAD_TAG = "pixel3dmm_head"
"""Custom property (True) on every head mesh built here; the export operators look for it."""
RECORD = "pixel3dmm_flame"
"""Custom property holding the core's head record (plain lists and numbers) of the rig the head was built from."""

# Blender world from FLAME world: +90 degrees about X.
FLAME_TO_BLENDER = Matrix.Rotation(math.pi / 2.0, 4, "X")

# Entries of R - I for a unit quaternion (w, x, y, z), row-major; divided by |q|^2 in the driver.
_R_MINUS_I = (
    ("-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)"),
    ("2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)"),
    ("2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)"),
)
_QUAT_CHANNELS = (("w", "ROT_W"), ("x", "ROT_X"), ("y", "ROT_Y"), ("z", "ROT_Z"))


@dataclass
class HeadObjects:
    """What :func:`build_head` created."""

    collection: bpy.types.Collection
    mesh: bpy.types.Object
    armature: bpy.types.Object
    camera: bpy.types.Object
    material: bpy.types.Material
    texture: bpy.types.Image | None


def corrective_expression(row: int, col: int) -> str:
    """The driver expression giving entry (row, col) of R - I from the quaternion variables w, x, y, z."""
    return f"({_R_MINUS_I[row][col]})/(w*w+x*x+y*y+z*z)"


def build_head(
    context: bpy.types.Context,
    rig,
    *,
    name: str,
    texture: np.ndarray | None = None,
    photo: bpy.types.Image | None = None,
) -> HeadObjects:
    """Build the rigged head, its material and the matching camera in a new collection ``name``.

    ``rig`` is a ``core.rig.Rig`` (joint_names, parents, joints, rotations, head_pose, rest_vertices, faces,
    corner_uv, skin_weights, shape_keys with the correctives' joint/row/col, camera). ``texture`` is the baked
    texture as (T, T, 4) float32 RGBA in Blender's pixel order (row 0 at the bottom; ``bridge.prepare_result``
    makes it); ``photo`` becomes the camera's background image. The new mesh ends up selected and active. If
    anything fails, every datablock made so far is removed again before the error propagates.
    """
    before = {kind: set(getattr(bpy.data, kind)) for kind in _BUILT_DATA}
    try:
        return _build_head(context, rig, name, texture, photo)
    except BaseException:
        made = [block for kind in _BUILT_DATA for block in getattr(bpy.data, kind) if block not in before[kind]]
        bpy.data.batch_remove(made)
        raise


_BUILT_DATA = ("collections", "objects", "meshes", "armatures", "cameras", "materials", "images")


def _build_head(context, rig, name, texture, photo) -> HeadObjects:
    collection = bpy.data.collections.new(name)
    context.scene.collection.children.link(collection)

    bones = [BONE_NAMES[joint] for joint in rig.joint_names]
    armature = _build_armature(context, collection, f"{name} rig", rig)
    armature.matrix_world = FLAME_TO_BLENDER @ Matrix(rig.head_pose.tolist())
    mesh = _build_mesh(collection, f"{name} head", rig.rest_vertices, rig.faces, rig.corner_uv)
    mesh[HEAD_TAG] = True
    mesh[RECORD] = bridge.head_record(rig)
    mesh.parent = armature
    mesh.matrix_parent_inverse = Matrix.Identity(4)
    _add_skin(mesh, armature, bones, rig.skin_weights)
    _add_shape_keys(mesh, armature, bones, rig)
    for bone, rotation in zip(bones, rig.rotations):
        armature.pose.bones[bone].rotation_quaternion = Matrix(rotation.tolist()).to_quaternion()

    image = _texture_image(f"{name} texture", texture) if texture is not None else None
    material = _build_material(f"{name} skin", image)
    mesh.data.materials.append(material)
    camera = _build_camera(context, collection, f"{name} camera", rig.camera, photo)

    for obj in context.view_layer.objects:
        obj.select_set(False)
    mesh.select_set(True)
    context.view_layer.objects.active = mesh
    context.view_layer.update()
    return HeadObjects(collection, mesh, armature, camera, material, image)


def _build_mesh(collection, name: str, verts: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray):
    faces = np.asarray(faces, dtype=np.int32)
    n_faces = faces.shape[0]
    data = bpy.data.meshes.new(name)
    data.vertices.add(verts.shape[0])
    data.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    data.loops.add(3 * n_faces)
    data.loops.foreach_set("vertex_index", faces.ravel())
    data.polygons.add(n_faces)
    data.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
    data.update(calc_edges=True)
    uv_layer = data.uv_layers.new(name=MESH_UV_NAME)
    uv_layer.data.foreach_set("uv", np.asarray(face_uvs, dtype=np.float32).reshape(-1))
    data.shade_smooth()
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    return obj


def _build_armature(context, collection, name: str, rig) -> bpy.types.Object:
    data = bpy.data.armatures.new(name)
    data.display_type = "STICK"
    obj = bpy.data.objects.new(name, data)
    obj.show_in_front = True
    collection.objects.link(obj)
    view_layer = context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        bones = []
        for joint, head, parent in zip(rig.joint_names, rig.joints, rig.parents.tolist()):
            bone = data.edit_bones.new(BONE_NAMES[joint])
            bone.head = head.tolist()
            bone.tail = (head + np.array([0.0, BONE_LENGTHS[joint], 0.0])).tolist()
            bone.roll = 0.0
            if parent >= 0:
                bone.parent = bones[parent]
                bone.use_connect = False
            bones.append(bone)
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous_active
    for pose_bone in obj.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    return obj


def _add_skin(mesh_obj, armature_obj, bones: list[str], weights: np.ndarray) -> None:
    for joint, bone_name in enumerate(bones):
        group = mesh_obj.vertex_groups.new(name=bone_name)
        column = weights[:, joint]
        for vertex in np.flatnonzero(column > 0.0).tolist():
            group.add((vertex,), float(column[vertex]), "REPLACE")
    modifier = mesh_obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature_obj
    modifier.use_vertex_groups = True
    modifier.use_deform_preserve_volume = False


def _add_shape_keys(mesh_obj, armature_obj, bones: list[str], rig) -> None:
    mesh_obj.shape_key_add(name="Basis", from_mix=False)
    for rig_key in rig.shape_keys:
        key = mesh_obj.shape_key_add(name=rig_key.name, from_mix=False)
        key.data.foreach_set("co", (rig.rest_vertices + rig_key.offsets).astype(np.float32).ravel())
        key.slider_min = rig_key.slider_min
        key.slider_max = rig_key.slider_max
        key.value = rig_key.value
    for rig_key in rig.corrective_keys:
        key = mesh_obj.data.shape_keys.key_blocks[rig_key.name]
        _add_corrective_driver(key, armature_obj, bones[rig_key.joint], rig_key.row, rig_key.col)


def _add_corrective_driver(key, armature_obj, bone_name: str, row: int, col: int) -> None:
    driver = key.driver_add("value").driver
    driver.type = "SCRIPTED"
    for var_name, channel in _QUAT_CHANNELS:
        var = driver.variables.new()
        var.name = var_name
        var.type = "TRANSFORMS"
        target = var.targets[0]
        target.id = armature_obj
        target.bone_target = bone_name
        target.transform_type = channel
        target.rotation_mode = "QUATERNION"
        target.transform_space = "LOCAL_SPACE"
    driver.expression = corrective_expression(row, col)


def _texture_image(name: str, pixels: np.ndarray) -> bpy.types.Image:
    height, width = pixels.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=False)
    image.pixels.foreach_set(np.ascontiguousarray(pixels, dtype=np.float32).ravel())
    image.pack()
    return image


def _build_material(name: str, image: bpy.types.Image | None) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    if material.node_tree is None:  # Blender < 5.0 creates materials without nodes
        material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.6
    if image is not None:
        tex_node = nodes.new("ShaderNodeTexImage")
        tex_node.image = image
        tex_node.location = (bsdf.location.x - 320.0, bsdf.location.y)
        material.node_tree.links.new(tex_node.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def _build_camera(context, collection, name: str, film, photo: bpy.types.Image | None) -> bpy.types.Object:
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = film.sensor_width
    data.lens = film.lens
    data.shift_x = film.shift_x
    data.shift_y = film.shift_y
    data.clip_start = 0.01
    data.clip_end = 100.0
    if photo is not None:
        background = data.background_images.new()
        background.image = photo
        background.alpha = 0.6
        data.show_background_images = True
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = FLAME_TO_BLENDER @ Matrix(film.pose.tolist())
    collection.objects.link(obj)
    render = context.scene.render
    render.resolution_x, render.resolution_y = film.resolution
    render.resolution_percentage = 100
    render.pixel_aspect_x = 1.0
    render.pixel_aspect_y = 1.0
    if context.scene.camera is None:
        context.scene.camera = obj
    return obj


def head_camera(mesh_obj: bpy.types.Object) -> bpy.types.Object | None:
    """The camera built with a head: the first camera in the head mesh's collections."""
    return next((o for c in mesh_obj.users_collection for o in c.objects if o.type == "CAMERA"), None)


def replace_head(context: bpy.types.Context, mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object,
                 rig) -> HeadObjects:
    """Rebuild a head from another rig (the same FLAME model), keeping its material, photo and names.

    The new mesh, armature and camera take the place of the old ones in the old head's collection, with their
    names; the old objects and their data are removed, and the old head's material (its baked texture) and the
    camera's photo move over. Animation does not: the new head shows the rig's values. If building fails,
    nothing has changed.
    """
    collection = mesh_obj.users_collection[0]
    camera = head_camera(mesh_obj)
    photo = None
    if camera is not None and len(camera.data.background_images) and camera.data.background_images[0].image:
        photo = camera.data.background_images[0].image
    material = mesh_obj.data.materials[0] if len(mesh_obj.data.materials) else None
    new = build_head(context, rig, name=collection.name, photo=photo)
    scene = context.scene
    old_objects = [o for o in (mesh_obj, armature_obj, camera) if o is not None]
    names = {new.mesh: mesh_obj, new.armature: armature_obj}
    if camera is not None:
        names[new.camera] = camera
    names = {obj: (old.name, old.data.name) for obj, old in names.items()}
    was_scene_camera = scene.camera is not None and scene.camera == camera
    if material is not None:
        new.mesh.data.materials[0] = material
        bpy.data.materials.remove(new.material)
    for obj in (new.mesh, new.armature, new.camera):
        collection.objects.link(obj)
        new.collection.objects.unlink(obj)
    bpy.data.collections.remove(new.collection)
    data = [o.data for o in old_objects]
    bpy.data.batch_remove(old_objects)
    bpy.data.batch_remove(data)
    for obj, (name, data_name) in names.items():
        obj.name, obj.data.name = name, data_name
    if was_scene_camera:
        scene.camera = new.camera
    context.view_layer.update()
    if material is None:
        return HeadObjects(collection, new.mesh, new.armature, new.camera, new.material, None)
    texture = next((n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE"), None)
    return HeadObjects(collection, new.mesh, new.armature, new.camera, material, texture)


def photo_name(path: str | Path) -> str:
    """A collection name for a photo path: its file stem, or "Face" for an empty path."""
    stem = Path(str(path)).stem
    return stem or "Face"
