"""Benchmark: bake a 1024² texture for the full-size synthetic head (5023 vertices, 9976 triangles).

Run: ``.venv/bin/python bench/bench_texture.py [--size 1024] [--repeats 5] [--threads 2]``.
Prints the median wall time (and process CPU time) of whole bakes and of the UV rasterization alone, and the share
of visible texels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.flame import synthetic_flame  # noqa: E402
from core.texture import bake_texture, rasterize_uv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    _, tpl = synthetic_flame("full", seed=0)
    a = np.radians(30.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    verts = tpl.vertices @ rot.T + np.array([0.0, 0.0, 0.05])
    height, width = 1536, 1152
    k_photo = np.array([[4000.0, 0.0, width / 2], [0.0, 4000.0, height / 2], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    photo = rng.random((height, width, 3), dtype=np.float32)

    def bake():
        return bake_texture(photo, verts, tpl.faces, tpl.corner_uv, k_photo, size=args.size,
                            mirror_index=tpl.mirror_index)

    baked = bake()  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        bake()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    uv_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rasterize_uv(tpl.corner_uv, args.size)
        uv_times.append(time.perf_counter() - t0)
    print(f"mesh: {len(verts)} vertices, {len(tpl.faces)} triangles; photo {width}x{height}; "
          f"texture {args.size}x{args.size}; torch threads {torch.get_num_threads()}")
    print(f"bake_texture: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.repeats} runs "
          f"(process CPU time median {statistics.median(cpu):.3f} s; wall time grows when other jobs share the cores)")
    print(f"  of which rasterize_uv: median {statistics.median(uv_times):.3f} s")
    print(f"chart texels {baked.covered.mean():.1%} of the image; visible {baked.visible[baked.covered].mean():.1%}, "
          f"from the mirror {baked.filled_from_mirror[baked.covered].mean():.1%} of chart texels")


if __name__ == "__main__":
    main()
