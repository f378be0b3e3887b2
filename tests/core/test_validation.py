"""Real asset validation: what is reported as found loads, wrong files get one sentence, results are cached."""

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import core.validation as validation
from core.assets import Status
from core.flame import write_synthetic_flame
from core.flame import io as flame_io
from core.network import convert_checkpoint, write_synthetic_checkpoint
from core.validation import validated_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    flame = write_synthetic_flame(folder, size="small", seed=0)
    return {
        "flame": flame["chumpy"],
        "uv_template": flame["obj"],
        "uv_checkpoint": write_synthetic_checkpoint(folder / "uv.ckpt", "tiny", prediction_type="uv_map"),
        "normals_checkpoint": write_synthetic_checkpoint(folder / "normals.ckpt", "tiny", prediction_type="normals"),
    }


def _report(paths):
    return validated_registry({k: str(v) for k, v in paths.items()}, use_environment=False).report()


def test_valid_assets_are_found_with_what_they_hold(assets):
    report = _report(assets)
    assert report.complete, report.format()
    assert report["flame"].message.startswith("synthetic FLAME-format head: 373 vertices")
    assert report["uv_checkpoint"].message.startswith("UV network (Lightning checkpoint, test_vit")
    assert report["normals_checkpoint"].message.startswith("normal network (Lightning checkpoint")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class _Trojan:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _broken_flames(assets, folder: Path) -> dict[str, Path]:
    """The three files of issue 19: a trojan, a truncated and a missing-keys FLAME pickle."""
    raw = flame_io.flame_dict(flame_io.read_flame(assets["flame"]))
    del raw["posedirs"]
    return {
        "trojan": _write(folder / "trojan.pkl", pickle.dumps({"v_template": _Trojan(folder / "pwned")}, protocol=2)),
        "truncated": _write(folder / "truncated.pkl", assets["flame"].read_bytes()[:20000]),
        "missing keys": _write(folder / "keys.pkl", pickle.dumps(raw, protocol=2)),
    }


def test_broken_flame_pickles_are_invalid_not_found(assets, tmp_path):
    expected = {"trojan": "refers to 'posix.system'", "truncated": "is truncated", "missing keys": "lacks posedirs"}
    for name, path in _broken_flames(assets, tmp_path).items():
        state = _report(dict(assets, flame=path))["flame"]
        assert state.status is Status.INVALID and expected[name] in state.message, (name, state.message)
        assert state.message.count("; ") == 1 and state.message.endswith(".")
    assert not (tmp_path / "pwned").exists()


def test_eyelids_beside_the_model_are_checked_as_the_reconstruction_loads_them(assets, tmp_path):
    assert "eyelid blendshapes beside it" in _report(assets)["flame"].message  # the synthetic writer puts them there
    model = _write(tmp_path / "generic_model.pkl", assets["flame"].read_bytes())
    _write(tmp_path / "l_eyelid.npy", (assets["flame"].parent / "l_eyelid.npy").read_bytes())
    _write(tmp_path / "r_eyelid.npy", b"not numpy")
    state = _report(dict(assets, flame=model))["flame"]
    assert state.status is Status.INVALID and "r_eyelid.npy is not a numpy eyelid blendshape" in state.message


def test_cli_refuses_what_issue_19_reported_as_found(assets, tmp_path):
    """`python -m core assets` said "All assets found" (exit 0) for these files; it must say why not (exit 1)."""
    env = dict(os.environ, PIXEL3DMM_UV_TEMPLATE=str(assets["uv_template"]),
               PIXEL3DMM_UV_CKPT=str(assets["uv_checkpoint"]), PIXEL3DMM_NORMALS_CKPT=str(assets["normals_checkpoint"]))
    for name, path in _broken_flames(assets, tmp_path).items():
        proc = subprocess.run([sys.executable, "-m", "core", "assets"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=dict(env, PIXEL3DMM_FLAME=str(path)))
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:3] == ["FLAME", "model", "invalid"], (name, proc.stdout)
        assert [line.split()[-2] for line in lines[2:8:2]] == ["found"] * 3, proc.stdout
        assert "All assets found" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "core", "assets"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(env, PIXEL3DMM_FLAME=str(assets["flame"])))
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("All assets found and valid."), proc.stdout
    assert not (tmp_path / "pwned").exists()


def test_the_other_network_in_a_slot_is_invalid(assets):
    swapped = _report(dict(assets, uv_checkpoint=assets["normals_checkpoint"],
                           normals_checkpoint=assets["uv_checkpoint"]))
    assert swapped["uv_checkpoint"].message == (
        "The file normals.ckpt holds the normal network (prediction_type 'normals'), but this slot needs the UV "
        "network; choose uv.ckpt here.")
    assert swapped["normals_checkpoint"].status is Status.INVALID
    assert "holds the UV network" in swapped["normals_checkpoint"].message


def test_checkpoint_problems_are_invalid(assets, tmp_path):
    cut = _write(tmp_path / "cut.ckpt", assets["uv_checkpoint"].read_bytes()[:50000])
    page = _write(tmp_path / "page.ckpt", b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    for path, words in ((cut, "incomplete"), (page, "web page")):
        state = _report(dict(assets, uv_checkpoint=path))["uv_checkpoint"]
        assert state.status is Status.INVALID and words in state.message, state.message


def test_converted_networks_and_download_zips_are_valid(assets, tmp_path):
    converted = convert_checkpoint(assets["uv_checkpoint"], tmp_path / "uv.safetensors")
    flame_zip = tmp_path / "FLAME2020.zip"
    with zipfile.ZipFile(flame_zip, "w") as z:
        z.write(assets["flame"], "FLAME2020/generic_model.pkl")
        z.writestr("FLAME2020/Readme.pdf", b"%PDF")
    template_zip = tmp_path / "pixel3dmm-main.zip"
    with zipfile.ZipFile(template_zip, "w") as z:
        z.write(assets["uv_template"], "pixel3dmm-main/assets/head_template.obj")
    report = _report(dict(assets, uv_checkpoint=converted, flame=flame_zip, uv_template=template_zip))
    assert report.complete, report.format()
    assert "converted network" in report["uv_checkpoint"].message


def test_template_of_another_topology_is_invalid(assets, tmp_path):
    other = write_synthetic_flame(tmp_path, size="full", seed=0)["obj"]
    state = _report(dict(assets, uv_template=other))["uv_template"]
    assert state.status is Status.INVALID
    assert state.message.startswith(f"The UV template {other.name} does not match the FLAME model's mesh (5023 "
                                    "vertices and 9976 triangles against 373")


def test_results_are_cached_by_path_size_and_mtime(assets, tmp_path, monkeypatch):
    flame = _write(tmp_path / "generic_model.pkl", assets["flame"].read_bytes())
    calls = []
    real = validation._CHECKS["flame"]
    monkeypatch.setitem(validation._CHECKS, "flame", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        assert _report(dict(assets, flame=flame))["flame"].ok
    assert len(calls) == 1
    os.utime(flame, ns=(flame.stat().st_atime_ns, flame.stat().st_mtime_ns + 10**9))
    assert _report(dict(assets, flame=flame))["flame"].ok and len(calls) == 2
    flame.write_bytes(flame.read_bytes()[:1000])  # replaced by a broken file: validated again, now invalid
    assert _report(dict(assets, flame=flame))["flame"].status is Status.INVALID and len(calls) == 3
