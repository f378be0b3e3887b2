"""Rasterizer speed: forward + backward of UV, normal and mask images of the full-size FLAME-format mesh.

Prints the median time per iteration (goal: <= 15 ms at 256 x 256 on 2 CPU cores) and the time to rasterize
the UV layout at 1024 x 1024 (what the texture baker does). Timings on a shared machine are noisy: compare
numbers from one run.

    python bench/bench_render.py [--threads 2] [--size 256] [--iters 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.fit.maps import corner_uv_tensor, vertex_normals  # noqa: E402
from core.flame import FlameModel, synthetic_flame  # noqa: E402
from core.render import antialias, interpolate, rasterize  # noqa: E402
from core.render.camera import Camera, world_to_camera  # noqa: E402


def timed(fn, iters: int) -> str:
    """Median wall and process-CPU milliseconds per call (CPU time is the steadier figure on a busy machine)."""
    fn()
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return f"{statistics.median(wall) * 1000:7.1f} ms wall, {statistics.median(cpu) * 1000:7.1f} ms CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data, uvt = synthetic_flame("full", 0)
    flame = FlameModel(data).to(dev)
    faces = flame.faces
    verts = flame.v_template[None].clone()
    corner_uv = corner_uv_tensor(uvt, verts)
    uv_tri = torch.arange(faces.shape[0] * 3, device=dev).view(-1, 3)
    s = args.size
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    camera = Camera.of(size=s, like=verts)

    def forward_backward(cull_back=False):
        v = verts.clone().requires_grad_(True)
        clip = camera.clip(world_to_camera(v))
        rast = rasterize(clip, faces, (s, s), cull_back=cull_back)
        uv = interpolate(corner_uv, rast, uv_tri)
        normals = interpolate(vertex_normals(v, faces), rast, faces)
        mask = antialias(rast.coverage(v.dtype)[..., None], rast, clip, faces)
        (uv.sum() + normals.sum() + mask.sum()).backward()
        sync()

    def raster_only():
        with torch.no_grad():
            clip = camera.clip(world_to_camera(verts))
            rasterize(clip, faces, (s, s))
        sync()

    uv = torch.as_tensor(uvt.uv, dtype=verts.dtype, device=dev)
    uv_pos = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)[None]
    uv_faces = torch.as_tensor(uvt.uv_faces, device=dev)

    def uv_space():
        with torch.no_grad():
            rasterize(uv_pos, uv_faces, (1024, 1024))
        sync()

    print(f"# full-size mesh: {verts.shape[1]} vertices, {faces.shape[0]} triangles; {args.threads} threads, {dev}")
    print(f"rasterize only, {s}x{s}:                         {timed(raster_only, args.iters)}")
    print(f"forward+backward UV + normals + AA mask, {s}x{s}: {timed(forward_backward, args.iters)} (goal <= 15 ms)")
    print(f"  the same, front faces only (the fitter's setting): {timed(lambda: forward_backward(True), args.iters)}")
    print(f"rasterize UV layout, 1024x1024:                 {timed(uv_space, max(3, args.iters // 4))}")


if __name__ == "__main__":
    main()
