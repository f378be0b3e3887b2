#!/usr/bin/env python3
"""Project entry point: set up, test, run the demo and build the Blender extension.

    python build.py setup     create .venv with the pinned packages (idempotent: seconds when up to date)
    python build.py test      set up when needed, then run the whole test suite
    python build.py demo      set up when needed, then reconstruct the astronaut photo into out/demo/
    python build.py build     build installable extension zips into dist/

Every subcommand prints what it does and fails with one sentence and a non-zero exit status.
Only the standard library is used here, so any Python 3.11+ can run this file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PIXEL3DMM_VENV", ROOT / ".venv"))
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
MANIFEST = ROOT / "blender_manifest.toml"
ADDON = ROOT / "pixel3dmm_blender"
CORE = ROOT / "core"
DIST = ROOT / "dist"
WHEELS = ROOT / "wheels"
VALIDATOR_JS = ROOT / "tests" / "blender" / "js"
VENV_PYTHON_VERSION = (3, 11)  # bpy 5.0.1 (the test Blender) exists for CPython 3.11 only

# What `setup` installs into the project venv (versions come from requirements/constraints.txt).
DEV_PACKAGES = [
    "torch", "torchvision", "numpy", "opencv-python-headless", "timm", "safetensors", "bpy",
    "pygltflib", "scikit-image", "matplotlib", "pytest", "huggingface_hub",
    # mediapipe's runtime needs for the vision solutions (mediapipe itself goes in without deps below)
    "protobuf", "attrs", "absl-py", "flatbuffers",
]
NO_DEPS_PACKAGES = ["mediapipe"]
SETUP_IMPORT_CHECK = ("import torch, torchvision, timm, numpy, cv2, bpy, mediapipe, safetensors, pygltflib, pytest, "
                      "huggingface_hub")


class BuildError(Exception):
    """A failure with a one-sentence explanation for the user."""


def say(msg: str) -> None:
    print(f"[build.py] {msg}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command with check=True, echoing it; a failure becomes a BuildError."""
    say("$ " + " ".join(str(c) for c in cmd))
    try:
        return subprocess.run([str(c) for c in cmd], check=True, **kwargs)
    except FileNotFoundError as exc:
        raise BuildError(f"Could not run {cmd[0]}: it is not installed or not on PATH.") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''} failed with exit "
                         f"status {exc.returncode}; see its output above.") from exc


# ---------------------------------------------------------------------------------------------- setup
def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _setup_stamp() -> str:
    h = hashlib.sha256()
    h.update(CONSTRAINTS.read_bytes())
    h.update(" ".join(DEV_PACKAGES + ["|"] + NO_DEPS_PACKAGES).encode())
    return h.hexdigest()


def _find_base_python() -> str:
    if sys.version_info[:2] == VENV_PYTHON_VERSION:
        return sys.executable
    name = "python%d.%d" % VENV_PYTHON_VERSION
    found = shutil.which(name)
    if not found:
        raise BuildError(f"The test environment needs Python {name[6:]} (bpy 5.0.1 exists only for it); "
                         f"install {name} and run this again.")
    return found


def setup(force: bool = False) -> Path:
    """Create or update the project venv; return its python. Seconds when already up to date."""
    py = venv_python()
    stamp_file = VENV / ".pixel3dmm-setup"
    stamp = _setup_stamp()
    if not force and py.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        probe = subprocess.run([str(py), "-c", SETUP_IMPORT_CHECK], capture_output=True, text=True)
        if probe.returncode == 0:
            say(f"environment up to date ({VENV})")
            _setup_validator()
            return py
        say("environment incomplete, repairing: " + (probe.stderr.strip().splitlines() or ["?"])[-1])
    t0 = time.perf_counter()
    if not py.exists():
        say(f"creating virtual environment {VENV}")
        run([_find_base_python(), "-m", "venv", VENV])
    pip = [py, "-m", "pip", "--disable-pip-version-check"]
    run(pip + ["install", "-q", "--upgrade", "pip"])
    run(pip + ["install", "-q", "-c", CONSTRAINTS] + DEV_PACKAGES)
    # mediapipe 0.10.21 (the last wheel with face models) pulls opencv-contrib, which would overwrite the
    # headless cv2, plus jax; install it alone and add the runtime pieces explicitly above.
    run(pip + ["install", "-q", "--no-deps", "-c", CONSTRAINTS] + NO_DEPS_PACKAGES)
    run([py, "-c", SETUP_IMPORT_CHECK])
    stamp_file.write_text(stamp)
    _setup_validator()
    say(f"environment ready in {time.perf_counter() - t0:.0f} s")
    return py


def _setup_validator() -> None:
    """Install the Khronos glTF validator for the export tests when npm is available."""
    if not (VALIDATOR_JS / "package.json").exists():
        return
    if (VALIDATOR_JS / "node_modules").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        say("npm not found: the glTF validator test will be skipped")
        return
    lock = (VALIDATOR_JS / "package-lock.json").exists()
    run([npm, "ci" if lock else "install", "--no-audit", "--no-fund", "--prefix", VALIDATOR_JS])


# ----------------------------------------------------------------------------------------- test, demo
def test(pytest_args: list[str]) -> int:
    py = setup()
    say("running the test suite")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([str(py), "-m", "pytest", *pytest_args], cwd=ROOT, env=env).returncode


def demo(demo_args: list[str]) -> int:
    py = setup()
    say("running the demo: the scikit-image astronaut photo, headless")
    return subprocess.run([str(py), "-m", "pixel3dmm_blender.headless", "--demo", *demo_args], cwd=ROOT).returncode


# ---------------------------------------------------------------------------------------------- build
@dataclass(frozen=True)
class Platform:
    name: str  # Blender's platform name
    pip_tags: tuple[str, ...]  # pip --platform values, most specific first
    markers: dict  # PEP 508 environment markers of the target


PLATFORMS = {
    p.name: p
    for p in (
        Platform("linux-x64", ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                               "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64",
                               "manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64"),
                 {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix"}),
        Platform("windows-x64", ("win_amd64",),
                 {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                  "os_name": "nt"}),
        Platform("macos-arm64", tuple(f"macosx_{v}_0_arm64" for v in (15, 14, 13, 12, 11))
                 + ("macosx_11_0_universal2", "macosx_10_9_universal2"),
                 {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                  "os_name": "posix"}),
    )
}
PYTHONS = {"3.11": "Blender 4.2-5.0", "3.13": "Blender 5.1-5.2"}
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
# timm's own requirements are torch/torchvision (above), safetensors, and huggingface_hub/pyyaml (below).
LIBS_NO_DEPS = ["timm==1.0.31"]
LIBS = ["safetensors==0.8.0", "opencv-python-headless==4.11.0.86"]
# huggingface_hub downloads the networks (core/network/download.py: its metadata request and resumable HTTP
# transfer). It goes in with its requirements except three the download never uses: hf-xet (the Rust Xet client;
# the plain HTTP path resumes a partial file, Xet does not), click (its command line) and fsspec (its file-system
# layer).
HUB = ["huggingface_hub==2.4.0"]
HUB_UNUSED = {"hf-xet", "click", "fsspec"}
# mediapipe 0.10.21 is the last release that ships the face models; it exists for Python <= 3.12 only.
# On Python 3.13 (Blender 5.1+) the core falls back to OpenCV's bundled face detector.
MEDIAPIPE_NO_DEPS = ["mediapipe==0.10.21"]
MEDIAPIPE_LIBS = ["protobuf>=4.25,<5", "absl-py", "attrs", "flatbuffers", "matplotlib"]
# Blender ships these itself; bundling them would shadow its own copies.
BLENDER_PROVIDES = {"numpy", "requests", "certifi", "idna", "urllib3", "charset-normalizer"}
BLENDER_NUMPY = {"3.11": "1.26.4"}  # the numpy of Blender 4.2-5.0 (bpy 5.0.1 requires numpy<2)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pip_download(py: Path, dest: Path, platform: Platform, python: str, reqs: list[str], *,
                  wheel_dir: Path | None, index_url: str | None = None) -> None:
    """Download exactly ``reqs`` (no dependencies) as wheels for the target platform and Python."""
    cmd = [py, "-m", "pip", "--disable-pip-version-check", "download", "-q", "--only-binary=:all:", "--no-deps",
           "--dest", dest, "--python-version", python, "--implementation", "cp"]
    for tag in platform.pip_tags:
        cmd += ["--platform", tag]
    if wheel_dir is not None:
        cmd += ["--no-index", "--find-links", wheel_dir]
    elif index_url:
        cmd += ["--index-url", index_url, "--extra-index-url", "https://pypi.org/simple"]
    # pip's own config may cap versions for the host (constraints); the target platform is not the host.
    env = dict(os.environ, PIP_CONSTRAINT="", PIP_CONFIG_FILE=os.devnull)
    run(cmd + reqs, env=env)


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # every Python with pip carries a copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    return Requirement, canonicalize_name


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _resolve(py: Path, dest: Path, platform: Platform, python: str, reqs: list[str], *, deps: bool,
             wheel_dir: Path | None, index_url: str | None = None, exclude: frozenset[str] = frozenset()) -> None:
    """Download ``reqs`` and (with ``deps``) their dependencies, evaluating environment markers for the TARGET.

    pip evaluates markers such as ``platform_system == "Linux"`` against the machine it runs on even with
    ``--platform``, which drags Linux CUDA wheels into a Windows build; this walk evaluates them for the
    platform being built. Blender's own packages (numpy, ...) are never downloaded; a dependency's numpy
    range must admit the numpy of the target Blender. Requirements named in ``exclude`` are left out.
    """
    Requirement, canonicalize = _packaging()
    seen = {canonicalize(Requirement(r).name) for r in reqs} | set(exclude)
    pending = list(reqs)
    while pending:
        before = set(dest.glob("*.whl"))
        _pip_download(py, dest, platform, python, pending, wheel_dir=wheel_dir, index_url=index_url)
        pending = []
        if not deps:
            break
        for wheel in sorted(set(dest.glob("*.whl")) - before):
            pending += new_requirements(_wheel_requirements(wheel), platform, python, seen, wheel.name)


def new_requirements(lines: list[str], platform: Platform, python: str, seen: set[str], source: str) -> list[str]:
    """The requirements among ``lines`` (``Requires-Dist`` values of ``source``) that the target needs next.

    Markers are evaluated for the target platform and Python; packages Blender ships are skipped (after checking
    that a numpy range admits Blender's numpy); names already in ``seen`` are skipped, new ones are added to it.
    """
    Requirement, canonicalize = _packaging()
    marker_env = dict(platform.markers, python_version=python, python_full_version=python + ".0",
                      implementation_name="cpython", platform_python_implementation="CPython", extra="")
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(marker_env):
            continue
        name = canonicalize(req.name)
        if name in BLENDER_PROVIDES:
            numpy = BLENDER_NUMPY.get(python)
            if name == "numpy" and numpy and not req.specifier.contains(numpy, prereleases=True):
                raise BuildError(f"{source} needs numpy {req.specifier}, but Blender with Python "
                                 f"{python} ships numpy {numpy}; pin an older release of it.")
            continue
        if name not in seen:
            seen.add(name)
            req.marker = None
            out.append(str(req))
    return out


def download_wheels(py: Path, platform: Platform, python: str, torch: str, wheel_dir: Path | None) -> list[Path]:
    """Download the runtime wheels for one platform and Python into wheels/<platform>/cp<XY>/."""
    dest = WHEELS / platform.name / ("cp" + python.replace(".", ""))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    say(f"downloading wheels for {platform.name}, Python {python} ({PYTHONS[python]}), torch: {torch}")
    if torch != "none":
        index = TORCH_CPU_INDEX if (torch == "cpu" and platform.name == "linux-x64") else None
        _resolve(py, dest, platform, python, TORCH, deps=True, wheel_dir=wheel_dir, index_url=index)
    _resolve(py, dest, platform, python, LIBS_NO_DEPS, deps=False, wheel_dir=wheel_dir)
    _resolve(py, dest, platform, python, LIBS, deps=True, wheel_dir=wheel_dir)
    _resolve(py, dest, platform, python, HUB, deps=True, wheel_dir=wheel_dir, exclude=frozenset(HUB_UNUSED))
    if python == "3.11":
        _resolve(py, dest, platform, python, MEDIAPIPE_NO_DEPS, deps=False, wheel_dir=wheel_dir)
        _resolve(py, dest, platform, python, MEDIAPIPE_LIBS, deps=True, wheel_dir=wheel_dir)
    return sorted(dest.glob("*.whl"))


def write_manifest(src: Path, dst: Path, wheels: list[str], platforms: list[str]) -> None:
    """Copy the manifest, replacing its `platforms` and `wheels` lists."""
    text = src.read_text(encoding="utf-8")
    wheel_lines = "wheels = [\n" + "".join(f'  "{w}",\n' for w in wheels) + "]"
    text, n_wheels = re.subn(r"(?ms)^wheels\s*=\s*\[.*?\]", lambda m: wheel_lines, text, count=1)
    platform_line = "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]"
    text, n_platforms = re.subn(r"(?m)^platforms\s*=\s*\[.*?\]", lambda m: platform_line, text, count=1)
    if n_wheels != 1 or n_platforms != 1:
        raise BuildError("blender_manifest.toml must contain one `wheels = [...]` and one `platforms = [...]` line.")
    tomllib.loads(text)  # still valid TOML
    dst.write_text(text, encoding="utf-8")


def stage(stage_dir: Path, wheels: list[Path], platforms: list[str]) -> None:
    """Lay out the extension: add-on package at the root, core vendored inside it, manifest, wheels."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(ADDON, stage_dir, ignore=ignore)
    if (stage_dir / "core").exists():
        raise BuildError("pixel3dmm_blender/core exists in the source tree; remove it, build.py vendors core/.")
    shutil.copytree(CORE, stage_dir / "core", ignore=ignore)
    (stage_dir / "wheels").mkdir()
    rel = []
    for wheel in wheels:
        shutil.copy2(wheel, stage_dir / "wheels" / wheel.name)
        rel.append(f"./wheels/{wheel.name}")
    write_manifest(MANIFEST, stage_dir / "blender_manifest.toml", sorted(set(rel)), platforms)


def blender_ext_script(py: Path) -> Path:
    """Blender's extension builder, which ships inside the bpy wheel and runs without a Blender binary."""
    code = "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('bpy').origin))"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError("bpy is not importable in the project environment; run `python build.py setup` first.")
    found = sorted(Path(out.stdout.strip()).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise BuildError("Blender's extension builder (blender_ext.py) was not found inside the bpy package.")
    return found[-1]


def validate_manifest(py: Path, source_dir: Path) -> None:
    run([py, blender_ext_script(py), "validate", source_dir])


def build(platforms: list[str], pythons: list[str], torch: str, wheel_dir: Path | None, out_dir: Path) -> list[Path]:
    for p in platforms:
        if p not in PLATFORMS:
            raise BuildError(f"Unknown platform {p!r}; choose from {', '.join(PLATFORMS)}.")
    for v in pythons:
        if v not in PYTHONS:
            raise BuildError(f"Unknown Python {v!r}; choose from {', '.join(PYTHONS)}.")
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise BuildError(f"The wheel directory {wheel_dir} does not exist.")
    py = setup()  # after the arguments are checked: a typo should not wait for (or create) the environment
    out_dir.mkdir(parents=True, exist_ok=True)
    script = blender_ext_script(py)
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    zips = []
    for name in platforms:
        wheels = []
        for python in pythons:
            wheels += download_wheels(py, PLATFORMS[name], python, torch, wheel_dir)
        with tempfile.TemporaryDirectory(prefix="p3dmm-stage-") as tmp:
            stage_dir = Path(tmp) / manifest["id"]
            stage(stage_dir, wheels, [name])
            validate_manifest(py, stage_dir)
            target = out_dir / f"{manifest['id']}-{manifest['version']}-{name.replace('-', '_')}.zip"
            target.unlink(missing_ok=True)
            run([py, script, "build", "--source-dir", stage_dir, "--output-filepath", target,
                 "--valid-tags", ""])
        size = target.stat().st_size / 1e6
        say(f"built {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} ({size:.1f} MB, "
            f"{len(wheels)} wheels)")
        zips.append(target)
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="create or update the project virtual environment")
    p.add_argument("--force", action="store_true", help="reinstall even when the environment looks current")
    sub.add_parser("test", help="run the test suite (extra arguments go to pytest)")
    sub.add_parser("demo", help="reconstruct the astronaut photo into out/demo (.blend, .glb, preview); extra "
                                "arguments go to pixel3dmm_blender.headless")
    p = sub.add_parser("build", help="build installable extension zips")
    p.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                   help="target platform (repeatable; default: all)")
    p.add_argument("--python", action="append", choices=sorted(PYTHONS),
                   help="target Blender Python (repeatable; default: both)")
    p.add_argument("--torch", choices=("cpu", "cuda", "none"), default="cpu",
                   help="torch build to bundle: cpu (small), cuda (Linux: several GB), or none (use a torch "
                        "already importable in Blender's Python)")
    p.add_argument("--wheel-dir", type=Path, help="take every wheel from this local directory (offline build)")
    p.add_argument("--out", type=Path, default=DIST, help="output directory for the zips (default: dist/)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("test", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "setup":
            setup(force=args.force)
            return 0
        if args.command == "test":
            return test(extra)
        if args.command == "demo":
            return demo(extra)
        build(args.platform or list(PLATFORMS), args.python or list(PYTHONS), args.torch,
              args.wheel_dir.resolve() if args.wheel_dir else None, args.out.resolve())
        return 0
    except BuildError as exc:
        print(f"[build.py] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
