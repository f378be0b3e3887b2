"""The command-line helpers: progress display, hidden console output, checked and atomically filled output folders."""

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.console import ProgressDisplay, output_folder, staged_outputs
from core.errors import OutputError

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_one_line_redrawn():
    stream = Terminal()
    progress = ProgressDisplay(stream, prefix="[x] ")
    for stage, fraction in [("load", 0.0), ("fit", 0.5), ("fit", 0.5), ("texture", 1.0)]:
        progress(stage, fraction)
    progress.close()
    text = stream.getvalue()
    frames = text.rstrip("\n").split("\r")[1:]
    assert text.endswith("\n") and text.count("\n") == 1 and len(frames) == 3   # the repeated call drew nothing
    assert frames[1].startswith("[x] [############............]  50%  fitting the FLAME head (")
    assert frames[2].startswith("[x] [########################] 100%  baking the texture (")
    assert all(len(frame) >= len(previous.rstrip()) for previous, frame in zip(frames, frames[1:]))


def test_progress_elsewhere_is_a_line_per_stage_and_ten_percent():
    stream = io.StringIO()
    progress = ProgressDisplay(stream)
    for i in range(101):
        progress("fit", i / 100)
    progress("texture", 1.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == [f"{p:3d}%  fitting the FLAME head" for p in range(0, 101, 10)] + ["100%  baking the texture"]


def test_other_output_is_hidden_and_own_output_shown():
    script = textwrap.dedent("""
        import os, sys
        from core.console import other_output_hidden
        with other_output_hidden() as (out, err):
            os.write(1, b"native stdout\\n")
            os.write(2, b"native stderr\\n")
            print("module print")
            print("shown", file=out)
            print("shown error", file=err)
        print("after")
        with other_output_hidden(hide=False) as (out, err):
            os.write(2, b"verbose native\\n")
            print("verbose shown", file=out)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout == "shown\nafter\nverbose shown\n"
    assert proc.stderr == "shown error\nverbose native\n"


def test_output_folder_checks_before_the_work_and_cleans_up_after_a_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with output_folder(tmp_path / "a" / "b", ["x.png"]) as folder:
            assert folder.is_dir()
            raise KeyboardInterrupt
    assert not (tmp_path / "a" / "b").exists()
    with output_folder(tmp_path / "c", ["x.png"]):
        pass   # a run that ends without writing anything (Blender could not build the head)
    assert not (tmp_path / "c").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(OutputError):
        with output_folder(tmp_path / "kept", ["x.png"]):
            raise OutputError("write failed")
    assert (tmp_path / "kept").is_dir()   # it was there before
    (tmp_path / "kept" / "x.png").mkdir()
    with pytest.raises(OutputError, match=r"x.png is a folder, so the result cannot be written there; move it"):
        with output_folder(tmp_path / "kept", ["x.png"]):
            pytest.fail("entered despite a folder in the way")


def test_output_folder_refuses_a_read_only_result(tmp_path, monkeypatch):
    import core.console

    (tmp_path / "x.png").write_text("keep me")
    (tmp_path / "x.png").chmod(0o444)
    # root may write anything, so ask as an ordinary user would be answered
    monkeypatch.setattr(core.console.os, "access", lambda path, mode: not str(path).endswith("x.png"))
    with pytest.raises(OutputError, match="x.png is read-only; make it writable"):
        with output_folder(tmp_path, ["x.png"]):
            pass


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError):
        with staged_outputs(tmp_path) as stage:
            (stage / "a.txt").write_text("new a")
            raise RuntimeError("the second file failed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    with staged_outputs(tmp_path) as stage:
        (stage / "a.txt").write_text("new a")
        (stage / "b.txt").write_text("new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "new a"
