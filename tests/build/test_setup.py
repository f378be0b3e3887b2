"""`build.py setup`: which torch it installs, what it leaves out, and that pip keeps no cache."""

import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import build  # noqa: E402


@pytest.mark.parametrize(("env", "smi", "expected"), [
    (None, None, "cpu"), (None, "/usr/bin/nvidia-smi", "cuda"), ("cuda", None, "cuda"),
    ("CPU", "/usr/bin/nvidia-smi", "cpu"),
])
def test_torch_build_follows_the_gpu_unless_told(monkeypatch, env, smi, expected):
    if env is None:
        monkeypatch.delenv("PIXEL3DMM_TORCH", raising=False)
    else:
        monkeypatch.setenv("PIXEL3DMM_TORCH", env)
    monkeypatch.setattr(build.shutil, "which", lambda name: smi if name == "nvidia-smi" else None)
    assert build.torch_build() == expected


def test_a_wrong_torch_choice_is_one_sentence(monkeypatch):
    monkeypatch.setenv("PIXEL3DMM_TORCH", "rocm")
    with pytest.raises(build.BuildError, match="set it to cpu or cuda"):
        build.torch_build()


def test_cpu_torch_comes_from_the_pytorch_index_when_it_answers(monkeypatch):
    monkeypatch.setattr(build.sys, "platform", "linux")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: nullcontext())
    assert build._torch_index("cpu") == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert build._torch_index("cuda") == []
    monkeypatch.setattr(build.sys, "platform", "win32")   # PyPI's Windows and macOS torch carry no CUDA
    assert build._torch_index("cpu") == []


def test_an_unreachable_pytorch_index_falls_back_to_pypi(monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(build.sys, "platform", "linux")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert build._torch_index("cpu") == []
    assert "cannot be reached: installing PyPI's torch" in capsys.readouterr().out


def test_setup_installs_torch_without_triton_and_keeps_no_pip_cache(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(build, "VENV", tmp_path / "venv")
    (tmp_path / "venv").mkdir()
    monkeypatch.setattr(build, "run", lambda cmd, **kwargs: commands.append([str(c) for c in cmd]))
    monkeypatch.setattr(build, "_torch_index", lambda choice: ["--extra-index-url", "CPU-INDEX"])
    monkeypatch.setattr(build, "_requirements", lambda py, names: ["sympy>=1.13.3", "pillow!=8.3.*,>=5.3.0"])
    monkeypatch.setattr(build, "_setup_validator", lambda: None)
    build.setup(force=True)
    pip_installs = [c for c in commands if c[1:4] == ["-m", "pip", "--disable-pip-version-check"]]
    assert len(pip_installs) == 3 and all("--no-cache-dir" in c for c in pip_installs)
    no_deps, rest = pip_installs[1], pip_installs[2]
    assert "--no-deps" in no_deps and "CPU-INDEX" in no_deps
    assert {"torch", "torchvision", "timm", "mediapipe"} <= set(no_deps)
    assert not {"torch", "torchvision", "timm", "mediapipe", "triton"} & set(rest)
    assert {"sympy>=1.13.3", "numpy", "bpy"} <= set(rest) and "--no-warn-conflicts" in rest


def test_requirements_are_read_from_the_installed_metadata():
    """The script runs in the venv: torch's real requirements, markers evaluated there, less triton."""
    out = subprocess.run([sys.executable, "-c", build._REQUIREMENTS_SCRIPT, "torch", "torchvision", "--",
                          *sorted(build.LEFT_OUT)], capture_output=True, text=True, check=True).stdout.splitlines()
    names = {line.split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip() for line in out}
    assert {"sympy", "networkx", "pillow"} <= names
    assert not names & {"triton", "torch", "optree", "pyyaml"}   # left out, or only for extras
    assert all(";" not in line for line in out)
