"""A fast reconstruction on a busy machine: quiet, beside one spinning process, beside two 2-thread torch jobs.

Each figure is one whole fast reconstruction of astronaut.png in a fresh process (the core pipeline with the
stand-in assets: published-size networks, full-size synthetic head). The random-weight networks run at full cost,
then the fit gets the synthetic head's own rendered UV and normal maps, so it is the networks-mode fit a real
checkpoint leads to rather than the landmarks fallback random weights would trigger. Thread policies:

    torch     torch's own thread count, fixed (what the core did before it adapted)
    1         one thread, fixed
    auto      core.device.CpuThreads: the cores other processes leave free, re-measured at each progress step
    auto+passive  auto, with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning)

Goals (issue 19): auto with one spinning process <= 1.5x, with two 2-thread torch jobs <= 3x the quiet time of the
same policy, and auto's quiet time within 10 % of torch's. Run by hand on an otherwise idle machine:

    .venv/bin/python bench/bench_busy.py [--policies torch 1 auto auto+passive] [--loads quiet spin torch2]
                                          [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "torch": {"PIXEL3DMM_THREADS": "torch"},
    "1": {"PIXEL3DMM_THREADS": "1"},
    "auto": {"PIXEL3DMM_THREADS": "auto"},
    "auto+passive": {"PIXEL3DMM_THREADS": "auto", "OMP_WAIT_POLICY": "PASSIVE"},
}
SPIN = "while True: pass"
TORCH_JOB = """
import torch
torch.set_num_threads(2)
x, w = torch.randn(4, 64, 96, 96), torch.randn(64, 64, 3, 3)
a = torch.randn(512, 512)
while True:
    y = torch.nn.functional.conv2d(x, w, padding=1)
    a = (a @ a).tanh()
"""
LOADS = {"quiet": [], "spin": [SPIN], "torch2": [TORCH_JOB, TORCH_JOB]}


def worker() -> None:
    """One fast reconstruction; prints its wall time in seconds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import skimage
    import torch

    import core.fit.verdict
    import core.network
    from core.assets import AssetRegistry, cache_dir
    from core.fit import render_maps
    from core.flame import FlameModel, FlameParams, load_flame, load_uv_template
    from core.network import Prediction
    from core.pipeline import PipelineSettings, reconstruct, write_standin_assets
    from core.render.camera import Camera

    if os.environ["PIXEL3DMM_THREADS"] == "torch":
        os.environ["PIXEL3DMM_THREADS"] = str(torch.get_num_threads())
    paths = write_standin_assets(cache_dir() / "standins")
    registry = AssetRegistry(paths, use_environment=False)
    flame = FlameModel(load_flame(paths["flame"]))
    maps = render_maps(flame, load_uv_template(paths["uv_template"]), FlameParams(), np.eye(3), np.zeros(3),
                       Camera.of(size=512))
    truth = Prediction(uv=maps["uv"], normals=maps["normals"], mask=maps["mask"])
    network_predict = core.network.predict

    def predict_then_truth(*args, **kwargs):
        network_predict(*args, **kwargs)  # the networks' full cost
        return truth

    core.network.predict = predict_then_truth
    core.fit.verdict.NETWORK_UV_AGREEMENT = -1.0  # keep the networks-mode fit
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    t0 = time.perf_counter()
    result = reconstruct(photo, registry, PipelineSettings(quality="fast", device="cpu"))
    assert result.fit.info["mode"] == "networks"
    stages = " ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    print(f"{time.perf_counter() - t0:.2f} {stages}")


def run_once(policy: str, load: str) -> float:
    others = [subprocess.Popen([sys.executable, "-c", code]) for code in LOADS[load]]
    try:
        time.sleep(1.0 if others else 0.0)  # let the competing jobs get going
        env = {**os.environ, **POLICIES[policy]}
        out = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True,
                             check=True)
        total, *stages = out.stdout.strip().splitlines()[-1].split(" ", 1)
        print(f"    stages (s): {stages[0] if stages else ''}", flush=True)
        return float(total)
    finally:
        for p in others:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    print(f"# {os.cpu_count()} cores; a fast reconstruction of astronaut.png, seconds (median of {args.rounds})")
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for load in args.loads:
            for policy in args.policies:  # policies alternate within each load, so drift hits them alike
                times.setdefault((policy, load), []).append(run_once(policy, load))
                print(f"  {policy:<13} {load:<7} {times[policy, load][-1]:7.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.get(("torch", "quiet"))
    print(f"{'policy':<14}" + "".join(f"{load:>10}" for load in args.loads) + "   busy / quiet of the same policy")
    for policy in args.policies:
        quiet = med.get((policy, "quiet"))
        row = "".join(f"{med[policy, load]:>9.1f}s" for load in args.loads)
        ratios = ", ".join(f"{load} {med[policy, load] / quiet:.2f}x" for load in args.loads
                           if load != "quiet" and quiet)
        vs = f"; quiet {quiet / base:.2f}x torch's" if base and quiet and policy != "torch" else ""
        print(f"{policy:<14}{row}   {ratios}{vs}")


if __name__ == "__main__":
    main()
