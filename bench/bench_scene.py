"""Blender scene build and export times for a full-size head, with its 51 ARKit keys.

Run: ``.venv/bin/python bench/bench_scene.py [--repeat N] [--threads 2] [--no-arkit]``. The head is core's
synthetic FLAME-format head at full size (5023 vertices, 9976 triangles, 100 expression components, eyelids),
with a random fit, a 1024 x 1024 texture and a MediaPipe landmark embedding derived as the pipeline derives
one (cached), prepared for the scene as the add-on's worker does (``bridge.prepare_result``: the core rig with
its ARKit keys and the texture's Blender pixels; timed apart as "prepare"). One build makes the mesh with its UV
map, 1 + 51 + 1 + 100 + 2 + 36 shape keys, the 36 corrective drivers, the armature with skin weights, the
material with the texture image (packed) and the camera; it is timed from the call of ``scene.build_head``
until it returns (the depsgraph update included). The GLB and FBX exports of that head are timed separately.
Each figure is the median and min over the repeats, every repeat starting from an empty file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "blender"))
_TMP = Path(tempfile.mkdtemp(prefix="p3dmm-bench-"))
os.environ.setdefault("BLENDER_USER_RESOURCES", str(_TMP / "blender_user"))
os.environ.setdefault("MESA_SHADER_CACHE_DIR", str(_TMP / "mesa"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.flame.synthetic import synthetic_flame  # noqa: E402
from core.landmarks import resolve_embedding  # noqa: E402
from heads import random_fit  # noqa: E402
from pixel3dmm_blender import bridge, export, scene  # noqa: E402


def _figure(name: str, seconds: list[float]) -> str:
    return f"{name:<28} median {statistics.median(seconds):6.3f} s   min {min(seconds):6.3f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set OMP_NUM_THREADS for BLAS)")
    parser.add_argument("--no-arkit", action="store_true", help="build without the ARKit keys")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    flame, uv = synthetic_flame("full", seed=0)
    fit = random_fit(flame, seed=1, eyelids=True)
    texture = np.random.default_rng(0).random((1024, 1024, 3)).astype(np.float32)
    embedding = None if args.no_arkit else resolve_embedding(flame)[0]
    if embedding is None and not args.no_arkit:
        raise SystemExit("no MediaPipe landmark embedding (is mediapipe installed?); run with --no-arkit")
    reconstruction = SimpleNamespace(flame=flame, uv=uv, fit=fit, texture=texture, landmark_embedding=embedding)
    times: dict[str, list[float]] = {"prepare (worker)": [], "build": [], "prepare + build": [], "GLB export": [],
                                     "FBX export": []}
    sizes = {}
    for _ in range(args.repeat):
        bpy.ops.wm.read_homefile(use_empty=True)
        start = time.perf_counter()
        result = bridge.prepare_result(reconstruction)
        times["prepare (worker)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        head = scene.build_head(bpy.context, result.rig, name="bench", texture=result.texture)
        times["build"].append(time.perf_counter() - start)
        times["prepare + build"].append(times["prepare (worker)"][-1] + times["build"][-1])
        for label, writer, suffix in (("GLB export", export.export_glb, ".glb"),
                                      ("FBX export", export.export_fbx, ".fbx")):
            start = time.perf_counter()
            path = writer(bpy.context, head.mesh, str(_TMP / f"head{suffix}"))
            times[label].append(time.perf_counter() - start)
            sizes[label] = path.stat().st_size / 1e6
    keys = len(head.mesh.data.shape_keys.key_blocks)
    print(f"head: {len(head.mesh.data.vertices)} vertices, {len(head.mesh.data.polygons)} triangles, "
          f"{keys} shape keys, {len(head.mesh.data.shape_keys.animation_data.drivers)} drivers, "
          f"texture {texture.shape[0]}x{texture.shape[1]}; {args.repeat} repeats, {args.threads} threads")
    for name, seconds in times.items():
        extra = f"   {sizes[name]:.2f} MB" if name in sizes else "   (goal <= 1.5 s)" if name.endswith("build") else ""
        print(_figure(name, seconds) + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
