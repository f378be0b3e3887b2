"""Load FLAME pickles with numpy only (no chumpy, no scipy), cache them as .npz, write FLAME-layout pickles.

FLAME 2020 and 2023 pickles reference ``chumpy.ch.Ch`` and ``scipy.sparse`` CSC matrices; FLAME 2023 Open only
the latter. A restricted unpickler maps exactly those classes (and numpy's array reconstruction) to small
stand-ins and refuses every other global, because unpickling an arbitrary file can run code.

The FLAME site hands out zips; :func:`load_flame` reads the model straight out of them (nothing is extracted to
disk), choosing the member by :data:`ZIP_MEMBERS`:

- ``FLAME2020.zip`` holds ``generic_model.pkl``, ``female_model.pkl`` and ``male_model.pkl``: the generic model;
- ``FLAME2023.zip`` holds ``flame2023.pkl`` and ``flame2023_no_jaw.pkl``: ``flame2023.pkl``. The add-on rigs and
  fits a jaw joint, and only this variant's pose correctives and expression space are meant for a rotating jaw;
  the no-jaw variant (which Pixel3DMM's tracker uses) folds jaw opening into the expression space, where a jaw
  bone would double it. Choose ``flame2023_no_jaw.pkl`` explicitly (extracted) to use it anyway;
- ``FLAME2023Open.zip`` holds ``flame2023_Open.pkl``.
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import hashlib
import io
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import AssetInvalidError, AssetMissingError
from .data import N_JOINTS, FlameData

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_HASH_SPAN = 1 << 20  # bytes hashed at each end of the source file for the cache key
_ROOT_SENTINEL = 4294967295  # kintree_table's parent of the root (uint32 -1)
_FLAME2023_SHA256 = "8fb1af0db1abb51053ead8fd1f2624a63d01c9602f4a4fb4ea23bd2c82017fa0"
_N_EXPR_DEFAULT = 100
_SYNTHETIC_KEY = "pixel3dmm_synthetic"
_REQUIRED = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
_ARRAY_FIELDS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights", "parents")
#: FLAME pickles looked for inside a zip, in the order of preference (see the module docstring).
ZIP_MEMBERS = ("generic_model.pkl", "flame2023.pkl", "flame2023_open.pkl", "flame2023_no_jaw.pkl",
               "female_model.pkl", "male_model.pkl")
_MAX_MEMBER_BYTES = 1 << 30  # the largest FLAME pickle is about 0.1 GB
FLAME_SITE = "https://flame.is.tue.mpg.de"


class _ChumpyStandIn:
    """Stand-in for ``chumpy.ch.Ch``: keeps the pickled state, whose ``x`` holds the array."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        x = state.get("x") if isinstance(state, dict) else None
        if not isinstance(x, np.ndarray):
            raise ValueError("a chumpy object without an array")
        return x


class _CscStandIn:
    """Stand-in for ``scipy.sparse`` CSC matrices (state: data, indices, indptr, _shape or shape)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict):
            raise ValueError("a sparse matrix without a state")
        shape = state.get("_shape", state.get("shape"))
        data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
        rows, cols = int(shape[0]), int(shape[1])
        if len(indptr) != cols + 1 or indptr[-1] != len(data) or len(indices) != len(data):
            raise ValueError("an inconsistent sparse matrix")
        dense = np.zeros((rows, cols), dtype=np.float64)
        np.add.at(dense, (indices.astype(np.int64), np.repeat(np.arange(cols), np.diff(indptr))), data)
        return dense


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to text codecs (Python 3 protocol-2 pickles store bytes this way)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise ValueError(f"codec {encoding} is not allowed")
    return text.encode(encoding)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("chumpy.ch", "Ch"): _ChumpyStandIn,
        ("scipy.sparse.csc", "csc_matrix"): _CscStandIn,
        ("scipy.sparse._csc", "csc_matrix"): _CscStandIn,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("__builtin__", "builtins"):
        allowed.update({(module, "set"): set, (module, "frozenset"): frozenset, (module, "object"): object})
    return allowed


class _Skipped:
    """Placeholder for values this project never uses (torch tensors inside landmark embeddings)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a FLAME asset needs and raises for any other.

    Parameters
    ----------
    file : binary file object.
    source : name used in messages.
    skip_torch : map torch tensor reconstruction to an inert placeholder (landmark embedding files).
    """

    def __init__(self, file: BinaryIO, source: str, skip_torch: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()
        if skip_torch:
            for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
                self._allowed[("torch._utils", name)] = _Skipped
            self._allowed[("torch.storage", "_load_from_bytes")] = _Skipped
            self._allowed[("collections", "OrderedDict")] = collections.OrderedDict

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise AssetInvalidError(
                f"{self._source} refers to '{module}.{name}', which a FLAME file never contains, so it was not "
                "loaded (it could run code); download the file again from the official site."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise AssetInvalidError(
            f"{self._source} is a torch or custom pickle, not a FLAME model file; choose the FLAME .pkl instead."
        )


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:512].lower()
    return start.startswith(b"<") or b"<html" in start or b"<!doctype" in start


def unpickle_bytes(raw: bytes, path: Path, skip_torch: bool = False) -> Any:
    """Unpickle the bytes of ``path`` with :class:`RestrictedUnpickler`, turning every failure into one clear error.

    Raises
    ------
    AssetInvalidError : an HTML page, a truncated or damaged file, or a pickle that references other classes.
    """
    if _looks_like_html(raw[:2048]):
        raise AssetInvalidError(
            f"{path} is a web page, not a FLAME file (the download failed, usually because of a login); log in "
            "at https://flame.is.tue.mpg.de and download it again."
        )
    try:
        return RestrictedUnpickler(io.BytesIO(raw), str(path), skip_torch=skip_torch).load()
    except AssetInvalidError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise AssetInvalidError(f"{path} is truncated ({len(raw)} bytes); download it again.") from exc
        raise AssetInvalidError(f"{path} is damaged or not a pickle ({exc}); download it again.") from exc
    except Exception as exc:  # a damaged pickle can raise nearly anything; none of it is our bug
        raise AssetInvalidError(
            f"{path} is damaged or not a pickle ({type(exc).__name__}: {exc}); download it again."
        ) from exc


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, (_ChumpyStandIn, _CscStandIn)):
        return value.to_array()
    return np.asarray(value)


def _release(raw: dict, path: Path, digest: str) -> str:
    if _SYNTHETIC_KEY in raw:
        return "synthetic"
    if "supr_expression_metadata" in raw:
        return "2023 Open"
    if digest == _FLAME2023_SHA256 or "2023" in path.name:
        return "2023"
    return "2020"


def _n_expr(raw: dict, total: int) -> int:
    for key in (_SYNTHETIC_KEY, "supr_expression_metadata"):
        meta = raw.get(key)
        if isinstance(meta, dict) and "n_expr" in meta:
            return int(meta["n_expr"])
    return min(_N_EXPR_DEFAULT, total)


def flame_data_from_dict(raw: Any, path: Path, digest: str = "") -> FlameData:
    """Turn an unpickled FLAME dict into :class:`FlameData` (dense regressor, int64 faces, -1 root parent).

    Parameters
    ----------
    raw : the unpickled object. path : its file (for messages and release detection).
    digest : sha256 hex of the file, used to recognise FLAME 2023.
    """
    if not isinstance(raw, dict):
        raise AssetInvalidError(
            f"{path} holds a {type(raw).__name__}, not a FLAME model; choose generic_model.pkl, flame2023.pkl "
            "or flame2023_Open.pkl."
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise AssetInvalidError(
            f"{path} is not a FLAME model (it lacks {', '.join(missing)}); choose generic_model.pkl, "
            "flame2023.pkl or flame2023_Open.pkl."
        )
    try:
        arrays = {k: _as_array(raw[k]) for k in _REQUIRED}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise AssetInvalidError(f"{path} has a damaged array ({exc}); download it again.") from exc
    bs_type = raw.get("bs_type", "lrotmin")
    if bs_type != "lrotmin":
        raise AssetInvalidError(
            f"{path} uses pose blendshapes of type '{bs_type}' instead of FLAME's 'lrotmin'; choose a FLAME model file."
        )
    dirs = arrays["shapedirs"]
    if dirs.ndim != 3:
        raise AssetInvalidError(
            f"{path} has 'shapedirs' of shape {dirs.shape} instead of (V, 3, K); download it again."
        )
    n_expr = _n_expr(raw, dirs.shape[2])
    kintree = arrays["kintree_table"]
    if kintree.shape != (2, N_JOINTS) or not np.array_equal(kintree[1], np.arange(N_JOINTS)):
        raise AssetInvalidError(
            f"{path} has a kinematic tree {kintree.shape} that is not FLAME's 5 joints; choose a FLAME model file."
        )
    parents = kintree[0].astype(np.int64)
    parents[(parents == _ROOT_SENTINEL) | (parents < 0)] = -1
    return FlameData(
        v_template=arrays["v_template"].astype(np.float64),
        faces=arrays["f"].astype(np.int64),
        shapedirs=np.ascontiguousarray(dirs[..., : dirs.shape[2] - n_expr], dtype=np.float64),
        exprdirs=np.ascontiguousarray(dirs[..., dirs.shape[2] - n_expr :], dtype=np.float64),
        posedirs=arrays["posedirs"].astype(np.float64),
        J_regressor=arrays["J_regressor"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        parents=parents,
        eyelids=None,
        release=_release(raw, path, digest),
        source=str(path),
    )


def source_key(path: Path) -> str:
    """Cache key of a source file: size, modification time and sha256 of its first and last MiB."""
    stat = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_HASH_SPAN))
        if stat.st_size > 2 * _HASH_SPAN:
            f.seek(-_HASH_SPAN, os.SEEK_END)
        h.update(f.read(_HASH_SPAN))
    return f"v{CACHE_FORMAT}-{stat.st_size}-{stat.st_mtime_ns}-{h.hexdigest()}"


def cache_path(path: Path, folder: Path, member: str | None = None) -> Path:
    """Where the converted .npz of ``path`` (or of its zip ``member``) lives inside ``folder``."""
    source = str(path.resolve()) + (f"|{member}" if member else "")
    tag = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    stem = path.stem + (f"-{Path(member).stem}" if member else "")
    return folder / "flame" / f"{stem}-{tag}.npz"


def _read_npz(path: Path, expect_key: str | None) -> FlameData | None:
    """Read a converted model; None when the key does not match or the file is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if expect_key is not None and str(z["source_key"]) != expect_key:
                return None
            arrays = {k: z[k] for k in _ARRAY_FIELDS}
            return FlameData(
                **arrays,
                eyelids=z["eyelids"] if "eyelids" in z.files else None,
                release=str(z["release"]),
                source=str(z["source"]),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AssetInvalidError) as exc:
        log.warning("Ignoring unusable FLAME cache %s (%s)", path, exc)
        return None


def save_npz(data: FlameData, path: Path, key: str = "") -> Path:
    """Write ``data`` as a compact .npz (atomically: a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: getattr(data, k) for k in _ARRAY_FIELDS}
    if data.eyelids is not None:
        payload["eyelids"] = data.eyelids
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload, release=data.release, source=data.source, source_key=key)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _zip_member(path: Path) -> str | None:
    """The zip member to read: None for a converted .npz, else the FLAME pickle chosen by :data:`ZIP_MEMBERS`.

    Raises
    ------
    AssetInvalidError : a damaged zip, or one without a FLAME pickle.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.startswith("__MACOSX/") and not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetInvalidError(f"{path} is a damaged or incomplete zip archive; download it again.") from exc
    if "source_key.npy" in names or all(f"{k}.npy" in names for k in _ARRAY_FIELDS):
        return None
    by_name = {}
    for name in sorted(names, key=lambda n: (n.count("/"), n)):
        by_name.setdefault(name.rsplit("/", 1)[-1].lower(), name)
    for wanted in ZIP_MEMBERS:
        if wanted in by_name:
            return by_name[wanted]
    raise AssetInvalidError(
        f"The zip {path.name} holds no FLAME model (.pkl); download FLAME 2020, FLAME 2023 or FLAME 2023 Open from "
        f"{FLAME_SITE} and choose that zip or the .pkl inside it."
    )


def _read_source(path: Path, member: str | None) -> FlameData:
    """Unpickle and convert a FLAME pickle (a file, or ``member`` of the zip ``path``)."""
    if member is None:
        content, label = path.read_bytes(), path
    else:
        label = path / member
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(member)
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise AssetInvalidError(f"{label} is {info.file_size} bytes, far more than any FLAME model; "
                                            "choose the FLAME download.")
                content = zf.read(info)
        except (zipfile.BadZipFile, OSError) as exc:
            raise AssetInvalidError(f"{path} is a damaged or incomplete zip archive; download it again.") from exc
    return flame_data_from_dict(unpickle_bytes(content, label), label, hashlib.sha256(content).hexdigest())


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise AssetMissingError(
            f"The FLAME model {path} does not exist; download it from {FLAME_SITE} and choose the .pkl file or the "
            "downloaded zip."
        )


def _read_converted(path: Path) -> FlameData:
    data = _read_npz(path, None)
    if data is None:
        raise AssetInvalidError(f"{path} is a damaged converted FLAME model; delete it and choose the FLAME .pkl.")
    return data


def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_flame(path: str | Path) -> FlameData:
    """Read and validate a FLAME model with the checks :func:`load_flame` applies, without any cache.

    Accepts what :func:`load_flame` accepts (a FLAME pickle, a FLAME download zip, a converted .npz); the asset
    check uses it so that what it reports as found is what a reconstruction can load.

    Raises
    ------
    AssetMissingError, AssetInvalidError.
    """
    path = Path(path)
    _check_exists(path)
    zipped = _is_zip(path)
    member = _zip_member(path) if zipped else None
    if zipped and member is None:
        return _read_converted(path)
    return _read_source(path, member)


#: The eyelid blendshapes (left, right) looked for next to a FLAME model file.
EYELID_FILES = ("l_eyelid.npy", "r_eyelid.npy")


def load_flame(
    path: str | Path,
    cache_dir: str | Path | None = None,
    eyelids: tuple[str | Path, str | Path] | str | None = "beside",
) -> FlameData:
    """Load a FLAME model: FLAME 2020, 2023, 2023 Open (a .pkl or the downloaded zip), a synthetic head, or a
    converted .npz.

    The first load of a pickle converts it to ``<cache_dir>/flame/<name>-<hash>.npz``; later loads read that file
    while the source's size, modification time and first/last MiB are unchanged.

    Parameters
    ----------
    path : the .pkl, a FLAME zip (see :data:`ZIP_MEMBERS`), or a converted .npz.
    cache_dir : folder for converted files; default :func:`core.assets.cache_dir`.
    eyelids : (left, right) paths of the eyelid blendshapes, each (V, 3); ``"beside"`` (default): the
        :data:`EYELID_FILES` next to the model file when both are there (as metrical-tracker and Pixel3DMM keep
        them with FLAME; FLAME's own pickles have no eyelids); None: without eyelids.

    Returns
    -------
    FlameData; ``release`` says which model was found.

    Raises
    ------
    AssetMissingError, AssetInvalidError.
    """
    path = Path(path)
    _check_exists(path)
    zipped = _is_zip(path)
    member = _zip_member(path) if zipped else None
    if zipped and member is None:
        data, hit = _read_converted(path), True
    else:
        if cache_dir is None:
            from ..assets import cache_dir as default_cache_dir

            cache_dir = default_cache_dir()
        key = source_key(path) + (f"-{member}" if member else "")
        target = cache_path(path, Path(cache_dir), member)
        data = _read_npz(target, key) if target.is_file() else None
        hit = data is not None
        if data is None:
            data = _read_source(path, member)
            try:
                save_npz(data, target, key)
            except OSError as exc:
                log.warning("Could not cache the converted FLAME model at %s (%s)", target, exc)
    if eyelids == "beside":
        eyelids = eyelids_beside(path)
    if eyelids is not None:
        data = dataclasses.replace(data, eyelids=load_eyelids(*eyelids, n_vertices=data.n_vertices))
    log.info("Loaded %s from %s%s", data.describe(), path, " (cached)" if hit else "")
    return data


def eyelids_beside(model_path: str | Path) -> tuple[Path, Path] | None:
    """The :data:`EYELID_FILES` next to a FLAME model file, or None unless both are there."""
    beside = tuple(Path(model_path).parent / name for name in EYELID_FILES)
    return beside if all(p.is_file() for p in beside) else None


def load_eyelids(left: str | Path, right: str | Path, n_vertices: int) -> np.ndarray:
    """Read the two eyelid blendshapes (``l_eyelid.npy``, ``r_eyelid.npy``), each (V, 3), as (2, V, 3)."""
    shapes = []
    for p in (Path(left), Path(right)):
        if not p.is_file():
            raise AssetMissingError(
                f"The eyelid blendshape {p} does not exist; choose l_eyelid.npy and r_eyelid.npy or none."
            )
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise AssetInvalidError(f"{p} is not a numpy eyelid blendshape; download it again.") from exc
        if arr.shape != (n_vertices, 3):
            raise AssetInvalidError(
                f"{p} has shape {arr.shape} instead of ({n_vertices}, 3); choose the eyelid file of this model."
            )
        shapes.append(arr.astype(np.float64))
    return np.stack(shapes)


class _PickleAs:
    """Writer-side stand-ins: their class is written into the pickle under a foreign module and name."""


class _ChumpyWriter(_PickleAs):
    pickle_as = ("chumpy.ch", "Ch")

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self._dirty_vars = set()


class _CscWriter(_PickleAs):
    pickle_as = ("scipy.sparse._csc", "csc_matrix")

    def __init__(self, dense: np.ndarray) -> None:
        rows, cols = np.nonzero(dense.T)  # column-major order
        self.data = dense.T[rows, cols]
        self.indices = cols.astype(np.int32)
        self.indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=dense.shape[1])))).astype(np.int32)
        self._shape = dense.shape
        self.maxprint = 50


class _ForeignNamePickler(pickle._Pickler):
    """Pure-Python pickler that writes :class:`_PickleAs` classes under their ``pickle_as`` names."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, type) and issubclass(obj, _PickleAs) and hasattr(obj, "pickle_as"):
            module, qualname = obj.pickle_as
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


def flame_dict(data: FlameData, style: str = "plain") -> dict:
    """The FLAME pickle layout of ``data`` (keys of ``generic_model.pkl``).

    Parameters
    ----------
    data : the model.
    style : "plain" (numpy arrays only, dense J_regressor) or "chumpy" (like FLAME 2020: ``v_template``,
        ``shapedirs``, ``posedirs`` and ``weights`` as ``chumpy.ch.Ch`` objects, J_regressor as a
        ``scipy.sparse`` CSC matrix).
    """
    if style not in ("plain", "chumpy"):
        raise ValueError(f"Unknown pickle style '{style}'; use plain or chumpy.")
    wrap = _ChumpyWriter if style == "chumpy" else (lambda a: a)
    kintree = np.stack((np.where(data.parents < 0, _ROOT_SENTINEL, data.parents), np.arange(N_JOINTS)))
    raw = {
        "v_template": wrap(data.v_template),
        "f": data.faces.astype(np.uint32),
        "shapedirs": wrap(np.concatenate((data.shapedirs, data.exprdirs), axis=2)),
        "posedirs": wrap(data.posedirs),
        "J_regressor": _CscWriter(data.J_regressor) if style == "chumpy" else data.J_regressor,
        "weights": wrap(data.weights),
        "kintree_table": kintree.astype(np.int64),
        "J": data.J_regressor @ data.v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    if data.release == "synthetic":
        raw[_SYNTHETIC_KEY] = {"n_shape": data.n_shape, "n_expr": data.n_expr, "source": data.source}
    return raw


def write_flame_pickle(data: FlameData, path: str | Path, style: str = "plain") -> Path:
    """Write ``data`` as a FLAME pickle (protocol 2, like the official files); see :func:`flame_dict`."""
    path = Path(path)
    buffer = io.BytesIO()
    _ForeignNamePickler(buffer, protocol=2).dump(flame_dict(data, style))
    path.write_bytes(buffer.getvalue())
    return path


@dataclasses.dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks as barycentric points on FLAME triangles.

    Attributes
    ----------
    face_idx : (L,) int64 triangle of each landmark.
    bary : (L, 3) float64 barycentric coordinates.
    landmark_indices : (L,) int64 id of each landmark: its MediaPipe face-mesh id (kind "mediapipe") or its iBUG-68
        id (kind "68").
    kind : "68" or "mediapipe".
    source : path or description.
    """

    face_idx: np.ndarray
    bary: np.ndarray
    landmark_indices: np.ndarray
    kind: str
    source: str


def load_landmark_embedding(path: str | Path) -> LandmarkEmbedding:
    """Read ``landmark_embedding.npy`` (iBUG 68 points), ``mediapipe_landmark_embedding.npz`` (MediaPipe ids) or
    ``flame_static_embedding.pkl`` (RingNet: iBUG 17-67).

    The 68-point file is a pickled dict inside an object array and RingNet's a plain pickle; both are read with the
    restricted unpickler (the 68-point file's torch-tensor entries, the dynamic contour, are skipped), never with
    ``allow_pickle``.

    Raises
    ------
    AssetMissingError, AssetInvalidError.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetMissingError(f"The landmark embedding {path} does not exist; choose it or leave it empty.")
    bad = (
        f"{path} is not a FLAME landmark embedding; choose landmark_embedding.npy, "
        "mediapipe_landmark_embedding.npz or flame_static_embedding.pkl."
    )
    with path.open("rb") as f:
        magic = f.read(6)
        f.seek(0)
        try:
            if magic.startswith(b"PK"):
                with np.load(f, allow_pickle=False) as z:
                    emb = LandmarkEmbedding(
                        face_idx=z["lmk_face_idx"].astype(np.int64),
                        bary=z["lmk_b_coords"].astype(np.float64),
                        landmark_indices=z["landmark_indices"].astype(np.int64),
                        kind="mediapipe",
                        source=str(path),
                    )
            elif magic == b"\x93NUMPY":
                version = np.lib.format.read_magic(f)
                fmt = np.lib.format
                header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                _, _, dtype = header(f)
                if dtype != np.dtype(object):
                    raise AssetInvalidError(bad)
                content = RestrictedUnpickler(f, str(path), skip_torch=True).load()
                table = content.item() if isinstance(content, np.ndarray) else content
                face_idx = np.asarray(table["full_lmk_faces_idx"]).reshape(-1).astype(np.int64)
                emb = LandmarkEmbedding(
                    face_idx=face_idx,
                    bary=np.asarray(table["full_lmk_bary_coords"]).reshape(-1, 3).astype(np.float64),
                    landmark_indices=np.arange(len(face_idx), dtype=np.int64),
                    kind="68",
                    source=str(path),
                )
            elif magic[:1] == b"\x80":  # RingNet's flame_static_embedding.pkl: the 51 iBUG points 17-67
                table = unpickle_bytes(f.read(), path)
                face_idx = np.asarray(_as_array(table["lmk_face_idx"])).reshape(-1).astype(np.int64)
                emb = LandmarkEmbedding(
                    face_idx=face_idx,
                    bary=np.asarray(_as_array(table["lmk_b_coords"])).reshape(-1, 3).astype(np.float64),
                    landmark_indices=np.arange(68 - len(face_idx), 68, dtype=np.int64),
                    kind="68",
                    source=str(path),
                )
            else:
                raise AssetInvalidError(bad)
        except AssetInvalidError:
            raise
        except Exception as exc:  # damaged files raise many kinds of errors
            raise AssetInvalidError(bad) from exc
    if emb.face_idx.shape[0] != emb.bary.shape[0] or emb.landmark_indices.shape != emb.face_idx.shape:
        raise AssetInvalidError(bad)
    return emb
