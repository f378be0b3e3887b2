"""Turn a fitted FLAME head (plain numpy data) into Blender scene data. Main thread only.

Frames and units
----------------
FLAME works in metres with +y up and the face towards +z; the head pose is applied outside FLAME
(``world = R @ v + t``) and the camera sits at (0, 0, 1) looking down -z (OpenGL). Blender is Z-up, so every
object built here hangs under one conversion ``C`` = +90 degrees about X (FLAME +y becomes Blender +Z, the face
looks towards Blender -Y, i.e. into the front view):

* the armature object's world matrix is ``C @ [R | t]``; the head mesh is its child with an identity parent
  inverse, so mesh coordinates *are* FLAME coordinates and armature space *is* FLAME's canonical frame;
* the camera object's world matrix is ``C @ translation(0, 0, 1)``.

The glTF exporter maps Blender Z-up back to +Y up with the inverse of ``C``, so an exported head's world
positions are ``R @ v + t`` in FLAME's own frame again.

Rig
---
Every bone rests with the identity orientation in armature space (tail = head + (0, length, 0), roll 0), so a
bone's local pose rotation *is* FLAME's joint rotation and the deformation is exactly FLAME's linear blend
skinning. The pose-corrective keys take the entries of ``R_j - I`` (FLAME's pose feature); each is a quadratic
form in the bone's quaternion, written as a simple driver expression (no Python auto-run needed). The
expressions divide by the quaternion's squared norm, so they stay right for unnormalised quaternions, and are
even in the quaternion, so the sign ambiguity of a matrix-to-quaternion conversion does not matter.

Bone heads sit at FLAME's joints regressed from the fitted identity *with the fitted expression*, which is what
FLAME does; the evaluated mesh therefore equals FLAME's forward pass for the fitted parameters. When the user
moves expression sliders afterwards the joints do not follow (FLAME would move them by the regressor applied to
the expression offset, typically well under a millimetre).

Shape keys are applied before the Armature modifier, as in glTF and FBX. FLAME's expression and corrective
offsets are also added before skinning, so they match exactly; Pixel3DMM's two eyelid blendshapes, however,
are added *after* skinning in core. Here they are ordinary (skinned) keys, so with non-zero eyelid values and a
rotated neck the eyelid region differs from core's forward pass by (blended skinning rotation - I) applied to
the eyelid offset, about the offset times the rotation angle (a few tenths of a millimetre for a 10 degree neck
pose); everything else matches to float precision.

Shape keys are named ``expression_000`` ... (slider = FLAME coefficient, signed range), ``eyelid.L/R`` and
``pose_<bone>_<row><col>`` (driven; value = entry of ``R_bone - I``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

BONE_NAMES = ("root", "neck", "jaw", "eye.L", "eye.R")
"""Bone per FLAME joint, in FLAME's joint order (joint 3 is the subject's left eye, Blender's +X side)."""

BONE_LENGTHS = (0.06, 0.08, 0.04, 0.02, 0.02)
EXPRESSION_KEY = "expression_{:03d}"
EYELID_KEYS = ("eyelid.L", "eyelid.R")
CORRECTIVE_KEY = "pose_{}_{}{}"  # bone name, matrix row, matrix column
MESH_UV_NAME = "UVMap"
HEAD_TAG = "pixel3dmm_head"
"""Custom property (True) on every head mesh built here; the export operators look for it."""

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


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """(3,) axis-angle in radians -> (3,3) rotation matrix (Rodrigues), float64."""
    vec = np.asarray(axis_angle, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(vec))
    if angle < 1e-12:
        return np.eye(3)
    k = vec / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * (kx @ kx)


def joint_rotations(fit) -> list[np.ndarray]:
    """The fitted local rotations of FLAME joints 1..4 (neck, jaw, left eye, right eye) as (3,3) matrices."""
    return [
        axis_angle_to_matrix(fit.neck_pose),
        axis_angle_to_matrix(fit.jaw_pose),
        axis_angle_to_matrix(fit.eye_pose_left),
        axis_angle_to_matrix(fit.eye_pose_right),
    ]


def shaped_vertices(flame, shape: np.ndarray, expression: np.ndarray | None = None) -> np.ndarray:
    """FLAME's template plus identity (and optionally expression) offsets: (V,3) float64."""
    verts = flame.v_template.astype(np.float64) + _blend(flame.shapedirs, shape)
    if expression is not None:
        verts = verts + _blend(flame.exprdirs, expression)
    return verts


def _blend(dirs: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1)
    n = min(dirs.shape[2], coeffs.shape[0])
    return np.tensordot(dirs[:, :, :n].astype(np.float64), coeffs[:n], axes=([2], [0]))


def camera_settings(fit) -> dict:
    """Blender camera values reproducing the fit's pinhole ``K_photo`` on a (W, H) = photo size render.

    The sensor fit is horizontal, so focal length and both shifts are in units of the image width
    (Blender's convention). Shifting the frame right moves the optical axis left in the image, and Blender's
    shift_y points up while pixel y points down: hence the signs. Pixels are square: the fit
    uses one focal length, ``K_photo[0, 0]``.
    """
    height, width = (int(s) for s in fit.photo_size)
    k = np.asarray(fit.K_photo, dtype=np.float64)
    sensor = 36.0
    return {
        "resolution": (width, height),
        "sensor_width": sensor,
        "lens": float(k[0, 0]) * sensor / width,
        "shift_x": (width / 2.0 - float(k[0, 2])) / width,
        "shift_y": (float(k[1, 2]) - height / 2.0) / width,
    }


def head_pose_matrix(fit) -> Matrix:
    """The 4x4 FLAME-world matrix [R | t] of the fitted head pose."""
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(fit.head_rotation, dtype=np.float64)
    pose[:3, 3] = np.asarray(fit.head_translation, dtype=np.float64).reshape(3)
    return Matrix(pose.tolist())


def build_head(
    context: bpy.types.Context,
    flame,
    uv_template,
    fit,
    *,
    name: str,
    texture: np.ndarray | None = None,
    photo: bpy.types.Image | None = None,
) -> HeadObjects:
    """Build the rigged head, its material and the matching camera in a new collection ``name``.

    ``flame`` has the FlameData fields (v_template, faces, shapedirs, exprdirs, posedirs (V,3,36),
    J_regressor, weights, parents, eyelids (2,V,3) or None), ``uv_template`` per-corner ``corner_uv`` (F,3,2) in
    Blender's (u, v) convention, ``fit`` the FitResult fields. ``texture`` is a (T,T,3) float image in [0, 1],
    row 0 at the top, sRGB, laid out in FLAME UV space; ``photo`` becomes the camera's background image.
    The new mesh ends up selected and active. If anything fails, every datablock made so far is removed again
    before the error propagates.
    """
    before = {kind: set(getattr(bpy.data, kind)) for kind in _BUILT_DATA}
    try:
        return _build_head(context, flame, uv_template, fit, name, texture, photo)
    except BaseException:
        made = [block for kind in _BUILT_DATA for block in getattr(bpy.data, kind) if block not in before[kind]]
        bpy.data.batch_remove(made)
        raise


_BUILT_DATA = ("collections", "objects", "meshes", "armatures", "cameras", "materials", "images")


def _build_head(context, flame, uv_template, fit, name, texture, photo) -> HeadObjects:
    collection = bpy.data.collections.new(name)
    context.scene.collection.children.link(collection)

    neutral = shaped_vertices(flame, fit.shape)
    joints = np.asarray(flame.J_regressor, dtype=np.float64) @ shaped_vertices(flame, fit.shape, fit.expression)

    armature = _build_armature(context, collection, f"{name} rig", joints, flame.parents)
    armature.matrix_world = FLAME_TO_BLENDER @ head_pose_matrix(fit)
    mesh = _build_mesh(collection, f"{name} head", neutral, flame.faces, uv_template.corner_uv)
    mesh[HEAD_TAG] = True
    mesh.parent = armature
    mesh.matrix_parent_inverse = Matrix.Identity(4)
    _add_skin(mesh, armature, flame.weights)
    _add_shape_keys(mesh, armature, flame, neutral, fit)
    _pose_bones(armature, fit)

    image = _texture_image(f"{name} texture", texture) if texture is not None else None
    material = _build_material(f"{name} skin", image)
    mesh.data.materials.append(material)
    camera = _build_camera(context, collection, f"{name} camera", fit, photo)

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


def _build_armature(context, collection, name: str, joints: np.ndarray, parents) -> bpy.types.Object:
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
        for index, (bone_name, length) in enumerate(zip(BONE_NAMES, BONE_LENGTHS)):
            bone = data.edit_bones.new(bone_name)
            head = joints[index]
            bone.head = head.tolist()
            bone.tail = (head + np.array([0.0, length, 0.0])).tolist()
            bone.roll = 0.0
            parent = int(parents[index])
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


def _add_skin(mesh_obj, armature_obj, weights: np.ndarray) -> None:
    weights = np.asarray(weights, dtype=np.float64)
    for joint, bone_name in enumerate(BONE_NAMES):
        group = mesh_obj.vertex_groups.new(name=bone_name)
        column = weights[:, joint]
        for vertex in np.flatnonzero(column > 0.0).tolist():
            group.add((vertex,), float(column[vertex]), "REPLACE")
    modifier = mesh_obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature_obj
    modifier.use_vertex_groups = True
    modifier.use_deform_preserve_volume = False


def _add_key(mesh_obj, name: str, coords: np.ndarray, value: float, limit: float):
    key = mesh_obj.shape_key_add(name=name, from_mix=False)
    key.data.foreach_set("co", coords.astype(np.float32).ravel())
    key.slider_min = -limit
    key.slider_max = limit
    key.value = value
    return key


def _slider_limit(value: float) -> float:
    return float(min(10.0, max(3.0, math.ceil(abs(value)))))


def _add_shape_keys(mesh_obj, armature_obj, flame, neutral: np.ndarray, fit) -> None:
    mesh_obj.shape_key_add(name="Basis", from_mix=False)
    expression = np.asarray(fit.expression, dtype=np.float64).reshape(-1)
    exprdirs = np.asarray(flame.exprdirs, dtype=np.float64)
    for k in range(min(exprdirs.shape[2], expression.shape[0])):
        value = float(expression[k])
        _add_key(mesh_obj, EXPRESSION_KEY.format(k), neutral + exprdirs[:, :, k], value, _slider_limit(value))
    if flame.eyelids is not None:
        eyelid_values = np.asarray(fit.eyelids, dtype=np.float64).reshape(-1)
        for side, key_name in enumerate(EYELID_KEYS):
            value = float(eyelid_values[side])
            offsets = np.asarray(flame.eyelids[side], dtype=np.float64)
            _add_key(mesh_obj, key_name, neutral + offsets, value, _slider_limit(value))
    posedirs = np.asarray(flame.posedirs, dtype=np.float64)
    rotations = joint_rotations(fit)
    for joint in range(1, len(BONE_NAMES)):
        bone_name = BONE_NAMES[joint]
        offset = rotations[joint - 1] - np.eye(3)
        for row in range(3):
            for col in range(3):
                index = 9 * (joint - 1) + 3 * row + col
                key = _add_key(
                    mesh_obj, CORRECTIVE_KEY.format(bone_name, row, col), neutral + posedirs[:, :, index],
                    float(offset[row, col]), 2.0,
                )
                _add_corrective_driver(key, armature_obj, bone_name, row, col)


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


def _pose_bones(armature_obj, fit) -> None:
    for joint, rotation in enumerate(joint_rotations(fit), start=1):
        pose_bone = armature_obj.pose.bones[BONE_NAMES[joint]]
        pose_bone.rotation_quaternion = Matrix(rotation.tolist()).to_quaternion()


def _texture_image(name: str, texture: np.ndarray) -> bpy.types.Image:
    texture = np.asarray(texture, dtype=np.float32)
    height, width = texture.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=False)
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[:, :, :3] = np.clip(texture[::-1, :, :3], 0.0, 1.0)  # Blender stores rows bottom-up
    image.pixels.foreach_set(rgba.ravel())
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


def _build_camera(context, collection, name: str, fit, photo: bpy.types.Image | None) -> bpy.types.Object:
    settings = camera_settings(fit)
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = settings["sensor_width"]
    data.lens = settings["lens"]
    data.shift_x = settings["shift_x"]
    data.shift_y = settings["shift_y"]
    data.clip_start = 0.01
    data.clip_end = 100.0
    if photo is not None:
        background = data.background_images.new()
        background.image = photo
        background.alpha = 0.6
        data.show_background_images = True
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = FLAME_TO_BLENDER @ Matrix.Translation((0.0, 0.0, 1.0))
    collection.objects.link(obj)
    render = context.scene.render
    render.resolution_x, render.resolution_y = settings["resolution"]
    render.resolution_percentage = 100
    render.pixel_aspect_x = 1.0
    render.pixel_aspect_y = 1.0
    if context.scene.camera is None:
        context.scene.camera = obj
    return obj


def photo_name(path: str | Path) -> str:
    """A collection name for a photo path: its file stem, or "Face" for an empty path."""
    stem = Path(str(path)).stem
    return stem or "Face"
