"""Track Video: a clip, a folder of frames or several photos of one person to one head keyed on every tracked frame.

The core's tracker (``core.track``, reached through :func:`bridge.run_tracking`) fits one identity and per-frame
motion. Here, on the main thread, the head is built exactly as for a photo (:func:`scene.build_head`, from the
rig of the first tracked frame) and two new actions key it on every tracked frame, linear in between (a frame
stride leaves the frames between tracked ones to the interpolation):

* shape keys: the ARKit keys carry as much of each frame's expression as they can show (``core.animation.
  arkit_split``: bounded least squares on the mesh; the jaw and eye-look keys stay 0, the bones carry those
  rotations), so the take plays in any ARKit-driven engine and exports as a Live Link Face take; FLAME's
  ``expression_NNN`` keys and ``eyelid.L`` / ``eyelid.R`` carry the rest (all of it on a head without ARKit keys),
  so that together they show the tracked mesh; ``fitted_expression`` (the first frame's expression as one key) is
  keyed to 0. A key
  whose tracked values leave its slider range gets a wider range (up to Blender's limit of 10), so the keyed
  values are shown as they are;
* the armature: the neck, jaw and eye bones carry each frame's joint rotations, and the armature object each
  frame's head pose (its world matrix is ``FLAME_TO_BLENDER @ [R | t]``, keyed as location and quaternion
  rotation). Quaternions are sign-continuous from frame to frame.

Tracked frame ``i`` goes to the scene's start frame plus ``frames[i]`` (its frame number in the clip or folder)
or plus ``i`` for photos. A clip sets the scene's frame rate; the frame range ends at the last tracked frame. The
camera (the first tracked frame's) shows the source behind the head: a clip as a movie clip background, a
folder of consecutively numbered frames as an image sequence (otherwise its first tracked frame), photos as the
first tracked photo (packed into the .blend, like a photo's). Movie clips and image sequences stay files beside
the .blend's references.

The operator runs the tracker on the worker thread like Reconstruct Face (:class:`operators.BackgroundRun`:
progress in the status bar and the panel, Esc or the panel's cancel button stops it and leaves the scene as it
was) or synchronously from scripts and ``blender -b``; the headless runner calls :func:`prepare_request`,
:func:`bridge.run_tracking` and :func:`build_track` itself.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, StringProperty

from . import animation, bridge, jobs, operators, preferences, props, scene

DOING = "Tracking"
SLIDER_LIMIT = 10.0
"""Blender's bound on a shape key's slider range."""
_MADE = ("collections", "objects", "meshes", "armatures", "cameras", "materials", "images", "actions", "movieclips")
_JOINT_POSES = (("neck", "neck_pose"), ("jaw", "jaw_pose"), ("left_eye", "eye_pose_left"),
                ("right_eye", "eye_pose_right"))
_NUMBERED = re.compile(r"(.*?)(\d+)(\.[^.]+)")


@dataclass(frozen=True)
class TrackSource:
    """What to track, resolved on the main thread: ``data`` for the core (a clip or folder path, or the photos'
    paths), the chosen ``paths`` (absolute) and the name of the new collection."""

    data: object
    paths: tuple[str, ...]
    name: str


def resolve_source(paths: list[str]) -> TrackSource:
    """The clip, folder or photos the user chose (several paths: photos of one person), or
    :class:`operators.InputError`. The core checks what the files hold."""
    paths = [os.path.abspath(p) for p in paths if p]
    if not paths:
        raise operators.InputError("No clip is chosen; choose a video file, a folder of frames or several photos of "
                                   "one person.")
    missing = next((p for p in paths if not os.path.exists(p)), None)
    if missing is not None:
        raise operators.InputError(f"'{missing}' does not exist; choose a video file, a folder of frames or several "
                                   "photos of one person.")
    data = paths if len(paths) > 1 else paths[0]
    return TrackSource(data, tuple(paths), scene.photo_name(paths[0]))


def prepare_request(context, source: TrackSource, *, stride: int, quality: str, mode: str) -> bridge.TrackRequest:
    """The tracking request from the panel's texture size, the preferences and the operator's options."""
    prefs = preferences.get_preferences(context)
    return bridge.TrackRequest(
        source=source.data,
        assets=preferences.asset_paths(prefs),
        quality=quality,
        device=prefs.device,
        texture_size=int(context.scene.p3dmm.texture_size),
        cache_dir=preferences.cache_dir(),
        stride=stride,
        mode=mode,
    )


def frame_offsets(track) -> np.ndarray:
    """(T,) frame of each tracked frame counted from the scene's start: its clip or folder frame number, or its
    place among the tracked photos."""
    return np.arange(len(track)) if track.kind == "photos" else np.asarray(track.frames, dtype=np.int64)


def build_track(context, source: TrackSource, result: bridge.TrackingResult) -> operators.Outcome:
    """Build the tracked head into the scene, keyed on every tracked frame, and say what was done (main thread).
    If anything fails, every datablock made here is removed again and the scene's render size, frame rate and
    range are as they were."""
    track = result.clip.track
    reports = [("WARNING", message) for message in result.clip.messages]
    before = {kind: set(getattr(bpy.data, kind)) for kind in _MADE}
    render = context.scene.render
    size = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    try:
        head, notes = _build(context, source, result)
    except Exception as exc:
        bpy.data.batch_remove([block for kind in _MADE for block in getattr(bpy.data, kind)
                               if block not in before[kind]])
        render.resolution_x, render.resolution_y, render.resolution_percentage = size
        return operators.failure(exc, DOING)
    context.scene.p3dmm.head = head.mesh
    first = context.scene.frame_start
    offsets = frame_offsets(track)
    reports += [("WARNING", note) for note in notes]
    reports.append(("INFO", f"Built the head '{head.mesh.name}' in the collection '{head.collection.name}', keyed "
                            f"on {len(track)} tracked frames ({first + offsets[0]} to {first + offsets[-1]})."))
    reports += [("WARNING", message) for message in result.warnings]
    return operators.Outcome({"FINISHED"}, reports)


def _build(context, source: TrackSource, result: bridge.TrackingResult):
    track = result.clip.track
    blender_scene = context.scene
    first = blender_scene.frame_start
    offsets = frame_offsets(track)
    notes = []
    photo = movie = None
    sequence = None
    if track.kind == "video":
        movie = _load_movie(source.paths[0])
        if movie is None:
            notes.append("Blender cannot read this clip, so the camera has no background; convert it to MP4 (H.264) "
                         "to see the overlay.")
    elif track.kind == "frames":
        frames = bridge.frame_files(source.paths[0])
        number = _first_number(frames)
        if number is None:
            notes.append(f"The frames in {source.paths[0]} are not numbered consecutively, so the camera shows the "
                         "first tracked frame only; name them frame_0001.png, frame_0002.png, ... to see them all.")
            photo = operators.load_photo(frames[int(track.frames[0])])
        else:
            photo = bpy.data.images.load(frames[0], check_existing=False)
            if tuple(photo.size) == (0, 0):  # unreadable: Blender keeps an empty image
                bpy.data.images.remove(photo)
                photo = None
            else:
                photo.source = "SEQUENCE"
                sequence = (len(frames), number)
    else:
        photo = operators.load_photo(source.paths[int(track.frames[0])])
    if track.kind != "video" and photo is None:
        notes.append(operators.UNREADABLE_PHOTO)
    head = scene.build_head(context, result.rig, name=source.name, texture=result.texture, photo=photo)
    if movie is not None:
        movie.frame_start = first  # the clip's frame 0 at the scene's start frame
        background = head.camera.data.background_images.new()
        background.source = "MOVIE_CLIP"
        background.clip = movie
        background.use_camera_clip = False
        background.alpha = 0.6
        head.camera.data.show_background_images = True
    if sequence is not None:
        user = head.camera.data.background_images[0].image_user
        user.frame_start = first  # Blender shows file number frame - frame_start + 1 + frame_offset
        user.frame_duration, user.frame_offset = sequence[0], sequence[1] - 1
        user.use_auto_refresh = True
    key_track(head, result.rig, track, first + offsets)
    if track.fps > 0:
        rate = max(1, round(track.fps))
        blender_scene.render.fps = rate
        blender_scene.render.fps_base = rate / track.fps
    blender_scene.frame_end = int(first + offsets[-1])
    blender_scene.frame_set(first)
    return head, notes


def _load_movie(path: str) -> bpy.types.MovieClip | None:
    """The clip as a movie clip datablock (the one already loaded from this file, if any), or None when Blender
    cannot decode it."""
    clips_before = set(bpy.data.movieclips)
    clip = bpy.data.movieclips.load(path, check_existing=True)
    if clip.frame_duration == 0:  # Blender keeps an empty clip for files it cannot decode
        if clip not in clips_before:
            bpy.data.movieclips.remove(clip)
        return None
    return clip


def _first_number(paths: list[str]) -> int | None:
    """The number in the first frame's name when the frames are numbered consecutively with one prefix and suffix
    (``frame_0007.png``, ``frame_0008.png``, ...), as Blender's image sequences need; else None."""
    parts = [_NUMBERED.fullmatch(Path(p).name) for p in paths]
    if not all(parts) or len({(m[1], m[3]) for m in parts}) != 1:
        return None
    numbers = [int(m[2]) for m in parts]
    return numbers[0] if numbers == list(range(numbers[0], numbers[0] + len(numbers))) else None


def key_track(head: scene.HeadObjects, rig, track, frames: np.ndarray) -> None:
    """Key ``track`` onto the head at Blender ``frames`` (T,) in two new actions (see the module docstring)."""
    keys = head.mesh.data.shape_keys
    armature = head.armature
    actions = []
    for block, name in ((keys, f"{head.mesh.name} track"), (armature, f"{armature.name} track")):
        action = bpy.data.actions.new(name)
        (block.animation_data or block.animation_data_create()).action = action
        actions.append(action)
    key_action, bone_action = actions
    frames = np.asarray(frames, dtype=np.float64)
    split = bridge.arkit_split(rig, track.expression, track.eyelids)
    columns = [(key.name, split.weights[:, k]) for k, key in enumerate(rig.arkit_keys)]
    columns += [(key.name, split.expression[:, k]) for k, key in enumerate(rig.expression_keys)]
    columns += [(key.name, split.eyelids[:, k]) for k, key in enumerate(rig.eyelid_keys)]
    for name, values in columns:
        block = keys.key_blocks[name]
        block.slider_min = max(-SLIDER_LIMIT, min(block.slider_min, math.floor(float(values.min()))))
        block.slider_max = min(SLIDER_LIMIT, max(block.slider_max, math.ceil(float(values.max()))))
        animation.keyframes(key_action, keys, animation.KEY_VALUE.format(name), 0, frames, values, "FLAME")
    animation.keyframes(key_action, keys, animation.KEY_VALUE.format(rig.fitted_key.name), 0, frames[:1], [0.0],
                        "FLAME")
    for joint, field in _JOINT_POSES:
        bone = scene.BONE_NAMES[joint]
        quaternions = bridge.rotation_quaternions(bridge.axis_angle_matrices(getattr(track, field)))
        for c in range(4):
            animation.keyframes(bone_action, armature, animation.QUATERNION.format(bone), c, frames,
                                quaternions[:, c], bone)
    to_blender = np.array(scene.FLAME_TO_BLENDER.to_3x3())
    rotations = bridge.rotation_quaternions(to_blender @ np.asarray(track.head_rotation, dtype=np.float64))
    locations = np.asarray(track.head_translation, dtype=np.float64) @ to_blender.T
    armature.rotation_mode = "QUATERNION"
    for c in range(3):
        animation.keyframes(bone_action, armature, "location", c, frames, locations[:, c], "Object Transforms")
    for c in range(4):
        animation.keyframes(bone_action, armature, "rotation_quaternion", c, frames, rotations[:, c],
                            "Object Transforms")


class TrackingRun(operators.BackgroundRun):
    """One track on the worker thread (see :class:`operators.BackgroundRun`)."""

    def __init__(self, context, request: bridge.TrackRequest, source: TrackSource):
        super().__init__(
            context,
            lambda on_progress, should_cancel: bridge.run_tracking(request, on_progress, should_cancel),
            lambda context_, result: build_track(context_, source, result),
            DOING,
        )


class P3DMM_OT_track_video(operators.BackgroundOperator, bpy.types.Operator):
    bl_idname = "pixel3dmm.track_video"
    bl_label = "Track Video"
    bl_description = ("Track a video, a folder of frames or several photos of one person: one head, its expression, "
                      "jaw, eyes and head pose keyed on every tracked frame, the clip behind the camera")
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Clip", description="A video file, or a folder of frames", subtype="FILE_PATH")
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    filter_movie: BoolProperty(default=True, options={"HIDDEN"})
    filter_image: BoolProperty(default=True, options={"HIDDEN"})
    stride: IntProperty(name="Stride", description="Track every n-th frame of the clip; the frames between are "
                        "interpolated", min=1, soft_max=10, default=1)
    quality: EnumProperty(name="Quality", description="Fitting preset", items=props.QUALITY_ITEMS, default="fast")
    mode: EnumProperty(name="Fit To", description="What the head is fitted to", items=props.MODE_ITEMS,
                       default="auto")
    threaded: BoolProperty(options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and jobs.active_job() is None

    def invoke(self, context, event):
        self.threaded = True  # the file browser's OK calls execute, which then starts the worker
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def _paths(self) -> list[str]:
        names = [f.name for f in self.files if f.name]
        if len(names) > 1:
            return [os.path.join(bpy.path.abspath(self.directory), name) for name in names]
        return [bpy.path.abspath(self.filepath or self.directory)]

    def execute(self, context):
        try:
            source = resolve_source(self._paths())
        except operators.InputError as exc:
            return self._end(operators.Outcome({"CANCELLED"}, [("ERROR", str(exc))]))
        request = prepare_request(context, source, stride=self.stride, quality=self.quality, mode=self.mode)
        if self.threaded:
            return self._start(context, TrackingRun(context, request, source))
        wm = context.window_manager
        wm.progress_begin(0, 100)
        try:
            result = bridge.run_tracking(
                request, on_progress=lambda _stage, fraction: wm.progress_update(int(100 * fraction)))
        except Exception as exc:
            return self._end(operators.failure(exc, DOING))
        finally:
            wm.progress_end()
        return self._end(build_track(context, source, result))


CLASSES = (P3DMM_OT_track_video,)
