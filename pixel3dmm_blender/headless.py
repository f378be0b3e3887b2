"""Reconstruct Face or Track Video without a window: the same work as the operators, then save and export.

From the development checkout (the project venv has the ``bpy`` module)::

    python -m pixel3dmm_blender.headless PHOTO --out DIR [--quality balanced] [--standins FOLDER]
    python -m pixel3dmm_blender.headless --demo            # what `python build.py demo` runs
    python -m pixel3dmm_blender.headless --video CLIP --out DIR [--stride N] [--quality fast] [--mode ...]
    python -m pixel3dmm_blender.headless --photos A B C --out DIR   # several photos of one person

From an installed extension, inside Blender::

    blender -b --python-expr "from bl_ext.user_default.pixel3dmm_blender import headless; \
headless.main(['PHOTO', '--out', 'DIR'])"

Assets come from the add-on preferences when they are complete, otherwise from the CLI's environment
variables / config file (see ``python -m core assets``); ``--standins`` (and ``--demo`` when nothing is
configured) uses the project-made stand-ins instead and says so. Writes ``head.blend`` (the photo packed
inside), ``head.glb``, ``head.fbx`` (with ``--fbx``) and ``preview.png`` (the head rendered through the matching
camera beside the photo). The output folder is checked before the reconstruction and the files appear only when
all of them are written; a failure or Ctrl-C leaves the folder as it was. Prints a progress display and one
sentence on a user error (exit status 2) or on Ctrl-C (130); other libraries' console messages (mediapipe,
Blender, EGL) are hidden unless ``-v`` is given.
``--livelink TAKE.csv`` keys a Live Link Face take onto the head first, so the files carry its animation.

``--video`` tracks a video file or a folder of frames (every ``--stride``-th frame), ``--photos`` several photos
of one person (one identity, a frame per photo); the head is keyed on every tracked frame (see
:mod:`.tracking`) and the run writes ``head.blend`` (the clip's background refers to the clip file), ``head.glb``
(one animation, a key per frame), ``head.fbx`` (with ``--fbx``) and the track itself, ``track.npz`` and
``track.json`` (``core.track.Track``), with the same output-folder safety, progress display and errors. The
quality preset defaults to fast for a track and balanced for a photo.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ADDON_ID = __package__
PREFIX = "[pixel3dmm] "


class UsageError(Exception):
    """The run cannot start as asked; the message is one sentence for the user."""


def _demo_photo() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def _enable_addon():
    import addon_utils
    import bpy

    if ADDON_ID not in bpy.context.preferences.addons:
        def fail(exc):
            raise exc

        # Running this module imported the package already; without its load time addon_utils takes it for
        # changed on disk, prints so and reloads it.
        package = sys.modules.get(ADDON_ID)
        if package is not None and not hasattr(package, "__time__"):
            package.__time__ = os.path.getmtime(package.__file__)
        addon_utils.enable(ADDON_ID, default_set=True, handle_error=fail)
    return bpy.context.preferences.addons[ADDON_ID].preferences


def _choose_assets(prefs, args, say) -> tuple[dict[str, str], str]:
    """Asset paths for this run and a sentence saying where they came from."""
    from . import bridge, preferences

    if args.standins:
        say(f"preparing the stand-in assets in {args.standins} (written on the first run, about 0.5 GB)")
        paths = bridge.standin_assets(args.standins)
        return paths, f"stand-in assets in {args.standins} (synthetic head, random network weights)"
    current = preferences.asset_paths(prefs)
    report = bridge.asset_report(current)
    if report.complete:
        return current, "the assets from the add-on preferences"
    if args.mode != "networks" and report["flame"].ok and report["uv_template"].ok:
        return current, "the FLAME model from the add-on preferences (no networks: the face landmarks alone)"
    configured = bridge.configured_assets()
    if configured is not None:
        return configured, "the assets from the environment / config file (python -m core assets)"
    if args.demo:
        folder = Path(bridge.default_cache_dir()) / "standins"
        paths = dict(bridge.standin_assets(folder, networks=False), uv_checkpoint="", normals_checkpoint="")
        return paths, (f"the stand-in FLAME-format head in {folder} and no networks: no real FLAME model and "
                       "checkpoints are configured, so the head is fitted to the face landmarks alone (network-free "
                       "mode) and shows the pipeline, not the method")
    raise UsageError("The FLAME model, UV template and checkpoints are not configured; set them in the add-on "
                     "preferences or see `python -m core assets`, or pass --standins FOLDER.")


def _preview(context, head_mesh, out_path: Path, photo_path: Path) -> None:
    """Render the head through its camera and write it beside the photo, composited over it, to ``out_path``.

    Blender writes the render only into a temporary folder (``save_render``, which prints nothing), so every
    file a message names is one of the results.
    """
    import bpy
    import cv2
    import numpy as np

    from . import bridge

    scene = context.scene
    scene.camera = next(o for o in head_mesh.users_collection[0].objects if o.type == "CAMERA")
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "TEXTURE"
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    bpy.ops.render.render()
    with tempfile.TemporaryDirectory(prefix="p3dmm-render-") as tmp:
        render_path = Path(tmp) / "render.png"
        bpy.data.images["Render Result"].save_render(filepath=str(render_path), scene=scene)
        render = cv2.imread(str(render_path), cv2.IMREAD_UNCHANGED)
    # Composite the render over the photo so the overlay shows how well the head matches it.
    photo = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    if photo is None or render.shape[:2] != photo.shape[:2]:
        image = render
    else:
        alpha = render[:, :, 3:4].astype(np.float32) / 255.0 * 0.85
        blended = photo.astype(np.float32) * (1.0 - alpha) + render[:, :, :3].astype(np.float32) * alpha
        image = np.concatenate([photo, np.clip(blended, 0, 255).astype(np.uint8)], axis=1)
    bridge.console().write_image(out_path, image)


def _prepare_scene(args, say) -> None:
    """An empty scene with the add-on enabled and its preferences holding this run's assets and device."""
    import bpy

    from . import preferences

    bpy.ops.wm.read_homefile(use_empty=True)  # an empty scene; the user's preferences stay as they are
    prefs = _enable_addon()
    paths, where = _choose_assets(prefs, args, say)
    say(f"using {where}")
    for key, prop, _label in preferences.ASSET_PROPERTIES:
        setattr(prefs, prop, str(paths[key]))
    if args.device:
        prefs.device = args.device


def _show_reports(outcome, say, stderr) -> None:
    for level, message in outcome.reports:
        if level == "ERROR":
            print(f"{PREFIX}error: {message}", file=stderr, flush=True)
        else:
            say(("warning: " if level == "WARNING" else "") + message)


def _run(args, stdout, stderr) -> int:
    import bpy

    from . import bridge, export, operators

    def say(msg: str) -> None:
        print(PREFIX + msg, file=stdout, flush=True)

    console = bridge.console()
    photo = (args.photo or _demo_photo()).resolve()
    names = ["head.blend", "head.glb"] + ["head.fbx"] * args.fbx + ["preview.png"] * (not args.no_preview)
    t0 = time.perf_counter()
    with console.output_folder(args.out or Path("out") / "demo", names) as out:
        _prepare_scene(args, say)
        settings = bpy.context.scene.p3dmm
        settings.image_source = "FILE"
        settings.filepath = str(photo)
        settings.quality = args.quality
        settings.mode = args.mode
        settings.face_index = args.face
        try:
            request, source = operators.prepare_request(bpy.context)
        except operators.InputError as exc:
            raise UsageError(str(exc)) from exc
        say(f"reconstructing {photo.name} ({args.quality} preset)")
        progress = console.ProgressDisplay(stdout, prefix=PREFIX)
        try:
            result = bridge.run_reconstruction(request, on_progress=progress)
        finally:
            progress.close()
        outcome = operators.build_result(bpy.context, source, result)
        _show_reports(outcome, say, stderr)
        if outcome.status != {"FINISHED"}:
            return 1
        t_reconstruct = time.perf_counter() - t0
        if args.livelink:
            try:
                bpy.ops.pixel3dmm.import_livelink(filepath=str(args.livelink.resolve()))
            except RuntimeError as exc:  # the operator's one-sentence error
                raise UsageError(f"The take was not imported: {str(exc).strip()}") from exc
            say(f"keyed the take {args.livelink.name}")
        head_mesh = bpy.context.scene.p3dmm.head
        with console.staged_outputs(out) as stage:
            say("writing head.glb")
            export.export_glb(bpy.context, head_mesh, str(stage / "head.glb"))
            if args.fbx:
                say("writing head.fbx")
                export.export_fbx(bpy.context, head_mesh, str(stage / "head.fbx"))
            if not args.no_preview:
                say("rendering preview.png")
                _preview(bpy.context, head_mesh, stage / "preview.png", photo)
            say("writing head.blend")
            bpy.ops.wm.save_as_mainfile(filepath=str(stage / "head.blend"), check_existing=False)
    say(f"reconstructed in {t_reconstruct:.1f} s; wrote {', '.join(names)} to {out}")
    return 0


def _run_track(args, stdout, stderr) -> int:
    import bpy

    from . import bridge, export, operators, tracking

    def say(msg: str) -> None:
        print(PREFIX + msg, file=stdout, flush=True)

    console = bridge.console()
    names = ["head.blend", "head.glb"] + ["head.fbx"] * args.fbx + ["track.npz", "track.json"]
    t0 = time.perf_counter()
    with console.output_folder(args.out, names) as out:
        _prepare_scene(args, say)
        try:
            source = tracking.resolve_source([str(p) for p in (args.photos or [args.video])])
        except operators.InputError as exc:
            raise UsageError(str(exc)) from exc
        request = tracking.prepare_request(bpy.context, source, stride=args.stride, quality=args.quality,
                                           mode=args.mode)
        what = f"{len(source.paths)} photos" if args.photos else Path(source.paths[0]).name
        say(f"tracking {what} ({args.quality} preset{f', stride {args.stride}' if args.stride > 1 else ''})")
        progress = console.ProgressDisplay(stdout, prefix=PREFIX)
        try:
            result = bridge.run_tracking(request, on_progress=progress)
        finally:
            progress.close()
        outcome = tracking.build_track(bpy.context, source, result)
        _show_reports(outcome, say, stderr)
        if outcome.status != {"FINISHED"}:
            return 1
        t_track = time.perf_counter() - t0
        head_mesh = bpy.context.scene.p3dmm.head
        with console.staged_outputs(out) as stage:
            say("writing head.glb")
            export.export_glb(bpy.context, head_mesh, str(stage / "head.glb"))
            if args.fbx:
                say("writing head.fbx")
                export.export_fbx(bpy.context, head_mesh, str(stage / "head.fbx"))
            say("writing track.npz and track.json")
            result.clip.track.save(stage)
            say("writing head.blend")
            # the clip or frames behind the camera keep their absolute paths: made relative to the staging folder,
            # they would point elsewhere once the file moves into the output folder
            bpy.ops.wm.save_as_mainfile(filepath=str(stage / "head.blend"), check_existing=False,
                                        relative_remap=False)
    say(f"tracked {len(result.clip.track)} frames in {t_track:.1f} s; wrote {', '.join(names)} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one headless reconstruction or track; 0 on success, 1 when Blender could not build the head, 2 on a
    user error (one sentence), 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m pixel3dmm_blender.headless", description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, help="the photo (default with --demo: the astronaut)")
    parser.add_argument("--out", type=Path, help="output folder (default with --demo: out/demo)")
    parser.add_argument("--demo", action="store_true", help="reconstruct scikit-image's astronaut photo")
    parser.add_argument("--video", type=Path, metavar="CLIP", help="track a video file or a folder of frames")
    parser.add_argument("--photos", type=Path, nargs="+", metavar="PHOTO",
                        help="track several photos of one person (one identity)")
    parser.add_argument("--stride", type=int, default=1, help="with --video: track every n-th frame (default 1)")
    parser.add_argument("--quality", choices=("fast", "balanced", "best"),
                        help="fitting preset (default: fast for --video / --photos, else balanced)")
    parser.add_argument("--mode", choices=("auto", "networks", "landmarks"), default="auto",
                        help="fit the networks' predictions, the face landmarks alone, or the networks when set (auto)")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default=None, help="default: the preferences'")
    parser.add_argument("--face", type=int, default=0, help="which face when there are several (0 = largest)")
    parser.add_argument("--standins", type=Path, metavar="FOLDER", help="use (and write) stand-in assets here")
    parser.add_argument("--fbx", action="store_true", help="also export head.fbx")
    parser.add_argument("--livelink", type=Path, metavar="TAKE.csv", help="animate the head with a Live Link Face take")
    parser.add_argument("--no-preview", action="store_true", help="skip the preview render")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show other libraries' and Blender's console messages")
    args = parser.parse_args(argv)
    tracking = args.video is not None or args.photos is not None
    if sum((args.photo is not None or args.demo, args.video is not None, args.photos is not None)) != 1:
        parser.error("give one of: a photo, --demo, --video CLIP or --photos A B ...")
    if tracking and args.out is None:
        parser.error("give the output folder with --out")
    if tracking and args.livelink is not None:
        parser.error("--livelink animates a photo's head; a track keys its own animation")
    if args.stride < 1:
        parser.error("--stride must be 1 or more")
    args.quality = args.quality or ("fast" if tracking else "balanced")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from . import bridge, export

    bridge.console().cap_image_decoding()
    with bridge.console().other_output_hidden(hide=not args.verbose) as (stdout, stderr):
        try:
            return (_run_track if tracking else _run)(args, stdout, stderr)
        except (UsageError, export.ExportError) as exc:
            print(f"{PREFIX}error: {exc}", file=stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            again = ("run the command again to continue from the frames already tracked" if tracking else
                     "run the command again to start over")
            print(f"{PREFIX}Cancelled (Ctrl-C); nothing was written, so {again}.", file=stderr, flush=True)
            return 130
        except Exception as exc:
            if not bridge.is_user_error(exc):
                raise
            print(f"{PREFIX}error: {exc}", file=stderr, flush=True)
            return 2


if __name__ == "__main__":
    sys.exit(main())
