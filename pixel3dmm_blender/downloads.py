"""Download Networks: fetch uv.ckpt and normals.ckpt from Hugging Face, convert them, point the preferences at them.

The button in the add-on preferences opens a consent dialog naming the licence (CC BY-NC 4.0) and the size
(about 3.7 GB). The download and the float16 conversion then run on a worker thread (:class:`DownloadRun`, built
on :class:`.jobs.Job`), which never touches bpy; the modal operator drains its events on the main thread, shows
the progress in the status bar and the preferences, and stops it on Esc or the Cancel button. A stopped or
interrupted download resumes where it stopped the next time. When it finishes, the preferences' network paths
are set to the converted files and a second dialog offers to delete the original checkpoints.

Blender's "Allow Online Access" setting (``bpy.app.online_access``) is honoured: with it off, nothing is fetched
and the operator says where to enable it. Background Blender (``blender -b``, tests) runs ``execute``
synchronously, since its timers and modal handlers never fire.
"""

from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from . import bridge, jobs, preferences

log = logging.getLogger(__name__)

STOPPED_MESSAGE = "The download was stopped; Download Networks resumes it where it stopped."
_WRAP = 78


def online_access() -> bool:
    """Whether Blender allows add-ons to go online (Preferences > System > Network > Allow Online Access)."""
    return bool(getattr(bpy.app, "online_access", True))


def offline_message() -> str:
    return ("Blender's online access is off, so nothing was downloaded; allow it in Preferences > System > Network, "
            f"or download the networks by hand from {bridge.download_terms()['page']}.")


def download_folder(prefs) -> str:
    """Where the networks go: the preference's folder, else the extension's user folder (or the core's default)."""
    if prefs.download_folder:
        return bpy.path.abspath(prefs.download_folder)
    if preferences.ADDON_ID.startswith("bl_ext."):
        return bpy.utils.extension_path_user(preferences.ADDON_ID, path="networks", create=True)
    return bridge.default_download_folder()


def partial_bytes(folder: str) -> int:
    """Bytes of unfinished downloads waiting in ``folder`` (they are resumed by the next download)."""
    try:
        return sum(p.stat().st_size for p in Path(folder).glob(".*.part"))
    except OSError:
        return 0


@dataclass
class Outcome:
    """How a download ends: the operator's return set, (level, sentence) reports, and the checkpoints that can now
    be deleted (empty unless it finished)."""

    status: set[str]
    reports: list[tuple[str, str]]
    originals: list[str]


def apply_result(context, folder: str, originals: dict[str, str], converted: dict[str, str]) -> Outcome:
    """Point the preferences at the converted networks (main thread) and say what was done."""
    prefs = preferences.get_preferences(context)
    for key, prop, _label in preferences.ASSET_PROPERTIES:
        if key in converted:
            setattr(prefs, prop, converted[key])
    message = (f"Downloaded and converted the networks to float16 in {folder}; the preferences now point at "
               f"{', '.join(Path(p).name for p in converted.values())}.")
    return Outcome({"FINISHED"}, [("INFO", message)], [p for p in originals.values() if os.path.isfile(p)])


def failure(exc: BaseException) -> Outcome:
    """The outcome of a download that raised ``exc``: stopped by the user, or one sentence saying what to do."""
    if bridge.is_download_cancellation(exc):
        return Outcome({"CANCELLED"}, [("WARNING", STOPPED_MESSAGE)], [])
    log.error("network download failed", exc_info=exc)
    return Outcome({"CANCELLED"}, [("ERROR", bridge.download_error_message(exc))], [])


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "STATUSBAR"):
                area.tag_redraw()


class DownloadRun:
    """One download + conversion on the worker thread, driven by :meth:`tick` on the main thread.

    Cancelling only asks the worker to stop: the run stays active (so no second download can write the same
    partial file) until the worker has stopped and :meth:`tick` returns the outcome.
    """

    def __init__(self, context, folder: str):
        global _active
        if _active is not None:
            raise RuntimeError("a network download is already running")
        self.folder = folder
        self.message, self.fraction = "Starting the download", 0.0
        self.job = jobs.Job(lambda on_progress, should_cancel: bridge.download_networks(folder, on_progress,
                                                                                         should_cancel))
        _active = self
        self.job.start()
        self._show(context, self.message, 0.0)

    @property
    def stopping(self) -> bool:
        return self.job.cancelled

    def cancel(self) -> None:
        """Ask the worker to stop at its next chunk; the partial file is kept for resuming."""
        self.job.cancel()

    def tick(self, context) -> Outcome | None:
        """Handle the worker's events; an :class:`Outcome` once the worker is done, else None."""
        for item in self.job.drain():
            if isinstance(item, jobs.Progress):
                self._show(context, item.stage, item.fraction)
            elif isinstance(item, jobs.Finished):
                self.close(context)
                originals, converted = item.result
                return apply_result(context, self.folder, originals, converted)
            else:
                self.close(context)
                return failure(item.error)
        return None

    def close(self, context) -> None:
        """Forget the run and clear the progress display."""
        global _active
        if _active is self:
            _active = None
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        _redraw(context)

    def _show(self, context, message: str, fraction: float) -> None:
        self.message, self.fraction = message, fraction
        percent = round(100 * fraction)
        if context.workspace is not None:  # the status bar, not the cursor: the user keeps working meanwhile
            what = "stopping" if self.stopping else "Esc to cancel"
            context.workspace.status_text_set(f"Pixel3DMM: {message} {percent}% ({what})")
        _redraw(context)


_active: DownloadRun | None = None


def active_download() -> DownloadRun | None:
    """The running download, if any."""
    return _active


def cancel_active() -> None:
    """Stop the running download (used when the add-on is disabled)."""
    if _active is not None:
        _active.cancel()


def _report_all(operator, outcome: Outcome) -> set[str]:
    for level, message in outcome.reports:
        operator.report({level}, message)
    return outcome.status


class P3DMM_OT_download_networks(bpy.types.Operator):
    bl_idname = "pixel3dmm.download_networks"
    bl_label = "Download Networks"
    bl_description = ("Download uv.ckpt and normals.ckpt (about 3.7 GB, CC BY-NC 4.0) from Hugging Face, convert "
                      "them to float16 and use them")
    bl_options = {"REGISTER"}

    delete_originals: BoolProperty(
        name="Delete Original Checkpoints",
        description="Delete the downloaded .ckpt files once they are converted (scripts; the dialog asks instead)",
        default=False, options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        return _active is None

    def invoke(self, context, event):
        if not online_access():
            self.report({"ERROR"}, offline_message())
            return {"CANCELLED"}
        terms = bridge.download_terms()
        return context.window_manager.invoke_props_dialog(
            self, width=520, title=f"Download the Pixel3DMM networks ({terms['size']})", confirm_text="Download")

    def draw(self, context):
        column = self.layout.column(align=True)
        for line in textwrap.wrap(bridge.download_terms()["consent"], _WRAP):
            column.label(text=line)
        column.separator()
        folder = download_folder(preferences.get_preferences(context))
        column.label(text=f"Destination: {folder}", icon="FILE_FOLDER")
        waiting = partial_bytes(folder)
        if waiting:
            column.label(text=f"A partial download ({bridge.format_bytes(waiting)}) is resumed.", icon="INFO")
        column.label(text="Progress shows in the status bar; Esc stops it, and the next download resumes.")

    def execute(self, context):
        if not online_access():
            self.report({"ERROR"}, offline_message())
            return {"CANCELLED"}
        folder = download_folder(preferences.get_preferences(context))
        if bpy.app.background or context.window is None:
            return self._run_here(context, folder)
        self._run = DownloadRun(context, folder)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _run_here(self, context, folder: str) -> set[str]:
        """Synchronous path for background Blender: same work, same outcome, no thread."""
        wm = context.window_manager
        wm.progress_begin(0, 100)
        try:
            originals, converted = bridge.download_networks(
                folder, on_progress=lambda _message, fraction: wm.progress_update(int(100 * fraction)))
        except Exception as exc:
            return _report_all(self, failure(exc))
        finally:
            wm.progress_end()
        outcome = apply_result(context, folder, originals, converted)
        if self.delete_originals and outcome.originals:
            freed = bridge.delete_files(outcome.originals)
            outcome.reports.append(("INFO", f"Deleted the original checkpoints ({bridge.format_bytes(freed)} freed)."))
        return _report_all(self, outcome)

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._run.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._run.tick(context)
        if outcome is None:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        if outcome.originals:
            bpy.ops.pixel3dmm.delete_downloaded_checkpoints("INVOKE_DEFAULT", paths=os.pathsep.join(outcome.originals))
        return _report_all(self, outcome)

    def cancel(self, context):
        context.window_manager.event_timer_remove(self._timer)
        self._run.cancel()
        self._run.close(context)


class P3DMM_OT_cancel_download(bpy.types.Operator):
    bl_idname = "pixel3dmm.cancel_download"
    bl_label = "Stop Download"
    bl_description = "Stop the network download; the next Download Networks resumes where it stopped"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return _active is not None and not _active.stopping

    def execute(self, context):
        _active.cancel()
        return {"FINISHED"}


class P3DMM_OT_delete_downloaded_checkpoints(bpy.types.Operator):
    bl_idname = "pixel3dmm.delete_downloaded_checkpoints"
    bl_label = "Delete Original Checkpoints"
    bl_description = "Delete the downloaded .ckpt files; their float16 conversions are all the add-on needs"
    bl_options = {"INTERNAL"}

    paths: StringProperty(options={"HIDDEN", "SKIP_SAVE"})

    def _files(self) -> list[str]:
        return [p for p in self.paths.split(os.pathsep) if p and os.path.isfile(p)]

    def invoke(self, context, event):
        files = self._files()
        if not files:
            return {"CANCELLED"}
        size = bridge.format_bytes(sum(os.path.getsize(p) for p in files))
        names = " and ".join(os.path.basename(p) for p in files)
        return context.window_manager.invoke_confirm(
            self, event, title="Delete the original checkpoints?",
            message=f"Delete {names} ({size})? The converted float16 files are all the add-on needs.",
            confirm_text="Delete", icon="WARNING")

    def execute(self, context):
        files = self._files()
        freed = bridge.delete_files(files)
        self.report({"INFO"}, f"Deleted {len(files)} original checkpoints ({bridge.format_bytes(freed)} freed).")
        return {"FINISHED"}


def draw_section(layout, context, prefs) -> None:
    """The preferences' Networks box: the download button (or its progress and Stop), the folder, the licence."""
    box = layout.box()
    box.label(text="Networks from Hugging Face", icon="URL")
    run = _active
    if run is not None:
        row = box.row(align=True)
        row.progress(factor=run.fraction, type="BAR",
                     text=("Stopping: " if run.stopping else "") + f"{run.message} {round(100 * run.fraction)}%")
        row.operator("pixel3dmm.cancel_download", text="", icon="CANCEL")
        return
    terms = bridge.download_terms()
    row = box.row()
    row.enabled = online_access()
    row.operator("pixel3dmm.download_networks", icon="IMPORT",
                 text=f"Download Networks ({terms['size']}, {terms['licence']})")
    if not online_access():
        for line in textwrap.wrap(offline_message(), _WRAP):
            box.label(text=line, icon="BLANK1")
    box.prop(prefs, "download_folder")
    folder = download_folder(prefs)
    waiting = partial_bytes(folder)
    if waiting:
        box.label(text=f"A partial download ({bridge.format_bytes(waiting)}) in {folder} is resumed next time.",
                  icon="INFO")


CLASSES = (P3DMM_OT_download_networks, P3DMM_OT_cancel_download, P3DMM_OT_delete_downloaded_checkpoints)
