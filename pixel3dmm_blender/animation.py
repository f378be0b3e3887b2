"""Animation and FLAME parameters: Live Link Face takes and FLAME parameter files, in and out. Main thread only.

Import a take (``pixel3dmm.import_livelink``): the core reads the CSV and turns it into the head's motion
(``core.animation``); here it becomes two new actions, one keyframe per row: the 51 ARKit key values on the
mesh's shape keys, the head's rotation on the neck bone and, on the eye bones, the part of each eye's rotation
that the eye-look keys do not already show (their gaze is baked into them, so the eyes turn once). A take states
the whole face from neutral, so ``fitted_expression`` is keyed to 0 and the jaw bone to rest at the first frame.
Rows start at the scene's start frame; the scene takes the take's frame rate and ends at its last row.

Export a take (``pixel3dmm.export_livelink``): one row per frame from the first to the last keyframe of the ARKit
keys, at the scene's frame rate; values are the curves' (or the keys' and bones' own where they have none),
written back through the same rules. A take imported and exported again gives its rows back (frames the app
dropped are filled in by the curves).

FLAME parameters out (``pixel3dmm.export_flame_params``): what the head shows at the current frame, in FLAME's
terms (``core.rig.shown_parameters``): every key's FLAME coefficients times its value, the bones' rotations
after the rotations the jaw and eye-look keys stand for, the root bone and the armature object's transform as the
head pose, the fit's camera. The FLAME model of the preferences places the root joint.

FLAME parameters in (``pixel3dmm.import_flame_params``): the head is rebuilt from the preferences' FLAME model
with the file's parameters (its camera, else the head's) and takes the old head's place, material and photo
(``scene.replace_head``); animation is not carried over.

Every operator reports one sentence and cancels when it fails, and then the scene is as it was.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import bridge, operators, preferences, scene

log = logging.getLogger(__name__)

TAKE_START = "pixel3dmm_take_start"
"""Custom property of an imported take's shape-key action: the take's first row's time, seconds since midnight."""
TAKE_FRAME = "pixel3dmm_take_frame"
"""Custom property of an imported take's shape-key action: the frame that first row went to."""
_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_BONES = list(scene.BONE_NAMES.values())  # in the rig's joint order
QUATERNION = 'pose.bones["{}"].rotation_quaternion'
"""F-curve data path of a pose bone's quaternion (on the armature object), by bone name."""
KEY_VALUE = 'key_blocks["{}"].value'
"""F-curve data path of a shape key's value (on the mesh's shape keys), by key name."""


class AnimationError(Exception):
    """The head cannot take or give this animation; the message is one sentence for the user."""


def head_with_record(context) -> tuple[bpy.types.Object, bpy.types.Object, dict]:
    """The head to work on: its mesh, its armature and its record (the core's ``head_record``)."""
    mesh = operators.find_head(context)
    if mesh is None:
        raise AnimationError("There is no Pixel3DMM head; reconstruct a face first.")
    armature = next((m.object for m in mesh.modifiers if m.type == "ARMATURE" and m.object is not None), None)
    record = mesh.get(scene.RECORD)
    if armature is None or record is None or mesh.data.shape_keys is None:
        raise AnimationError(
            f"The head '{mesh.name}' lacks its rig or FLAME record; reconstruct it again with this version of the "
            "add-on."
        )
    return mesh, armature, record.to_dict()


def _arkit_names(mesh, record) -> list[str]:
    if not record["arkit"]:
        raise AnimationError(
            f"The head '{mesh.name}' has no ARKit keys (it was built without a MediaPipe landmark embedding); "
            "rebuild it with an embedding to animate it with takes."
        )
    names = list(bridge.arkit_names())
    missing = [n for n in names if n not in mesh.data.shape_keys.key_blocks]
    if missing:
        raise AnimationError(f"The head '{mesh.name}' lacks the ARKit key '{missing[0]}'; rebuild the head.")
    return names


def new_fcurve(action: bpy.types.Action, datablock: bpy.types.ID, data_path: str, index: int, group: str):
    """A new F-curve of ``action`` for ``datablock`` (the action already assigned to it)."""
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions with slots
        return action.fcurve_ensure_for_datablock(datablock, data_path, index=index, group_name=group)
    return action.fcurves.new(data_path, index=index, action_group=group)


def fcurves(datablock: bpy.types.ID) -> dict[tuple[str, int], bpy.types.FCurve]:
    """The F-curves animating ``datablock`` by (data path, index); empty without an action."""
    animation = datablock.animation_data
    if animation is None or animation.action is None:
        return {}
    if hasattr(animation, "action_slot"):  # Blender 4.4+: the channels of the assigned slot
        from bpy_extras import anim_utils

        channelbag = anim_utils.animdata_get_channelbag_for_assigned_slot(animation)
        curves = () if channelbag is None else channelbag.fcurves
    else:
        curves = animation.action.fcurves
    return {(fc.data_path, fc.array_index): fc for fc in curves}


def keyframes(action, datablock, data_path: str, index: int, frames: np.ndarray, values, group: str) -> None:
    """One linear keyframe per frame of ``frames`` with ``values``, written in bulk into a new F-curve of
    ``action`` (already assigned to ``datablock``)."""
    curve = new_fcurve(action, datablock, data_path, index, group)
    points = curve.keyframe_points
    points.add(len(frames))
    co = np.empty(2 * len(frames), dtype=np.float32)
    co[0::2] = frames
    co[1::2] = values
    points.foreach_set("co", co)
    points.foreach_set("interpolation", np.full(len(frames), _LINEAR, dtype=np.int32))
    curve.update()


def apply_take(context, mesh, armature, take: bridge.TakeMotion) -> None:
    """Key ``take`` onto the head (see the module docstring) and set the scene's frame rate and range."""
    blender_scene = context.scene
    keys = mesh.data.shape_keys
    first = blender_scene.frame_start
    frames = first + take.motion.frames.astype(np.float64)
    before = [(block, block.animation_data.action if block.animation_data else None, block.animation_data is None)
              for block in (keys, armature)]
    made = []
    try:
        actions = []
        for block, name in ((keys, f"{mesh.name} take"), (armature, f"{armature.name} take")):
            action = bpy.data.actions.new(name)
            made.append(action)
            (block.animation_data or block.animation_data_create()).action = action
            actions.append(action)
        key_action, bone_action = actions
        for column, name in enumerate(take.names):
            keyframes(key_action, keys, KEY_VALUE.format(name), 0, frames, take.motion.weights[:, column], "ARKit")
        keyframes(key_action, keys, KEY_VALUE.format("fitted_expression"), 0, frames[:1], [0.0], "FLAME")
        rotations = {"neck": take.motion.neck, "left_eye": take.motion.eyes[:, 0],
                     "right_eye": take.motion.eyes[:, 1]}
        for joint, quaternions in rotations.items():
            bone = scene.BONE_NAMES[joint]
            for c in range(4):
                keyframes(bone_action, armature, QUATERNION.format(bone), c, frames, quaternions[:, c], bone)
        for c, value in enumerate((1.0, 0.0, 0.0, 0.0)):
            keyframes(bone_action, armature, QUATERNION.format(scene.BONE_NAMES["jaw"]), c, frames[:1], [value],
                       scene.BONE_NAMES["jaw"])
        key_action[TAKE_START] = take.start
        key_action[TAKE_FRAME] = first
    except BaseException:
        for block, action, had_none in before:
            if had_none:
                block.animation_data_clear()
            else:
                block.animation_data.action = action
        bpy.data.batch_remove(made)
        raise
    rate = max(1, round(take.fps))
    blender_scene.render.fps = rate
    blender_scene.render.fps_base = rate / take.fps
    blender_scene.frame_end = int(frames[-1])
    blender_scene.frame_set(first)


def _sampled(curve, frames: np.ndarray, constant: float) -> np.ndarray:
    if curve is None:
        return np.full(len(frames), constant)
    return np.array([curve.evaluate(f) for f in frames.tolist()])


def read_take(context, mesh, armature, names: list[str]) -> tuple[np.ndarray, ...]:
    """The head's motion, one row per frame from the first to the last ARKit keyframe: frames (T,), weights
    (T, K) in ``names`` order, neck (T, 4) and eyes (T, 2, 4) bone quaternions, and the first frame's time."""
    keys = mesh.data.shape_keys
    key_curves = fcurves(keys)
    curves = {n: key_curves.get((KEY_VALUE.format(n), 0)) for n in names}
    animated = [c for c in curves.values() if c is not None and len(c.keyframe_points)]
    if not animated:
        raise AnimationError(
            f"The head '{mesh.name}' has no ARKit animation; import a take or keyframe its ARKit sliders first."
        )
    first = math.floor(min(c.range()[0] for c in animated))
    frames = np.arange(first, math.ceil(max(c.range()[1] for c in animated)) + 1)
    weights = np.stack([_sampled(curves[n], frames, keys.key_blocks[n].value) for n in names], 1)
    bone_curves = fcurves(armature)

    def quaternions(joint: str) -> np.ndarray:
        bone = scene.BONE_NAMES[joint]
        current = armature.pose.bones[bone].rotation_quaternion
        return np.stack([_sampled(bone_curves.get((QUATERNION.format(bone), c)), frames, current[c])
                         for c in range(4)], 1)

    fps = context.scene.render.fps / context.scene.render.fps_base
    action = keys.animation_data.action
    start = float(action.get(TAKE_START, 0.0)) + (first - float(action.get(TAKE_FRAME, first))) / fps
    eyes = np.stack((quaternions("left_eye"), quaternions("right_eye")), 1)
    return frames, np.clip(weights, 0.0, 1.0), quaternions("neck"), eyes, start


def shown_state(mesh, armature) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """What the head shows now: key values by name, local bone rotations (J, 3, 3) in joint order, the head pose
    (4, 4) taking FLAME's canonical frame (armature space) to FLAME's world, and the rest joints (J, 3)."""
    values = {key.name: key.value for key in mesh.data.shape_keys.key_blocks}
    rotations = np.array([armature.pose.bones[b].rotation_quaternion.normalized().to_matrix() for b in _BONES])
    head_pose = np.array(scene.FLAME_TO_BLENDER.inverted() @ armature.matrix_world)
    joints = np.array([armature.data.bones[b].head_local for b in _BONES])
    return values, rotations, head_pose, joints


def _assets(context) -> tuple[dict[str, str], str | None]:
    return preferences.asset_paths(preferences.get_preferences(context)), preferences.cache_dir()


class _HeadOperator:
    """Shared by the operators below: poll for a head in object mode; run ``act`` and report one sentence."""

    bl_options = {"REGISTER", "UNDO"}
    doing = ""

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and operators.find_head(context) is not None

    def execute(self, context):
        try:
            message = self.act(context)
        except AnimationError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:
            if not bridge.is_user_error(exc):
                log.error("%s failed", self.doing, exc_info=exc)
            self.report({"ERROR"}, bridge.error_message(exc, self.doing))
            return {"CANCELLED"}
        for level, sentence in message:
            self.report({level}, sentence)
        return {"FINISHED"}


class P3DMM_OT_import_livelink(_HeadOperator, bpy.types.Operator, ImportHelper):
    bl_idname = "pixel3dmm.import_livelink"
    bl_label = "Import Live Link Take"
    bl_description = ("Key a Live Link Face CSV take onto the head: ARKit keys, neck and eyes, one frame per row, "
                      "at the take's frame rate")
    doing = "Importing the take"
    filename_ext = ".csv"
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN"})

    def act(self, context):
        mesh, armature, record = head_with_record(context)
        _arkit_names(mesh, record)
        take = bridge.read_take_motion(bpy.path.abspath(self.filepath), record)
        apply_take(context, mesh, armature, take)
        rows = len(take.motion.frames)
        return [("INFO", f"Keyed {rows} rows at {take.fps:g} fps from {Path(take.source).name} onto "
                         f"'{mesh.name}'.")]


class P3DMM_OT_export_livelink(_HeadOperator, bpy.types.Operator, ExportHelper):
    bl_idname = "pixel3dmm.export_livelink"
    bl_label = "Export Live Link Take"
    bl_description = ("Write the head's ARKit curves, head and eye rotations as a Live Link Face CSV take, one row "
                      "per frame")
    bl_options = {"REGISTER"}
    doing = "Exporting the take"
    filename_ext = ".csv"
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN"})

    def act(self, context):
        mesh, armature, record = head_with_record(context)
        names = _arkit_names(mesh, record)
        frames, weights, neck, eyes, start = read_take(context, mesh, armature, names)
        path = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), ".csv")
        fps = context.scene.render.fps / context.scene.render.fps_base
        bridge.write_take_motion(path, record, frames - frames[0], weights, neck, eyes, fps, start)
        return [("INFO", f"Wrote {len(frames)} rows at {fps:g} fps to {path}.")]


class P3DMM_OT_export_flame_params(_HeadOperator, bpy.types.Operator, ExportHelper):
    bl_idname = "pixel3dmm.export_flame_params"
    bl_label = "Export FLAME Parameters"
    bl_description = ("Write the FLAME parameters the head shows at this frame (shape, expression, jaw, neck, eyes, "
                      "eyelids, head pose, camera) as .npz, or .json when the name ends so")
    bl_options = {"REGISTER"}
    doing = "Exporting the FLAME parameters"
    filename_ext = ".npz"
    check_extension = None  # keep .json when typed
    filter_glob: StringProperty(default="*.npz;*.json", options={"HIDDEN"})

    def act(self, context):
        mesh, armature, record = head_with_record(context)
        path = bpy.path.abspath(self.filepath)
        if Path(path).suffix.lower() not in (".npz", ".json"):
            path += ".npz"
        assets, cache_dir = _assets(context)
        written = bridge.save_shown_parameters(path, record, *shown_state(mesh, armature), assets, cache_dir)
        return [("INFO", f"Wrote the FLAME parameters of '{mesh.name}' to {written}.")]


class P3DMM_OT_import_flame_params(_HeadOperator, bpy.types.Operator, ImportHelper):
    bl_idname = "pixel3dmm.import_flame_params"
    bl_label = "Import FLAME Parameters"
    bl_description = ("Rebuild the head from a FLAME parameter file (.npz or .json, from Pixel3DMM or another FLAME "
                      "tool), keeping its texture and photo")
    doing = "Importing the FLAME parameters"
    filter_glob: StringProperty(default="*.npz;*.json", options={"HIDDEN"})

    def act(self, context):
        mesh, armature, record = head_with_record(context)
        assets, cache_dir = _assets(context)
        path = bpy.path.abspath(self.filepath)
        rig, warnings = bridge.rig_from_parameter_file(path, record, assets, cache_dir)
        head = scene.replace_head(context, mesh, armature, rig)
        context.scene.p3dmm.head = head.mesh
        return [("WARNING", w) for w in warnings] + [
            ("INFO", f"Rebuilt '{head.mesh.name}' from {Path(path).name}.")]


CLASSES = (
    P3DMM_OT_import_livelink,
    P3DMM_OT_export_livelink,
    P3DMM_OT_import_flame_params,
    P3DMM_OT_export_flame_params,
)
