"""Ground-truth tracking benchmark (issue 22; prints tables, not a test).

Sequences: the synthetic FLAME-format head moving along known smooth trajectories
(``evaluation.groundtruth.make_sequence``: head pose, expression, jaw, neck, eyes, eyelids; 25 fps), each frame
rendered into the maps the networks would predict, with per-frame noise (``corrupt``: blur, UV/normal noise,
outlier pixels, drawn anew every frame) and MediaPipe landmarks projected from the truth with Gaussian noise.

* **Video**: every frame fitted on its own (a fresh single-photo fit, identity free) against the tracker
  (``core.track.tracker.SequenceFit``: warm-started frames, then the joint stage with temporal smoothing). Per
  frame: posed error after rigid alignment (mm, face region); per sequence: jitter, the RMS second difference of
  the face region's world-space vertices (mm), of the fits and of the truth itself, and of the error (fit minus
  truth). Goal: the joint fit cuts jitter at least 3x at equal or better error.
* **Photos** (``--views``): one identity in 3-5 photos with different poses and expressions; the neutral mesh's
  error (rigid alignment) of each photo fitted alone against the joint fit without smoothing. Goal: below the
  best single view's.

Examples::

    python bench/track_groundtruth.py --mode landmarks --sequences 3 --frames 30
    python bench/track_groundtruth.py --mode networks --sequences 2 --frames 20 --preset fast
    python bench/track_groundtruth.py --mode landmarks --views 4 --sequences 0 --identities 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.fit import FitConfig, fit  # noqa: E402
from core.fit.joint import SMOOTHING, SMOOTHING_ORDER  # noqa: E402
from core.fit.regions import derive_regions  # noqa: E402
from core.flame import FlameModel, synthetic_flame  # noqa: E402
from core.landmarks import resolve_embedding  # noqa: E402
from core.track.tracker import SequenceFit  # noqa: E402
from evaluation.groundtruth import (  # noqa: E402
    corrupt,
    detected_landmarks,
    errors_mm,
    inputs,
    jitter_mm,
    make_head,
    make_sequence,
    render_truth,
)


def frame_inputs(flame, data, uvt, head, eyeball_faces, embedding, rng, args):
    maps, neutral = render_truth(flame, uvt, head)
    noisy = corrupt(maps, rng, args.blur, args.noise, args.outliers)
    pred, crop = inputs(noisy, eyeball_faces)
    crop.landmarks = detected_landmarks(maps["vertices"], data.faces, embedding, rng, args.landmark_noise)
    return (pred if args.mode == "networks" else None), crop, maps["vertices"], neutral


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("networks", "landmarks"), default="landmarks")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--sequences", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--views", type=int, default=0, help="photos of one identity (multi-photo); 0: none")
    ap.add_argument("--identities", type=int, default=5, help="identities of the multi-photo test")
    ap.add_argument("--blur", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--outliers", type=float, default=0.05)
    ap.add_argument("--landmark-noise", type=float, default=1.5)
    ap.add_argument("--smoothing-scale", type=float, default=1.0, help="multiply every smoothing weight")
    ap.add_argument("--smooth", nargs="*", default=[], metavar="GROUP=WEIGHT",
                    help="replace smoothing weights, e.g. expression=5 (see core.fit.joint.SMOOTHING)")
    ap.add_argument("--order", type=int, choices=(1, 2), default=None,
                    help="smoothing differences (core.fit.joint.SMOOTHING_ORDER; the reference: 1)")
    ap.add_argument("--joint-iterations", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, uvt = synthetic_flame("full", 0)
    flame = FlameModel(data)
    reg = derive_regions(data.v_template, data.faces, data.J_regressor)
    region = (reg.uv_valid | reg.eye_region) & ~reg.eyeballs
    eyeball_faces = np.flatnonzero(reg.eyeballs[data.faces].all(1))
    embedding, note = resolve_embedding(data, None, Path(tempfile.gettempdir()) / "pixel3dmm-bench-cache")
    single = FitConfig.preset(args.preset) if args.mode == "networks" else FitConfig.landmarks_preset(args.preset)
    smoothing = dict(SMOOTHING)
    for item in args.smooth:
        group, value = item.split("=")
        if group not in smoothing:
            ap.error(f"unknown smoothing group {group!r}; choose from {sorted(smoothing)}")
        smoothing[group] = float(value)
    smoothing = {k: v * args.smoothing_scale for k, v in smoothing.items()}
    print(f"# {args.mode} mode, preset {args.preset}, {args.frames} frames at 25 fps; maps: blur {args.blur} px, "
          f"noise {args.noise}, outliers {args.outliers}; landmarks {args.landmark_noise} px; smoothing x"
          f"{args.smoothing_scale} of {smoothing}, order {args.order or SMOOTHING_ORDER}; {note}")
    rng = np.random.default_rng(args.seed)
    if args.sequences:
        print(f"{'seq':>3} {'fit':>12} {'posed mm':>8} {'max mm':>7} {'jitter mm':>9} {'truth jit':>9} "
              f"{'err jit':>8} {'s/frame':>7}")
    rows = []
    for k in range(args.sequences):
        heads = make_sequence(rng, flame, args.frames)
        noise_rng = np.random.default_rng(args.seed + 100 + k)
        frames = [frame_inputs(flame, data, uvt, h, eyeball_faces, embedding, noise_rng, args) for h in heads]
        truth = np.stack([f[2] for f in frames])
        results = {}
        t0 = time.perf_counter()
        results["independent"] = [fit(p, c, flame, uvt, single, embedding=embedding, seed=args.seed) for p, c, _, _ in frames]
        times = {"independent": time.perf_counter() - t0}
        t0 = time.perf_counter()
        seq = SequenceFit(flame, uvt, args.mode, args.preset, embedding=embedding, seed=args.seed, first_cfg=single)
        for p, c, _, _ in frames:
            seq.add(p, c)
        results["per-frame"] = [f.start for f in seq.frames]
        times["per-frame"] = time.perf_counter() - t0
        results["joint"] = seq.joint(smoothing, iterations=args.joint_iterations, order=args.order)
        times["joint"] = time.perf_counter() - t0
        truth_jit = jitter_mm(truth[:, region])
        for name, res in results.items():
            posed = np.array([errors_mm(r, f[2], f[3], region)[0] for r, f in zip(res, frames)])
            fitted = np.stack([r.vertices_posed for r in res])
            jit = jitter_mm(fitted[:, region])
            err_jit = jitter_mm((fitted - truth)[:, region])
            rows.append((k, name, np.median(posed), jit, err_jit))
            print(f"{k:3d} {name:>12} {np.median(posed):8.3f} {posed.max():7.3f} {jit:9.3f} {truth_jit:9.3f} "
                  f"{err_jit:8.3f} {times[name] / args.frames:7.2f}", flush=True)
    if rows:
        table = {name: np.array([r[2:] for r in rows if r[1] == name]) for name in ("independent", "per-frame", "joint")}
        ind, joint = table["independent"], table["joint"]
        print(f"median over sequences: posed independent {np.median(ind[:, 0]):.3f} mm, joint "
              f"{np.median(joint[:, 0]):.3f} mm; jitter independent {np.median(ind[:, 1]):.3f} mm, joint "
              f"{np.median(joint[:, 1]):.3f} mm: cut {np.median(ind[:, 1] / joint[:, 1]):.1f}x (goal >= 3x at equal "
              f"or better error); error jitter cut {np.median(ind[:, 2] / joint[:, 2]):.1f}x")
    if args.views:
        print(f"{'id':>3} {'single-view neutral mm (each)':>40} {'best':>6} {'joint':>6}")
        gains = []
        for k in range(args.identities):
            shape = rng.normal(size=(1, flame.n_shape)) * 0.7
            views = []
            for _ in range(args.views):
                h = make_head(rng, flame, expressive=True, yaw_deg=40, pitch_deg=20, neck=0.15)
                h.params.shape = torch.tensor(shape, dtype=flame.v_template.dtype)
                views.append(frame_inputs(flame, data, uvt, h, eyeball_faces, embedding, rng, args))
            seq = SequenceFit(flame, uvt, args.mode, args.preset, photos=True, embedding=embedding, seed=args.seed,
                              first_cfg=single)
            singles = [errors_mm(seq.add(p, c), v, n, region)[1] for p, c, v, n in views]
            joint = seq.joint(None, iterations=args.joint_iterations)
            ej = errors_mm(joint[0], views[0][2], views[0][3], region)[1]
            gains.append(min(singles) / ej)
            print(f"{k:3d} {' '.join(f'{e:6.3f}' for e in singles):>40} {min(singles):6.3f} {ej:6.3f}", flush=True)
        print(f"joint neutral error below the best single view's in {sum(g > 1 for g in gains)} of {len(gains)} "
              f"identities (median ratio best/joint {np.median(gains):.2f})")


if __name__ == "__main__":
    main()
