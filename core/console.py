"""What the command-line entry points share: a progress display, hiding other code's console output, OpenCV's
pixel limit, and output folders that are checked before the work starts and filled atomically.

Used by ``python -m core`` (:mod:`core.cli`) and the Blender headless runner; library code never prints.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from .errors import OutputError
from .imageheader import MAX_PIXELS

STAGE_LABELS = {
    "load": "loading the assets and the photo",
    "detect": "finding the face",
    "network": "predicting the UV and normal maps",
    "fit": "fitting the FLAME head",
    "joint": "fitting all frames together",
    "texture": "baking the texture",
}
"""What each stage of :func:`core.pipeline.reconstruct` and :func:`core.track.track` is called in the progress
display."""

_BAR = 24


def cap_image_decoding() -> None:
    """Make OpenCV refuse images above :data:`~core.imageheader.MAX_PIXELS` in every format.

    OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when it loads, so call this before anything imports
    ``cv2``. :func:`core.preprocess.load_photo` checks the size itself wherever it can read it from the header;
    this covers formats it cannot. A value the user set is kept.
    """
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))


class ProgressDisplay:
    """Shows ``on_progress(stage, fraction)`` calls on a text stream.

    On a terminal: one line redrawn in place (bar, percent, stage, elapsed seconds). Elsewhere (a pipe, a log
    file): one line whenever the stage changes or the percentage passes a multiple of 10. Call :meth:`close`
    before printing anything else.

    Parameters
    ----------
    stream : TextIO
        Where to write; ``stream.isatty()`` chooses the style.
    prefix : str
        Put before every line (e.g. ``"[pixel3dmm] "``).
    """

    def __init__(self, stream: TextIO, prefix: str = ""):
        self._stream = stream
        self._tty = stream.isatty()
        self._prefix = prefix
        self._start = time.monotonic()
        self._shown: tuple | None = None
        self._width = 0

    def __call__(self, stage: str, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        percent = int(100 * fraction)
        label = STAGE_LABELS.get(stage, stage)
        if self._tty:
            elapsed = int(time.monotonic() - self._start)
            if self._shown == (stage, percent, elapsed):
                return
            self._shown = (stage, percent, elapsed)
            filled = round(_BAR * fraction)
            line = f"{self._prefix}[{'#' * filled}{'.' * (_BAR - filled)}] {percent:3d}%  {label} ({elapsed} s)"
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            if self._shown == (stage, percent // 10):
                return
            self._shown = (stage, percent // 10)
            self._stream.write(f"{self._prefix}{percent:3d}%  {label}\n")
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line (terminal only), so that the next output starts on a line of its own."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


@contextmanager
def other_output_hidden(hide: bool = True) -> Iterator[tuple[TextIO, TextIO]]:
    """Hide what other code writes to the console while the block runs; yield streams that still show.

    Native libraries (mediapipe's C++ logging, libpng, EGL, Blender's own messages) write to the file
    descriptors 1 and 2 directly, and Python modules print to ``sys.stdout`` / ``sys.stderr``, which write
    to the same descriptors: with ``hide`` both descriptors point at a temporary file that is discarded, and the
    yielded ``(stdout, stderr)`` streams write to the original console. Without ``hide`` (``-v``) nothing
    changes and ``(sys.stdout, sys.stderr)`` are yielded. The yielded streams are closed when the block ends.
    """
    if not hide:
        yield sys.stdout, sys.stderr
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    encoding = sys.stdout.encoding or "utf-8"
    shown = tuple(os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="backslashreplace")
                  for fd in saved)
    sink = tempfile.TemporaryFile()
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield shown
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in shown:
            stream.close()
        sink.close()


@contextmanager
def output_folder(folder: str | Path, names: Iterable[str]) -> Iterator[Path]:
    """Create the output folder and check, before any work, that the outputs ``names`` can be written there.

    Enter it before the slow work. A folder this call created is removed again when the block ends with it
    still empty (an error, Ctrl-C, a run that wrote nothing), so a failed run leaves nothing behind.

    Parameters
    ----------
    folder : str or Path
        Created with its parents when missing.
    names : Iterable[str]
        File names that will be written into it; existing ones are replaced, so none may be a folder or
        read-only.

    Yields
    ------
    Path
        The folder, absolute.

    Raises
    ------
    OutputError
        The folder cannot be created or written to, or one of ``names`` is in the way.
    """
    folder = Path(folder).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"The output path {folder} is a file, not a folder; choose a folder for the results.")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".p3dmm-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); choose a folder "
                          "you can write to.") from exc
    for name in names:
        target = folder / name
        if target.is_dir():
            raise OutputError(f"{target} is a folder, so the result cannot be written there; move it away or "
                              "choose another output folder.")
        if target.exists() and not os.access(target, os.W_OK):
            raise OutputError(f"{target} is read-only; make it writable or choose another output folder.")
    try:
        yield folder
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()


def write_image(path: Path, image) -> None:
    """Write an 8-bit image with OpenCV, which returns False instead of raising when it cannot.

    Parameters
    ----------
    path : Path
        The format follows the suffix (``.png``).
    image : np.ndarray
        (H, W, 3) BGR or (H, W, 4) BGRA uint8, OpenCV's channel order.

    Raises
    ------
    OutputError
        The file could not be written.
    """
    import cv2

    if not cv2.imwrite(str(path), image):
        raise OutputError(f"Cannot write {path.name}; check that the output folder's disk has free space and try "
                          "again.")


@contextmanager
def staged_outputs(folder: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``folder`` to write the outputs into.

    When the block ends normally, every file written into it is moved into ``folder`` (each move atomic,
    replacing an older result of the same name); when it raises (an error, Ctrl-C) the temporary folder is
    removed and ``folder`` is left as it was.
    """
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".p3dmm-"))
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            try:
                os.replace(path, folder / path.name)
            except OSError as exc:
                raise OutputError(f"Cannot write {folder / path.name} ({exc.strerror or exc}); make room for it "
                                  "or choose another output folder.") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
