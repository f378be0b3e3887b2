"""Benchmark the FLAME layer and loaders on the full-size synthetic head (CPU).

Prints median and minimum times (on a shared machine the minimum is the less noisy figure) of forward and
forward+backward of the layer at batch 1 and 16, next to a matmul-only baseline measured in the same run (the
identity/expression blendshape product alone), then loader timings: pickle conversion, cached .npz load, the
cache key and a full sha256 of the source.

    .venv/bin/python bench/bench_flame.py [--repeats 50] [--threads 1 2] [--skip-loading]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.flame import FlameModel, FlameParams, load_flame, synthetic_flame, write_synthetic_flame  # noqa: E402
from core.flame.io import source_key  # noqa: E402


def _times_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, minimum) wall time of ``fn`` in milliseconds after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * min(times)


def _median_ms(fn, repeats: int) -> float:
    return _times_ms(fn, repeats)[0]


def _params(model: FlameModel, batch: int) -> FlameParams:
    p = FlameParams.zeros(batch, model.n_shape, model.n_expr, rotation="6d", eyelids=True)
    g = torch.Generator().manual_seed(0)
    p.shape = torch.randn(batch, model.n_shape, generator=g)
    p.expression = torch.randn(batch, model.n_expr, generator=g)
    p.jaw_pose = p.jaw_pose + 0.1 * torch.randn(batch, 6, generator=g)
    for name in vars(p):
        getattr(p, name).requires_grad_(True)
    return p


def bench_layer(repeats: int, threads: list[int]) -> None:
    data, _ = synthetic_flame("full", seed=0)
    model = FlameModel(data)
    print(f"torch {torch.__version__}, float32, {data.describe()}")
    print("times in ms as median/min")
    print(f"{'threads':>7} {'batch':>5} {'layer fwd':>13} {'layer f+b':>13} {'matmul fwd':>13} {'matmul f+b':>13}")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for batch in (1, 16):
            params = _params(model, batch)

            def fwd():
                with torch.no_grad():
                    model(params)

            def fwd_bwd():
                model(params).vertices.sum().backward()

            coeffs = torch.cat((params.shape, params.expression), 1).detach().requires_grad_(True)
            dirs = model.dirs.reshape(-1, model.dirs.shape[-1])

            def mm_fwd():
                with torch.no_grad():
                    coeffs @ dirs.T

            def mm_fwd_bwd():
                (coeffs @ dirs.T).sum().backward()

            row = [_times_ms(f, repeats) for f in (fwd, fwd_bwd, mm_fwd, mm_fwd_bwd)]
            cells = " ".join(f"{med:>6.2f}/{low:<6.2f}" for med, low in row)
            print(f"{n_threads:>7} {batch:>5} {cells}")


def bench_loading() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = write_synthetic_flame(tmp, size="full", seed=0)
        print(f"write synthetic full files: {time.perf_counter() - start:.2f} s")
        for style in ("plain", "chumpy"):
            src = paths[style]
            cache = Path(tmp) / f"cache-{style}"
            start = time.perf_counter()
            load_flame(src, cache_dir=cache)
            convert = time.perf_counter() - start
            cached = _median_ms(lambda: load_flame(src, cache_dir=cache), 5)
            key = _median_ms(lambda: source_key(src), 5)
            full_hash = _median_ms(lambda: hashlib.sha256(src.read_bytes()).hexdigest(), 5)
            size = src.stat().st_size / 1e6
            print(
                f"{style:>6} pickle {size:.0f} MB: convert {convert * 1000:.0f} ms, cached load {cached:.0f} ms, "
                f"cache key {key:.1f} ms, full sha256 {full_hash:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--skip-loading", action="store_true")
    args = parser.parse_args()
    bench_layer(args.repeats, args.threads)
    if not args.skip_loading:
        bench_loading()


if __name__ == "__main__":
    main()
