"""Live Link Face takes: reading by column name, timecodes, untracked rows, writing, bad input, angle conventions."""

import logging
import math
import re

import numpy as np
import pytest

from core.arkit import ARKIT_NAMES, key_specs
from core.errors import TakeError
from core.livelink import Take, read_take, rotation_angles, rotation_matrices, write_take

# The header of a take recorded by the app (column order as the app writes it).
APP_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,"
    "MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,"
    "MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,"
    "BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,"
    "CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,"
    "LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
).split(",")


def _app_take(rows=90, rate=60, step=2, start=(12, 27, 47, 47), sub=0.169, seed=0):
    """A table like the app's: dict column -> list of strings, rows ``step`` timecode frames apart."""
    rng = np.random.default_rng(seed)
    h, m, s, f = start
    frame0 = ((h * 60 + m) * 60 + s) * rate + f
    table = {"Timecode": [], "BlendShapeCount": []}
    for i in range(rows):
        total = frame0 + i * step
        sec, ff = divmod(total, rate)
        code = f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}:{ff:02d}.{round(sub * 1000):03d}"
        table["Timecode"].append(code)
        table["BlendShapeCount"].append("61")
    for name in APP_HEADER[2:]:
        angle = name.endswith(("Yaw", "Pitch", "Roll"))
        table[name] = [f"{v:.10f}" for v in (rng.uniform(-0.3, 0.3, rows) if angle else rng.uniform(0, 1, rows))]
    return table


def _write(path, table, columns=None, rows=None):
    columns = list(table) if columns is None else columns
    n = len(next(iter(table.values())))
    lines = [",".join(columns)] + [",".join(table[c][i] for c in columns) for i in range(n)]
    if rows is not None:
        lines = rows(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _one_sentence(message):
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message), message


def _fail(path, match):
    with pytest.raises(TakeError) as info:
        read_take(path)
    assert re.search(match, str(info.value)), str(info.value)
    _one_sentence(str(info.value))


def test_reads_the_apps_layout(tmp_path):
    table = _app_take()
    take = read_take(_write(tmp_path / "take.csv", table))
    assert take.fps == 30.0 and take.timecode_rate == 60
    np.testing.assert_array_equal(take.frames, np.arange(90))
    assert take.times[0] == pytest.approx(12 * 3600 + 27 * 60 + 47 + (47 + 0.169) / 60, abs=1e-9)
    np.testing.assert_allclose(np.diff(take.times), 1 / 30, atol=1e-9)
    for k, name in enumerate(ARKIT_NAMES):
        np.testing.assert_allclose(take.weights[:, k], [float(v) for v in table[name[0].upper() + name[1:]]],
                                   atol=1e-7)
    np.testing.assert_allclose(take.head[:, 1], [float(v) for v in table["HeadPitch"]], atol=1e-7)
    np.testing.assert_allclose(take.eyes[:, 1, 0], [float(v) for v in table["RightEyeYaw"]], atol=1e-7)
    assert take.weights.shape == (90, 51) and take.weights.dtype == np.float32 and take.tracked.all()


def test_columns_are_found_by_name_not_position(tmp_path):
    table = _app_take(rows=40)
    plain = read_take(_write(tmp_path / "a.csv", table))
    shuffled = list(table)
    np.random.default_rng(1).shuffle(shuffled)
    renamed = {c.lower() if i % 3 == 0 else c: v for i, (c, v) in enumerate(table.items())}
    moved = read_take(_write(tmp_path / "b.csv", table, columns=shuffled))
    lower = read_take(_write(tmp_path / "c.csv", renamed))
    for other in (moved, lower):
        np.testing.assert_array_equal(other.weights, plain.weights)
        np.testing.assert_array_equal(other.eyes, plain.eyes)
        np.testing.assert_array_equal(other.times, plain.times)


@pytest.mark.parametrize("rate,step,fps", [(60, 1, 60.0), (60, 2, 30.0), (30, 1, 30.0), (24, 1, 24.0)])
def test_frame_rates_from_the_timecodes(tmp_path, rate, step, fps):
    take = read_take(_write(tmp_path / "t.csv", _app_take(rows=100, rate=rate, step=step, start=(1, 2, 3, 4))))
    assert take.timecode_rate == rate and take.fps == fps
    np.testing.assert_array_equal(take.frames, np.arange(100))


def test_dropped_frames_leave_gaps_and_midnight_wraps(tmp_path):
    table = _app_take(rows=100, start=(23, 59, 59, 0))
    keep = [i for i in range(100) if i not in (10, 50, 51)]
    thinned = {c: [v[i] for i in keep] for c, v in table.items()}
    take = read_take(_write(tmp_path / "t.csv", thinned))
    np.testing.assert_array_equal(take.frames, keep)
    assert take.fps == 30.0 and np.all(np.diff(take.times) > 0)


def test_explicit_fps_wins(tmp_path):
    take = read_take(_write(tmp_path / "t.csv", _app_take(rows=30)), fps=60)
    np.testing.assert_array_equal(take.frames, 2 * np.arange(30))


def test_untracked_rows_repeat_the_last_tracked_values(tmp_path):
    table = _app_take(rows=12)

    def lose_face(lines):  # the app writes "timecode,0" while it has lost the face
        for i in (1, 5, 6):
            lines[i] = lines[i].split(",")[0] + ",0"
        return lines

    take = read_take(_write(tmp_path / "t.csv", table, rows=lose_face))
    np.testing.assert_array_equal(take.tracked, [i + 1 not in (1, 5, 6) for i in range(12)])
    np.testing.assert_array_equal(take.weights[0], take.weights[1])  # leading untracked row: the first tracked
    np.testing.assert_array_equal(take.weights[4], take.weights[3])
    np.testing.assert_array_equal(take.weights[5], take.weights[3])
    np.testing.assert_array_equal(take.frames, np.arange(12))


def test_write_then_read_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    frames = np.array([0, 1, 2, 4, 5, 9])
    take = Take.from_frames(rng.uniform(0, 1, (6, 51)), fps=30, frames=frames, head=rng.normal(0, 0.2, (6, 3)),
                            eyes=rng.normal(0, 0.2, (6, 2, 3)), start=45296.25)
    back = read_take(write_take(tmp_path / "out.csv", take))
    assert back.fps == 30.0 and back.timecode_rate == 60
    np.testing.assert_array_equal(back.frames, frames)
    np.testing.assert_allclose(back.times, take.times, atol=1e-3 / 60)
    for name in ("weights", "head", "eyes"):
        np.testing.assert_allclose(getattr(back, name), getattr(take, name), atol=1e-7)
    header = (tmp_path / "out.csv").read_text().splitlines()[0].split(",")
    assert header == APP_HEADER


def test_odd_frame_rates_round_trip(tmp_path):
    take = Take.from_frames(np.zeros((50, 51)), fps=29.97, start=100.0)
    back = read_take(write_take(tmp_path / "o.csv", take), fps=29.97)
    np.testing.assert_allclose(back.times, take.times, atol=1e-3 / 30)
    np.testing.assert_array_equal(back.frames, np.arange(50))


def test_extra_columns_are_ignored_with_a_warning(tmp_path, caplog):
    table = _app_take(rows=5)
    table["DeviceName"] = ["iPhone"] * 5
    with caplog.at_level(logging.WARNING, logger="core.livelink"):
        take = read_take(_write(tmp_path / "t.csv", table))
    assert "DeviceName" in caplog.text and take.weights.shape == (5, 51)


def test_optional_columns_may_be_missing(tmp_path):
    table = _app_take(rows=5)
    for name in ("BlendShapeCount", "TongueOut", "HeadYaw", "LeftEyeRoll"):
        del table[name]
    take = read_take(_write(tmp_path / "t.csv", table))
    assert not take.head[:, 0].any() and not take.eyes[:, 0, 2].any() and take.head[:, 1].any()


def test_bad_columns(tmp_path):
    table = _app_take(rows=5)
    misspelt = {("EyeBlnkLeft" if c == "EyeBlinkLeft" else c): v for c, v in table.items()}
    _fail(_write(tmp_path / "a.csv", misspelt), "column 'EyeBlnkLeft' where 'EyeBlinkLeft' is expected")
    missing = {c: v for c, v in table.items() if c not in ("JawOpen", "CheekPuff")}
    _fail(_write(tmp_path / "b.csv", missing), "lacks the columns JawOpen, CheekPuff")
    no_time = {c: v for c, v in table.items() if c != "Timecode"}
    _fail(_write(tmp_path / "c.csv", no_time), "lacks the column Timecode")
    twice = _write(tmp_path / "d.csv", table, columns=list(table) + ["JawOpen"])
    _fail(twice, "two 'JawOpen' columns")


def test_bad_values(tmp_path):
    table = _app_take(rows=6)
    table["MouthPucker"][3] = "abc"
    _fail(_write(tmp_path / "a.csv", table), r"Line 5 .* 'abc' in column MouthPucker, which is not a number")
    table["MouthPucker"][3] = "nan"
    _fail(_write(tmp_path / "b.csv", table), r"Line 5 .* 'nan' in column MouthPucker")
    table["MouthPucker"][3] = "0.5"
    table["Timecode"][2] = "12:27:47"
    _fail(_write(tmp_path / "c.csv", table), r"Line 4 .* timecode '12:27:47', not HH:MM:SS:FF.fff")
    table = _app_take(rows=6)
    table["Timecode"][4], table["Timecode"][3] = table["Timecode"][3], table["Timecode"][4]
    _fail(_write(tmp_path / "d.csv", table), r"Line 6 .* does not come after the line before it")
    short = _write(tmp_path / "e.csv", _app_take(rows=6), rows=lambda lines: lines[:3] + [lines[3][:-20]] + lines[4:])
    _fail(short, r"Line 4 .* has 62 values where the header names 63 columns")


def test_bad_files(tmp_path):
    _fail(tmp_path / "missing.csv", "does not exist")
    (tmp_path / "empty.csv").write_text("\n\n")
    _fail(tmp_path / "empty.csv", "is empty")
    (tmp_path / "header.csv").write_text(",".join(APP_HEADER) + "\n")
    _fail(tmp_path / "header.csv", "has no frames")
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    _fail(tmp_path / "image.csv", "binary file, not a CSV take")
    (tmp_path / "latin.csv").write_bytes("Timecode,Bl\xe9nd\n".encode("latin-1"))
    _fail(tmp_path / "latin.csv", "not a UTF-8 text file")
    (tmp_path / "notes.csv").write_text('{"take": 1}\nhello\n')
    _fail(tmp_path / "notes.csv", "not a Live Link Face take")
    (tmp_path / "semi.csv").write_text(";".join(APP_HEADER) + "\n" + ";".join(["00:00:00:00.000"] + ["0"] * 62))
    _fail(tmp_path / "semi.csv", "separates its columns with ';'")
    (tmp_path / "lost.csv").write_text(",".join(APP_HEADER) + "\n00:00:00:00.000,0\n00:00:00:02.000,0\n")
    _fail(tmp_path / "lost.csv", "no frame with a tracked face")


def test_rotation_conventions():
    forward = np.array([0.0, 0.0, 1.0])
    assert (rotation_matrices([0.3, 0, 0]) @ forward)[0] < -0.2  # positive yaw: towards the subject's right (-x)
    assert (rotation_matrices([0, 0.3, 0]) @ forward)[1] < -0.2  # positive pitch: down
    rng = np.random.default_rng(5)
    angles = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], size=(200, 3))
    m = rotation_matrices(angles)
    np.testing.assert_allclose(m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(rotation_angles(m), angles, atol=1e-9)


def test_eye_angles_agree_with_the_eye_look_keys():
    """The app writes LeftEyeYaw < 0 with EyeLookOutLeft (gaze to the subject's left) and pitch > 0 with
    EyeLookDown: the eye keys' rotations, written as the app's angles, must show the same signs."""
    specs = key_specs()

    def rodrigues(aa):
        theta = np.linalg.norm(aa)
        k = np.asarray(aa) / theta
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx

    out = rotation_angles(rodrigues(specs["eyeLookOutLeft"].eye))
    down = rotation_angles(rodrigues(specs["eyeLookDownLeft"].eye))
    inward = rotation_angles(rodrigues(specs["eyeLookInRight"].eye))  # the right eye looks towards +x
    np.testing.assert_allclose(out, [-0.60, 0, 0], atol=1e-12)
    np.testing.assert_allclose(down, [0, 0.50, 0], atol=1e-12)
    assert inward[0] < 0
