"""Project-made stand-ins for the published checkpoints: Lightning-format ``.ckpt`` files with random weights.

They have the published layout: a zip written by ``torch.save`` holding ``state_dict`` (network keys under
``net.`` plus the training buffer ``vertex_weight_mask`` of shape (1, 5023, 3)), ``hyper_parameters["cfg"]`` and
Lightning's training state as a training run leaves it (``epoch``, ``global_step``, ``pytorch-lightning_version``,
Adam ``optimizer_states``, ``lr_schedulers``, ``loops``, ``hparams_name`` and ``callbacks`` whose
ModelCheckpoint state holds numpy scalars and arrays, ``pathlib`` paths and a ``datetime``; the hyper-parameters
also carry a ``functools.partial`` and an object of Lightning's ``ModelCheckpoint`` class). Those objects are
pickled under their real names, so a reader meets the same globals as in a real training checkpoint.

The configuration is pickled with the same class references and object state as a real OmegaConf DictConfig
(``omegaconf.dictconfig.DictConfig`` with ``_metadata`` / ``_parent`` / ``_content``, ``omegaconf.base``
metadata objects, ``omegaconf.nodes.AnyNode`` leaves holding ``_val``), written without omegaconf: a pickler
writes the stand-in classes of :mod:`.checkpoint` under the OmegaConf names.
"""

from __future__ import annotations

import collections
import datetime
import functools
import os
import pathlib
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .checkpoint import (
    NET_PREFIX, AnyTypeStandIn, ContainerMetadataStandIn, DictConfigStandIn, ListConfigStandIn, MetadataStandIn,
    ValueNodeStandIn,
)
from .config import NetworkCfg, get_config
from .model import PixelNetwork

class LightningModelCheckpoint:
    """Written as ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` (a class this project lacks)."""

    def __init__(self, dirpath: pathlib.PurePath, monitor: str) -> None:
        self.dirpath, self.monitor, self.save_top_k, self.best_model_score = dirpath, monitor, 3, np.float64(0.125)


class TorchAdamW:
    """Written as ``torch.optim.adamw.AdamW``: the optimizer class a ``functools.partial`` in hparams names."""


#: Names the stand-in classes are written under (those of a real OmegaConf dump and of Lightning's classes).
_WRITE_NAMES = {
    LightningModelCheckpoint: "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    TorchAdamW: "torch.optim.adamw.AdamW",
    DictConfigStandIn: "omegaconf.dictconfig.DictConfig",
    ListConfigStandIn: "omegaconf.listconfig.ListConfig",
    ContainerMetadataStandIn: "omegaconf.base.ContainerMetadata",
    MetadataStandIn: "omegaconf.base.Metadata",
    ValueNodeStandIn: "omegaconf.nodes.AnyNode",
    AnyTypeStandIn: "typing.Any",
}
#: Per-vertex loss weights take these values in the published ``vertex_weight_mask``.
_VERTEX_WEIGHT_VALUES = (0.01, 1.0, 150.0)


class _OmegaConfPickler(pickle._Pickler):
    """Pure-Python pickler that writes the stand-in classes under their foreign names.

    ``module_renames`` maps a module prefix to the one written instead (e.g. numpy 1's ``numpy.core`` to numpy 2's
    ``numpy._core``), so either numpy's pickles can be produced.
    """

    module_renames: dict[str, str] = {}

    def save_global(self, obj, name=None):  # noqa: D102 - pickle API
        qualified = _WRITE_NAMES.get(obj) if isinstance(obj, type) else None
        if qualified is not None:
            module, _, attr = qualified.rpartition(".")
        else:
            attr = name or obj.__qualname__
            module = pickle.whichmodule(obj, attr)
            rename = next(((old, new) for old, new in self.module_renames.items()
                           if module == old or module.startswith(old + ".")), None)
            if rename is None:
                return super().save_global(obj, name)
            module = rename[1] + module[len(rename[0]):]
        self.write(pickle.GLOBAL + module.encode() + b"\n" + attr.encode() + b"\n")
        self.memoize(obj)
        return None


def _pickle_module(module_renames: Mapping[str, str] | None) -> types.SimpleNamespace:
    pickler = type("Pickler", (_OmegaConfPickler,), {"module_renames": dict(module_renames or {})})
    return types.SimpleNamespace(Pickler=pickler, __name__="pickle")


def _metadata(cls: type, key: Any, **extra: Any) -> Any:
    meta = cls()
    meta.__dict__.update(
        ref_type=AnyTypeStandIn, object_type=extra.pop("object_type", None), optional=True, key=key, flags={},
        flags_root=False, resolver_cache=collections.defaultdict(dict), **extra,
    )
    return meta


def to_dictconfig(tree: Any, key: Any = None, parent: Any = None) -> Any:
    """Wrap a plain configuration tree into OmegaConf-shaped stand-in objects (DictConfig / ListConfig / AnyNode)."""
    if isinstance(tree, Mapping):
        node = DictConfigStandIn()
        meta = _metadata(ContainerMetadataStandIn, key, object_type=dict, key_type=AnyTypeStandIn,
                         element_type=AnyTypeStandIn)
        node.__dict__.update(_metadata=meta, _parent=parent, _content={})
        node.__dict__["_content"] = {k: to_dictconfig(v, k, node) for k, v in tree.items()}
        return node
    if isinstance(tree, (list, tuple)):
        node = ListConfigStandIn()
        meta = _metadata(ContainerMetadataStandIn, key, object_type=list, key_type=int, element_type=AnyTypeStandIn)
        node.__dict__.update(_metadata=meta, _parent=parent, _content=[])
        node.__dict__["_content"] = [to_dictconfig(v, i, node) for i, v in enumerate(tree)]
        return node
    leaf = ValueNodeStandIn()
    leaf.__dict__.update(_metadata=_metadata(MetadataStandIn, key), _parent=parent, _val=tree)
    return leaf


def lightning_cfg_tree(cfg: NetworkCfg) -> dict[str, Any]:
    """The plain training configuration a Pixel3DMM system would store for ``cfg`` (``n_views`` at top level)."""
    model = {k: v for k, v in cfg.to_dict().items() if k != "n_views"}
    model.update(vol_embedding_out_dim=64, use_rand_views=False)
    return {
        "model": model,
        "n_views": cfg.n_views,
        "train": {"lr": 4e-4, "lr_backbone": 1e-5, "batch_size": 8, "weight_decay": 0.05},
        "data": {"image_size": 512, "mirror_aug": True},
        "inference_batch_size": "${train.batch_size}",
    }


def synthetic_system_state(cfg: NetworkCfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random network weights under ``net.`` plus ``vertex_weight_mask``, as a Lightning system would save them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PixelNetwork(cfg)
        with torch.no_grad():
            if cfg.n_views > 1:
                net.view_embed.normal_(0.0, cfg.view_embed_dim ** -0.5)
            if cfg.use_pos_enc:
                net.patch_pos_enc.normal_(0.0, net.img_encoder.num_features ** -0.5)
        values = torch.tensor(_VERTEX_WEIGHT_VALUES)
        mask = values[torch.randint(0, len(values), (1, 5023, 3))]
    state = {NET_PREFIX + k: v.detach().clone() for k, v in net.state_dict().items()}
    state["vertex_weight_mask"] = mask
    return state


def _adam_state(state_dict: Mapping[str, torch.Tensor], full: bool, step: int) -> dict[int, dict[str, Any]]:
    """Adam's per-parameter state: every ``net.*`` tensor (``full``) or only the first one."""
    params = [v for k, v in state_dict.items() if k.startswith(NET_PREFIX)]
    return {
        i: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
        for i, v in enumerate(params if full else params[:1])
    }


def _callbacks(epoch: int) -> dict[str, Any]:
    """Callback state as Lightning saves it: numpy scalars and arrays, ``pathlib`` paths, a ``datetime``."""
    dirpath = pathlib.PurePosixPath("/runs/pixel3dmm/uv/checkpoints")
    best = dirpath / f"epoch={epoch - 1}.ckpt"
    return {
        "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0}": {
            "monitor": "val/loss", "best_model_score": np.float64(0.125), "best_model_path": best,
            "current_score": np.float32(0.13), "dirpath": pathlib.PosixPath(str(dirpath)),
            "best_k_models": {best: np.float64(0.125), dirpath / f"epoch={epoch - 3}.ckpt": np.float64(0.131)},
            "kth_best_model_path": str(best), "kth_value": np.array(0.131), "last_model_path": str(dirpath / "last.ckpt"),
            "history": np.linspace(0.5, 0.125, 4, dtype=np.float32),
        },
        "Timer": {"time_elapsed": {"train": 86400.5, "validate": 3600.0, "test": 0.0},
                  "started": datetime.datetime(2025, 3, 1, 12, 30, 5)},
    }


def write_lightning_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                               cfg_tree: Mapping[str, Any], *, epoch: int = 41, full_optimizer_state: bool = False,
                               module_renames: Mapping[str, str] | None = None) -> Path:
    """Write ``state_dict`` and ``cfg_tree`` (a plain dict, stored as a DictConfig) in the Lightning layout.

    Parameters
    ----------
    path : output ``.ckpt``.
    state_dict : the system's state dict (``net.*`` keys and any training-only entries).
    cfg_tree : the plain configuration, written as an OmegaConf DictConfig.
    epoch : recorded epoch.
    full_optimizer_state : store Adam's ``exp_avg`` and ``exp_avg_sq`` for every ``net.*`` tensor, tripling the
        file as in a real training checkpoint (default: for the first tensor only, to keep test files small).
    module_renames : module prefixes written under another name, e.g. ``{"numpy.core": "numpy._core"}`` for the
        names numpy 2 pickles under.
    """
    step = 1000 * (epoch + 1)
    optimizer_state = _adam_state(state_dict, full_optimizer_state, step)
    ckpt = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": dict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": epoch + 1, "completed": epoch}},
                               "epoch_loop.state_dict": {"_batches_that_stepped": step},
                               "epoch_loop.batch_progress": collections.defaultdict(int, ready=step)}},
        "callbacks": _callbacks(epoch),
        "optimizer_states": [{
            "state": optimizer_state,
            "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "eps": 1e-8,
                              "amsgrad": False, "params": list(range(len(optimizer_state)))}],
        }],
        "lr_schedulers": [{"base_lrs": [4e-4], "last_epoch": step, "_step_count": step + 1, "_last_lr": [4e-4],
                           "verbose": False, "lr_lambdas": [None]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "cfg": to_dictconfig(cfg_tree),
            "optimizer": functools.partial(TorchAdamW, lr=4e-4, betas=(0.9, 0.95)),
            "checkpoint_callback": LightningModelCheckpoint(pathlib.PosixPath("/runs/pixel3dmm/uv"), "val/loss"),
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, pickle_module=_pickle_module(module_renames), pickle_protocol=2)
    return path


def write_synthetic_checkpoint(path: str | os.PathLike, cfg_name: str | NetworkCfg = "tiny", seed: int = 0,
                               prediction_type: str | None = None, *, full_optimizer_state: bool = False) -> Path:
    """Write a Lightning-format stand-in checkpoint with random weights.

    Parameters
    ----------
    path : path-like
        Output ``.ckpt`` file.
    cfg_name : str or NetworkCfg
        A registry name (``"tiny"``, ``"uv"``, ``"normals"``) or a configuration.
    seed : int
        Seed of the random weights (the global RNG state is left untouched).
    prediction_type : {"uv_map", "normals"}, optional
        Overrides the configuration's prediction type.
    full_optimizer_state : bool
        Adam state for every tensor, as in a real training checkpoint (three times the network's size).

    Returns
    -------
    Path
        ``path``. A full-size (``uv``/``normals``) file is about 0.4 GB (1.2 GB with ``full_optimizer_state``).
    """
    cfg = cfg_name if isinstance(cfg_name, NetworkCfg) else get_config(cfg_name)
    if prediction_type is not None:
        cfg = NetworkCfg.from_dict({**cfg.to_dict(), "prediction_type": prediction_type})
    return write_lightning_checkpoint(path, synthetic_system_state(cfg, seed), lightning_cfg_tree(cfg),
                                      full_optimizer_state=full_optimizer_state)
