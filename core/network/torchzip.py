"""Read PyTorch zip checkpoints as inert data: nothing from the file is ever called.

A ``torch.save`` file is a zip archive with one folder ``<root>/`` holding ``data.pkl`` (the pickled object tree),
one stored (uncompressed) record ``data/<key>`` per tensor storage, and small records such as ``byteorder``.
:func:`open_archive` unpickles ``data.pkl`` with :class:`InertUnpickler`, which resolves a global name to

- a *tensor rebuild* (``torch._utils._rebuild_tensor_v2`` and relatives): a function of this module that returns a
  :class:`TensorRef` (dtype, shape, stride and where the bytes are), never touching the bytes;
- a *storage type* (``torch.FloatStorage``, ...): a dtype marker read by :meth:`InertUnpickler.persistent_load`;
- a *safe container or value type* (``dict``, ``list``, ``collections.OrderedDict``, ``int``, ...) whose
  construction from plain arguments cannot run code;
- a class the caller maps explicitly (the OmegaConf stand-ins of :mod:`.checkpoint`);
- a *code entry point* (``os.system``, ``subprocess``, ``builtins.eval``, ``getattr``, dunder attribute chains,
  ...): no checkpoint has a reason to name one, so the file is refused with :class:`UnsafePickleError`;
- anything else (numpy scalars and arrays, ``pathlib`` paths, ``datetime``, Lightning callbacks, optimizer and
  scheduler classes, classes this project has never heard of): a fresh subclass of :class:`Placeholder`.
  Unpickling "calls" it or its ``__setstate__``; both only record their arguments, so the object graph is kept
  as inert data that nothing reads unless it asks for it.

Safety does not depend on the refusal list: nothing from the file is executed whether a name is refused or
turned into a placeholder; the list only makes a trojan fail with a clear sentence instead of loading.

:meth:`Archive.read` materialises one :class:`TensorRef` by reading exactly its bytes from the file (checking the
record's CRC-32 when the tensor covers its whole record), so a 2 GB checkpoint can be inspected or converted one
tensor at a time.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

#: Storage class names (module ``torch`` or ``torch.cuda``) and the element type they hold.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64, "UntypedStorage": torch.uint8,
}
#: Top-level modules whose only use inside a pickle is to run code or reach the system.
CODE_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "pty", "runpy",
    "importlib", "imp", "ctypes", "_ctypes", "socket", "_socket", "shutil", "webbrowser", "pickle", "_pickle",
    "cPickle", "marshal", "code", "codeop", "timeit", "pdb", "bdb", "cProfile", "profile", "trace", "doctest",
    "multiprocessing", "signal", "commands", "popen2", "pip", "setuptools", "distutils", "ensurepip", "venv",
    "pkgutil", "zipimport", "_io", "io", "shelve", "dill", "cloudpickle",
})
#: Dotted module prefixes and fully qualified names outside those modules that load or run code.
CODE_PREFIXES = ("torch.hub", "torch.jit", "torch.package", "torch.serialization", "torch.utils.cpp_extension",
                 "torch._dynamo", "torch._inductor", "torch.compiler", "numpy.testing", "numpy.f2py",
                 "numpy.distutils", "operator.attrgetter", "operator.methodcaller", "_operator.attrgetter",
                 "_operator.methodcaller", "torch.load", "torch.compile", "numpy.load", "numpy.lib.npyio",
                 "functools.reduce", "_functools.reduce", "codecs.open")
#: Builtins that are plain values or containers: calling them with unpickled arguments runs nothing else.
SAFE_BUILTINS: dict[str, Any] = {
    t.__name__: t for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bytearray, bool,
                            slice, range)
} | {"Ellipsis": Ellipsis, "NotImplemented": NotImplemented}
#: Builtins that are harmless names but not needed as real objects: they become placeholders.
INERT_BUILTINS = frozenset({"type", "object", "NoneType", "property", "staticmethod", "classmethod"})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a code entry point; ``names`` lists it as ``module.name``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class NotATorchArchive(Exception):
    """The zip is not a ``torch.save`` archive (no single ``<root>/data.pkl``, or a TorchScript archive)."""


def is_code_global(module: str, name: str) -> bool:
    """Whether ``module.name`` is a code entry point that an inert reader refuses (see the module docstring)."""
    qualified = f"{module}.{name}"
    parts = qualified.split(".")
    if any(part.startswith("__") and part.endswith("__") and part != "__builtin__" for part in parts[1:]):
        return True  # attribute chains such as builtins.object.__subclasses__ or __import__
    top = module.split(".")[0]
    if top in ("builtins", "__builtin__"):
        return name not in SAFE_BUILTINS and name not in INERT_BUILTINS
    if top in CODE_MODULES:
        return True
    return any(qualified == p or qualified.startswith(p + ".") for p in CODE_PREFIXES)


class Placeholder:
    """Inert stand-in for a global the reader does not need; subclasses carry ``global_name``.

    Unpickling may instantiate it (``REDUCE``/``NEWOBJ``), restore its state (``BUILD``) and fill it like a list,
    dict or set (``APPENDS``, ``SETITEMS``, ``ADDITEMS``); each of these only records its arguments in
    ``args``, ``kwargs``, ``state``, ``items`` and ``elements``.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, elements=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["elements"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["elements"].extend(values)

    def add(self, value: Any) -> None:
        self.__dict__["elements"].append(value)

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


def _placeholder_class(qualified: str) -> type[Placeholder]:
    return type("Inert", (Placeholder,), {"global_name": qualified, "__module__": __name__})


class _ReadOnly:
    """Base of the reader's own records: immutable, so a pickle's ``BUILD`` cannot rewrite them."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, s) for s in self.__slots__))


class StorageRef(_ReadOnly):
    """One storage record of the archive: ``data/<key>`` holding ``numel`` elements of ``dtype``."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        for name, value in (("key", key), ("dtype", dtype), ("numel", numel)):
            object.__setattr__(self, name, value)

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def __repr__(self) -> str:
        return f"StorageRef(data/{self.key}, {self.dtype}, {self.numel})"


class TensorRef(_ReadOnly):
    """A tensor of the archive, not yet read: ``shape`` elements with ``stride`` from ``offset`` in ``storage``."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        for name, value in (("storage", storage), ("offset", offset), ("shape", shape), ("stride", stride)):
            object.__setattr__(self, name, value)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def span(self) -> int:
        """Elements from ``offset`` to the last element addressed (0 for an empty tensor)."""
        if self.numel == 0:
            return 0
        return 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride))

    def __repr__(self) -> str:
        return f"TensorRef({self.dtype}, {self.shape})"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(type(v) is int and v >= 0 for v in value):
        raise pickle.UnpicklingError("a tensor with an invalid shape or stride")
    return tuple(value)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
    if not isinstance(storage, StorageRef) or type(offset) is not int or offset < 0:
        raise pickle.UnpicklingError("a tensor without a valid storage")
    ref = TensorRef(storage, offset, _int_tuple(size), _int_tuple(stride))
    if len(ref.shape) != len(ref.stride) or offset + ref.span() > storage.numel:
        raise pickle.UnpicklingError(f"a tensor that reaches past its storage data/{storage.key}")
    return ref


def _rebuild_tensor(storage, storage_offset, size, stride):  # noqa: ANN001 - pickle's signature
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):  # noqa: ANN001 - hooks and metadata are ignored: they are training state
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):  # noqa: ANN001
    if isinstance(storage, StorageRef) and isinstance(dtype, torch.dtype) and storage.dtype == torch.uint8:
        per = _itemsize(dtype)
        storage = StorageRef(storage.key, dtype, storage.numel // per)
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):  # noqa: ANN001
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data


_TENSOR_REBUILDS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("torch", "float32"): torch.float32, ("torch", "float16"): torch.float16, ("torch", "bfloat16"): torch.bfloat16,
    ("torch", "float64"): torch.float64, ("torch", "int64"): torch.int64, ("torch", "int32"): torch.int32,
    ("torch", "uint8"): torch.uint8, ("torch", "int8"): torch.int8, ("torch", "bool"): torch.bool,
}


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``, limited to text codecs."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError("a bytes value with an unsupported encoding")
    return text.encode(encoding)


class _StorageType:
    """Marker for a storage class in a persistent id; carries only the element type."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class InertUnpickler(pickle.Unpickler):
    """Unpickler that calls nothing from the file (see the module docstring for how each global resolves).

    Parameters
    ----------
    file : binary file object holding ``data.pkl``.
    classes : extra ``{"module.name": class}`` mappings (inert stand-ins chosen by the caller).
    """

    def __init__(self, file: io.BufferedIOBase, classes: Mapping[str, type] | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._classes = dict(classes or {})
        self._placeholders: dict[str, type[Placeholder]] = {}
        self.placeholder_names: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("a global with a non-text name")
        # Protocol 0-2 pickles written by Python 3 use Python 2 names (``__builtin__.long`` for ``int``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if qualified in self._classes:
            return self._classes[qualified]
        if (module, name) in _TENSOR_REBUILDS:
            return _TENSOR_REBUILDS[(module, name)]
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in ("_codecs", "codecs") and name == "encode":
            return _latin1_encode
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        if is_code_global(module, name):
            raise UnsafePickleError(qualified)
        cls = self._placeholders.get(qualified)
        if cls is None:
            cls = self._placeholders[qualified] = _placeholder_class(qualified)
            self.placeholder_names.add(qualified)
        return cls

    def persistent_load(self, pid: Any) -> StorageRef:  # noqa: D102 - pickle API
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError("an unknown persistent reference")
        _, storage_type, key, _location, numel = pid
        if isinstance(key, bytes):
            key = key.decode("ascii", errors="replace")
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise pickle.UnpicklingError("a storage reference of an unknown type")
        if numel < 0 or not key.isalnum():
            raise pickle.UnpicklingError("a storage reference with an invalid key or size")
        return StorageRef(key, storage_type.dtype, numel)


@dataclass(frozen=True)
class _Record:
    offset: int  # where the record's bytes start in the file
    size: int
    crc: int


class Archive:
    """An opened ``torch.save`` zip: its unpickled object tree and the location of every storage record.

    Use as a context manager; :meth:`read` needs the file to stay open.

    Attributes
    ----------
    path : the file.
    tree : the unpickled object graph, with :class:`TensorRef` in place of tensors.
    placeholder_names : the globals that were turned into :class:`Placeholder` classes.
    """

    def __init__(self, path: Path, tree: Any, records: dict[str, _Record], big_endian: bool,
                 placeholder_names: set[str]) -> None:
        self.path = path
        self.tree = tree
        self.placeholder_names = frozenset(placeholder_names)
        self._records = records
        self._big_endian = big_endian
        self._file = open(path, "rb")
        self._checked: set[str] = set()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, ref: TensorRef) -> torch.Tensor:
        """Read one tensor's bytes from the file into a new CPU tensor (contiguous, the stored dtype).

        Raises
        ------
        zipfile.BadZipFile : the storage record is missing, shorter than its tensor, or fails its CRC-32.
        """
        record = self._records.get(ref.storage.key)
        if record is None:
            raise zipfile.BadZipFile(f"the storage record data/{ref.storage.key} is missing")
        item = _itemsize(ref.dtype)
        if ref.storage.nbytes > record.size:
            raise zipfile.BadZipFile(f"the storage record data/{ref.storage.key} is shorter than its tensors")
        start, count = ref.offset * item, ref.span() * item
        buffer = torch.empty(count, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        self._file.seek(record.offset + start)
        if self._file.readinto(view) != count:
            raise zipfile.BadZipFile(f"the storage record data/{ref.storage.key} is truncated")
        if start == 0 and count == record.size and ref.storage.key not in self._checked:
            if zlib.crc32(view) != record.crc:
                raise zipfile.BadZipFile(f"the storage record data/{ref.storage.key} fails its checksum")
            self._checked.add(ref.storage.key)
        if self._big_endian and item > 1:
            word = item // 2 if ref.dtype.is_complex else item  # complex values swap each component
            buffer = torch.from_numpy(buffer.numpy().view(f">u{word}").astype(f"<u{word}").view(np.uint8))
        flat = buffer.view(ref.dtype) if count else torch.empty(0, dtype=ref.dtype)
        if ref.numel == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        tensor = torch.as_strided(flat, ref.shape, ref.stride)
        return tensor if tensor.is_contiguous() else tensor.contiguous()


def _records(zf: zipfile.ZipFile, raw: io.BufferedIOBase, root: str) -> dict[str, _Record]:
    """File offsets of the stored ``<root>/data/<key>`` records (read from each local file header)."""
    out: dict[str, _Record] = {}
    prefix = f"{root}data/"
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or "/" in info.filename[len(prefix):]:
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise zipfile.BadZipFile(f"the storage record {info.filename} is compressed")
        raw.seek(info.header_offset)
        header = raw.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"the storage record {info.filename} has no local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        offset = info.header_offset + 30 + name_len + extra_len
        out[info.filename[len(prefix):]] = _Record(offset, info.file_size, info.CRC)
    return out


def _root(zf: zipfile.ZipFile) -> str:
    names = zf.namelist()
    roots = {n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1}
    if len(roots) != 1:
        raise NotATorchArchive("no single <root>/data.pkl record")
    root = roots.pop()
    if f"{root}constants.pkl" in names or any(n.startswith(f"{root}code/") for n in names):
        raise NotATorchArchive("a TorchScript archive (it carries code)")
    return root


def open_archive(path: str | os.PathLike, classes: Mapping[str, type] | None = None,
                 max_pickle_bytes: int = 512 << 20) -> Archive:
    """Open a ``torch.save`` zip and unpickle its object tree inertly (no tensor bytes are read).

    Parameters
    ----------
    path : the file.
    classes : ``{"module.name": class}`` stand-ins for the unpickler (e.g. OmegaConf's classes).
    max_pickle_bytes : refuse a ``data.pkl`` larger than this (a checkpoint's is a few MB at most).

    Raises
    ------
    zipfile.BadZipFile : not a zip, or a damaged or truncated one.
    NotATorchArchive : a zip that is not a ``torch.save`` file.
    UnsafePickleError : the pickle names a code entry point (nothing was run).
    pickle.UnpicklingError, EOFError, ValueError, TypeError, ... : a damaged pickle.
    """
    path = Path(path)
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        root = _root(zf)
        info = zf.getinfo(f"{root}data.pkl")
        if info.file_size > max_pickle_bytes:
            raise NotATorchArchive(f"data.pkl is {info.file_size} bytes")
        pickled = zf.read(info)
        names = set(zf.namelist())
        big_endian = f"{root}byteorder" in names and zf.read(f"{root}byteorder").strip() == b"big"
        records = _records(zf, raw, root)
    unpickler = InertUnpickler(io.BytesIO(pickled), classes)
    tree = unpickler.load()
    return Archive(path, tree, records, big_endian, unpickler.placeholder_names)


__all__ = [
    "Archive", "CODE_MODULES", "InertUnpickler", "NotATorchArchive", "Placeholder", "STORAGE_DTYPES", "StorageRef",
    "TensorRef", "UnsafePickleError", "is_code_global", "open_archive",
]
