"""Report the 51 ARKit keys on a head: how each moves its region, what it leaves still, how left and right agree;
and how long building them takes (goal: scene build with the keys <= 1.5 s on 2 cores).

Columns (millimetres unless stated):
  probe        the point that shows the key (MediaPipe id or derived point)
  goal / got   the probe motion the definition asks for (expression keys) and the motion the key gives
  cos          cosine between the probe's motion and the key's named direction
  peak         largest vertex motion within the key's reach
  still max / p95   crosstalk: largest and 95th-percentile motion of the vertices the key should leave still
  asym         largest distance between the key and its mirrored partner (a centre key: its own mirror image)
  |x|          largest expression coefficient; lids: left, right eyelid coefficients

Default head: the full-size synthetic head with the test stand-in MediaPipe embedding (tests/core). Real assets:

    .venv/bin/python bench/arkit_report.py [--flame generic_model.pkl --embedding mediapipe_landmark_embedding.npz
        --uv-template head_template.obj] [--seed 0] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "core"))

from core.arkit import arkit_keys, key_specs  # noqa: E402
from core.flame import load_flame, load_landmark_embedding, load_uv_template, synthetic_flame  # noqa: E402


def _head(args):
    if args.flame:
        data = load_flame(args.flame)
        return data, load_uv_template(args.uv_template).mirror_index, load_landmark_embedding(args.embedding)
    from mediapipe_standin import standin_embedding

    data, template = synthetic_flame("full", seed=args.seed)
    return data, template.mirror_index, standin_embedding(data)


def _mirror_name(name: str) -> str:
    return name[:-4] + "Right" if name.endswith("Left") else name[:-5] + "Left" if name.endswith("Right") else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flame", help="FLAME model file (default: the synthetic head)")
    parser.add_argument("--embedding", help="MediaPipe landmark embedding (.npz) on FLAME topology")
    parser.add_argument("--uv-template", help="head_template.obj (for the mirror index)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic head seed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.flame and not (args.embedding and args.uv_template):
        parser.error("--flame needs --embedding and --uv-template")
    torch.set_num_threads(args.threads)
    data, mirror, embedding = _head(args)
    times, cpu = [], []
    for _ in range(args.repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        keys = arkit_keys(data, embedding, mirror)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    by = {k.name: k for k in keys}
    print(f"{data.describe()}; embedding {embedding.source} ({len(embedding.face_idx)} points)")
    print(f"arkit_keys: wall median {statistics.median(times[1:]):.3f} s, min {min(times[1:]):.3f} s, first call "
          f"{times[0]:.3f} s; CPU (all threads) median {statistics.median(cpu[1:]):.3f} s ({args.threads} torch "
          f"threads, {args.repeats} repeats; on a loaded machine the CPU time is the steadier figure)")
    header = (f"{'key':20s} {'probe':>11s} {'goal':>5s} {'got':>5s} {'cos':>5s} {'peak':>5s} {'still max':>9s} "
              f"{'p95':>5s} {'asym':>5s} {'|x|':>5s}  lids")
    print(header)
    print("-" * len(header))
    rows = []
    for k in keys:
        motion = 1e3 * np.linalg.norm(k.offsets, axis=1)
        still = motion[k.still]
        got = 1e3 * np.linalg.norm(k.probe_motion)
        cos = float(k.probe_motion @ k.direction) / max(float(np.linalg.norm(k.probe_motion)), 1e-12)
        partner = by[_mirror_name(k.name)].offsets
        asym = 1e3 * np.linalg.norm(k.offsets[mirror] * [-1.0, 1.0, 1.0] - partner, axis=1).max()
        goal = f"{1e3 * k.goal:5.1f}" if k.goal is not None else "    -"
        rows.append((still.max(), np.percentile(still, 95), asym))
        print(f"{k.name:20s} {str(k.probe):>11s} {goal} {got:5.1f} {cos:5.2f} {motion[k.reach].max():5.1f} "
              f"{still.max():9.2f} {np.percentile(still, 95):5.2f} {asym:5.2f} {np.abs(k.expression).max():5.2f}  "
              f"{k.eyelids[0]:+.2f} {k.eyelids[1]:+.2f}")
    solved = [r for r, s in zip(rows, key_specs().values()) if s.targets]
    print(f"expression keys: crosstalk max {max(r[0] for r in solved):.2f} mm (median over keys "
          f"{statistics.median(r[0] for r in solved):.2f}), p95 median {statistics.median(r[1] for r in solved):.3f} "
          f"mm; asymmetry median {statistics.median(r[2] for r in solved):.2f} mm, max {max(r[2] for r in solved):.2f}")


if __name__ == "__main__":
    main()
