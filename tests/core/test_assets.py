"""The asset registry: sources in priority order, cheap file checks, the CLI report."""

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.assets import ASSET_KEYS, AssetRegistry, Status, cache_dir, sniff_kind
from core.errors import AssetInvalidError, AssetMissingError

ROOT = Path(__file__).resolve().parents[2]


def _pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"v_template": [0.0]}, protocol=2))
    return path


def _obj(path: Path) -> Path:
    path.write_text("# head\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n")
    return path


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def test_sniff_kinds(tmp_path):
    assert sniff_kind(_pickle(tmp_path / "a.pkl")) == "pickle"
    assert sniff_kind(_obj(tmp_path / "a.obj")) == "obj"
    assert sniff_kind(_zip(tmp_path / "a.ckpt")) == "zip"
    html = tmp_path / "login.pkl"
    html.write_text("<!DOCTYPE html>\n<html><body>Please log in</body></html>")
    assert sniff_kind(html) == "html"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    assert sniff_kind(junk) is None


def test_everything_missing_by_default(monkeypatch):
    report = AssetRegistry().report()
    assert [s.spec.key for s in report.states] == list(ASSET_KEYS)
    assert all(s.status is Status.MISSING for s in report.states)
    assert not report.complete
    assert "PIXEL3DMM_FLAME" in report["flame"].message
    with pytest.raises(AssetMissingError, match="FLAME model"):
        AssetRegistry().require("flame")


def test_priority_explicit_then_env_then_config(tmp_path, monkeypatch):
    a, b, c = _pickle(tmp_path / "a.pkl"), _pickle(tmp_path / "b.pkl"), _pickle(tmp_path / "c.pkl")
    cfg = tmp_path / "assets.toml"
    cfg.write_text(f'flame = "{c.name}"\n')  # relative paths resolve next to the config file
    monkeypatch.setenv("PIXEL3DMM_CONFIG", str(cfg))
    assert AssetRegistry().locate("flame") == (c, f"config file ({cfg})")
    monkeypatch.setenv("PIXEL3DMM_FLAME", str(b))
    assert AssetRegistry().locate("flame")[0] == b
    assert AssetRegistry({"flame": a}).locate("flame")[0] == a
    # the add-on ignores env and config: its preferences are the single source
    assert AssetRegistry({"flame": ""}, use_environment=False).locate("flame") == (None, "not configured")


def test_config_errors_are_one_sentence(tmp_path, monkeypatch):
    cfg = tmp_path / "assets.toml"
    monkeypatch.setenv("PIXEL3DMM_CONFIG", str(cfg))
    cfg.write_text("flame = [unclosed\n")
    with pytest.raises(AssetInvalidError, match="not valid TOML"):
        AssetRegistry().check("flame")
    cfg.write_text('flam = "x.pkl"\n')
    with pytest.raises(AssetInvalidError, match="unknown keys"):
        AssetRegistry().check("flame")


def test_invalid_files_are_reported(tmp_path):
    html = tmp_path / "generic_model.pkl"
    html.write_text("<html><head><title>FLAME</title></head><body>login</body></html>")
    empty = tmp_path / "uv.ckpt"
    empty.write_bytes(b"")
    obj_as_ckpt = _obj(tmp_path / "normals.ckpt")
    reg = AssetRegistry({"flame": html, "uv_checkpoint": empty, "normals_checkpoint": obj_as_ckpt,
                         "uv_template": tmp_path / "nowhere.obj"})
    report = reg.report()
    assert report["flame"].status is Status.INVALID and "web page" in report["flame"].message
    assert report["uv_checkpoint"].status is Status.INVALID and "empty" in report["uv_checkpoint"].message
    assert report["normals_checkpoint"].status is Status.INVALID
    assert "Wavefront OBJ" in report["normals_checkpoint"].message
    assert report["uv_template"].status is Status.MISSING
    with pytest.raises(AssetInvalidError, match="web page"):
        reg.require("flame")


def test_found_assets(tmp_path):
    reg = AssetRegistry({"flame": _pickle(tmp_path / "f.pkl"), "uv_template": _obj(tmp_path / "t.obj"),
                         "uv_checkpoint": _zip(tmp_path / "uv.ckpt"),
                         "normals_checkpoint": _zip(tmp_path / "n.ckpt")})
    report = reg.report()
    assert report.complete, report.format()
    assert reg.require("uv_template") == tmp_path / "t.obj"


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXEL3DMM_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_cli_assets_reports_missing():
    proc = subprocess.run([sys.executable, "-m", "core", "assets"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    statuses = [line.split()[-1] for line in proc.stdout.splitlines() if not line.startswith(" ")][:4]
    assert statuses == ["missing"] * 4, proc.stdout
    assert "PIXEL3DMM_UV_CKPT" in proc.stdout
    assert "real reconstructions need all four" in proc.stdout
