"""Safe, tolerant reading, strict matching, streaming conversion and caching of Pixel3DMM network checkpoints.

Published checkpoints are PyTorch Lightning files: a ``torch.save`` zip whose pickle holds ``state_dict``
(network keys prefixed ``net.``, plus training-only entries such as the buffer ``vertex_weight_mask``),
``hyper_parameters["cfg"]`` (an OmegaConf DictConfig) and Lightning's training state (optimizer and scheduler
state, loops, callbacks with numpy values and ``pathlib`` paths, ...). Pickles can run code, so the file is only
ever read by :mod:`.torchzip`, which calls nothing from it: tensors become references to their bytes, the
OmegaConf classes map to the inert stand-ins below (turned into plain dicts and lists), every other object graph
becomes inert placeholders, and a pickle that names a code entry point (``os.system``, ``builtins.eval``, ...) is
refused with a :class:`CheckpointError`. Only the ``net.*`` tensors and the cfg are used; every other
``state_dict`` key is ignored and named in the log, and the ``net.*`` keys must match the network the cfg
describes exactly.

:func:`convert_checkpoint` streams a compact ``.safetensors`` file (float16 or float32 weights without the
``net.`` prefix; the :class:`NetworkCfg` as JSON in the file's metadata) one tensor at a time, so converting a
2.25 GB checkpoint needs memory for one tensor, not for the network. :func:`inspect_network_file` validates
either form from its cfg and tensor shapes without reading the weights. :func:`load_network` accepts both forms
and, for ``.ckpt`` files, caches a float32 conversion under :func:`core.assets.cache_dir` so later loads skip the
1.5-2.3 GB checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import safetensors
import safetensors.torch
import torch

from ..assets import cache_dir, sniff_kind
from ..device import is_gpu, is_out_of_memory, meta_device, release_memory, resolve_device
from ..errors import CheckpointError, DiskFullError
from .config import NetworkCfg
from .model import PixelNetwork
from .streaming import DTYPE_CODES, Entry, write_safetensors
from .torchzip import Archive, NotATorchArchive, Placeholder, TensorRef, UnsafePickleError, open_archive

logger = logging.getLogger(__name__)

#: Prefix of the network's keys inside the Lightning system's state dict.
NET_PREFIX = "net."
#: Marker in a converted file's metadata.
FORMAT_NAME = "pixel3dmm-network"
FORMAT_VERSION = "1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]


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


#: Fully qualified OmegaConf names, mapped to the stand-in the reader builds instead.
OMEGACONF_STANDINS: dict[str, type] = {
    "omegaconf.dictconfig.DictConfig": DictConfigStandIn,
    "omegaconf.listconfig.ListConfig": ListConfigStandIn,
    "omegaconf.base.ContainerMetadata": ContainerMetadataStandIn,
    "omegaconf.base.Metadata": MetadataStandIn,
    **{
        f"omegaconf.nodes.{name}": ValueNodeStandIn
        for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
                     "EnumNode")
    },
    "typing.Any": AnyTypeStandIn,
}


def to_plain(obj: Any) -> Any:
    """Turn unpickled OmegaConf stand-ins (and containers holding them) into plain dicts, lists and values.

    A placeholder that was filled like a dict (a ``dict`` subclass such as Lightning's ``AttributeDict``)
    becomes a dict of its items; other placeholders stay as they are.
    """
    if isinstance(obj, (DictConfigStandIn, ListConfigStandIn)):
        return to_plain(obj.__dict__.get("_content"))
    if isinstance(obj, ValueNodeStandIn):
        return to_plain(obj.__dict__.get("_val"))
    if isinstance(obj, Placeholder) and obj.items:
        return {key: to_plain(value) for key, value in obj.items.items()}
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
    """Return the file kind ("zip" or "safetensors") or raise a one-sentence :class:`CheckpointError`."""
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


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(f"The checkpoint {_describe(path)} is damaged and cannot be read; download it again.")


def _open_lightning(path: Path) -> Archive:
    """Open a Lightning ``.ckpt`` with the inert reader, mapping every failure to one sentence."""
    try:
        return open_archive(path, OMEGACONF_STANDINS)
    except UnsafePickleError as exc:
        raise CheckpointError(
            f"The checkpoint {_describe(path)} refers to code ({exc.name}) that a safe load refuses to run; use only "
            "the official uv.ckpt and normals.ckpt files."
        ) from None
    except NotATorchArchive as exc:
        raise CheckpointError(
            f"The file {_describe(path)} is a zip archive but not a PyTorch checkpoint ({exc}); use the published "
            "uv.ckpt or normals.ckpt."
        ) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"The checkpoint {_describe(path)} is incomplete or damaged ({exc}); download it again."
        ) from exc
    except OSError:
        raise
    except Exception as exc:  # a damaged pickle can raise nearly anything; nothing of it ran code
        raise _damaged(path) from exc


def _as_mapping(obj: Any) -> Mapping | None:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, Placeholder) and obj.items:
        return obj.items
    return None


@dataclass(frozen=True)
class LightningContents:
    """What a Lightning checkpoint holds for this add-on, before any weight is read.

    Attributes
    ----------
    cfg : the network configuration from ``hyper_parameters["cfg"]``.
    tensors : the ``net.*`` entries without the prefix, as references into the file.
    ignored : ``state_dict`` keys outside ``net.`` (training-only state), sorted.
    """

    cfg: NetworkCfg
    tensors: dict[str, TensorRef]
    ignored: tuple[str, ...]


def _contents(archive: Archive) -> LightningContents:
    path = archive.path
    ckpt = _as_mapping(archive.tree)
    state = _as_mapping(ckpt.get("state_dict")) if ckpt is not None else None
    if state is None:
        raise CheckpointError(
            f"The file {_describe(path)} is a PyTorch file but not a Lightning checkpoint; use the published "
            "uv.ckpt or normals.ckpt."
        )
    try:
        hparams = to_plain(ckpt.get("hyper_parameters"))
    except RecursionError as exc:
        raise _damaged(path) from exc
    if not isinstance(hparams, Mapping):
        raise CheckpointError(
            f"The checkpoint {_describe(path)} stores no hyper-parameters, so its network cannot be rebuilt; use the "
            "published uv.ckpt or normals.ckpt."
        )
    # save_hyperparameters() on `system(cfg)` stores {"cfg": DictConfig}; accept a bare cfg as well.
    cfg = NetworkCfg.from_lightning_cfg(resolve_interpolations(hparams.get("cfg", hparams)))
    tensors: dict[str, TensorRef] = {}
    ignored = []
    for key, value in state.items():
        if not isinstance(key, str) or not key.startswith(NET_PREFIX):
            ignored.append(str(key))
            continue
        if not isinstance(value, TensorRef):
            shown = getattr(value, "global_name", type(value).__name__)
            raise CheckpointError(
                f"The checkpoint {_describe(path)} stores {key} as {shown} instead of a tensor; download it again."
            )
        tensors[key[len(NET_PREFIX):]] = value
    ignored.sort()
    if ignored:
        logger.info("%s: ignoring %d state_dict entries outside %s*: %s", path.name, len(ignored), NET_PREFIX,
                    ", ".join(ignored))
    if archive.placeholder_names:
        logger.info("%s: read as inert data: %s", path.name, ", ".join(sorted(archive.placeholder_names)))
    return LightningContents(cfg, tensors, tuple(ignored))


def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read a Lightning ``.ckpt`` safely and return its network state dict and configuration.

    Only the ``net.*`` tensors are read from the file (each exactly once, checked against its CRC-32);
    optimizer, scheduler and loop state are never materialised.

    Parameters
    ----------
    path : path-like
        The ``.ckpt`` file.

    Returns
    -------
    state : dict[str, torch.Tensor]
        Network weights with the ``net.`` prefix removed, in their stored dtype.
    cfg : NetworkCfg
        The architecture read from ``hyper_parameters["cfg"]``.
    """
    path = Path(path)
    if _check_readable(path) != "zip":
        raise CheckpointError(
            f"The file {_describe(path)} is a converted network, not a Lightning checkpoint; load it with "
            "load_network instead."
        )
    with _open_lightning(path) as archive:
        contents = _contents(archive)
        return {key: _read_tensor(archive, key, ref) for key, ref in contents.tensors.items()}, contents.cfg


def _read_tensor(archive: Archive, key: str, ref: TensorRef) -> torch.Tensor:
    try:
        return archive.read(ref)
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"The checkpoint {_describe(archive.path)} is damaged ({NET_PREFIX}{key}: {exc}); download it again."
        ) from exc


def _key_list(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


@functools.lru_cache(maxsize=8)
def expected_shapes(cfg: NetworkCfg) -> dict[str, tuple[int, ...]]:
    """Name and shape of every state-dict entry of the network ``cfg`` describes (built on the meta device)."""
    with meta_device():
        model = PixelNetwork(cfg)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {_key_list(missing)}"] if missing else []) + (
            [f"unexpected {_key_list(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(
            f"The {source} does not match the network its configuration describes ({'; '.join(parts)}); download it "
            "again or report the file to the add-on's authors."
        )
    wrong = [k for k in expected if tuple(expected[k]) != tuple(found[k])]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"The {source} does not match the network its configuration describes ({key} has shape "
            f"{tuple(found[key])}, expected {tuple(expected[key])}); download it again or report the file "
            "to the add-on's authors."
        )


def load_state_strict(model: PixelNetwork, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` with strict key and shape matching; mismatches raise :class:`CheckpointError`.

    The loaded tensors replace the model's parameters (``assign=True``), so no second copy of the weights is
    kept; the model is then converted to float32.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    check_shapes(expected, {key: tuple(value.shape) for key, value in state.items()}, source)
    model.load_state_dict(dict(state), strict=True, assign=True)
    model.float()


def _converted_metadata(path: Path, meta: Mapping[str, str]) -> NetworkCfg:
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
    return NetworkCfg.from_dict(cfg_dict)


def read_converted(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read a file written by :func:`convert_checkpoint` and return its weights and configuration."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        cfg = _converted_metadata(path, meta)
        state = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"The converted network {_describe(path)} is damaged; convert the checkpoint again."
        ) from exc
    return state, cfg


def read_network_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkCfg]:
    """Read either form (Lightning ``.ckpt`` or converted ``.safetensors``), deciding by content, not name."""
    path = Path(path)
    if _check_readable(path) == "safetensors":
        return read_converted(path)
    return read_lightning_checkpoint(path)


@dataclass(frozen=True)
class NetworkFileInfo:
    """A validated network file, described without reading its weights.

    Attributes
    ----------
    kind : "lightning" (a ``.ckpt``) or "converted" (a ``.safetensors`` written by :func:`convert_checkpoint`).
    cfg : the network configuration.
    shapes, dtypes : per network key (no ``net.`` prefix), as stored.
    ignored : ``state_dict`` keys outside ``net.`` (Lightning files only).
    """

    kind: str
    cfg: NetworkCfg
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    ignored: tuple[str, ...]

    @property
    def float32_bytes(self) -> int:
        """Size of the network's weights in float32."""
        return 4 * sum(int(torch.Size(shape).numel()) for shape in self.shapes.values())


def inspect_network_file(path: str | os.PathLike) -> NetworkFileInfo:
    """Validate a ``.ckpt`` or converted ``.safetensors`` from its configuration and tensor shapes.

    Reads the pickle (or the safetensors header) only, not the weights, so it takes a fraction of a second even
    for the 2.25 GB ``uv.ckpt``. The keys and shapes must match the network the configuration describes exactly.

    Raises
    ------
    CheckpointError : one sentence saying what is wrong and what to do.
    """
    path = Path(path)
    if _check_readable(path) == "zip":
        with _open_lightning(path) as archive:
            return _lightning_info(path, _contents(archive))
    else:
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                cfg = _converted_metadata(path, f.metadata() or {})
                shapes, dtypes = {}, {}
                for key in f.keys():
                    view = f.get_slice(key)
                    shapes[key] = tuple(view.get_shape())
                    dtypes[key] = _CODE_DTYPES.get(view.get_dtype(), torch.uint8)
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"The converted network {_describe(path)} is damaged; convert the checkpoint again."
            ) from exc
        info = NetworkFileInfo("converted", cfg, shapes, dtypes, ())
    check_shapes(expected_shapes(info.cfg), info.shapes, f"checkpoint {_describe(path)}")
    return info


def _lightning_info(path: Path, contents: LightningContents) -> NetworkFileInfo:
    """The validated description of an opened Lightning checkpoint (see :func:`inspect_network_file`)."""
    shapes = {key: ref.shape for key, ref in contents.tensors.items()}
    dtypes = {key: ref.dtype for key, ref in contents.tensors.items()}
    check_shapes(expected_shapes(contents.cfg), shapes, f"checkpoint {_describe(path)}")
    return NetworkFileInfo("lightning", contents.cfg, shapes, dtypes, contents.ignored)


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


def _metadata(cfg: NetworkCfg, dtype: str, source_name: str) -> dict[str, str]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "network_cfg": json.dumps(cfg.to_dict(), sort_keys=True),
        "dtype": dtype,
        "source": source_name,
    }


def _write_converted(model: PixelNetwork, dst: Path, dtype: str, source_name: str) -> None:
    """Write a loaded network's weights as a converted file (the cache of :func:`load_network`)."""
    state = model.state_dict()
    target = _DTYPES[dtype]
    entries = [Entry(key, target if value.is_floating_point() else value.dtype, tuple(value.shape))
               for key, value in sorted(state.items())]
    write_safetensors(dst, entries, lambda entry: state[entry.name].to(entry.dtype),
                      _metadata(model.cfg, dtype, source_name), what=f"the converted network {dst.name}")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, dtype: str = "float16", *,
                       on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> Path:
    """Stream a compact weights-only ``.safetensors`` file out of a Lightning checkpoint, one tensor at a time.

    The checkpoint's keys and shapes are validated against the network its configuration describes before
    anything is written, and every storage read is checked against its CRC-32, so a broken checkpoint is never
    converted. Memory use is one tensor (plus its converted copy), not the network: the 2.25 GB ``uv.ckpt``
    converts within a few hundred MB. The free disk space is checked first; on any failure, including a full disk
    or a cancellation, nothing is left at ``dst``.

    Parameters
    ----------
    src : path-like
        ``uv.ckpt`` or ``normals.ckpt`` (a converted file is accepted too, e.g. to change its dtype).
    dst : path-like, optional
        Output path; defaults to ``src`` with the suffix ``.safetensors`` (``.<dtype>.safetensors`` when ``src``
        already is a safetensors file).
    dtype : {"float16", "float32"}
        Storage precision of floating-point weights. float32 gives bit-identical predictions; float16 halves the
        size.
    on_progress : callable, optional
        Called with the written fraction in [0, 1] after each tensor.
    should_cancel : callable, optional
        Polled before each tensor; returning True stops with :class:`~core.errors.OperationCancelled`.

    Returns
    -------
    Path
        The written file.
    """
    if dtype not in _DTYPES:
        raise CheckpointError(f"Unknown dtype '{dtype}' for the converted network; choose float16 or float32.")
    src = Path(src)
    if dst is None:
        dst = src.with_suffix(f".{dtype}.safetensors" if src.suffix == ".safetensors" else ".safetensors")
    dst = Path(dst)
    if dst.resolve() == src.resolve():
        raise CheckpointError("The converted file would overwrite its source; choose another output path.")
    start = time.perf_counter()

    def stream(info: NetworkFileInfo, read: Callable[[str], torch.Tensor]) -> None:
        target = _DTYPES[dtype]
        entries = [Entry(key, target if info.dtypes[key].is_floating_point else info.dtypes[key], info.shapes[key])
                   for key in sorted(info.shapes)]
        write_safetensors(dst, entries, lambda entry: read(entry.name).to(entry.dtype),
                          _metadata(info.cfg, dtype, src.name), what=f"the converted network {dst.name}",
                          on_progress=on_progress, should_cancel=should_cancel)

    if _check_readable(src) == "zip":
        with _open_lightning(src) as archive:
            contents = _contents(archive)
            stream(_lightning_info(src, contents), lambda key: _read_tensor(archive, key, contents.tensors[key]))
    else:
        info = inspect_network_file(src)
        try:
            with safetensors.safe_open(str(src), framework="pt") as f:
                stream(info, f.get_tensor)
        except safetensors.SafetensorError as exc:
            raise CheckpointError(
                f"The converted network {_describe(src)} is damaged; convert the checkpoint again."
            ) from exc
    logger.info("converted %s to %s (%s) in %.1f s", src, dst, dtype, time.perf_counter() - start)
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
        except (OSError, DiskFullError) as exc:
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
    "LightningContents", "NetworkFileInfo", "OMEGACONF_STANDINS", "check_shapes", "convert_checkpoint",
    "cached_conversion_path", "expected_shapes", "inspect_network_file", "load_network",
    "load_state_strict", "read_converted", "read_lightning_checkpoint", "read_network_file", "to_plain",
    "resolve_interpolations",
]
