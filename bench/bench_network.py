"""Benchmark of the Pixel3DMM prior networks: forward cost against the bare timm backbone, flip-TTA, peak memory,
checkpoint load time (.ckpt vs converted .safetensors), reduced precision and the UV mirror offset.

Usage: ``python bench/bench_network.py [--uv uv.ckpt --normals normals.ckpt] [--reps 2] [--device auto]``.
Without checkpoints it writes full-size synthetic stand-ins (random weights, published-like configuration) to a
temporary folder. Figures are best-of-N wall-clock times, backbone and full network measured alternately;
on a shared machine compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.device import resolve_device  # noqa: E402
from core.network import FLAME_AXIS_MIRROR_OFFSET, UV_MIRROR_OFFSET, convert_checkpoint, load_network  # noqa: E402
from core.network.inference import decode_normals, decode_uv, unflip_mirrored  # noqa: E402
from core.network.synthetic import write_synthetic_checkpoint  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fn_a, fn_b, device, reps):
    """Best-of-``reps`` (wall, process CPU) seconds of two functions, measured alternately.

    Alternating and taking the best run makes the ratio robust to a shared machine's load spikes; the CPU time
    of all threads is reported as well, since wall time on an overloaded machine mostly measures the others.
    """
    fn_a(), fn_b()  # warm-up
    sync(device)
    times = ([], [])
    for _ in range(reps):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple((min(t[0] for t in ts), min(t[1] for t in ts)) for ts in times)


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def face_crop():
    from skimage import data
    return data.astronaut().astype(np.float32) / 255.0  # 512 x 512, public domain


def bench_forward(net, image, device, reps):
    x1 = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    x2 = torch.cat((x1, x1.flip(-1)))
    backbone = net.img_encoder
    rows = {}
    with torch.inference_mode():
        for name, x in (("no TTA (batch 1)", x1), ("flip TTA (batch 2)", x2)):
            reset_peak(device)
            t_backbone, t_full = timed_pair(lambda: backbone(x), lambda: net(x), device, reps)
            rows[name] = (t_backbone, t_full, peak_mb(device))
    return rows


def precision_check(net_uv, net_n, image, device, precision):
    """Max UV difference and max normal angle (degrees) of reduced precision against float32, flip TTA on."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    x = torch.cat((x, x.flip(-1)))
    out = {}
    for net in (net_uv, net_n):
        kind = net.cfg.prediction_type
        res = []
        for prec in ("float32", precision):
            ctx = torch.autocast(device.type, dtype=getattr(torch, prec)) if prec != "float32" else torch.no_grad()
            with torch.inference_mode(), ctx:
                raw = net(x)[:, : net.cfg.output_channels].float()
            avg = 0.5 * (raw[:1] + unflip_mirrored(raw[1:], kind, UV_MIRROR_OFFSET))[0].cpu()
            res.append(decode_uv(avg) if kind == "uv_map" else decode_normals(avg))
        if kind == "uv_map":
            out["max UV diff"] = float((res[0] - res[1]).abs().max())
        else:
            cos = (res[0] * res[1]).sum(-1).clamp(-1, 1)
            out["max normal angle (deg)"] = float(torch.rad2deg(torch.acos(cos)).nan_to_num(0).max())
    return out


def mirror_offset_difference(net_uv, image, device):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    with torch.inference_mode():
        raw = net_uv(torch.cat((x, x.flip(-1))))[:, :2].float().cpu()
    uvs = [decode_uv((0.5 * (raw[:1] + unflip_mirrored(raw[1:], "uv_map", off)))[0])
           for off in (UV_MIRROR_OFFSET, FLAME_AXIS_MIRROR_OFFSET)]
    du = (uvs[1][..., 0] - uvs[0][..., 0]).numpy()
    inside = (uvs[0][..., 0] > 0.01) & (uvs[0][..., 0] < 0.99)
    return float(np.median(du[inside.numpy()])), float(np.abs(du).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", type=Path)
    parser.add_argument("--normals", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="skip the checkpoint load-time comparison")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-network-"))
    paths = {"uv": args.uv, "normals": args.normals}
    for name in paths:
        if paths[name] is None:
            start = time.perf_counter()
            paths[name] = write_synthetic_checkpoint(tmp / f"{name}.ckpt", name, seed=1)
            print(f"wrote synthetic {name}.ckpt ({paths[name].stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s")
    image = face_crop()
    nets = {}
    for name, path in paths.items():
        if not args.skip_load:
            start = time.perf_counter()
            net = load_network(path, "cpu", cache=False)
            t_ckpt = time.perf_counter() - start
            for dtype in ("float32", "float16"):
                conv = convert_checkpoint(path, tmp / f"{name}.{dtype}.safetensors", dtype=dtype)
                start = time.perf_counter()
                load_network(conv, "cpu")
                t_conv = time.perf_counter() - start
                print(f"{name}: load .ckpt {t_ckpt:.2f} s ({path.stat().st_size / 2**20:.0f} MiB) vs {dtype} "
                      f".safetensors {t_conv:.2f} s ({conv.stat().st_size / 2**20:.0f} MiB)")
        nets[name] = load_network(path, device, cache=False)
    for name, net in nets.items():
        for label, ((b_wall, b_cpu), (f_wall, f_cpu), peak) in bench_forward(net, image, device, args.reps).items():
            print(f"{name} {label}: backbone {b_wall:.2f} s (cpu {b_cpu:.2f} s), full network {f_wall:.2f} s "
                  f"(cpu {f_cpu:.2f} s), ratio wall {f_wall / b_wall:.2f} / cpu {f_cpu / b_cpu:.2f}, "
                  f"peak memory {peak:.0f} MiB")
    precisions = ("float16", "bfloat16") if device.type == "cuda" else ("bfloat16",)
    for prec in precisions:
        print(f"{prec} vs float32 (flip TTA): {precision_check(nets['uv'], nets['normals'], image, device, prec)}")
    median, worst = mirror_offset_difference(nets["uv"], image, device)
    print(f"UV mirror offset {FLAME_AXIS_MIRROR_OFFSET} (FLAME axis) vs {UV_MIRROR_OFFSET} (reference): "
          f"median du {median:+.5f}, max |du| {worst:.5f}")


if __name__ == "__main__":
    main()
