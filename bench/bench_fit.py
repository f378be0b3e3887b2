"""Fitting speed per preset on the full-size FLAME-format head (prints figures; not a test).

For each preset: time per step of each stage (measured on a short run of that stage) and, unless --no-whole,
the whole-fit wall time. Goal: balanced <= 30 s on 2 CPU cores. Timings on a shared machine are noisy; compare
numbers from one run. Process CPU time is printed next to wall time: with --threads 1 it approximates the time on
an idle core even when the machine is busy.

    python bench/bench_fit.py [--threads 2] [--presets fast balanced best] [--no-whole] [--device cpu]
                              [--nondeterministic]

On CUDA the fit runs with torch's deterministic kernels; --nondeterministic measures what they cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.fit import FitConfig, fit, render_maps  # noqa: E402
from core.flame import FlameModel, FlameParams, axis_angle_to_matrix, synthetic_flame  # noqa: E402
from core.render.camera import Camera  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced", "best"])
    ap.add_argument("--probe-steps", type=int, default=20,
                    help="steps per stage for the per-step figure (at most 3 for Levenberg-Marquardt stages)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-fit timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--both-sides", action="store_true", help="FitConfig.cull_back = False (draw back faces too)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--nondeterministic", action="store_true", help="fit(deterministic=False): CUDA's atomic kernels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data, uvt = synthetic_flame("full", 0)
    flame = FlameModel(data).to(dev)
    g = np.random.default_rng(0)
    params = FlameParams(
        shape=torch.tensor(g.normal(size=(1, flame.n_shape)) * 0.7, dtype=torch.float32, device=dev),
        expression=torch.tensor(g.normal(size=(1, flame.n_expr)) * 0.5, dtype=torch.float32, device=dev),
    )
    rot = axis_angle_to_matrix(torch.tensor([0.1, 0.35, 0.0])).numpy()
    maps = render_maps(flame, uvt, params, rot, np.zeros(3), Camera.of(size=512))
    pred = SimpleNamespace(uv=maps["uv"], normals=maps["normals"], mask=maps["mask"])
    print(f"# full-size head, {args.threads} threads, device {dev}, fit {args.resolution}px, cull_back {not args.both_sides}"
          f", deterministic {not args.nondeterministic}")
    for name in args.presets:
        cfg = FitConfig.from_dict(
            {"preset": name, "cull_back": not args.both_sides, "resolution": args.resolution}
        )
        per_step = []
        for stage in cfg.stages:
            steps = min(args.probe_steps, 3) if stage.method == "lm" else args.probe_steps  # an LM step takes seconds
            probe = FitConfig.from_dict({**cfg.to_dict(), "stages": [stage.scaled(steps / stage.steps).__dict__]})
            stamps, cpu = [], []

            def record(_progress) -> None:
                stamps.append(time.perf_counter())
                cpu.append(time.process_time())

            fit(pred, None, flame, uvt, probe, on_progress=record, deterministic=not args.nondeterministic)
            ms = float(np.median(np.diff(stamps))) * 1000
            ms_cpu = float(np.median(np.diff(cpu))) * 1000
            per_step.append(f"{stage.name} {stage.steps} steps x {ms:.0f} ms wall / {ms_cpu:.0f} ms CPU")
        line = f"{name:>9}: " + ", ".join(per_step)
        if not args.no_whole:
            t0, c0 = time.perf_counter(), time.process_time()
            fit(pred, None, flame, uvt, cfg, deterministic=not args.nondeterministic)
            line += f"; whole fit {time.perf_counter() - t0:.1f} s wall / {time.process_time() - c0:.1f} s CPU"
        print(line, flush=True)


if __name__ == "__main__":
    main()
