"""Whole Reconstruct Face time per quality preset: the core pipeline on the astronaut photo, stage by stage.

Uses the configured assets when all four are found (``python -m core assets``), otherwise the project's
stand-ins with the published network size (written once to the cache folder). The Blender scene build that
follows a reconstruction is measured by ``bench_scene.py``; add the two for the time a user waits.

    .venv/bin/python bench/bench_reconstruct.py [--presets fast balanced best] [--device cpu]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import skimage  # noqa: E402
import torch  # noqa: E402

from core.assets import AssetRegistry, cache_dir  # noqa: E402
from core.pipeline import PipelineSettings, reconstruct, write_standin_assets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced", "best"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    registry = AssetRegistry()
    if registry.report().complete:
        which = "configured assets"
    else:
        registry = AssetRegistry(write_standin_assets(cache_dir() / "standins"), use_environment=False)
        which = "stand-in assets (synthetic full-size head, published-size random-weight networks)"
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    print(f"astronaut.png, {which}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':<10}{'total':>8}" + "".join(f"{k:>10}" for k in ("load", "detect", "network", "fit", "texture")))
    for preset in args.presets:
        t0 = time.perf_counter()
        result = reconstruct(photo, registry, PipelineSettings(quality=preset, device=args.device))
        total = time.perf_counter() - t0
        print(f"{preset:<10}{total:>7.1f}s" + "".join(f"{result.timings[k]:>9.1f}s" for k in
                                                     ("load", "detect", "network", "fit", "texture")), flush=True)


if __name__ == "__main__":
    main()
