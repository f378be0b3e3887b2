"""Real validation of the four assets, with the readers a reconstruction uses, cached by path, size and mtime.

:func:`validate_asset` is the validator for :class:`core.assets.AssetRegistry` (``validator=validate_asset``):

- FLAME model: :func:`core.flame.read_flame` (the restricted unpickler and every shape check of ``load_flame``,
  without writing the conversion cache), so a trojan, truncated or incomplete pickle is invalid, and the eyelid
  blendshapes beside it (:data:`core.flame.io.EYELID_FILES`) when there are both;
- UV template: :func:`core.flame.load_uv_template`, and, when the FLAME model is valid too, the topology check
  the reconstruction makes (:func:`core.flame.uv.check_topology`);
- networks: :func:`core.network.checkpoint.inspect_network_file` (the inert reader, the cfg, and the key names
  and shapes against the network the cfg describes, without reading the weights), and the cfg's
  ``prediction_type`` against the slot, so the normal network in the UV slot is invalid.

Each result is kept per (asset, resolved path, size, modification time) for the life of the process, so a
preferences panel can redraw the report without reading anything again; a changed file is validated anew.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from .assets import AssetRegistry, format_bytes
from .errors import AssetInvalidError, CheckpointError

#: The network each checkpoint slot must hold (``cfg.model.prediction_type``) and how messages name it.
SLOT_TYPES = {"uv_checkpoint": ("uv_map", "UV network", "uv.ckpt"),
              "normals_checkpoint": ("normals", "normal network", "normals.ckpt")}

_lock = threading.Lock()
_cache: dict[tuple, tuple[str | None, str, Any]] = {}  # key -> (error or None, description, what the check keeps)


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _flame(path: Path) -> tuple[str, tuple]:
    """Kept: the model's (F, 3) triangles and vertex count, for the template's topology check. Eyelid
    blendshapes beside the model are checked too, as the reconstruction loads them."""
    from .flame.io import eyelids_beside, load_eyelids, read_flame

    data = read_flame(path)
    lids = eyelids_beside(path)
    if lids is not None:
        load_eyelids(*lids, n_vertices=data.n_vertices)
    return data.describe() + (", eyelid blendshapes beside it" if lids else ""), (data.faces, data.n_vertices)


def _uv_template(path: Path):
    """Kept: the template itself (under a megabyte), for the topology check against the FLAME model."""
    from .flame import load_uv_template

    template = load_uv_template(path)
    description = (f"UV template: {len(template.vertices)} vertices, {len(template.uv)} texture coordinates, "
                   f"{len(template.faces)} triangles")
    return description, template


def _network(key: str) -> Callable[[Path], tuple[str, None]]:
    wanted, title, filename = SLOT_TYPES[key]

    def check(path: Path) -> tuple[str, None]:
        from .network.checkpoint import inspect_network_file

        info = inspect_network_file(path)
        found = info.cfg.prediction_type
        if found != wanted:
            names = {slot_type: name for slot_type, name, _filename in SLOT_TYPES.values()}
            what = f"the {names[found]}" if found in names else f"a '{found}' network"
            raise CheckpointError(
                f"The file {path.name} holds {what} (prediction_type '{found}'), but this slot needs the {title}; "
                f"choose {filename} here."
            )
        kind = "Lightning checkpoint" if info.kind == "lightning" else "converted network"
        return (f"{title} ({kind}, {info.cfg.encoder_backbone}, {info.float32_bytes // 4 / 1e6:.1f} M weights)",
                None)

    return check


_CHECKS: dict[str, Callable[[Path], tuple[str, Any]]] = {
    "flame": _flame, "uv_template": _uv_template, **{key: _network(key) for key in SLOT_TYPES},
}


def _cached(key: str, path: Path) -> tuple[str | None, str, Any]:
    """(error sentence or None, description, what the check keeps) of one asset file, from the cache when
    unchanged."""
    cache_key = (key, *_file_key(path))
    with _lock:
        hit = _cache.get(cache_key)
    if hit is not None:
        return hit
    try:
        description, topology = _CHECKS[key](path)
        result = (None, description, topology)
    except AssetInvalidError as exc:
        result = (str(exc), "", None)
    except OSError as exc:
        return (f"The file cannot be read ({exc.strerror or exc}); check that it exists and that you may read it.",
                "", None)
    with _lock:
        _cache[cache_key] = result
    return result


def validate_asset(key: str, path: Path, registry: AssetRegistry) -> str:
    """Validate the asset ``key`` at ``path`` as a reconstruction would load it.

    Parameters
    ----------
    key : one of :data:`core.assets.ASSET_KEYS`.
    path : the file (it exists and passed the registry's cheap checks).
    registry : the registry asking; the UV template is checked against its FLAME model.

    Returns
    -------
    str
        A short description of what was found, without a final full stop.

    Raises
    ------
    AssetInvalidError : one sentence saying what is wrong and what to do.
    """
    error, description, kept = _cached(key, path)
    if error is not None:
        raise AssetInvalidError(error)
    if key == "uv_template":
        flame_path, _source = registry.locate("flame")
        if flame_path is not None and flame_path.is_file():
            flame_error, _description, flame = _cached("flame", flame_path)
            if flame_error is None:
                from .flame.uv import check_topology

                check_topology(kept, *flame)
    return f"{description}, {format_bytes(path.stat().st_size)}"


def validated_registry(explicit=None, *, use_environment: bool = True) -> AssetRegistry:
    """An :class:`~core.assets.AssetRegistry` whose report validates each file with :func:`validate_asset`."""
    return AssetRegistry(explicit, use_environment=use_environment, validator=validate_asset)


__all__ = ["SLOT_TYPES", "validate_asset", "validated_registry"]
