"""build.py's pieces that need no network: manifest validation and rewriting, staging, platform tables."""

import subprocess
import sys
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


def _fake_wheel(folder: Path, name: str, requires: list[str]) -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        z.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-1.0.dist-info/RECORD", "")


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
