"""Project-made stand-ins for the published checkpoints: Lightning-format ``.ckpt`` files with random weights.

They have the published layout: a zip written by ``torch.save`` holding ``state_dict`` (network keys under
``net.`` plus the training buffer ``vertex_weight_mask`` of shape (1, 5023, 3)), ``hyper_parameters["cfg"]`` and
Lightning's bookkeeping (``epoch``, ``global_step``, ``pytorch-lightning_version``, ``optimizer_states``,
``lr_schedulers``, ``callbacks``, ``loops``, ``hparams_name``).

The configuration is pickled with the same class references and object state as a real OmegaConf DictConfig
(``omegaconf.dictconfig.DictConfig`` with ``_metadata`` / ``_parent`` / ``_content``, ``omegaconf.base``
metadata objects, ``omegaconf.nodes.AnyNode`` leaves holding ``_val``), written without omegaconf: a pickler
writes the stand-in classes of :mod:`.checkpoint` under the OmegaConf names.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import (
    NET_PREFIX, AnyTypeStandIn, ContainerMetadataStandIn, DictConfigStandIn, ListConfigStandIn, MetadataStandIn,
    ValueNodeStandIn,
)
from .config import NetworkCfg, get_config
from .model import PixelNetwork

#: Names the stand-in classes are written under (those of a real OmegaConf dump).
_WRITE_NAMES = {
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
    """Pure-Python pickler that writes the stand-in classes as OmegaConf globals."""

    def save_global(self, obj, name=None):  # noqa: D102 - pickle API
        qualified = _WRITE_NAMES.get(obj) if isinstance(obj, type) else None
        if qualified is None:
            return super().save_global(obj, name)
        module, _, attr = qualified.rpartition(".")
        self.write(pickle.GLOBAL + module.encode() + b"\n" + attr.encode() + b"\n")
        self.memoize(obj)
        return None


_PICKLE_MODULE = types.SimpleNamespace(Pickler=_OmegaConfPickler, __name__="pickle")


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


def write_lightning_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                               cfg_tree: Mapping[str, Any], *, epoch: int = 41) -> Path:
    """Write ``state_dict`` and ``cfg_tree`` (a plain dict, stored as a DictConfig) in the Lightning layout."""
    first = next(iter(state_dict.values()))
    ckpt = {
        "epoch": epoch,
        "global_step": 1000 * (epoch + 1),
        "pytorch-lightning_version": "2.2.1",
        "state_dict": dict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": epoch + 1, "completed": epoch}},
                               "epoch_loop.state_dict": {"_batches_that_stepped": 1000 * (epoch + 1)}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.125), "best_model_path": "/ckpts/last.ckpt", "dirpath": "/ckpts",
            "best_k_models": {}, "kth_best_model_path": "", "kth_value": torch.tensor(float("inf")),
            "last_model_path": "/ckpts/last.ckpt"}},
        "optimizer_states": [{
            "state": {0: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(first),
                          "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "eps": 1e-8, "params": [0]}],
        }],
        "lr_schedulers": [{"base_lrs": [4e-4], "last_epoch": 1000, "_step_count": 1001, "_last_lr": [4e-4],
                           "lr_lambdas": [None]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"cfg": to_dictconfig(cfg_tree)},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, pickle_module=_PICKLE_MODULE, pickle_protocol=2)
    return path


def write_synthetic_checkpoint(path: str | os.PathLike, cfg_name: str | NetworkCfg = "tiny", seed: int = 0,
                               prediction_type: str | None = None) -> Path:
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

    Returns
    -------
    Path
        ``path``. A full-size (``uv``/``normals``) file is about 0.4 GB.
    """
    cfg = cfg_name if isinstance(cfg_name, NetworkCfg) else get_config(cfg_name)
    if prediction_type is not None:
        cfg = NetworkCfg.from_dict({**cfg.to_dict(), "prediction_type": prediction_type})
    return write_lightning_checkpoint(path, synthetic_system_state(cfg, seed), lightning_cfg_tree(cfg))
