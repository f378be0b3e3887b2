"""Reconstruct Face without a window: the same operator, run synchronously, then save and export.

From the development checkout (the project venv has the ``bpy`` module)::

    python -m pixel3dmm_blender.headless PHOTO --out DIR [--quality balanced] [--standins FOLDER]
    python -m pixel3dmm_blender.headless --demo            # what `python build.py demo` runs

From an installed extension, inside Blender::

    blender -b --python-expr "from bl_ext.user_default.pixel3dmm_blender import headless; \
headless.main(['PHOTO', '--out', 'DIR'])"

Assets come from the add-on preferences when they are complete, otherwise from the CLI's environment
variables / config file (see ``python -m core assets``); ``--standins`` (and ``--demo`` when nothing is
configured) uses the project-made stand-ins instead and says so. Writes ``head.blend``, ``head.glb``,
``head.fbx`` (with ``--fbx``) and ``preview.png`` (the head rendered through the matching camera over the photo).
``--livelink TAKE.csv`` keys a Live Link Face take onto the head first, so the files carry its animation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ADDON_ID = __package__


def _say(msg: str) -> None:
    print(f"[pixel3dmm] {msg}", flush=True)


def _demo_photo() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def _enable_addon():
    import addon_utils
    import bpy

    if ADDON_ID not in bpy.context.preferences.addons:
        def fail(exc):
            raise exc

        addon_utils.enable(ADDON_ID, default_set=True, handle_error=fail)
    return bpy.context.preferences.addons[ADDON_ID].preferences


def _choose_assets(prefs, args) -> tuple[dict[str, str], str]:
    """Asset paths for this run and a sentence saying where they came from."""
    from . import bridge, preferences

    if args.standins:
        paths = bridge.standin_assets(args.standins)
        return paths, f"stand-in assets in {args.standins} (synthetic head, random network weights)"
    current = preferences.asset_paths(prefs)
    if bridge.asset_report(current).complete:
        return current, "the assets from the add-on preferences"
    configured = bridge.configured_assets()
    if configured is not None:
        return configured, "the assets from the environment / config file (python -m core assets)"
    if args.demo:
        folder = Path(bridge.default_cache_dir()) / "standins"
        paths = bridge.standin_assets(folder)
        return paths, (f"stand-in assets in {folder} (synthetic FLAME-format head, random network weights): no real "
                       "FLAME model and checkpoints are configured, so the result shows the pipeline, not the method")
    raise SystemExit("error: the FLAME model, UV template and checkpoints are not configured; set them in the add-on "
                     "preferences or see `python -m core assets`, or pass --standins FOLDER.")


def _preview(context, head_mesh, out_path: Path, photo_path: Path) -> None:
    import bpy

    scene = context.scene
    camera = next((o for c in head_mesh.users_collection for o in c.objects if o.type == "CAMERA"), None)
    if camera is None:
        return
    scene.camera = camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "TEXTURE"
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    render_path = out_path.with_name("render.png")
    scene.render.filepath = str(render_path)
    bpy.ops.render.render(write_still=True)
    # Composite the render over the photo so the overlay shows how well the head matches it.
    import cv2
    import numpy as np

    photo = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    render = cv2.imread(str(render_path), cv2.IMREAD_UNCHANGED)
    if photo is None or render is None or render.shape[:2] != photo.shape[:2]:
        os.replace(render_path, out_path)
        return
    alpha = render[:, :, 3:4].astype(np.float32) / 255.0 * 0.85
    blended = photo.astype(np.float32) * (1.0 - alpha) + render[:, :, :3].astype(np.float32) * alpha
    side = np.concatenate([photo, np.clip(blended, 0, 255).astype(np.uint8)], axis=1)
    cv2.imwrite(str(out_path), side)
    render_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixel3dmm_blender.headless", description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, help="the photo (default with --demo: the astronaut)")
    parser.add_argument("--out", type=Path, help="output folder (default with --demo: out/demo)")
    parser.add_argument("--demo", action="store_true", help="reconstruct scikit-image's astronaut photo")
    parser.add_argument("--quality", choices=("fast", "balanced", "best"), default="balanced")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default=None, help="default: the preferences'")
    parser.add_argument("--standins", type=Path, metavar="FOLDER", help="use (and write) stand-in assets here")
    parser.add_argument("--fbx", action="store_true", help="also export head.fbx")
    parser.add_argument("--livelink", type=Path, metavar="TAKE.csv", help="animate the head with a Live Link Face take")
    parser.add_argument("--no-preview", action="store_true", help="skip the preview render")
    args = parser.parse_args(argv)
    if args.photo is None and not args.demo:
        parser.error("give a photo or --demo")
    photo = (args.photo or _demo_photo()).resolve()
    out = (args.out or Path("out") / "demo").resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import bpy

    t0 = time.perf_counter()
    bpy.ops.wm.read_homefile(use_empty=True)  # an empty scene; the user's preferences stay as they are
    prefs = _enable_addon()
    paths, where = _choose_assets(prefs, args)
    _say(f"using {where}")
    from . import preferences

    for key, prop, _label in preferences.ASSET_PROPERTIES:
        setattr(prefs, prop, str(paths[key]))
    if args.device:
        prefs.device = args.device
    settings = bpy.context.scene.p3dmm
    settings.image_source = "FILE"
    settings.filepath = str(photo)
    settings.quality = args.quality
    _say(f"reconstructing {photo.name} ({args.quality} preset)")
    result = bpy.ops.pixel3dmm.reconstruct_face()
    if result != {"FINISHED"}:
        _say("reconstruction failed (see the message above)")
        return 1
    t_reconstruct = time.perf_counter() - t0
    if args.livelink:
        try:
            bpy.ops.pixel3dmm.import_livelink(filepath=str(args.livelink.resolve()))
        except RuntimeError as exc:  # the operator's one-sentence error
            _say(f"the take was not imported: {exc}")
            return 1
        _say(f"keyed the take {args.livelink.name}")
    out.mkdir(parents=True, exist_ok=True)
    head_mesh = bpy.context.scene.p3dmm.head
    bpy.ops.pixel3dmm.export_glb(filepath=str(out / "head.glb"))
    written = ["head.glb"]
    if args.fbx:
        bpy.ops.pixel3dmm.export_fbx(filepath=str(out / "head.fbx"))
        written.append("head.fbx")
    if not args.no_preview:
        _preview(bpy.context, head_mesh, out / "preview.png", photo)
        written.append("preview.png")
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "head.blend"), check_existing=False)
    written.append("head.blend")
    _say(f"reconstructed in {t_reconstruct:.1f} s; wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
