"""Pixel3DMM prior networks: the UV and normal predictors (module tree, safe loading, inference).

Public API: :class:`NetworkCfg` and :func:`get_config` (named configurations ``uv``, ``normals``, ``tiny``),
:class:`PixelNetwork`, :func:`load_network`, :func:`convert_checkpoint`, :func:`predict` (and :func:`predict_batch` for several crops) with
:class:`Prediction`, and :func:`write_synthetic_checkpoint` for project-made stand-in checkpoints.
"""

from .checkpoint import convert_checkpoint, load_network
from .config import CONFIGS, NetworkCfg, get_config
from .inference import FLAME_AXIS_MIRROR_OFFSET, UV_MIRROR_OFFSET, Prediction, predict, predict_batch, run_network
from .model import PixelNetwork, build_network
from .synthetic import write_synthetic_checkpoint

__all__ = [
    "CONFIGS", "FLAME_AXIS_MIRROR_OFFSET", "NetworkCfg", "PixelNetwork", "Prediction", "UV_MIRROR_OFFSET",
    "build_network", "convert_checkpoint", "get_config", "load_network", "predict", "predict_batch", "run_network",
    "write_synthetic_checkpoint",
]
