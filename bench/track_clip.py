"""A real clip with a known path (issue 22; prints figures, not a test).

A public-domain face photo (scikit-image's astronaut, or ``--photo``) is moved along a known smooth path (a
Lissajous curve, ``--amplitude`` pixels, 25 fps) and written as an mp4. The clip is tracked (``core.track``) and,
for comparison, every frame is reconstructed on its own (``core.pipeline.reconstruct``). For the face region's
vertices projected into each frame: how far their mean moves from the known path (px, after the first frame's
offset), and the jitter (RMS second difference over frames of the projected vertices, px) against the path's own.
Also seconds per frame. Uses the stand-in FLAME head unless ``--assets`` is configured (environment / config).

    python bench/track_clip.py --frames 40
    python bench/track_clip.py --frames 40 --mode networks --assets configured
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.assets import AssetRegistry  # noqa: E402
from core.fit.regions import derive_regions  # noqa: E402
from core.pipeline import PipelineSettings, reconstruct, write_standin_assets  # noqa: E402
from core.track import TrackSettings, track  # noqa: E402


def project(vertices: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(V, 2) photo pixels of world vertices (V, 3) through the fit's camera (at (0, 0, 1), looking down -z)."""
    cam = vertices.astype(np.float64) - np.array([0.0, 0.0, 1.0])
    return np.stack([k[0, 0] * cam[:, 0] / -cam[:, 2] + k[0, 2], -k[1, 1] * cam[:, 1] / -cam[:, 2] + k[1, 2]], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=Path(skimage.__file__).parent / "data" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--amplitude", type=float, default=20.0, help="pixels")
    ap.add_argument("--mode", choices=("landmarks", "networks"), default="landmarks")
    ap.add_argument("--quality", default="fast")
    ap.add_argument("--assets", choices=("standins", "configured"), default="standins")
    ap.add_argument("--independent", action="store_true", help="also reconstruct every frame on its own")
    ap.add_argument("--keep-networks", action="store_true",
                    help="fit the networks' maps even when they disagree with the landmarks (to time the networks "
                         "mode with the random stand-in networks: the path figures are then meaningless)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="track-clip-"))
    img = cv2.imread(str(args.photo))
    h, w = img.shape[:2]
    t = np.arange(args.frames) / 25.0
    path = np.stack([args.amplitude * np.sin(2 * np.pi * 0.4 * t), 0.6 * args.amplitude * np.sin(2 * np.pi * 0.7 * t + 1)], 1)
    clip = tmp / "clip.mp4"
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    frames = []
    for dx, dy in path:
        frame = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
        out.write(frame)
        frames.append(frame)
    out.release()
    if args.assets == "standins":
        registry = AssetRegistry(write_standin_assets(Path(tempfile.gettempdir()) / "pixel3dmm-bench-standins",
                                                      networks=args.mode == "networks"), use_environment=False)
    else:
        registry = AssetRegistry()
    print(f"# {args.photo.name} moved along a Lissajous path of {args.amplitude:g} px, {args.frames} frames at 25 fps; "
          f"{args.mode} mode, {args.quality}, {args.assets} assets")
    if args.keep_networks:
        import core.fit.verdict

        core.fit.verdict.NETWORK_UV_AGREEMENT = -1.0
    t0 = time.perf_counter()
    result = track(clip, registry, TrackSettings(quality=args.quality, mode=args.mode, texture_size=256),
                   work_dir=tmp / "work")
    elapsed = time.perf_counter() - t0
    flame = result.flame
    face = derive_regions(flame.v_template, flame.faces, flame.J_regressor).silhouette
    tr = result.track
    runs = {"tracked": ([tr.vertices_posed[i] for i in range(len(tr))], [tr.camera(i) for i in range(len(tr))],
                        tr.frames, elapsed)}
    if args.independent:
        verts, cams, t0 = [], [], time.perf_counter()
        for i, frame in enumerate(frames):
            rec = reconstruct(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0, registry,
                              PipelineSettings(quality=args.quality, mode=args.mode, texture_size=64))
            verts.append(rec.fit.vertices_posed)
            cams.append(rec.fit.K_photo)
        runs["each frame alone"] = (verts, cams, np.arange(args.frames), time.perf_counter() - t0)
    print(f"{'fit':>16} {'frames':>6} {'path err px (median / max)':>27} {'jitter px':>9} {'path jitter':>11} {'s/frame':>7}")
    for name, (verts, cams, idx, seconds) in runs.items():
        pts = np.stack([project(v[face], k) for v, k in zip(verts, cams)])  # (T, F, 2)
        centre = pts.mean(1)
        expected = path[idx] - path[idx[0]] + centre[0]
        err = np.linalg.norm(centre - expected, axis=1)
        second = pts[2:] - 2 * pts[1:-1] + pts[:-2]
        path_second = path[idx][2:] - 2 * path[idx][1:-1] + path[idx][:-2]
        jitter = np.sqrt(((second - path_second[:, None]) ** 2).sum(-1).mean())
        print(f"{name:>16} {len(idx):6d} {np.median(err):13.2f} / {err.max():11.2f} {jitter:9.3f} "
              f"{np.sqrt((path_second ** 2).sum(-1).mean()):11.3f} {seconds / args.frames:7.2f}")
    print("  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in tr.info["timings"].items()) + f" (mode {tr.info['mode']})")
    for m in result.messages:
        print("  " + m)


if __name__ == "__main__":
    main()
