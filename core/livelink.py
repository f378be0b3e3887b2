"""Live Link Face takes: the CSV files Epic's iPhone app records, read and written.

Format (one header line, then one row per captured frame)::

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,
    LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll
    12:27:47:47.169,61,0.0000000000,...

- ``Timecode`` is ``HH:MM:SS:FF.fff``: frame ``FF`` of the timecode's own rate (60 in the app's takes, whatever the
  capture rate: a 30 fps take advances FF by 2 per row) plus a sub-frame fraction. The timecode rate is read off
  where FF wraps to the next second; the take's frame rate is that rate over the median FF step.
- ``BlendShapeCount`` is 61 (52 blendshapes + 9 angles) for a tracked frame. The app writes rows holding only a
  timecode and a count of 0 while it has lost the face; they are kept as untracked frames (:attr:`Take.tracked`)
  holding the previous tracked values.
- 52 blendshape weights in UpperCamel case (ARKit's names with a capital), in [0, 1]. TongueOut is read and
  dropped (FLAME has no tongue); the other 51 map to :data:`core.arkit.ARKIT_NAMES`.
- Head and eye angles in radians. In four public takes the eye angles follow the eyeLook weights exactly:
  positive yaw turns the gaze to the subject's right (-x in FLAME's frame), positive pitch turns it down
  (verified). Roll's sign, the order in which the three angles compose, and the head angles' convention (zero in
  those takes) are not verified; :func:`rotation_matrices` assumes the head follows the eyes and that roll,
  like yaw, is a right-handed rotation about FLAME's axis with its sign flipped (the app's frame has the subject's
  right as +y where FLAME has the subject's left as +x).

Columns are found by name, case-insensitively, never by position. Extra columns are ignored with a logged
warning unless one looks like a misspelling of a missing column (difflib ratio >= 0.8), which is an error.
Every problem with a file raises :class:`core.errors.TakeError` with one sentence.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arkit import ARKIT_NAMES
from .errors import TakeError

log = logging.getLogger(__name__)

#: The app's 52 blendshape columns in the app's order.
BLENDSHAPE_COLUMNS = tuple(n[0].upper() + n[1:] for n in ARKIT_NAMES) + ("TongueOut",)
#: Angle columns (radians): head, left eye, right eye, each yaw, pitch, roll.
ANGLE_COLUMNS = (
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)
HEADER = ("Timecode", "BlendShapeCount") + BLENDSHAPE_COLUMNS + ANGLE_COLUMNS
_REQUIRED = ("Timecode",) + BLENDSHAPE_COLUMNS[:51]
_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;](\d+)(\.\d+)?\s*$")
_SNIFF_BYTES = 4096
_MISSPELLING_RATIO = 0.8
_DAY = 86400.0


@dataclass(frozen=True)
class Take:
    """One take, rows in file order.

    Attributes
    ----------
    fps : frames per second of the take (the scene's frame rate on import).
    timecode_rate : frame rate of the Timecode column's frame field (60 in the app's takes).
    times : (T,) float64 seconds since midnight on the take's clock, strictly increasing.
    frames : (T,) int64 strictly increasing frame of each row counted from the first row,
        ``round((times - times[0]) * fps)`` (a row that would share its predecessor's frame takes the next one);
        frames the app dropped leave gaps.
    weights : (T, 51) float32 blendshape weights in :data:`core.arkit.ARKIT_NAMES` order.
    head : (T, 3) float32 head yaw, pitch, roll (radians, the app's convention; see :func:`rotation_matrices`).
    eyes : (T, 2, 3) float32 left and right eye yaw, pitch, roll (radians).
    tracked : (T,) bool, False for rows the app wrote without a face (they repeat the previous tracked values).
    source : file name or description.
    """

    fps: float
    timecode_rate: int
    times: np.ndarray
    frames: np.ndarray
    weights: np.ndarray
    head: np.ndarray
    eyes: np.ndarray
    tracked: np.ndarray
    source: str

    @classmethod
    def from_frames(
        cls,
        weights: np.ndarray,
        fps: float,
        frames: np.ndarray | None = None,
        head: np.ndarray | None = None,
        eyes: np.ndarray | None = None,
        start: float = 0.0,
        source: str = "animation",
    ) -> Take:
        """A take from animation curves (what an export writes).

        Parameters
        ----------
        weights : (T, 51) weights in ARKIT_NAMES order.
        fps : frame rate.
        frames : (T,) increasing frame numbers (default 0..T-1).
        head : (T, 3) head yaw, pitch, roll or None (zeros). eyes : (T, 2, 3) or None (zeros).
        start : time of frame 0, seconds since midnight.
        """
        weights = np.asarray(weights, dtype=np.float32)
        t = len(weights)
        frames = np.arange(t, dtype=np.int64) if frames is None else np.asarray(frames, dtype=np.int64)
        if weights.shape != (t, len(ARKIT_NAMES)) or frames.shape != (t,) or t == 0:
            raise ValueError(f"weights must be (T, {len(ARKIT_NAMES)}) with T >= 1 and frames (T,).")
        if np.any(np.diff(frames) <= 0) or not fps > 0:
            raise ValueError("frames must increase and fps must be positive.")
        rate = 60 if float(fps).is_integer() and 60 % int(fps) == 0 else math.ceil(fps)
        return cls(
            fps=float(fps), timecode_rate=rate, times=start + (frames - frames[0]) / float(fps),
            frames=frames - frames[0], weights=weights,
            head=np.zeros((t, 3), np.float32) if head is None else np.asarray(head, np.float32).reshape(t, 3),
            eyes=np.zeros((t, 2, 3), np.float32) if eyes is None else np.asarray(eyes, np.float32).reshape(t, 2, 3),
            tracked=np.ones(t, dtype=bool), source=source,
        )


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise TakeError(f"The take {path} does not exist; choose a Live Link Face CSV file.")
    raw = path.read_bytes()
    if not raw.strip():
        raise TakeError(f"The take {path} is empty; export the take again from Live Link Face.")
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise TakeError(f"{path} is a binary file, not a CSV take; choose the take's .csv file.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TakeError(f"{path} is not a UTF-8 text file; choose the take's .csv file.") from None


def _columns(header: list[str], path: Path) -> tuple[dict[str, int], list[str]]:
    """Map each known column (its canonical name) to its position; also the names of the ignored columns."""
    known = {name.lower(): name for name in HEADER}
    found: dict[str, int] = {}
    unknown: list[tuple[int, str]] = []
    for pos, raw in enumerate(header):
        name = raw.strip()
        canonical = known.get(name.lower())
        if canonical is None:
            unknown.append((pos, name))
        elif canonical in found:
            raise TakeError(f"The take {path} has two '{canonical}' columns; keep one and import it again.")
        else:
            found[canonical] = pos
    if "Timecode" not in found and not any(n in found for n in BLENDSHAPE_COLUMNS):
        raise TakeError(
            f"{path} is not a Live Link Face take (its first line names no Timecode and no blendshape columns); "
            "choose a take exported by the app."
        )
    missing = [n for n in HEADER if n not in found]
    lower_missing = {n.lower(): n for n in missing}
    for _, name in unknown:
        close = difflib.get_close_matches(name.lower(), lower_missing, n=1, cutoff=_MISSPELLING_RATIO)
        if close:
            raise TakeError(
                f"The take {path} has a column '{name}' where '{lower_missing[close[0]]}' is expected; rename the "
                "column and import it again."
            )
    required = [n for n in _REQUIRED if n not in found]
    if required:
        more = f" and {len(required) - 3} more" if len(required) > 3 else ""
        raise TakeError(
            f"The take {path} lacks the column{'s' if len(required) > 1 else ''} {', '.join(required[:3])}{more}; "
            "export the take again from Live Link Face."
        )
    ignored = [name for _, name in unknown]
    if ignored:
        log.warning("Take %s: ignoring unknown columns %s", path, ", ".join(ignored))
    absent = [n for n in missing if n not in _REQUIRED]
    if absent:
        log.info("Take %s has no %s columns; they read as zero", path, ", ".join(absent))
    return found, ignored


def _numbers(cells: list[list[str]], rows: list[int], names: list[str], path: Path) -> np.ndarray:
    """(R, C) float64 from strings; the first cell that is not a finite number is named by file line and column."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    for r, row in enumerate(cells):
        for c, text in enumerate(row):
            try:
                bad = not math.isfinite(float(text))
            except ValueError:
                bad = True
            if bad:
                raise TakeError(
                    f"Line {rows[r]} of the take {path} has '{text.strip()}' in column {names[c]}, which is not a "
                    "number; fix or delete that line."
                )
    return values


def _timecodes(texts: list[str], rows: list[int], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(whole seconds (T,) int64, frame field with sub-frame (T,) float64)."""
    secs = np.empty(len(texts), dtype=np.int64)
    ff = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        m = _TIMECODE.match(text)
        if m is None or int(m.group(2)) > 59 or int(m.group(3)) > 59:
            raise TakeError(
                f"Line {rows[i]} of the take {path} has the timecode '{text.strip()}', not HH:MM:SS:FF.fff; fix or "
                "delete that line."
            )
        secs[i] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        ff[i] = int(m.group(4)) + (float(m.group(5)) if m.group(5) else 0.0)
    return secs, ff


def _timecode_rate(secs: np.ndarray, ff: np.ndarray, fps: float | None, path: Path) -> int:
    """Frame rate of the FF field: where FF wraps, rate = FF before + usual step - FF after."""
    same = secs[1:] == secs[:-1]
    wraps = secs[1:] == secs[:-1] + 1
    steps = np.diff(ff)[same]
    top = int(np.floor(ff.max()))
    if steps.size and wraps.any():
        step = float(np.median(steps))
        rate = int(round(float(np.median(ff[:-1][wraps] + step - ff[1:][wraps]))))
        if rate > top:
            return rate
    rate = 60 if top >= 30 else (int(round(fps)) if fps else 30)
    if rate <= top:
        raise TakeError(
            f"The take {path} has timecode frames up to {top}, more than any frame rate it states; export the take "
            "again from Live Link Face."
        )
    log.warning("Take %s: its timecodes never reach the next second; assuming a timecode rate of %d", path, rate)
    return rate


def read_take(path: str | Path, fps: float | None = None) -> Take:
    """Read a Live Link Face CSV take.

    Parameters
    ----------
    path : the .csv file.
    fps : the take's frame rate, or None to read it off the timecodes.

    Returns
    -------
    :class:`Take`.

    Raises
    ------
    TakeError : a missing, empty, binary or non-CSV file; missing, misspelt or duplicate columns; a row whose
        length differs from the header's; a cell that is not a finite number; a malformed timecode; timecodes that
        do not increase; no tracked row.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    path = Path(path)
    text = _read_text(path)
    try:
        lines = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), 1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise TakeError(f"The take {path} is not a readable CSV file ({exc}); export it again.") from exc
    if not lines:
        raise TakeError(f"The take {path} is empty; export the take again from Live Link Face.")
    (_, header), body = lines[0], lines[1:]
    if len(header) == 1 and ";" in header[0]:
        raise TakeError(
            f"The take {path} separates its columns with ';' instead of ','; save it as comma-separated or export "
            "it again from Live Link Face."
        )
    found, _ = _columns(header, path)
    if not body:
        raise TakeError(f"The take {path} has no frames; record the take again.")
    count_col = found.get("BlendShapeCount")
    numeric = [n for n in HEADER[1:] if n in found]
    positions = [found[n] for n in numeric]
    tracked = np.ones(len(body), dtype=bool)
    cells, tracked_lines, all_lines = [], [], []
    for i, (line, row) in enumerate(body):
        all_lines.append(line)
        if len(row) != len(header):
            count = row[count_col].strip() if count_col is not None and count_col < len(row) else None
            if count in ("0", "0.0"):
                tracked[i] = False
                continue
            raise TakeError(
                f"Line {line} of the take {path} has {len(row)} values where the header names {len(header)} columns; "
                "fix or delete that line."
            )
        if count_col is not None and row[count_col].strip() in ("0", "0.0"):
            tracked[i] = False
            continue
        cells.append([row[p] for p in positions])
        tracked_lines.append(line)
    if not tracked.any():
        raise TakeError(f"The take {path} has no frame with a tracked face; record the take again.")
    values = _numbers(cells, tracked_lines, numeric, path)
    secs, ff = _timecodes([row[found["Timecode"]] for _, row in body], all_lines, path)
    rate = _timecode_rate(secs, ff, fps, path)
    times = secs + ff / rate
    times = times + _DAY * np.cumsum(np.concatenate(([0], np.diff(times) < -_DAY / 2)))  # past midnight
    back = np.flatnonzero(np.diff(times) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise TakeError(
            f"Line {all_lines[i]} of the take {path} does not come after the line before it (timecode "
            f"{body[i][1][found['Timecode']].strip()}); sort the rows by timecode or export the take again."
        )
    if fps is None:
        # Rows are a whole number of timecode frames apart in the app's takes (2 at 30 fps, 1 at 60 fps).
        step = float(np.median(np.diff(times))) * rate if len(times) > 1 else 1.0
        fps = rate / max(1, round(step)) if abs(step - round(step)) < 0.1 else round(rate / step, 3)
    # A row that rounds onto its predecessor's frame (sub-frame jitter) takes the next frame.
    order = np.arange(len(times))
    frames = np.maximum.accumulate(np.round((times - times[0]) * fps).astype(np.int64) - order) + order

    # Untracked rows repeat the previous tracked row (the first tracked row for leading ones).
    full = np.zeros((len(body), len(HEADER)), dtype=np.float64)
    columns = [HEADER.index(n) for n in numeric]
    full[np.ix_(np.flatnonzero(tracked), columns)] = values
    source_row = np.maximum.accumulate(np.where(tracked, np.arange(len(body)), -1))
    source_row = np.where(source_row < 0, int(np.argmax(tracked)), source_row)
    full = full[source_row]
    blend = full[:, 2 : 2 + len(BLENDSHAPE_COLUMNS)]
    if "TongueOut" in found and blend[:, -1].max() > 0:
        log.info("Take %s: TongueOut (up to %.2f) is dropped; FLAME has no tongue", path, blend[:, -1].max())
    angles = full[:, 2 + len(BLENDSHAPE_COLUMNS) :].astype(np.float32)
    log.info("Read take %s: %d rows at %.3g fps (timecode rate %d), %d untracked", path, len(body), fps, rate,
             int((~tracked).sum()))
    return Take(
        fps=float(fps), timecode_rate=rate, times=times, frames=frames, weights=blend[:, :51].astype(np.float32),
        head=angles[:, :3], eyes=angles[:, 3:].reshape(-1, 2, 3), tracked=tracked, source=str(path),
    )


def _format_timecode(t: float, rate: int) -> str:
    total = t * rate
    whole = math.floor(total + 1e-6)
    millis = round(max(0.0, total - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    seconds, frame = divmod(whole, rate)
    hours, rest = divmod(seconds, 3600)
    return f"{hours % 24:02d}:{rest // 60:02d}:{rest % 60:02d}:{frame:02d}.{millis:03d}"


def write_take(path: str | Path, take: Take) -> Path:
    """Write a take in the app's CSV layout (all 61 values per tracked row, TongueOut 0; untracked rows as the
    app writes them: timecode and a count of 0).

    Raises
    ------
    TakeError : the file cannot be written.
    """
    path = Path(path)
    lines = [",".join(HEADER)]
    zeros = np.zeros((len(take.times), 1))
    values = np.concatenate(
        (take.weights.astype(np.float64), zeros, take.head.astype(np.float64),
         take.eyes.reshape(-1, 6).astype(np.float64)), axis=1,
    )
    count = len(BLENDSHAPE_COLUMNS) + len(ANGLE_COLUMNS)
    for t, row, ok in zip(take.times.tolist(), values, take.tracked.tolist()):
        code = _format_timecode(t, take.timecode_rate)
        lines.append(f"{code},{count}," + ",".join(f"{v:.10f}" for v in row) if ok else f"{code},0")
    try:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise TakeError(f"The take cannot be written to {path} ({exc.strerror}); choose another folder.") from exc
    return path


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m[..., axis, axis] = 1.0
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation in FLAME's frame (+x the subject's left, +y up, +z forward) of the app's yaw, pitch, roll.

    ``R = R_y(-yaw) @ R_x(pitch) @ R_z(-roll)``: positive yaw turns the face or gaze to the subject's right,
    positive pitch turns it down (both verified on the app's eye angles); roll's sign and the order are assumed
    (see the module docstring).

    Parameters
    ----------
    angles : (..., 3) yaw, pitch, roll in radians.

    Returns
    -------
    (..., 3, 3) matrices acting on column vectors.
    """
    a = np.asarray(angles, dtype=np.float64)
    return _axis_rotation(1, -a[..., 0]) @ _axis_rotation(0, a[..., 1]) @ _axis_rotation(2, -a[..., 2])


def rotation_angles(matrices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrices`: (..., 3, 3) rotations to (..., 3) yaw, pitch, roll in radians
    (pitch in [-pi/2, pi/2])."""
    r = np.asarray(matrices, dtype=np.float64)
    pitch = np.arctan2(-r[..., 1, 2], np.hypot(r[..., 1, 0], r[..., 1, 1]))
    yaw = -np.arctan2(r[..., 0, 2], r[..., 2, 2])
    roll = -np.arctan2(r[..., 1, 0], r[..., 1, 1])
    return np.stack((yaw, pitch, roll), axis=-1)
