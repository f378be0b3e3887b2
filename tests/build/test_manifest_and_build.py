"""build.py's pieces that need no network: manifest validation and rewriting, staging, platform tables."""

import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import build  # noqa: E402


def test_manifest_passes_blenders_validator(tmp_path):
    src = tmp_path / "ext"
    src.mkdir()
    (src / "__init__.py").write_text("")
    (src / "blender_manifest.toml").write_bytes(build.MANIFEST.read_bytes())
    script = build.blender_ext_script(Path(sys.executable))
    proc = subprocess.run([sys.executable, str(script), "validate", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_declares_what_the_issue_asks():
    m = tomllib.loads(build.MANIFEST.read_text())
    assert m["schema_version"] == "1.0.0" and m["id"] == "pixel3dmm_blender"
    assert m["blender_version_min"] == "4.2.0"
    assert set(m["platforms"]) == set(build.PLATFORMS)
    assert m["permissions"]["files"] and len(m["permissions"]["files"]) <= 64


def test_write_manifest_replaces_wheels_and_platforms(tmp_path):
    out = tmp_path / "blender_manifest.toml"
    wheels = ["./wheels/a-1.0-py3-none-any.whl", "./wheels/b-2.0-cp311-cp311-win_amd64.whl"]
    build.write_manifest(build.MANIFEST, out, wheels, ["windows-x64"])
    m = tomllib.loads(out.read_text())
    assert m["wheels"] == wheels and m["platforms"] == ["windows-x64"]
    original = tomllib.loads(build.MANIFEST.read_text())
    assert {k: v for k, v in m.items() if k not in ("wheels", "platforms")} == \
        {k: v for k, v in original.items() if k not in ("wheels", "platforms")}


def test_stage_vendors_core_inside_the_addon(tmp_path):
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    stage_dir = tmp_path / "stage"
    build.stage(stage_dir, [wheel], ["linux-x64"])
    assert (stage_dir / "__init__.py").exists()  # add-on package at the archive root
    assert (stage_dir / "core" / "__init__.py").exists()  # core vendored as pixel3dmm_blender.core
    assert not list(stage_dir.rglob("__pycache__"))
    m = tomllib.loads((stage_dir / "blender_manifest.toml").read_text())
    assert m["wheels"] == [f"./wheels/{wheel.name}"] and (stage_dir / "wheels" / wheel.name).exists()


def test_built_extension_ships_no_evaluation_code(tmp_path):
    """evaluation/ (metrics, ground-truth helpers) stays out of the zip, and nothing in the zip imports it."""
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    stage_dir = tmp_path / "pixel3dmm_blender"
    build.stage(stage_dir, [wheel], ["linux-x64"])
    zip_path = tmp_path / "extension.zip"
    script = build.blender_ext_script(Path(sys.executable))
    proc = subprocess.run([sys.executable, str(script), "build", "--source-dir", str(stage_dir),
                           "--output-filepath", str(zip_path), "--valid-tags", ""], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert "core/__init__.py" in names and "core/fit/__init__.py" in names
    assert (ROOT / "evaluation" / "metrics.py").exists()  # what must stay out is still where this test looks
    shipped = [n for n in names
               if n.rsplit("/", 1)[-1] in ("metrics.py", "groundtruth.py") or "evaluation" in n.split("/")]
    assert not shipped, shipped
    importers = [n for n, text in sources.items()
                 if any(ln.strip().startswith(("import evaluation", "from evaluation")) for ln in text.splitlines())]
    assert not importers, importers


def test_core_imports_are_relative():
    """core/ must work when vendored as a subpackage: no absolute `core.` imports, no bpy."""
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("import core", "from core")) or s.startswith(("import bpy", "from bpy")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {s}")
    assert not offenders, "\n".join(offenders)


def test_core_imports_without_bpy():
    code = ("import sys; sys.modules['bpy'] = None\n"
            "import core, core.assets, core.cli, core.device, core.errors\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_unknown_platform_is_one_sentence(capsys):
    assert build.main(["build", "--wheel-dir", "/nonexistent/dir", "--platform", "linux-x64"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def _fake_wheel(folder: Path, name: str, requires: list[str], version: str = "1.0") -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        z.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")


@pytest.mark.parametrize("target, expected", [("windows-x64", {"alpha", "gamma", "delta"}),
                                               ("linux-x64", {"alpha", "beta", "delta"})])
def test_dependencies_follow_the_target_platform_markers(tmp_path, target, expected):
    """pip evaluates markers for the host; the build must evaluate them for the platform it packages."""
    store, dest = tmp_path / "store", tmp_path / "dest"
    store.mkdir()
    dest.mkdir()
    _fake_wheel(store, "alpha", ['beta; platform_system == "Linux"', 'gamma; sys_platform == "win32"',
                                 "numpy>=1.20", 'epsilon; extra == "docs"'])
    _fake_wheel(store, "beta", ["delta"])
    _fake_wheel(store, "gamma", ["delta"])
    _fake_wheel(store, "delta", [])
    _fake_wheel(store, "epsilon", [])
    build._resolve(Path(sys.executable), dest, build.PLATFORMS[target], "3.11", ["alpha"], deps=True, wheel_dir=store)
    assert {p.name.split("-")[0] for p in dest.glob("*.whl")} == expected


def test_numpy_range_must_admit_blenders_numpy(tmp_path):
    store, dest = tmp_path / "store", tmp_path / "dest"
    store.mkdir()
    dest.mkdir()
    _fake_wheel(store, "alpha", ["numpy>=2"])
    with pytest.raises(build.BuildError, match="ships numpy 1.26.4"):
        build._resolve(Path(sys.executable), dest, build.PLATFORMS["linux-x64"], "3.11", ["alpha"], deps=True,
                       wheel_dir=store)


def test_manifest_declares_the_network_permission():
    m = tomllib.loads(build.MANIFEST.read_text())
    reason = m["permissions"]["network"]
    assert reason and len(reason) <= 64 and reason[-1].isalnum()
    assert "Hugging Face" in reason


def _installed_store(folder: Path) -> None:
    """Fake wheels for the installed huggingface_hub and everything it may require, with their real metadata."""
    from importlib import metadata

    Requirement, canonicalize = build._packaging()
    pending, done = ["huggingface_hub"], set()
    while pending:
        name = canonicalize(pending.pop())
        if name in done:
            continue
        done.add(name)
        try:
            requires, version = metadata.requires(name) or [], metadata.version(name)
        except metadata.PackageNotFoundError:  # not installed here (e.g. colorama, Windows only): no requirements
            requires, version = [], "1.0"
        _fake_wheel(folder, name.replace("-", "_"), requires, version)
        pending += [Requirement(line).name for line in requires]


@pytest.mark.parametrize("target, extra", [("linux-x64", set()), ("windows-x64", {"colorama"})])
def test_hub_bundle_is_its_download_client_without_the_unused_parts(tmp_path, target, extra):
    """huggingface_hub's own (installed) requirements, walked for the target: hf-xet, click, fsspec stay out."""
    store, dest = tmp_path / "store", tmp_path / "dest"
    store.mkdir()
    dest.mkdir()
    _installed_store(store)
    build._resolve(Path(sys.executable), dest, build.PLATFORMS[target], "3.11", build.HUB, deps=True,
                   wheel_dir=store, exclude=frozenset(build.HUB_UNUSED))
    names = {p.name.split("-")[0] for p in dest.glob("*.whl")}
    assert not names & {"hf_xet", "click", "fsspec", "idna", "certifi"}  # unused, or Blender's own
    assert {"huggingface_hub", "httpx2", "httpcore2", "h11", "anyio", "truststore", "filelock", "pyyaml", "tqdm",
            "typing_extensions", "packaging"} | extra == names


def test_bundled_download_client_runs_without_the_rest_of_the_environment(tmp_path):
    """Only the bundle (plus what Blender ships) on the path: huggingface_hub resumes a download from a stand-in Hub."""
    import hashlib
    import shutil
    from importlib import metadata

    sys.path.insert(0, str(ROOT / "tests" / "core"))
    from hub_standin import StandInHub

    store, dest = tmp_path / "store", tmp_path / "dest"
    store.mkdir()
    dest.mkdir()
    _installed_store(store)
    build._resolve(Path(sys.executable), dest, build.PLATFORMS["linux-x64"], "3.11", build.HUB, deps=True,
                   wheel_dir=store, exclude=frozenset(build.HUB_UNUSED))
    bundle = [p.name.split("-")[0] for p in dest.glob("*.whl")] + ["idna", "certifi"]  # the last two: Blender's
    site = tmp_path / "site"
    for name in bundle:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(dist.locate_file(file))
            if source.is_file() and "__pycache__" not in str(file) and not str(file).startswith(".."):
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    data = bytes(range(256)) * 4000
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import huggingface_hub.constants as constants
        from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
        constants.HF_HUB_DISABLE_TELEMETRY = True
        url = hf_hub_url("a/b", "uv.ckpt", revision="f" * 40, endpoint=sys.argv[2])
        meta = get_hf_file_metadata(url, endpoint=sys.argv[2])
        with open(sys.argv[3], "ab") as f:
            http_get(meta.location, f, resume_size=int(sys.argv[4]), expected_size=meta.size)
        print("modules", sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] not in sys.stdlib_module_names}))
    """)
    out = tmp_path / "uv.ckpt"
    out.write_bytes(data[:100_000])  # a partial download to resume
    env = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HOME": str(tmp_path)}
    with StandInHub("a/b", "f" * 40, {"uv.ckpt": data}) as hub:
        proc = subprocess.run([sys.executable, "-S", "-c", code, str(site), hub.url, str(out), "100000"],
                              capture_output=True, text=True, env=env, timeout=120)
        ranges = hub.ranges()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == data and ranges == ["bytes=100000-"]
    assert "torch" not in proc.stdout and "httpx2" in proc.stdout
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
