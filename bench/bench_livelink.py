"""Benchmark reading and writing Live Link Face takes (goal: a one-minute 60 fps take, 3600 rows, imports in <= 3 s).

Writes a synthetic take in the app's layout (random weights and angles, 10 decimals per value as the app writes
them) and prints median and minimum times of :func:`core.livelink.read_take` and :func:`write_take`.

    .venv/bin/python bench/bench_livelink.py [--rows 3600] [--fps 60] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.livelink import Take, read_take, write_take  # noqa: E402


def _times_ms(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3600)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    take = Take.from_frames(
        rng.uniform(0, 1, (args.rows, 51)), fps=args.fps, head=rng.normal(0, 0.2, (args.rows, 3)),
        eyes=rng.normal(0, 0.2, (args.rows, 2, 3)), start=12 * 3600.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "take.csv"
        write_med, write_min = _times_ms(lambda: write_take(path, take), args.repeats)
        read_med, read_min = _times_ms(lambda: read_take(path), args.repeats)
        size = path.stat().st_size
        back = read_take(path)
    assert back.fps == args.fps and len(back.frames) == args.rows
    print(f"take: {args.rows} rows at {args.fps:g} fps, {size / 1e6:.2f} MB")
    print(f"read_take  median {read_med:7.1f} ms, min {read_min:7.1f} ms   (goal <= 3000 ms)")
    print(f"write_take median {write_med:7.1f} ms, min {write_min:7.1f} ms")


if __name__ == "__main__":
    main()
