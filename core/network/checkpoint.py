"""Safe loading, strict matching, conversion and caching of Pixel3DMM network checkpoints.

Published checkpoints are PyTorch Lightning files: a zip with a pickle that holds ``state_dict`` (network keys
prefixed ``net.``, plus the training-only buffer ``vertex_weight_mask``), ``hyper_parameters["cfg"]`` (an
OmegaConf DictConfig) and Lightning's training state. Pickles can run code, so they are only ever read with
torch's weights-only unpickler. The few OmegaConf classes the configuration needs are mapped to inert stand-in
classes below (nothing from omegaconf is imported or executed) and turned into plain dicts and lists. Any other
global referenced by the file (``os.system``, ``builtins.eval``, ...) is refused before loading, with a
:class:`CheckpointError`.

:func:`convert_checkpoint` writes a compact ``.safetensors`` file (float32 or float16 weights without the
``net.`` prefix; the :class:`NetworkCfg` as JSON in the file's metadata). :func:`load_network` accepts both forms
and, for ``.ckpt`` files, caches a float32 conversion under :func:`core.assets.cache_dir` so the add-on's later
loads skip the 1.5-2.3 GB pickle.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pickle
import re
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch

from ..assets import cache_dir, sniff_kind
from ..device import is_gpu, is_out_of_memory, meta_device, release_memory, resolve_device
from ..errors import CheckpointError
from .config import NetworkCfg
from .model import PixelNetwork

logger = logging.getLogger(__name__)

#: Prefix of the network's keys inside the Lightning system's state dict.
NET_PREFIX = "net."
#: Buffers of the Lightning system that only training uses; they are dropped on load.
TRAINING_BUFFERS = frozenset({"vertex_weight_mask"})
#: Marker in a converted file's metadata.
FORMAT_NAME = "pixel3dmm-network"
FORMAT_VERSION = "1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# --- OmegaConf stand-ins -------------------------------------------------------------------------------------
class _OmegaConfObject:
    """Inert stand-in for an OmegaConf class: unpickling only fills ``__dict__``; no OmegaConf code runs."""


class DictConfigStandIn(_OmegaConfObject):
    """``omegaconf.dictconfig.DictConfig``: state ``_metadata``, ``_parent``, ``_content`` (dict of nodes)."""


class ListConfigStandIn(_OmegaConfObject):
    """``omegaconf.listconfig.ListConfig``: state ``_metadata``, ``_parent``, ``_content`` (list of nodes)."""


class ContainerMetadataStandIn(_OmegaConfObject):
    """``omegaconf.base.ContainerMetadata``."""


class MetadataStandIn(_OmegaConfObject):
    """``omegaconf.base.Metadata``."""


class ValueNodeStandIn(_OmegaConfObject):
    """Any ``omegaconf.nodes`` value node: state ``_metadata``, ``_parent``, ``_val``."""


class AnyTypeStandIn:
    """Stands for ``typing.Any`` inside OmegaConf metadata."""


#: Fully qualified names the weights-only unpickler may resolve, mapped to what it gets instead.
OMEGACONF_STANDINS: dict[str, type] = {
    "omegaconf.dictconfig.DictConfig": DictConfigStandIn,
    "omegaconf.listconfig.ListConfig": ListConfigStandIn,
    "omegaconf.base.ContainerMetadata": ContainerMetadataStandIn,
    "omegaconf.base.Metadata": MetadataStandIn,
    **{
        f"omegaconf.nodes.{name}": ValueNodeStandIn
        for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
    },
    "typing.Any": AnyTypeStandIn,
}
#: Harmless real globals an OmegaConf state refers to (types as metadata values, ``defaultdict(dict)``).
_PLAIN_GLOBALS: dict[str, Any] = {
    f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, int, float, str, bool, bytes)
} | {"collections.defaultdict": collections.defaultdict, "collections.OrderedDict": collections.OrderedDict}


def _safe_globals() -> list:
    entries: list = [(cls, name) for name, cls in OMEGACONF_STANDINS.items()]
    entries += [(obj, name) for name, obj in _PLAIN_GLOBALS.items()]
    return entries


def _allowed_global_names() -> frozenset[str]:
    return frozenset(OMEGACONF_STANDINS) | frozenset(_PLAIN_GLOBALS)


def to_plain(obj: Any) -> Any:
    """Turn unpickled OmegaConf stand-ins (and containers holding them) into plain dicts, lists and values."""
    if isinstance(obj, (DictConfigStandIn, ListConfigStandIn)):
        return to_plain(obj.__dict__.get("_content"))
    if isinstance(obj, ValueNodeStandIn):
        return to_plain(obj.__dict__.get("_val"))
    if isinstance(obj, Mapping):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(value) for value in obj]
    return obj


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def resolve_interpolations(cfg: Any, root: Any = None) -> Any:
    """Resolve whole-value absolute interpolations such as ``"${n_views}"`` in a plain configuration.

    Other strings (including partial or relative interpolations) are returned unchanged; a reference to a
    missing key stays the literal string, and any key the network needs then fails its type check loudly.
    """
    root = cfg if root is None else root
    if isinstance(cfg, dict):
        return {key: resolve_interpolations(value, root) for key, value in cfg.items()}
    if isinstance(cfg, list):
        return [resolve_interpolations(value, root) for value in cfg]
    if isinstance(cfg, str):
        match = _INTERPOLATION.match(cfg)
        if match:
            node: Any = root
            for part in match.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    return cfg
                node = node[part]
            return resolve_interpolations(node, root)
    return cfg


# --- reading ---------------------------------------------------------------------------------------------------
def _describe(path: Path) -> str:
    return f"'{path.name}'"


def _check_readable(path: Path) -> str:
    """Return the file kind or raise a one-sentence :class:`CheckpointError` for unusable files."""
    if not path.is_file():
        raise CheckpointError(f"The network checkpoint {path} does not exist; check the path in the settings.")
    kind = sniff_kind(path)
    if kind == "html":
        raise CheckpointError(
            f"The file {_describe(path)} is a web page, not a checkpoint (the download failed); download it again."
        )
    if kind == "zip" or (kind is None and path.stat().st_size > 0 and _zip_head(path)):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"The checkpoint {_describe(path)} is incomplete (truncated download); download it again."
            )
        return "zip"
    if kind == "safetensors":
        return kind
    if kind == "pickle":
        raise CheckpointError(
            f"The file {_describe(path)} is a plain pickle, not a PyTorch Lightning checkpoint; use the published "
            "uv.ckpt or normals.ckpt."
        )
    raise CheckpointError(
        f"The file {_describe(path)} is not a network checkpoint; use the published uv.ckpt or normals.ckpt."
    )


def _zip_head(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _refuse_unsafe_globals(path: Path) -> None:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"The checkpoint {_describe(path)} is damaged and cannot be read; download it again."
        ) from exc
    unsafe = sorted(set(names) - _allowed_global_names())
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
        raise CheckpointError(
            f"The checkpoint {_describe(path)} refers to code ({shown}) that a safe load refuses to run; use only the "
            "official uv.ckpt and normals.ckpt files."
        )


def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read a Lightning ``.ckpt`` safely and return its network state dict and configuration.

    The file is memory-mapped (no second in-memory copy of the weights); Lightning's optimizer and loop state
    are never touched.

    Parameters
    ----------
    path : path-like
        The ``.ckpt`` file.

    Returns
    -------
    state : dict[str, torch.Tensor]
        Network weights with the ``net.`` prefix removed and training buffers dropped (see
        :func:`filter_state_dict`).
    cfg : NetworkCfg
        The architecture read from ``hyper_parameters["cfg"]``.
    """
    path = Path(path)
    if _check_readable(path) != "zip":
        raise CheckpointError(
            f"The file {_describe(path)} is a converted network, not a Lightning checkpoint; load it with "
            "load_network instead."
        )
    _refuse_unsafe_globals(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"The checkpoint {_describe(path)} is damaged and cannot be read; download it again."
        ) from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(
            f"The file {_describe(path)} is a PyTorch file but not a Lightning checkpoint; use the published "
            "uv.ckpt or normals.ckpt."
        )
    hparams = to_plain(ckpt.get("hyper_parameters"))
    if not isinstance(hparams, Mapping):
        raise CheckpointError(
            f"The checkpoint {_describe(path)} stores no hyper-parameters, so its network cannot be rebuilt; use the "
            "published uv.ckpt or normals.ckpt."
        )
    # save_hyperparameters() on `system(cfg)` stores {"cfg": DictConfig}; accept a bare cfg as well.
    cfg_tree = hparams.get("cfg", hparams)
    cfg = NetworkCfg.from_lightning_cfg(resolve_interpolations(cfg_tree))
    return filter_state_dict(ckpt["state_dict"]), cfg


def filter_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the Lightning ``net.`` prefix and drop the training-only buffers.

    Keys that are neither under ``net.`` nor known training buffers are kept unchanged, so the strict
    comparison in :func:`load_state_strict` reports them as unexpected instead of silently ignoring them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in TRAINING_BUFFERS:
            continue
        out[key[len(NET_PREFIX):] if key.startswith(NET_PREFIX) else key] = value
    return out


def _key_list(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_state_strict(model: PixelNetwork, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` with strict key and shape matching; mismatches raise :class:`CheckpointError`.

    The loaded tensors replace the model's parameters (``assign=True``), so no second copy of the weights is
    kept; the model is then converted to float32.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {_key_list(missing)}"] if missing else []) + (
            [f"unexpected {_key_list(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(
            f"The {source} does not match the network its configuration describes ({'; '.join(parts)}); download it "
            "again or report the file to the add-on's authors."
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"The {source} does not match the network its configuration describes ({key} has shape "
            f"{tuple(state[key].shape)}, expected {tuple(expected[key].shape)}); download it again or report the file "
            "to the add-on's authors."
        )
    model.load_state_dict(dict(state), strict=True, assign=True)
    model.float()


def read_converted(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read a file written by :func:`convert_checkpoint` and return its weights and configuration."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"The converted network {_describe(path)} is damaged; convert the checkpoint again."
        ) from exc
    if meta.get("format") != FORMAT_NAME or "network_cfg" not in meta:
        raise CheckpointError(
            f"The file {_describe(path)} is a safetensors file but not a converted Pixel3DMM network; convert uv.ckpt "
            "or normals.ckpt with 'python -m core convert-checkpoint'."
        )
    try:
        cfg_dict = json.loads(meta["network_cfg"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"The converted network {_describe(path)} has an unreadable configuration; convert the checkpoint again."
        ) from exc
    return state, NetworkCfg.from_dict(cfg_dict)


def read_network_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read either form (Lightning ``.ckpt`` or converted ``.safetensors``), deciding by content, not name."""
    path = Path(path)
    if _check_readable(path) == "safetensors":
        return read_converted(path)
    return read_lightning_checkpoint(path)


# --- building, converting, caching -----------------------------------------------------------------------------
def build_from_state(state: Mapping[str, torch.Tensor], cfg: NetworkCfg, source: str) -> PixelNetwork:
    """Build the network for ``cfg`` and load ``state`` strictly (CPU, float32, eval mode).

    The module tree is built on the meta device (no memory, no random initialisation: that alone takes seconds
    for ViT-B) and the loaded tensors are assigned into it.
    """
    with meta_device():
        model = PixelNetwork(cfg)
    load_state_strict(model, state, source)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"The network could not be fully loaded ({left[0]} has no data); report this to the "
                              "add-on's authors.")
    return model.eval()


def _write_converted(model: PixelNetwork, dst: Path, dtype: str, source_name: str) -> None:
    tensors = {k: v.detach().to(_DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "network_cfg": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "dtype": dtype,
        "source": source_name,
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, dst)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, dtype: str = "float16") -> Path:
    """Write a compact weights-only ``.safetensors`` file for a Lightning checkpoint.

    The network is rebuilt and strictly loaded first, so a broken checkpoint is never converted.

    Parameters
    ----------
    src : path-like
        ``uv.ckpt`` or ``normals.ckpt`` (a converted file is accepted too, e.g. to change its dtype).
    dst : path-like, optional
        Output path; defaults to ``src`` with the suffix ``.safetensors`` (``.<dtype>.safetensors`` when ``src``
        already is a safetensors file).
    dtype : {"float16", "float32"}
        Storage precision. float32 gives bit-identical predictions; float16 halves the size.

    Returns
    -------
    Path
        The written file.
    """
    if dtype not in _DTYPES:
        raise CheckpointError(f"Unknown dtype '{dtype}' for the converted network; choose float16 or float32.")
    src = Path(src)
    state, cfg = read_network_file(src)
    model = build_from_state(state, cfg, f"checkpoint {_describe(src)}")
    del state
    if dst is None:
        dst = src.with_suffix(f".{dtype}.safetensors" if src.suffix == ".safetensors" else ".safetensors")
    dst = Path(dst)
    if dst.resolve() == src.resolve():
        raise CheckpointError("The converted file would overwrite its source; choose another output path.")
    _write_converted(model, dst, dtype, src.name)
    logger.info("converted %s to %s (%s)", src, dst, dtype)
    return dst


def cached_conversion_path(src: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_network` caches the float32 conversion of ``src`` (keyed by path, size and mtime).

    ``folder`` is the cache root (default: ``core.assets.cache_dir()``); the file goes in its ``networks/``.
    """
    src = Path(src).resolve()
    stat = src.stat()
    key = hashlib.sha1(f"{src}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(folder) if folder is not None else cache_dir()
    return root / "networks" / f"{src.stem}-{key}.safetensors"


def load_network(path: str | os.PathLike, device: str | torch.device | None = None, *, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> PixelNetwork:
    """Load a prior network from a Lightning ``.ckpt`` or a converted ``.safetensors`` file.

    Parameters
    ----------
    path : path-like
        The checkpoint; its kind is detected from its content.
    device : str or torch.device, optional
        "auto" (default: CUDA, then MPS, then CPU), "gpu", "cpu" or an explicit torch device.
    cache : bool
        For ``.ckpt`` files, reuse (or create) a float32 conversion under the cache folder; the cached
        weights are bit-identical to the checkpoint's.
    cache_dir : path-like, optional
        The cache folder (the add-on passes its extension user folder); default ``core.assets.cache_dir()``.

    Returns
    -------
    PixelNetwork
        The network in eval mode, float32, on ``device``; ``.cfg`` holds its :class:`NetworkCfg`.
    """
    path = Path(path)
    target = device if isinstance(device, torch.device) else resolve_device(device or "auto")
    start = time.perf_counter()
    kind = _check_readable(path)
    cached = None
    if cache and kind == "zip":
        try:
            cached = cached_conversion_path(path, cache_dir)
        except OSError as exc:
            logger.warning("the network cache folder is unusable (%s); loading without the cache", exc)
    if cached is not None and cached.is_file():
        try:
            state, cfg = read_converted(cached)
            model = build_from_state(state, cfg, f"cached conversion of {_describe(path)}")
        except CheckpointError:
            logger.warning("ignoring the unusable cached conversion %s", cached)
            cached.unlink(missing_ok=True)
        else:
            logger.info("loaded %s from its cached conversion in %.1f s", path.name, time.perf_counter() - start)
            return _move(model, target)
    state, cfg = read_network_file(path)
    model = build_from_state(state, cfg, f"checkpoint {_describe(path)}")
    del state
    if cached is not None:
        try:
            _write_converted(model, cached, "float32", path.name)
        except OSError as exc:
            logger.warning("could not cache the converted network at %s: %s", cached, exc)
    logger.info("loaded %s in %.1f s", path.name, time.perf_counter() - start)
    return _move(model, target)


def _move(model: PixelNetwork, target: torch.device) -> PixelNetwork:
    """Move the network to ``target``; a GPU out-of-memory error leaves it on the CPU with a warning."""
    try:
        return model.to(target)
    except (RuntimeError, MemoryError) as exc:
        if not (is_gpu(target) and is_out_of_memory(exc)):
            raise
        logger.warning("not enough GPU memory for the %s network; it runs on the CPU", model.cfg.prediction_type)
    release_memory(target)
    return model.to(resolve_device("cpu"))


__all__ = [
    "OMEGACONF_STANDINS", "convert_checkpoint", "cached_conversion_path", "filter_state_dict", "load_network",
    "load_state_strict", "read_converted", "read_lightning_checkpoint", "read_network_file", "to_plain",
    "resolve_interpolations",
]
