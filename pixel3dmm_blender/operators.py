"""Operators: reconstruct a face from a photo (modal with a worker thread, or synchronous), cancel it, export.

``invoke`` (the button) runs the core on a worker thread and drains its events from a modal timer on the main
thread; ``execute`` (scripts, ``blender -b``, tests) runs the same bridge call synchronously. Either way the
scene is only touched at the end, on the main thread, so a cancelled or failed run leaves it as it was, and a
successful one is a single undo step. :class:`BackgroundRun` and :class:`BackgroundOperator` are that machinery;
the Track Video operator (:mod:`.tracking`) uses them too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from . import bridge, export, jobs, preferences, scene

log = logging.getLogger(__name__)


class InputError(Exception):
    """The photo source is unusable; the message is one sentence for the user."""


@dataclass
class PhotoSource:
    """The photo, resolved on the main thread: ``data`` for the core (a path, or the core's ``Photo`` of an image
    datablock), an image datablock or a file for the camera background, and the name for the new collection."""

    data: object
    image: bpy.types.Image | None
    path: str | None
    name: str


def editor_image(context: bpy.types.Context) -> bpy.types.Image | None:
    """The image shown in an Image Editor: this window's first, else any window's."""
    screens = [context.screen] if context.screen is not None else []
    screens += [window.screen for window in context.window_manager.windows if window.screen not in screens]
    for screen in screens:
        for area in screen.areas:
            if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
                return area.spaces.active.image
    return None


def image_photo(image: bpy.types.Image):
    """An image datablock's pixels as the core's ``Photo`` (sRGB, row 0 at the top; see
    :func:`bridge.photo_from_pixels`), or :class:`InputError` for an image without pixels."""
    width, height = image.size
    if width == 0 or height == 0:
        raise InputError(f"The image '{image.name}' has no pixels; reload it or pick another image.")
    buffer = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(buffer)
    # float buffers hold scene-linear values; byte buffers hold the image's sRGB values
    return bridge.photo_from_pixels(buffer, width, height, linear=image.is_float, name=image.name)


def _from_image(image: bpy.types.Image) -> PhotoSource:
    path = bpy.path.abspath(image.filepath, library=image.library) if image.filepath else ""
    on_disk = image.source == "FILE" and image.packed_file is None and not image.is_dirty and os.path.isfile(path)
    data = path if on_disk else image_photo(image)
    return PhotoSource(data, image, None, scene.photo_name(image.name))


def resolve_source(context: bpy.types.Context, settings) -> PhotoSource:
    """The photo chosen in the panel, or :class:`InputError`."""
    if settings.image_source == "EDITOR":
        image = editor_image(context)
        if image is None:
            raise InputError("No Image Editor shows an image; open the photo in an Image Editor or pick a source.")
        return _from_image(image)
    if settings.image_source == "IMAGE":
        if settings.image is None:
            raise InputError("No image is selected; pick the photo in the Image field.")
        return _from_image(settings.image)
    if not settings.filepath:
        raise InputError("No photo file is chosen; pick one in the Photo field.")
    path = bpy.path.abspath(settings.filepath)
    if not os.path.isfile(path):
        raise InputError(f"The photo file '{settings.filepath}' does not exist; choose an existing image file.")
    return PhotoSource(path, None, path, scene.photo_name(path))


def find_head(context: bpy.types.Context) -> bpy.types.Object | None:
    """The head to export: the active head mesh (or the head under the active armature), else the last built."""
    active = context.view_layer.objects.active
    if active is not None:
        if active.get(scene.HEAD_TAG):
            return active
        if active.type == "ARMATURE":
            for child in active.children:
                if child.get(scene.HEAD_TAG):
                    return child
    head = context.scene.p3dmm.head
    if head is not None and context.view_layer.objects.get(head.name) is not None:
        return head
    return None


def _tag_redraw(context) -> None:
    if context.screen is None:
        return
    for area in context.screen.areas:
        if area.type == "VIEW_3D":
            area.tag_redraw()


@dataclass
class Outcome:
    """How an operator ends: its return set and the (level, sentence) reports to show."""

    status: set[str]
    reports: list[tuple[str, str]]


def cancelled_message(doing: str) -> str:
    """What a cancelled run reports; ``doing`` is a noun such as "Reconstruction"."""
    return f"{doing} cancelled; the scene was not changed."


UNREADABLE_PHOTO = ("Blender cannot read this photo format, so the camera has no background image; convert the photo "
                    "to PNG or JPEG to see the overlay.")


def load_photo(path: str) -> bpy.types.Image | None:
    """A photo file as an image datablock packed into the .blend, like the baked texture: the scene keeps its
    camera background when the .blend is moved or the photo file is gone (*File › External Data › Unpack
    Resources* writes it back out beside the .blend). None when Blender cannot read the file."""
    images_before = set(bpy.data.images)
    photo = bpy.data.images.load(path, check_existing=True)
    if tuple(photo.size) == (0, 0):  # Blender loads lazily and keeps an empty image for unreadable files
        if photo not in images_before:
            bpy.data.images.remove(photo)
        return None
    if photo not in images_before:
        photo.pack()
        photo.filepath_raw = "//" + Path(path).name  # where unpacking puts it, not the original folder
    return photo


def build_result(context, source: PhotoSource, result: bridge.ReconstructionResult) -> Outcome:
    """Build the reconstructed head into the scene (main thread) and say what was done.

    The core's messages (stand-in assets, several faces in the photo) become warnings. A photo file is loaded
    as a new image and packed into the .blend (:func:`load_photo`). An image datablock the user chose is left
    as it is.
    """
    reports = [("WARNING", message) for message in result.reconstruction.messages]
    photo = source.image
    images_before = set(bpy.data.images)
    if photo is None:
        photo = load_photo(source.path)
        if photo is None:
            reports.append(("WARNING", UNREADABLE_PHOTO))
    try:
        head = scene.build_head(context, result.rig, name=source.name, texture=result.texture, photo=photo)
    except Exception as exc:
        if photo is not None and photo not in images_before:
            bpy.data.images.remove(photo)
        return failure(exc)
    context.scene.p3dmm.head = head.mesh
    reports.append(("INFO", f"Built the head '{head.mesh.name}' in the collection '{head.collection.name}'."))
    reports += [("WARNING", message) for message in result.warnings]
    return Outcome({"FINISHED"}, reports)


def failure(exc: BaseException, doing: str = "Reconstruction") -> Outcome:
    """The outcome of a run (``doing``: "Reconstruction", "Tracking") that raised ``exc``; the scene is
    untouched."""
    if bridge.is_cancellation(exc):
        return Outcome({"CANCELLED"}, [("WARNING", cancelled_message(doing))])
    log.error("%s failed", doing, exc_info=exc)
    return Outcome({"CANCELLED"}, [("ERROR", bridge.error_message(exc, doing))])


def prepare_request(context) -> tuple[bridge.ReconstructionRequest, PhotoSource]:
    """The request for the worker from the panel's settings and the preferences (main thread), with the photo
    source it was made from; :class:`InputError` when the photo source is unusable."""
    settings = context.scene.p3dmm
    source = resolve_source(context, settings)
    prefs = preferences.get_preferences(context)
    request = bridge.ReconstructionRequest(
        source=source.data,
        assets=preferences.asset_paths(prefs),
        quality=settings.quality,
        device=prefs.device,
        texture_size=int(settings.texture_size),
        cache_dir=preferences.cache_dir(),
        face_index=settings.face_index,
        mode=settings.mode,
    )
    return request, source


class BackgroundRun:
    """One job on the worker thread, driven by :meth:`tick` on the main thread.

    ``work(on_progress, should_cancel)`` runs on the worker (it must not touch bpy); ``finish(context, result)``
    builds its result into the scene on the main thread and returns the :class:`Outcome`; ``doing`` names the job
    in its messages ("Reconstruction", "Tracking"). It shows progress in ``Scene.p3dmm`` and the status bar, and
    touches the scene only when the result arrives. :meth:`cancel` stops waiting at once; the worker stops at
    its next cancellation check.
    """

    def __init__(self, context, work: jobs.Work, finish, doing: str):
        self.finish = finish
        self.doing = doing
        self.job = jobs.start_job(work)
        self._show(context, "Starting", 0.0)

    def tick(self, context) -> Outcome | None:
        """Handle the worker's events; an :class:`Outcome` once the run is over, else None."""
        if self.job.cancelled:
            return self.cancel(context)
        for item in self.job.drain():
            if isinstance(item, jobs.Progress):
                self._show(context, item.stage, item.fraction)
            elif isinstance(item, jobs.Finished):
                self.close(context)
                return self.finish(context, item.result)
            else:
                self.close(context)
                return failure(item.error, self.doing)
        return None

    def cancel(self, context) -> Outcome:
        self.close(context)
        return Outcome({"CANCELLED"}, [("WARNING", cancelled_message(self.doing))])

    def close(self, context) -> None:
        """Stop the job (if still running) and clear the progress display."""
        self.job.cancel()
        jobs.release_job(self.job)
        if context.workspace is not None:  # Blender may cancel a modal operator while closing a window
            context.workspace.status_text_set(None)
        settings = context.scene.p3dmm
        settings.stage = ""
        settings.progress = 0.0
        _tag_redraw(context)

    def _show(self, context, stage: str, fraction: float) -> None:
        settings = context.scene.p3dmm
        settings.stage = stage
        settings.progress = fraction
        context.workspace.status_text_set(f"Pixel3DMM: {stage} {round(100 * fraction)}% (Esc to cancel)")
        _tag_redraw(context)


class ReconstructionRun(BackgroundRun):
    """One reconstruction on the worker thread (see :class:`BackgroundRun`)."""

    def __init__(self, context, request: bridge.ReconstructionRequest, source: PhotoSource):
        super().__init__(
            context,
            lambda on_progress, should_cancel: bridge.run_reconstruction(request, on_progress, should_cancel),
            lambda context_, result: build_result(context_, source, result),
            "Reconstruction",
        )


class BackgroundOperator:
    """The modal half of an operator whose work runs in a :class:`BackgroundRun`: a timer drains the worker's
    events, Esc cancels, and the run's :class:`Outcome` becomes the operator's reports and return set."""

    _run: BackgroundRun | None = None  # set when the worker starts; an operator may open a file browser first

    def _end(self, outcome: Outcome) -> set[str]:
        for level, message in outcome.reports:
            self.report({level}, message)
        return outcome.status

    def _start(self, context, run: BackgroundRun) -> set[str]:
        self._run = run
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            outcome = self._run.cancel(context)
        elif event.type == "TIMER":
            outcome = self._run.tick(context)
        else:
            return {"PASS_THROUGH"}
        if outcome is None:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        return self._end(outcome)

    def cancel(self, context):
        if self._run is None:  # Blender cancels an operator whose file browser is cancelled or closed
            return
        context.window_manager.event_timer_remove(self._timer)
        self._run.close(context)


class P3DMM_OT_reconstruct_face(BackgroundOperator, bpy.types.Operator):
    bl_idname = "pixel3dmm.reconstruct_face"
    bl_label = "Reconstruct Face"
    bl_description = "Fit a rigged FLAME head to the photo and build it with its texture and a matching camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and jobs.active_job() is None

    def execute(self, context):
        try:
            request, source = prepare_request(context)
        except InputError as exc:
            return self._end(Outcome({"CANCELLED"}, [("ERROR", str(exc))]))
        wm = context.window_manager
        wm.progress_begin(0, 100)
        try:
            result = bridge.run_reconstruction(
                request, on_progress=lambda _stage, fraction: wm.progress_update(int(100 * fraction))
            )
        except Exception as exc:
            return self._end(failure(exc))
        finally:
            wm.progress_end()
        return self._end(build_result(context, source, result))

    def invoke(self, context, event):
        try:
            request, source = prepare_request(context)
        except InputError as exc:
            return self._end(Outcome({"CANCELLED"}, [("ERROR", str(exc))]))
        return self._start(context, ReconstructionRun(context, request, source))


class P3DMM_OT_cancel_reconstruction(bpy.types.Operator):
    bl_idname = "pixel3dmm.cancel_reconstruction"
    bl_label = "Cancel"
    bl_description = "Stop the running reconstruction or tracking and leave the scene unchanged"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return jobs.active_job() is not None

    def execute(self, context):
        jobs.active_job().cancel()
        return {"FINISHED"}


class _ExportHead(ExportHelper):
    bl_options = {"REGISTER"}
    format_name = ""

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and find_head(context) is not None

    def invoke(self, context, event):
        if not self.filepath:
            folder = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path.home()
            self.filepath = str(folder / (bpy.path.clean_name(find_head(context).name) + self.filename_ext))
        return super().invoke(context, event)

    def execute(self, context):
        head = find_head(context)
        if head is None:
            self.report({"ERROR"}, "There is no Pixel3DMM head to export; reconstruct a face first.")
            return {"CANCELLED"}
        try:
            path = self.write(context, head, self.filepath)
        except export.ExportError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except RuntimeError as exc:
            self.report({"ERROR"}, f"The {self.format_name} exporter failed ({exc}); nothing was written.")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported '{head.name}' to {path}.")
        return {"FINISHED"}


class P3DMM_OT_export_glb(_ExportHead, bpy.types.Operator):
    bl_idname = "pixel3dmm.export_glb"
    bl_label = "Export GLB"
    bl_description = "Write the head and its armature as binary glTF with morph targets and skin"
    filename_ext = ".glb"
    format_name = "GLB"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def write(self, context, head, filepath):
        return export.export_glb(context, head, filepath)


class P3DMM_OT_export_fbx(_ExportHead, bpy.types.Operator):
    bl_idname = "pixel3dmm.export_fbx"
    bl_label = "Export FBX"
    bl_description = "Write the head and its armature as FBX with blend shapes and skin"
    filename_ext = ".fbx"
    format_name = "FBX"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})

    def write(self, context, head, filepath):
        return export.export_fbx(context, head, filepath)


CLASSES = (
    P3DMM_OT_reconstruct_face,
    P3DMM_OT_cancel_reconstruction,
    P3DMM_OT_export_glb,
    P3DMM_OT_export_fbx,
)
