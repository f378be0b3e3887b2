"""Peak memory and time of the first load of a published-size checkpoint: validation, streaming conversion, and
``load_network`` (which reads the network and writes its float32 cache).

Usage: ``python bench/bench_convert.py [--folder DIR] [--keep]``.

It writes (once, into ``--folder``) a Lightning stand-in the size of the published ``uv.ckpt`` (2,246,794,577 B):
random weights for a ViT-B/16 backbone with a 768-wide, 6-layer head (a network of 719 MB in float32), Adam's
``exp_avg`` and ``exp_avg_sq`` for every tensor as a training run leaves them (the other two thirds of the file),
Lightning's callbacks and loops, and a training-only loss module outside ``net.`` that brings the file to the
published size. Each measurement then runs in a fresh Python process and reports its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) next to the same process's RSS right after the imports, so the figure
includes the interpreter, torch and timm. The ratio the goal is about is peak RSS / the network's float32 size.
Run it on a quiet machine: times vary with load, peak RSS does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_UV_BYTES = 2_246_794_577

WRITE = """
import sys, torch
from core.network.config import NetworkCfg
from core.network.synthetic import lightning_cfg_tree, synthetic_system_state, write_lightning_checkpoint
cfg = NetworkCfg(encoder_backbone="vit_base_patch16_224.dino", prediction_type="uv_map", embedding_dim=768,
                 num_layers=6, num_heads=8, n_views=2, view_embed_dim=16)
state = synthetic_system_state(cfg, seed=0)
net = sum(v.numel() * v.element_size() for k, v in state.items() if k.startswith("net."))
pad = max(0, int(sys.argv[2]) - 3 * net - 4 * 1024 * 1024) // 4  # the rest of the published size: a loss module
state["loss.lpips.lin.weight"] = torch.zeros(pad)
write_lightning_checkpoint(sys.argv[1], state, lightning_cfg_tree(cfg), full_optimizer_state=True)
"""

MEASURE = """
import json, resource, sys, time
def rss_mb():  # current resident set size
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from core.network.checkpoint import convert_checkpoint, inspect_network_file, load_network
import timm, torch
torch.set_num_threads(2)
base = rss_mb()
start = time.perf_counter()
what, src, dst = sys.argv[1:4]
steps = []
if what == "inspect":
    info = inspect_network_file(src)
elif what == "convert":
    convert_checkpoint(src, dst, dtype="float16", on_progress=steps.append)
elif what == "load":
    load_network(src, "cpu", cache_dir=dst)
seconds = time.perf_counter() - start
info = inspect_network_file(src)
print(json.dumps({"base_mb": base, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": seconds, "net_f32_mb": info.float32_bytes / 2**20, "progress_calls": len(steps)}))
"""


def run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where the stand-in is written and reused (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (the stand-in is always kept)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / "p3dmm-bench-convert"
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "uv-published-size.ckpt"
    if not src.is_file():
        print(f"writing the published-size stand-in {src} ...", flush=True)
        run(WRITE, str(src), str(PUBLISHED_UV_BYTES))
    size = src.stat().st_size
    print(f"stand-in: {size:,} B ({size / PUBLISHED_UV_BYTES:.3f} x the published uv.ckpt)")
    outputs = {"inspect": "-", "convert": str(folder / "uv.safetensors"), "load": str(folder / "cache")}
    for what, dst in outputs.items():
        r = run(MEASURE, what, str(src), dst)
        print(f"{what:<8} peak RSS {r['peak_mb']:7.0f} MiB = {r['peak_mb'] / r['net_f32_mb']:.2f} x the network's "
              f"float32 size ({r['net_f32_mb']:.0f} MiB); {r['base_mb']:.0f} MiB after the imports; "
              f"{r['seconds']:.1f} s" + (f"; {r['progress_calls']} progress reports" if what == "convert" else ""))
    converted = Path(outputs["convert"])
    print(f"converted float16 file: {converted.stat().st_size:,} B")
    if not args.keep:
        converted.unlink(missing_ok=True)
        for cached in Path(outputs["load"]).glob("networks/*.safetensors"):
            cached.unlink()


if __name__ == "__main__":
    main()
