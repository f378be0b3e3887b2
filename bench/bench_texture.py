"""Benchmark: bake a 1024² texture for the full-size synthetic head (5023 vertices, 9976 triangles).

Run: ``.venv/bin/python bench/bench_texture.py [--size 1024] [--repeats 5] [--threads 2]``.
Prints the median wall time (and process CPU time) of whole bakes and of the UV rasterization alone, the share of
visible texels and, on a 768² photo of a known UV colour field rendered with ``core.render.rasterize``, the colour
error of fully visible texels and of texels filled from the mirror.
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
from core.render import interpolate, rasterize  # noqa: E402
from core.render.camera import Camera, world_to_camera  # noqa: E402
from core.texture import bake_texture, rasterize_uv  # noqa: E402


def known_texture(uv: np.ndarray) -> np.ndarray:
    """A smooth colour field over UV space (OBJ convention): (..., 2) -> (..., 3)."""
    u, v = uv[..., 0], uv[..., 1]
    return np.stack([0.5 + 0.35 * np.sin(4 * np.pi * u + 1.0), 0.5 + 0.35 * np.sin(3 * np.pi * v),
                     0.5 + 0.35 * np.cos(2 * np.pi * (u + v))], axis=-1).astype(np.float32)


def accuracy(tpl, verts: np.ndarray, size: int) -> None:
    """Bake a photo of ``known_texture`` and print the colour errors against the truth."""
    s, fl = 768, 4.0
    corner_pos = torch.from_numpy(verts[tpl.faces].reshape(-1, 3))[None]
    tri = torch.arange(corner_pos.shape[1]).reshape(-1, 3)
    camera = Camera.of(fl, (0.0, 0.0), s)
    rast = rasterize(camera.clip(world_to_camera(corner_pos)), tri, (s, s))
    uv = interpolate(torch.from_numpy(tpl.corner_uv.reshape(-1, 2)), rast, tri)[0].numpy()
    photo = np.where(rast.coverage()[0, ..., None].numpy() > 0, known_texture(uv), 0.05).astype(np.float32)
    baked = bake_texture(photo, verts, tpl.faces, tpl.corner_uv, camera.intrinsics(), size=size,
                         mirror_index=tpl.mirror_index)
    rows, cols = np.mgrid[0:size, 0:size]
    texel_uv = np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], axis=-1)
    err = np.abs(baked.image - known_texture(texel_uv)).max(axis=-1)
    full = baked.weight >= 1.0
    # the synthetic layout mirrors at u = 0.5
    mirror_err = np.abs(baked.image - known_texture(texel_uv * [-1, 1] + [1, 0])).max(axis=-1)
    from_mirror = baked.filled_from_mirror & (baked.weight[:, ::-1] >= 1.0)
    print(f"accuracy on a {s}x{s} photo: fully visible texels {full.sum()}, max-channel error median "
          f"{np.median(err[full]):.5f}, 90% {np.quantile(err[full], 0.9):.5f}; mirror-filled texels "
          f"{from_mirror.sum()}, error median {np.median(mirror_err[from_mirror]):.5f}, "
          f"90% {np.quantile(mirror_err[from_mirror], 0.9):.5f}")


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
    accuracy(tpl, verts, args.size)


if __name__ == "__main__":
    main()
