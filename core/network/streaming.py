"""Write a ``.safetensors`` file one tensor at a time, atomically, with progress and cancellation.

The safetensors layout is an 8-byte little-endian header length, a JSON header (per tensor its ``dtype``,
``shape`` and ``data_offsets`` into the data block, plus string ``__metadata__``), padded with spaces to a
multiple of 8 bytes, then the tensors' bytes back to back. Because every tensor's dtype and shape is known before
its bytes are, the header is written first and each tensor is produced, written and dropped in turn: memory holds
one tensor at a time, never a second copy of the network.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..assets import format_bytes, is_disk_full, require_free_space
from ..errors import DiskFullError, OperationCancelled

#: safetensors dtype codes.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its name, the dtype and shape it will have in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * torch.empty((), dtype=self.dtype).element_size()


def _header(entries: list[Entry], metadata: Mapping[str, str]) -> bytes:
    table: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        table[entry.name] = {"dtype": DTYPE_CODES[entry.dtype], "shape": list(entry.shape),
                             "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(table, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    dst: Path,
    entries: list[Entry],
    produce: Callable[[Entry], torch.Tensor],
    metadata: Mapping[str, str],
    *,
    what: str,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Path:
    """Write ``entries`` to ``dst``, asking ``produce(entry)`` for each tensor in turn.

    The file is written next to ``dst`` under a temporary name and renamed into place at the end; on any
    failure (disk full, cancellation, an error in ``produce``) the temporary file is removed and ``dst`` is left
    as it was. The free space is checked before the first byte is written.

    Parameters
    ----------
    dst : the final path.
    entries : tensors in file order; ``produce`` must return a CPU tensor of exactly the entry's dtype and shape.
    metadata : string metadata stored in the header.
    what : how messages name the file (e.g. "the converted UV network").
    on_progress : called with the written fraction in [0, 1] after each tensor.
    should_cancel : polled before each tensor; True raises :class:`OperationCancelled`.

    Raises
    ------
    DiskFullError, OperationCancelled, and whatever ``produce`` raises.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    header = _header(entries, metadata)
    total = len(header) + sum(entry.nbytes for entry in entries)
    require_free_space(dst.parent, total, what)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            written = len(header)
            for entry in entries:
                if should_cancel is not None and should_cancel():
                    raise OperationCancelled(f"Writing {what} was cancelled; nothing was written.")
                tensor = produce(entry)
                if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                    raise ValueError(f"{entry.name} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                                     f"{entry.dtype} {entry.shape}")
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                if entry.nbytes:
                    f.write(memoryview(flat.view(torch.uint8).numpy()))
                written += entry.nbytes
                del tensor, flat
                if on_progress is not None:
                    on_progress(written / total)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(
                f"The disk at {dst.parent} filled up while writing {what} ({format_bytes(written)} of "
                f"{format_bytes(total)}); free some space and try again."
            ) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst
