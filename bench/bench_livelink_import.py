"""Live Link Face take import and export on a full-size head in Blender (goal: a one-minute 60 fps take, 3600
rows, imports in <= 3 s).

Run: ``.venv/bin/python bench/bench_livelink_import.py [--rows 3600] [--fps 60] [--repeat 5] [--threads 2]``.
The head is core's synthetic FLAME-format head at full size with its 51 ARKit keys (the MediaPipe landmark
embedding derived as the pipeline derives one, cached), built once. The take is random weights and angles in the
app's layout (10 decimals per value). "import" times ``pixel3dmm.import_livelink`` from the call until it
returns: reading and checking the CSV (``core.livelink.read_take``), the rig motion (``core.animation``) and
3600 keyframes on each of 51 ARKit keys, 12 bone channels and the two single keys. "export" times
``pixel3dmm.export_livelink`` of that animation (curves evaluated per frame, the CSV written). Each figure is
the median and min over the repeats; every repeat removes the previous repeat's actions first.
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

import bpy  # noqa: E402  (first: addon_utils lives in Blender's bundled modules)
import addon_utils  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.flame.synthetic import synthetic_flame  # noqa: E402
from core.landmarks import resolve_embedding  # noqa: E402
from core.livelink import Take, write_take  # noqa: E402
from heads import random_fit  # noqa: E402
from pixel3dmm_blender import bridge, scene  # noqa: E402


def _figure(name: str, seconds: list[float], goal: str = "") -> str:
    return f"{name:<8} median {statistics.median(seconds):6.3f} s   min {min(seconds):6.3f} s{goal}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3600)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set OMP_NUM_THREADS for BLAS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    bpy.ops.wm.read_homefile(use_empty=True)
    addon_utils.enable("pixel3dmm_blender", default_set=True)
    flame, uv = synthetic_flame("full", seed=0)
    embedding = resolve_embedding(flame)[0]
    if embedding is None:
        raise SystemExit("no MediaPipe landmark embedding (is mediapipe installed?); the head needs its ARKit keys")
    texture = np.full((64, 64, 3), 0.5, dtype=np.float32)
    result = bridge.prepare_result(SimpleNamespace(flame=flame, uv=uv, fit=random_fit(flame, seed=1), texture=texture,
                                                   landmark_embedding=embedding))
    head = scene.build_head(bpy.context, result.rig, name="bench", texture=result.texture)
    rng = np.random.default_rng(0)
    take = Take.from_frames(rng.uniform(0, 1, (args.rows, 51)), fps=args.fps, head=rng.normal(0, 0.2, (args.rows, 3)),
                            eyes=rng.normal(0, 0.2, (args.rows, 2, 3)), start=12 * 3600.0)
    path = write_take(_TMP / "take.csv", take)
    times: dict[str, list[float]] = {"import": [], "export": []}
    for _ in range(args.repeat):
        bpy.data.batch_remove(list(bpy.data.actions))
        bpy.context.view_layer.objects.active = head.mesh
        start = time.perf_counter()
        assert bpy.ops.pixel3dmm.import_livelink(filepath=str(path)) == {"FINISHED"}
        times["import"].append(time.perf_counter() - start)
        start = time.perf_counter()
        assert bpy.ops.pixel3dmm.export_livelink(filepath=str(_TMP / "out.csv")) == {"FINISHED"}
        times["export"].append(time.perf_counter() - start)
    print(f"take: {args.rows} rows at {args.fps:g} fps, {path.stat().st_size / 1e6:.2f} MB; head with "
          f"{len(head.mesh.data.shape_keys.key_blocks)} shape keys; {args.repeat} repeats, {args.threads} threads")
    print(_figure("import", times["import"], "   (goal <= 3 s)"))
    print(_figure("export", times["export"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
