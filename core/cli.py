"""``python -m core``: the headless command line tool.

Subcommands print what they do and fail with one sentence and exit status 2 on a user error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from .console import cap_image_decoding, other_output_hidden
from .errors import Pixel3DMMError


class _ProgressLine:
    """Prints ``message percent`` lines: every 5 % and on each new message (never from library code)."""

    def __init__(self) -> None:
        self._last: tuple[str, int] | None = None

    def __call__(self, message: str, fraction: float) -> None:
        percent = int(100 * fraction)
        head = message.split(" (")[0]
        if self._last is None or self._last[0] != head or percent // 5 != self._last[1] // 5:
            print(f"{percent:3d}%  {message}", flush=True)
            self._last = (head, percent)


def _cmd_assets(args: argparse.Namespace) -> int:
    from .validation import validated_registry

    if args.download_networks:
        return _download_networks(args)
    report = validated_registry().report()
    print(report.format())
    if report.complete:
        print("All assets found and valid.")
        return 0
    print("Some assets are missing or invalid: real reconstructions need all four (see above).")
    return 1


def _ask(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _download_networks(args: argparse.Namespace) -> int:
    from .assets import config_path, default_download_dir, format_bytes
    from .network import download

    dest = (args.dest or default_download_dir()).expanduser()
    files = download.NETWORK_FILES
    print(download.consent_text(files, download.HF_REPO_ID))
    print(f"Destination: {dest}")
    if not args.yes:
        if not sys.stdin.isatty():
            print("error: downloading needs your consent to the licence; run again with --yes to accept it.",
                  file=sys.stderr)
            return 2
        if not _ask("Download them?"):
            print("Nothing was downloaded.")
            return 1
    progress = _ProgressLine()
    try:
        paths = download.download_networks(dest, files=files, repo_id=download.HF_REPO_ID,
                                           revision=download.HF_REVISION, on_progress=progress)
        converted = download.convert_downloads(paths, files, on_progress=progress)
    except KeyboardInterrupt:
        print("Stopped; run the same command again to resume where it stopped.", file=sys.stderr)
        return 130
    for key, path in converted.items():
        print(f"wrote {path} ({format_bytes(path.stat().st_size)}, float16)")
    originals = sum(p.stat().st_size for p in paths.values())
    if args.delete_originals or (sys.stdin.isatty() and not args.yes and _ask(
            f"Delete the original checkpoints ({format_bytes(originals)}); the float16 files are all the add-on needs?")):
        print(f"deleted the original checkpoints ({format_bytes(download.delete_originals(paths))} freed)")
    else:
        print(f"kept the original checkpoints in {dest} (delete them to free {format_bytes(originals)})")
    print(f"To use them, add these lines to {config_path()} (or set PIXEL3DMM_UV_CKPT and PIXEL3DMM_NORMALS_CKPT):")
    for key, path in converted.items():
        print(f'{key} = "{path.as_posix()}"')
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .assets import format_bytes
    from .network import convert_checkpoint

    progress = _ProgressLine()
    out = convert_checkpoint(args.src, args.dst, dtype=args.dtype,
                             on_progress=lambda fraction: progress(f"converting {args.src.name}", fraction))
    print(f"wrote {out} ({format_bytes(out.stat().st_size)}, {args.dtype})")
    return 0


def _cmd_standins(args: argparse.Namespace) -> int:
    from .pipeline import write_standin_assets

    paths = write_standin_assets(args.folder, network_size=args.networks)
    for key, path in paths.items():
        print(f"{key:<20} {path}")
    print("These are project-made stand-ins (synthetic head, random network weights), not the real assets.")
    return 0


RECONSTRUCT_OUTPUTS = ("fit.json", "fit.npz", "flame_params.npz", "head_posed.obj", "head_neutral.obj", "texture.png", "overlay.png")


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import dataclasses

    import cv2
    import numpy as np

    from .assets import AssetRegistry
    from .console import ProgressDisplay, output_folder, staged_outputs, write_image
    from .flame.uv import write_obj
    from .flame_params import save_flame_params
    from .overlay import overlay_image
    from .pipeline import PipelineSettings, reconstruct, write_standin_assets

    settings = PipelineSettings(quality=args.quality, mode=args.mode, device=args.device,
                                texture_size=args.texture_size, face_index=args.face,
                                fit_step_scale=args.fit_step_scale)
    with output_folder(args.out, RECONSTRUCT_OUTPUTS) as out:  # checked before the minute of work
        if args.standins:
            registry = AssetRegistry(write_standin_assets(args.standins, network_size="published"),
                                     use_environment=False)
        else:
            registry = AssetRegistry()
        progress = ProgressDisplay(sys.stdout)
        try:
            result = reconstruct(args.photo, registry, settings, on_progress=progress)
        finally:
            progress.close()
        with staged_outputs(out) as stage:
            result.fit.save(stage / "fit")
            save_flame_params(stage / "flame_params.npz", result.fit, result.flame)
            texture = np.clip(result.texture * 255.0 + 0.5, 0, 255).astype(np.uint8)
            write_image(stage / "texture.png", cv2.cvtColor(texture, cv2.COLOR_RGB2BGR))
            for name, verts in (("head_posed", result.fit.vertices_posed),
                                ("head_neutral", result.fit.vertices_neutral)):
                write_obj(stage / f"{name}.obj",
                          dataclasses.replace(result.uv, vertices=np.asarray(verts, dtype=np.float64)))
            overlay = overlay_image(result.photo.rgb, result.fit, result.uv.faces, *_landmarks_in_photo(result))
            write_image(stage / "overlay.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    for message in result.messages:
        print(message)
    print(f"fit ({result.fit.info.get('mode', '?')} mode): {result.fit.verdict.summary()}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    print(f"wrote {', '.join(RECONSTRUCT_OUTPUTS)} to {out}")
    return 0


TRACK_OUTPUTS = ("track.npz", "track.json", "texture.png", "head_neutral.obj")


def _cmd_track(args: argparse.Namespace) -> int:
    import dataclasses

    import cv2
    import numpy as np

    from .assets import AssetRegistry
    from .console import ProgressDisplay, output_folder, staged_outputs, write_image
    from .flame.uv import write_obj
    from .pipeline import write_standin_assets
    from .track import TrackSettings, track

    settings = TrackSettings(quality=args.quality, mode=args.mode, device=args.device, stride=args.stride,
                             flip_tta=args.flip_tta, smooth=not args.no_smoothing, texture_size=args.texture_size,
                             max_frames=args.max_frames, fit_step_scale=args.fit_step_scale)
    source = args.clip[0] if len(args.clip) == 1 else list(args.clip)
    with output_folder(args.out, TRACK_OUTPUTS) as out:
        if args.standins:
            registry = AssetRegistry(write_standin_assets(args.standins, network_size="published",
                                                          networks=args.mode != "landmarks"), use_environment=False)
        else:
            registry = AssetRegistry()
        progress = ProgressDisplay(sys.stdout)
        try:
            result = track(source, registry, settings, on_progress=progress)
        finally:
            progress.close()
        with staged_outputs(out) as stage:
            result.track.save(stage)
            texture = np.clip(result.texture * 255.0 + 0.5, 0, 255).astype(np.uint8)
            write_image(stage / "texture.png", cv2.cvtColor(texture, cv2.COLOR_RGB2BGR))
            write_obj(stage / "head_neutral.obj",
                      dataclasses.replace(result.uv, vertices=np.asarray(result.neutral, dtype=np.float64)))
    for message in result.messages:
        print(message)
    t = result.track
    doubtful = sum(not v.ok for v in t.verdicts)
    print(f"tracked {len(t)} frames ({t.info['mode']} mode), skipped {len(t.skipped)}, doubtful {doubtful}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.info["timings"].items()))
    print(f"wrote {', '.join(TRACK_OUTPUTS)} to {out}")
    return 0


def _landmarks_in_photo(result):
    """The detected landmarks (photo pixels) and the fitted head's same landmarks (world points), or Nones."""
    import numpy as np

    from .flame.landmarks import group_points

    crop, embedding = result.crop, result.landmark_embedding
    if crop.landmarks is None:
        return None, None
    detected = crop.transform.to_photo(crop.landmarks)
    if embedding is None:
        return detected, None
    points = group_points("static", embedding, result.uv.faces, crop.landmarks)
    if points is None:
        return detected, None
    keep = np.isfinite(points.targets).all(1)
    return crop.transform.to_photo(points.targets[keep]), points.positions(result.fit.vertices_posed)[keep]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Pixel3DMM core: photo to rigged FLAME head, headless.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details and show other libraries' console messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="validate the FLAME model, UV template and checkpoints, or download the "
                                      "networks")
    p.add_argument("--download-networks", action="store_true",
                   help="download uv.ckpt and normals.ckpt (about 3.7 GB, CC BY-NC 4.0) from Hugging Face, resuming "
                        "an interrupted download, and convert them to float16 .safetensors")
    p.add_argument("--dest", type=Path, help="folder for the downloaded networks (default: a per-user data folder)")
    p.add_argument("--yes", action="store_true", help="accept the networks' licence without asking")
    p.add_argument("--delete-originals", action="store_true",
                   help="delete the downloaded .ckpt files once they are converted")
    p.set_defaults(func=_cmd_assets)

    p = sub.add_parser("convert-checkpoint", help="stream a compact .safetensors copy of uv.ckpt or normals.ckpt")
    p.add_argument("src", type=Path, help="the Lightning checkpoint")
    p.add_argument("dst", type=Path, nargs="?", help="output file (default: next to the source)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float16")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("standins", help="write the project-made stand-in assets (synthetic head, random weights)")
    p.add_argument("folder", type=Path)
    p.add_argument("--networks", choices=("published", "tiny"), default="published",
                   help="module tree of the stand-in checkpoints (published: about 0.4 GB each)")
    p.set_defaults(func=_cmd_standins)

    p = sub.add_parser("reconstruct", help="reconstruct the head in a photo (fit, meshes, texture)")
    p.add_argument("photo", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quality", choices=("fast", "balanced", "best"), default="balanced")
    p.add_argument("--mode", choices=("auto", "networks", "landmarks"), default="auto",
                   help="fit the networks' predictions (and landmarks), the face landmarks alone (needs only the "
                        "FLAME model), or the networks when configured (auto)")
    p.add_argument("--device", default="auto", help="auto, gpu or cpu")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--face", type=int, default=0, help="which face when there are several (0 = largest)")
    p.add_argument("--standins", type=Path, metavar="FOLDER",
                   help="use (and if needed write) stand-in assets in FOLDER instead of the configured ones")
    p.add_argument("--fit-step-scale", type=float, default=1.0,
                   help="multiply the preset's fitting steps (e.g. 0.1 for a quick preview)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log progress details and show other libraries' console messages")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("track", help="track a video, a folder of frames or several photos of one person (one "
                                     "identity, per-frame motion: track.npz)")
    p.add_argument("clip", type=Path, nargs="+",
                   help="a video file (mp4, mov, avi, webm), a folder of frames, or two or more photos of one person")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--stride", type=int, default=1, help="track every n-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--quality", choices=("fast", "balanced", "best"), default="fast")
    p.add_argument("--mode", choices=("auto", "networks", "landmarks"), default="auto",
                   help="as for reconstruct")
    p.add_argument("--device", default="auto", help="auto, gpu or cpu")
    p.add_argument("--flip-tta", action="store_true", help="run the networks on the mirrored frame too (2x the time)")
    p.add_argument("--no-smoothing", action="store_true", help="no temporal smoothing in the joint stage")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--standins", type=Path, metavar="FOLDER",
                   help="use (and if needed write) stand-in assets in FOLDER instead of the configured ones")
    p.add_argument("--fit-step-scale", type=float, default=1.0, help="multiply the per-frame fitting steps")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log progress details and show other libraries' console messages")
    p.set_defaults(func=_cmd_track)
    return parser


CANCELLED = "Cancelled (Ctrl-C); nothing was written, so run the command again to start over."
TRACK_CANCELLED = ("Cancelled (Ctrl-C); nothing was written to the output folder, and running the same command again "
                   "continues from the frames already tracked.")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 2 on a user error (one sentence on stderr), 130 on Ctrl-C.

    Unless ``-v`` is given, what native libraries write to the console (mediapipe's C++ logging, libpng
    warnings) is hidden; Python's ``sys.stdout`` and ``sys.stderr`` (this tool's lines, the project's log, a
    download's progress) still show.
    """
    args = build_parser().parse_args(argv)
    cap_image_decoding()
    with (other_output_hidden(hide=not args.verbose) as (out, err), contextlib.redirect_stdout(out),
          contextlib.redirect_stderr(err)):
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO if args.verbose else logging.WARNING)
        try:
            return args.func(args)
        except Pixel3DMMError as exc:
            print(f"error: {exc}", file=err)
            return 2
        except KeyboardInterrupt:
            print(TRACK_CANCELLED if args.command == "track" else CANCELLED, file=err)
            return 130
        finally:
            root.removeHandler(handler)
