"""The whole core pipeline on a real photo with the project's stand-in assets (tiny networks, few steps)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch

from core import cli
from core.assets import AssetRegistry
from core.cli import RECONSTRUCT_OUTPUTS
from core.console import STAGE_LABELS
from core.errors import AssetInvalidError, FitCancelled, NoFaceError, Pixel3DMMError
from core.flame import write_synthetic_flame
from core.pipeline import _STAGES as PIPELINE_STAGES
from core.pipeline import PipelineSettings, reconstruct, write_standin_assets

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"
QUICK = PipelineSettings(quality="fast", device="cpu", texture_size=256, fit_step_scale=0.05)
_STANDIN_MESSAGES = ["The FLAME model is the project's synthetic stand-in: the head shows that the pipeline runs, not "
                     "what the method can do."]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return write_standin_assets(tmp_path_factory.mktemp("standins"), network_size="tiny")


@pytest.fixture(scope="module")
def run(standins):
    events = []
    result = reconstruct(ASTRONAUT, AssetRegistry(standins, use_environment=False), QUICK,
                         on_progress=lambda stage, f: events.append((stage, f)))
    return result, events


def test_reconstruction_has_every_piece(run, standins):
    result, _ = run
    V = result.flame.v_template.shape[0]
    assert result.used_synthetic and any("stand-in" in m for m in result.messages)
    assert result.crop.image.shape == (512, 512, 3)
    assert result.prediction.uv.shape == (512, 512, 2) and result.prediction.normals.shape == (512, 512, 3)
    assert result.fit.vertices_posed.shape == (V, 3) and np.isfinite(result.fit.vertices_posed).all()
    assert result.texture.shape == (256, 256, 3) and result.texture.dtype == np.float32
    assert 0.0 <= result.texture.min() and result.texture.max() <= 1.0
    assert set(result.timings) == {"load", "detect", "network", "fit", "texture"}
    assert result.landmark_embedding is None or result.landmark_embedding.kind in ("mediapipe", "68")
    # the eyelid blendshapes beside the model file take part (FLAME's pickles carry none)
    assert result.flame.eyelids is not None and np.asarray(result.fit.eyelids).shape == (2,)


def test_untrained_networks_fall_back_to_the_landmarks_and_say_so(run):
    """The stand-in networks (random weights) disagree with the face landmarks: the head is fitted to the landmarks
    alone, and the verdict names the reason."""
    result, _ = run
    assert result.fit.info["mode"] == "landmarks"
    assert not result.fit.verdict.ok and any("UV network" in r for r in result.fit.verdict.reasons)
    assert any("doubtful" in m and "UV network" in m for m in result.messages)


def _haar_face(image_rgb: np.ndarray) -> tuple[float, float, float]:
    """OpenCV's frontal Haar cascade, independent of the pipeline's detector: centre x, y and width of the largest
    face box."""
    import cv2

    gray = cv2.cvtColor((image_rgb * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    return x + w / 2, y + h / 2, float(w)


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_the_landmark_fit_lands_on_the_face(standins, photo):
    """Issue 18's check, in the network-free mode: the projected head is 0.9-2.2 times as wide as an independent
    face box (OpenCV's Haar cascade), centred within 0.35 box widths, with the jaw less than 0.7 rad open."""
    import matplotlib.cbook

    path = ASTRONAUT if photo == "astronaut" else Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    settings = PipelineSettings(quality="fast", mode="landmarks", device="cpu", texture_size=64)
    result = reconstruct(path, AssetRegistry(standins, use_environment=False), settings)
    fit = result.fit
    assert fit.info["mode"] == "landmarks" and "network" not in result.timings
    cam = fit.vertices_posed.astype(np.float64) - np.array([0.0, 0.0, 1.0])
    k = fit.K_photo
    x = k[0, 0] * cam[:, 0] / -cam[:, 2] + k[0, 2]
    y = -k[1, 1] * cam[:, 1] / -cam[:, 2] + k[1, 2]
    from core.fit.regions import derive_regions

    face = derive_regions(result.flame.v_template, result.flame.faces, result.flame.J_regressor).silhouette
    width = x.max() - x.min()  # the whole head
    cx, cy, box = _haar_face(result.photo.rgb)
    assert 0.9 <= width / box <= 2.2, width / box
    assert np.hypot(x[face].mean() - cx, y[face].mean() - cy) < 0.35 * box
    assert np.linalg.norm(fit.jaw_pose) < 0.7


def test_an_exif_focal_length_holds_the_camera(standins, tmp_path):
    """A photo that states its 35 mm-equivalent focal length is fitted with that camera: in photo pixels
    f = f35 * diagonal / 43.27 mm (the 36 x 24 mm frame's diagonal), held through the fit; the switch turns it off."""
    from PIL import Image

    path = tmp_path / "astronaut.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 50
    Image.open(ASTRONAUT).convert("RGB").save(path, exif=exif, quality=95)
    settings = PipelineSettings(quality="fast", mode="landmarks", device="cpu", texture_size=64)
    registry = AssetRegistry(standins, use_environment=False)
    fit = reconstruct(path, registry, settings).fit
    want = 50.0 * np.hypot(512, 512) / np.hypot(36, 24)
    assert np.allclose([fit.K_photo[0, 0], fit.K_photo[1, 1]], want, rtol=1e-6), (fit.K_photo, want)
    assert fit.info["focal"] == "held at the EXIF 50 mm (35 mm equivalent)"
    free = reconstruct(path, registry, PipelineSettings(**{**vars(settings), "exif_focal": False})).fit
    assert free.info["focal"] == "held at its default" and abs(free.K_photo[0, 0] - want) > 0.05 * want


def test_photo_intrinsics_map_back_through_the_crop(run):
    """K_photo must be K_crop seen through the crop transform: project a posed vertex both ways."""
    fit, crop = run[0].fit, run[0].crop
    X = fit.vertices_posed[:50].astype(np.float64)
    cam = X - np.array([0.0, 0.0, 1.0])  # OpenGL camera at (0, 0, 1) looking down -z

    def project(K):
        x = K[0, 0] * cam[:, 0] / -cam[:, 2] + K[0, 2]
        y = -K[1, 1] * cam[:, 1] / -cam[:, 2] + K[1, 2]
        return np.stack([x, y], axis=1)

    in_photo = project(fit.K_photo)
    via_crop = crop.transform.to_photo(project(fit.K_crop))
    np.testing.assert_allclose(in_photo, via_crop, atol=1e-6)


def test_progress_is_monotone_and_complete(run):
    _, events = run
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [s for s, _ in events if s != events[0][0]][0] == "detect"
    assert {s for s, _ in events} == {"load", "detect", "network", "fit", "texture"}


def test_cancel_stops_before_anything_is_returned(standins):
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(FitCancelled, match="cancelled"):
        reconstruct(ASTRONAUT, AssetRegistry(standins, use_environment=False), QUICK, should_cancel=should_cancel)


def test_missing_assets_and_mismatched_template_are_one_sentence(standins, tmp_path):
    with pytest.raises(Pixel3DMMError, match="FLAME model"):
        reconstruct(ASTRONAUT, AssetRegistry({}, use_environment=False), QUICK)
    small = write_synthetic_flame(tmp_path, size="small")
    wrong = dict(standins, uv_template=small["obj"])
    with pytest.raises(Pixel3DMMError, match="does not match the FLAME model"):
        reconstruct(ASTRONAUT, AssetRegistry(wrong, use_environment=False), QUICK)
    with pytest.raises(Pixel3DMMError, match="quality preset"):
        PipelineSettings(quality="ultra")


def _cli_env(standins) -> dict[str, str]:
    env_paths = {"PIXEL3DMM_FLAME": standins["flame"], "PIXEL3DMM_UV_TEMPLATE": standins["uv_template"],
                 "PIXEL3DMM_UV_CKPT": standins["uv_checkpoint"],
                 "PIXEL3DMM_NORMALS_CKPT": standins["normals_checkpoint"]}
    return dict(os.environ, **{k: str(v) for k, v in env_paths.items()})


def test_cli_reconstruct_writes_results(standins, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "core", "reconstruct", str(ASTRONAUT), "--out", str(out),
                           "--quality", "fast", "--device", "cpu", "--texture-size", "128", "--fit-step-scale", "0.02"],
                          cwd=ROOT, env=_cli_env(standins), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # mediapipe's C++ logging and libpng's warnings are hidden: only this tool's own lines remain
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    progress = [line for line in lines if re.fullmatch(r" *\d+%  \w.*", line)]
    assert progress[-1] == "100%  baking the texture"
    assert {line.split("%  ")[1] for line in progress} == {STAGE_LABELS[stage] for stage, _ in PIPELINE_STAGES}
    assert lines[:len(progress)] == progress and _STANDIN_MESSAGES[0] in lines
    # the tiny stand-in networks disagree with the landmarks
    assert lines[-3].startswith("fit (landmarks mode): doubtful")
    assert lines[-2].startswith("timings: load ") and lines[-1] == f"wrote {', '.join(RECONSTRUCT_OUTPUTS)} to {out}"
    assert sorted(p.name for p in out.iterdir()) == sorted(RECONSTRUCT_OUTPUTS)
    with np.load(out / "fit.npz") as fit, np.load(out / "flame_params.npz") as params:
        np.testing.assert_allclose(params["expression"][0], fit["expression"], atol=1e-6)
        np.testing.assert_allclose(params["betas"][0], fit["shape"], atol=1e-6)
    obj = (out / "head_posed.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in obj) == 5023 and sum(line.startswith("f ") for line in obj) == 9976


def test_cli_landmarks_mode_needs_no_checkpoints(standins, tmp_path):
    import os

    env = dict(os.environ, PIXEL3DMM_FLAME=str(standins["flame"]), PIXEL3DMM_UV_TEMPLATE=str(standins["uv_template"]))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "core", "reconstruct", str(ASTRONAUT), "--out", str(out), "--mode",
                           "landmarks", "--quality", "fast", "--device", "cpu", "--texture-size", "64"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fit (landmarks mode)" in proc.stdout and (out / "overlay.png").is_file()
    meta = json.loads((out / "fit.json").read_text())
    assert meta["info"]["mode"] == "landmarks" and meta["verdict"]["status"] in ("ok", "doubtful")


def test_cli_reconstruct_without_assets_says_what_to_do(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core", "reconstruct", str(ASTRONAUT), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: FLAME model: Not configured") and proc.stderr.count("\n") == 1


def test_cli_convert_checkpoint(standins, tmp_path):
    out = tmp_path / "uv.safetensors"
    proc = subprocess.run([sys.executable, "-m", "core", "convert-checkpoint", str(standins["uv_checkpoint"]), str(out),
                           "--dtype", "float32"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "float32" in proc.stdout
    from safetensors.torch import load_file

    from core.network import load_network

    converted = load_file(str(out))
    original = load_network(standins["uv_checkpoint"], "cpu", cache=False).state_dict()
    assert set(converted) == set(original)
    assert all(torch_equal(converted[k], original[k]) for k in original)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_skin_mask_lands_on_the_same_photo_pixels(run):
    """Every photo pixel marked skin maps back (through the crop transform) onto a skin pixel of the crop."""
    from core.pipeline import _skin_in_photo

    crop = run[0].crop
    photo_mask = _skin_in_photo(crop)
    assert photo_mask is not None and photo_mask.shape == crop.photo_size
    ys, xs = np.nonzero(photo_mask)
    xy_crop = crop.transform.to_crop(np.stack([xs + 0.5, ys + 0.5], axis=1))
    idx = np.clip(np.floor(xy_crop).astype(int), 0, 511)
    assert crop.masks["skin"][idx[:, 1], idx[:, 0]].mean() > 0.97
    expected_area = crop.masks["skin"].sum() * (crop.transform.size / 512) ** 2
    assert abs(photo_mask.sum() / expected_area - 1) < 0.05


def test_several_faces_are_reported_and_the_chosen_one_fitted(standins):
    from core.preprocess import load_photo
    from core.preprocess.intake import Photo

    astronaut = load_photo(ASTRONAUT).rgb
    canvas = np.full((512, 900, 3), 0.5, np.float32)
    canvas[:, :512] = astronaut
    canvas[64:448, 516:900] = astronaut[::4, ::4].repeat(3, axis=0).repeat(3, axis=1)[:384, :384]
    photo = Photo.from_array(canvas, "two.png")
    registry = AssetRegistry(standins, use_environment=False)
    result = reconstruct(photo, registry, PipelineSettings(**{**vars(QUICK), "face_index": 1}))
    assert result.crop.transform.x0 > 512   # the smaller face, on the right
    assert ("'two.png' shows 2 faces and face 1 (0 is the largest) was fitted; choose another face number from 0 "
            "to 1 to fit a different one.") in result.messages
    with pytest.raises(NoFaceError, match="'two.png' has 2 face"):
        reconstruct(photo, registry, PipelineSettings(**{**vars(QUICK), "face_index": 2}))


def _main(argv, capfd):
    try:
        code = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a KeyboardInterrupt (a traceback for the user)")
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture()
def cli_reconstruct(monkeypatch, run):
    """`reconstruct` as the CLI calls it, returning the module's finished reconstruction; records its calls."""
    import core.pipeline

    calls = []

    def fake(source, registry, settings, on_progress=None, should_cancel=None):
        calls.append(source)
        on_progress("fit", 0.5)
        return run[0]

    monkeypatch.setattr(core.pipeline, "reconstruct", fake)
    return calls


@pytest.mark.parametrize("case", ["under a file", "texture.png is a folder", "folder not writable"])
def test_cli_checks_the_output_folder_before_reconstructing(cli_reconstruct, tmp_path, monkeypatch, capfd, case):
    out = tmp_path / "out"
    if case == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
        expected = "error: Cannot write to the output folder"
    elif case == "texture.png is a folder":
        (out / "texture.png").mkdir(parents=True)
        expected = f"error: {out / 'texture.png'} is a folder"
    else:
        import core.console

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(core.console.tempfile, "NamedTemporaryFile", refuse)  # the tests run as root
        expected = f"error: Cannot write to the output folder {out} (Permission denied); choose a folder"
    code, _, err = _main(["reconstruct", str(ASTRONAUT), "--out", str(out)], capfd)
    assert (code, cli_reconstruct) == (2, [])
    assert err.startswith(expected) and err.count("\n") == 1


def test_cli_failed_write_keeps_the_old_results(cli_reconstruct, tmp_path, monkeypatch, capfd):
    import cv2

    out = tmp_path / "out"
    out.mkdir()
    (out / "fit.json").write_text("old")
    monkeypatch.setattr(cv2, "imwrite", lambda *args, **kwargs: False)   # what OpenCV does instead of raising
    code, out_text, err = _main(["reconstruct", str(ASTRONAUT), "--out", str(out)], capfd)
    assert code == 2 and err.startswith("error: Cannot write texture.png;") and err.count("\n") == 1
    assert "wrote" not in out_text
    assert [p.name for p in out.iterdir()] == ["fit.json"] and (out / "fit.json").read_text() == "old"


def test_cli_ctrl_c_is_one_sentence_and_leaves_nothing(cli_reconstruct, tmp_path, monkeypatch, capfd):
    import core.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.pipeline, "reconstruct", interrupted)
    out = tmp_path / "new" / "out"
    code, _, err = _main(["reconstruct", str(ASTRONAUT), "--out", str(out)], capfd)
    assert code == 130 and err == cli.CANCELLED + "\n"
    assert not out.exists()


def test_cli_ctrl_c_during_a_real_run(standins, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "core", "reconstruct", str(ASTRONAUT), "--out", str(out),
                             "--quality", "fast", "--device", "cpu", "--texture-size", "128"],
                            cwd=ROOT, env=_cli_env(standins), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a runner started in the background may ignore SIGINT; a child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "fitting" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest + err
    assert err == cli.CANCELLED + "\n"   # one sentence, no traceback
    assert not out.exists()


def test_cli_hides_other_libraries_output_unless_verbose(standins, tmp_path):
    """mediapipe logs from C++ straight to the file descriptor; -v shows it, the default does not."""
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((300, 400, 3), 128, np.uint8))
    args = [sys.executable, "-m", "core", "reconstruct", str(blank), "--out", str(tmp_path / "out")]
    quiet = subprocess.run(args, cwd=ROOT, env=_cli_env(standins), capture_output=True, text=True, timeout=300)
    verbose = subprocess.run(args + ["-v"], cwd=ROOT, env=_cli_env(standins), capture_output=True, text=True,
                             timeout=300)
    assert quiet.returncode == verbose.returncode == 2
    assert quiet.stderr == "error: No face was found in 'blank.png'; use a photo with a clearly visible, roughly " \
                           "frontal face.\n"
    assert "TensorFlow Lite" in verbose.stderr and verbose.stderr.endswith(quiet.stderr)


def test_published_size_standins_are_compact_and_leave_no_cache_copy(tmp_path, monkeypatch):
    """The demo's stand-ins: float16 safetensors, which load without a float32 copy in the cache (a .ckpt
    leaves one). The published module tree is swapped for the tiny one to keep the test small."""
    import core.network
    from core.network import load_network

    real = core.network.write_synthetic_checkpoint
    monkeypatch.setattr(core.network, "write_synthetic_checkpoint",
                        lambda path, cfg, **kwargs: real(path, "tiny", **kwargs))
    paths = write_standin_assets(tmp_path / "standins", network_size="published")
    assert {paths[k].name for k in ("uv_checkpoint", "normals_checkpoint")} == {
        "uv-published.safetensors", "normals-published.safetensors"}
    assert sorted(p.name for p in (tmp_path / "standins").iterdir()) == [
        "flame", "normals-published.safetensors", "uv-published.safetensors"]   # no .part or .ckpt left
    cache = tmp_path / "cache"
    network = load_network(paths["uv_checkpoint"], "cpu", cache_dir=cache)
    assert next(network.parameters()).dtype == torch.float32
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))
    assert write_standin_assets(tmp_path / "standins", network_size="published") == paths   # reused


def test_threads_are_re_measured_on_the_working_thread_at_every_step(standins, monkeypatch):
    """The CPU thread count adapts on the thread that runs the work (OpenMP counts per thread), between the two
    networks (as dense work) as well as at each fitting step, and the caller's count comes back."""
    import threading

    from core import pipeline

    polls = []

    class Recording(pipeline.CpuThreads):
        def poll(self, dense=False):
            polls.append((threading.get_ident(), dense))
            return super().poll(dense)

    monkeypatch.setattr(pipeline, "CpuThreads", Recording)
    events, before = [], torch.get_num_threads()
    settings = PipelineSettings(**{**vars(QUICK), "mode": "networks"})
    worker = threading.Thread(target=lambda: reconstruct(ASTRONAUT, AssetRegistry(standins, use_environment=False),
                                                         settings, on_progress=lambda s, f: events.append(s)))
    worker.start()
    worker.join()
    assert {ident for ident, _ in polls} == {worker.ident} and len(polls) == len(events)
    assert [dense for _, dense in polls] == [stage == "network" for stage in events]  # the networks' products
    assert events.count("network") >= 4 and events.count("fit") >= 3   # the two networks, then every fit step
    assert torch.get_num_threads() == before
