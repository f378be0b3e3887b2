"""``python -m core``: the headless command line tool.

Subcommands print what they do and fail with one sentence and exit status 2 on a user error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import Pixel3DMMError


def _cmd_assets(args: argparse.Namespace) -> int:
    from .assets import AssetRegistry

    report = AssetRegistry().report()
    print(report.format())
    if report.complete:
        print("All assets found.")
        return 0
    print("Some assets are missing or invalid: real reconstructions need all four (see above).")
    return 1


def _cmd_convert(args: argparse.Namespace) -> int:
    from .network import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, dtype=args.dtype)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype})")
    return 0


def _cmd_standins(args: argparse.Namespace) -> int:
    from .pipeline import write_standin_assets

    paths = write_standin_assets(args.folder, network_size=args.networks)
    for key, path in paths.items():
        print(f"{key:<20} {path}")
    print("These are project-made stand-ins (synthetic head, random network weights), not the real assets.")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import dataclasses

    import cv2
    import numpy as np

    from .assets import AssetRegistry
    from .flame.uv import write_obj
    from .flame_params import save_flame_params
    from .pipeline import PipelineSettings, reconstruct, write_standin_assets

    if args.standins:
        registry = AssetRegistry(write_standin_assets(args.standins, network_size="published"),
                                 use_environment=False)
    else:
        registry = AssetRegistry()
    settings = PipelineSettings(quality=args.quality, device=args.device, texture_size=args.texture_size,
                                face_index=args.face, fit_step_scale=args.fit_step_scale)
    last = [-1]

    def on_progress(stage: str, fraction: float) -> None:
        percent = int(fraction * 100)
        if percent // 5 != last[0] // 5:
            print(f"{percent:3d}%  {stage}", flush=True)
        last[0] = percent

    result = reconstruct(args.photo, registry, settings, on_progress=on_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.fit.save(out / "fit")
    save_flame_params(out / "flame_params.npz", result.fit, result.flame)
    texture = np.clip(result.texture * 255.0 + 0.5, 0, 255).astype(np.uint8)
    cv2.imwrite(str(out / "texture.png"), cv2.cvtColor(texture, cv2.COLOR_RGB2BGR))
    for name, verts in (("head_posed", result.fit.vertices_posed), ("head_neutral", result.fit.vertices_neutral)):
        write_obj(out / f"{name}.obj", dataclasses.replace(result.uv, vertices=np.asarray(verts, dtype=np.float64)))
    for message in result.messages:
        print(message)
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    print(f"wrote fit.json, fit.npz, flame_params.npz, head_posed.obj, head_neutral.obj and texture.png to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Pixel3DMM core: photo to rigged FLAME head, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="report where the FLAME model, UV template and checkpoints are")
    p.set_defaults(func=_cmd_assets)

    p = sub.add_parser("convert-checkpoint", help="write a compact .safetensors copy of uv.ckpt or normals.ckpt")
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
    p.add_argument("--device", default="auto", help="auto, gpu or cpu")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--face", type=int, default=0, help="which face when there are several (0 = largest)")
    p.add_argument("--standins", type=Path, metavar="FOLDER",
                   help="use (and if needed write) stand-in assets in FOLDER instead of the configured ones")
    p.add_argument("--fit-step-scale", type=float, default=1.0,
                   help="multiply the preset's fitting steps (e.g. 0.1 for a quick preview)")
    p.set_defaults(func=_cmd_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except Pixel3DMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
