"""The asset registry: where the user-supplied files are and whether they look usable.

Real reconstructions need four files that their licences forbid shipping:

========================  ===================================================================
asset                     file
========================  ===================================================================
``flame``                 FLAME model: 2020 ``generic_model.pkl`` (or male/female),
                          ``flame2023.pkl`` / ``flame2023_no_jaw.pkl``, ``flame2023_Open.pkl``
``uv_template``           FLAME UV template ``head_template.obj``
``uv_checkpoint``         Pixel3DMM UV predictor ``uv.ckpt``
``normals_checkpoint``    Pixel3DMM normal predictor ``normals.ckpt``
========================  ===================================================================

Each path comes from the first source that names it: explicit values (the Blender add-on passes its
preferences), then environment variables (``PIXEL3DMM_FLAME``, ``PIXEL3DMM_UV_TEMPLATE``,
``PIXEL3DMM_UV_CKPT``, ``PIXEL3DMM_NORMALS_CKPT``), then a TOML config file (``PIXEL3DMM_CONFIG`` or
``<config dir>/pixel3dmm/assets.toml``) with the keys ``flame``, ``uv_template``, ``uv_checkpoint`` and
``normals_checkpoint``. The registry's own checks are cheap (existence and file signature: a pickle, a zip, an
OBJ, not an HTML error page); a registry made with ``validator=`` (``core.validation.validated_registry``, which
the CLI and the add-on use) also runs the real validation before it reports a file as found.

Also here: the folders for the config and cache, and free-space helpers shared by downloads and conversions.
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .errors import AssetInvalidError, AssetMissingError, DiskFullError


class Status(str, enum.Enum):
    FOUND = "found"
    MISSING = "missing"
    INVALID = "invalid"


@dataclass(frozen=True)
class AssetSpec:
    """What one asset is, how it is configured and where the user gets it."""

    key: str
    title: str
    env_var: str
    kinds: tuple[str, ...]  # accepted file kinds, see :func:`sniff_kind`
    where: str
    page: str  # the web page where the user gets it

    def describe_kinds(self) -> str:
        return " or ".join(_KIND_NAMES[k] for k in self.kinds)


_KIND_NAMES = {
    "pickle": "a Python pickle",
    "zip": "a zip archive",
    "npz": "a NumPy .npz archive",
    "obj": "a Wavefront OBJ mesh",
    "safetensors": "a .safetensors file",
}

ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec(
        "flame",
        "FLAME model",
        "PIXEL3DMM_FLAME",
        ("pickle", "npz", "zip"),
        "register at https://flame.is.tue.mpg.de and download FLAME 2020, FLAME 2023 or FLAME 2023 Open (the zip "
        "or the generic_model.pkl, flame2023.pkl or flame2023_Open.pkl inside it)",
        "https://flame.is.tue.mpg.de/download.php",
    ),
    AssetSpec(
        "uv_template",
        "FLAME UV template",
        "PIXEL3DMM_UV_TEMPLATE",
        ("obj", "zip"),
        "download head_template.obj from the FLAME website (texture space) or the Pixel3DMM repository's "
        "assets folder (a zip holding it works too)",
        "https://github.com/SimonGiebenhain/pixel3dmm/tree/main/assets",
    ),
    AssetSpec(
        "uv_checkpoint",
        "Pixel3DMM UV network",
        "PIXEL3DMM_UV_CKPT",
        ("zip", "pickle", "safetensors"),
        "download uv.ckpt from https://huggingface.co/SimonGiebenhain/Pixel3dmm (about 2.2 GB; 'python -m core assets "
        "--download-networks' or the add-on's Download Networks button fetch both networks)",
        "https://huggingface.co/SimonGiebenhain/Pixel3dmm",
    ),
    AssetSpec(
        "normals_checkpoint",
        "Pixel3DMM normal network",
        "PIXEL3DMM_NORMALS_CKPT",
        ("zip", "pickle", "safetensors"),
        "download normals.ckpt from https://huggingface.co/SimonGiebenhain/Pixel3dmm (about 1.5 GB; 'python -m core "
        "assets --download-networks' or the add-on's Download Networks button fetch both networks)",
        "https://huggingface.co/SimonGiebenhain/Pixel3dmm",
    ),
)
ASSET_KEYS = tuple(spec.key for spec in ASSETS)
_SPECS = {spec.key: spec for spec in ASSETS}


def sniff_kind(path: Path) -> str | None:
    """Guess a file's kind from its first bytes: pickle, zip, npz, obj, html, safetensors, or None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return None
    stripped = head.lstrip()
    lowered = stripped[:512].lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        return "npz" if path.suffix.lower() == ".npz" else "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < 100_000_000:
            return "safetensors"
    if _looks_like_obj(head):
        return "obj"
    return None


def _looks_like_obj(head: bytes) -> bool:
    try:
        text = head.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return bool(lines) and all(ln.split()[0] in _OBJ_TAGS for ln in lines[:-1] or lines)


_OBJ_TAGS = {"v", "vt", "vn", "vp", "f", "g", "o", "s", "l", "p", "mtllib", "usemtl"}


@dataclass(frozen=True)
class AssetState:
    """The result of checking one asset."""

    spec: AssetSpec
    status: Status
    path: Path | None
    source: str  # "preferences", "environment (VAR)", "config file (path)" or "not configured"
    message: str  # one sentence; for FOUND a short description

    @property
    def ok(self) -> bool:
        return self.status is Status.FOUND


@dataclass(frozen=True)
class AssetReport:
    """The state of every asset, in registry order."""

    states: tuple[AssetState, ...]

    def __getitem__(self, key: str) -> AssetState:
        for state in self.states:
            if state.spec.key == key:
                return state
        raise KeyError(key)

    @property
    def complete(self) -> bool:
        return all(state.ok for state in self.states)

    def format(self) -> str:
        """A plain-text table for the CLI: one line per asset plus what to do."""
        lines = []
        for state in self.states:
            where = f" ({state.path})" if state.path else ""
            lines.append(f"{state.spec.title:<26} {state.status.value:<8}{where}")
            lines.append(f"    {state.message}")
        return "\n".join(lines)


def config_path() -> Path:
    """The CLI's config file: ``PIXEL3DMM_CONFIG`` or ``<user config dir>/pixel3dmm/assets.toml``."""
    explicit = os.environ.get("PIXEL3DMM_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return _user_dir("config") / "assets.toml"


def cache_dir() -> Path:
    """The per-user folder for converted assets (FLAME .npz, converted checkpoints), created on demand.

    ``PIXEL3DMM_CACHE_DIR`` overrides it; the Blender add-on points it at its extension user folder.
    """
    explicit = os.environ.get("PIXEL3DMM_CACHE_DIR")
    path = Path(explicit).expanduser() if explicit else _user_dir("cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def format_bytes(n: int | float) -> str:
    """A byte count for messages: "512 B", "3.4 MB", "2.25 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n)} B"


def free_bytes(folder: str | os.PathLike) -> int:
    """Free space on the volume of ``folder`` (or of its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` unless ``folder``'s volume has ``needed`` bytes free for ``what``."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFullError(
            f"Writing {what} needs {format_bytes(needed)} but {folder} has only {format_bytes(free)} free; free some "
            "space or choose another folder."
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                                                      errno.EFBIG)


def default_download_dir() -> Path:
    """Where ``python -m core assets --download-networks`` puts the networks by default (a per-user data folder)."""
    return _user_dir("data") / "networks"


def _user_dir(kind: str) -> Path:
    """The per-user ``kind`` folder ("cache", "config" or "data") of this project on this platform."""
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("APPDATA" if kind == "config" else "LOCALAPPDATA") or str(home / "AppData")
        return Path(base) / "pixel3dmm"
    if sys.platform == "darwin":
        sub = "Caches" if kind == "cache" else "Application Support"
        return home / "Library" / sub / "pixel3dmm"
    var, default = {"cache": ("XDG_CACHE_HOME", ".cache"), "config": ("XDG_CONFIG_HOME", ".config"),
                    "data": ("XDG_DATA_HOME", ".local/share")}[kind]
    return Path(os.environ.get(var) or home / default) / "pixel3dmm"


def _read_config(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AssetInvalidError(f"The config file {path} is not valid TOML ({exc}); fix or delete it.") from exc
    section = data.get("assets", data)
    unknown = sorted(set(section) - set(ASSET_KEYS))
    if unknown:
        raise AssetInvalidError(
            f"The config file {path} has unknown keys {unknown}; use only {list(ASSET_KEYS)}."
        )
    return {k: str(v) for k, v in section.items()}


Validator = Callable[[str, Path, "AssetRegistry"], str]
"""``validator(key, path, registry) -> description``; raises AssetInvalidError for an unusable file."""


class AssetRegistry:
    """Finds and checks the user's asset files.

    Parameters
    ----------
    explicit:
        Paths chosen by the caller (the add-on's preferences); empty strings count as unset.
    use_environment:
        Also look at the environment variables and the config file (the CLI does, the add-on does not,
        so that Blender preferences are the single source of truth there).
    validator:
        ``validator(key, path, registry) -> description`` runs after the cheap checks and raises
        :class:`~core.errors.AssetInvalidError` for an unusable file (``core.validation.validate_asset``).
    """

    def __init__(self, explicit: Mapping[str, str | os.PathLike | None] | None = None, *, use_environment=True,
                 validator: Validator | None = None):
        explicit = dict(explicit or {})
        unknown = sorted(set(explicit) - set(ASSET_KEYS))
        if unknown:
            raise ValueError(f"unknown asset keys {unknown}")
        self._explicit = {k: v for k, v in explicit.items() if v not in (None, "")}
        self._use_environment = use_environment
        self._validator = validator

    def locate(self, key: str) -> tuple[Path | None, str]:
        """Where the asset ``key`` is configured: (path or None, description of the source)."""
        spec = _SPECS[key]
        if key in self._explicit:
            return Path(os.fspath(self._explicit[key])).expanduser(), "preferences"
        if self._use_environment:
            value = os.environ.get(spec.env_var)
            if value:
                return Path(value).expanduser(), f"environment ({spec.env_var})"
            cfg = config_path()
            value = _read_config(cfg).get(key)
            if value:
                path = Path(value).expanduser()
                if not path.is_absolute():
                    path = cfg.parent / path
                return path, f"config file ({cfg})"
        return None, "not configured"

    def check(self, key: str) -> AssetState:
        """Check one asset: cheap checks, then the registry's validator (if any)."""
        spec = _SPECS[key]
        path, source = self.locate(key)
        if path is None:
            hint = f"set it in the add-on preferences, the {spec.env_var} environment variable or {config_path()}"
            return AssetState(spec, Status.MISSING, None, source, f"Not configured: {spec.where}, then {hint}.")
        if not path.is_file():
            return AssetState(
                spec, Status.MISSING, path, source,
                f"No file at this path ({source}); {spec.where} and point {spec.env_var} or the preferences at it.",
            )
        if path.stat().st_size == 0:
            return AssetState(spec, Status.INVALID, path, source, f"The file is empty; {spec.where} again.")
        kind = sniff_kind(path)
        if kind == "html":
            return AssetState(
                spec, Status.INVALID, path, source,
                f"The file is a web page, not the {spec.title} (usually a failed login or download); "
                f"{spec.where} again while logged in.",
            )
        if kind not in spec.kinds:
            found = _KIND_NAMES.get(kind, "an unrecognised format") if kind else "an unrecognised format"
            return AssetState(
                spec, Status.INVALID, path, source,
                f"The file is {found}, but the {spec.title} must be {spec.describe_kinds()}; check the path.",
            )
        if self._validator is None:
            description = f"{_KIND_NAMES[kind]}, {format_bytes(path.stat().st_size)}"
        else:
            try:
                description = self._validator(key, path, self)
            except AssetInvalidError as exc:
                return AssetState(spec, Status.INVALID, path, source, str(exc))
        return AssetState(spec, Status.FOUND, path, source, f"{description}, from {source}.")

    def report(self) -> AssetReport:
        return AssetReport(tuple(self.check(spec.key) for spec in ASSETS))

    def require(self, key: str) -> Path:
        """The path of a usable asset, or raise with the report's sentence."""
        state = self.check(key)
        if state.status is Status.MISSING:
            raise AssetMissingError(f"{state.spec.title}: {state.message}")
        if state.status is Status.INVALID:
            raise AssetInvalidError(f"{state.spec.title} at {state.path}: {state.message}")
        return state.path  # a FOUND state always has a path
