"""The reconstruct operator and its worker machinery, with the core pipeline replaced by a fake.

The fake returns a synthetic head, so these tests cover the add-on's own logic: photo sources, the request
handed to the core, the synchronous and the threaded paths, progress, cancellation, errors and undo.
"""

import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
import pytest

from core.errors import AssetMissingError, FitCancelled
from heads import random_fit, synthetic_head
from pixel3dmm_blender import bridge, jobs, operators, preferences


@pytest.fixture(scope="module")
def reconstruction():
    """What the bridge hands the operator: a core-like Reconstruction prepared for the scene."""
    flame, uv = synthetic_head(seed=2)
    fit = random_fit(flame, seed=3)
    texture = np.full((16, 16, 3), 0.25, dtype=np.float32)
    return bridge.prepare_result(
        SimpleNamespace(fit=fit, flame=flame, uv=uv, texture=texture, used_synthetic=False, messages=[],
                        landmark_embedding=None))


@pytest.fixture()
def fake_core(monkeypatch, reconstruction):
    """Replace the core pipeline; records each request and the progress callback's presence."""
    calls = []

    def run(request, on_progress=None, should_cancel=None):
        calls.append(request)
        if on_progress is not None:
            on_progress("fit", 0.5)
        return reconstruction

    monkeypatch.setattr(bridge, "run_reconstruction", run)
    return calls


@pytest.fixture()
def photo_file(tmp_path) -> Path:
    path = tmp_path / "portrait.png"
    image = bpy.data.images.new("tmp", 40, 30)
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def scene_counts():
    return (len(bpy.data.objects), len(bpy.data.collections), len(bpy.data.meshes), len(bpy.data.images),
            len(bpy.data.materials))


def test_execute_builds_the_head_from_a_file(fake_core, photo_file):
    settings = bpy.context.scene.p3dmm
    settings.image_source = "FILE"
    settings.filepath = str(photo_file)
    settings.quality = "fast"
    settings.texture_size = "512"
    prefs = preferences.get_preferences(bpy.context)
    prefs.device = "cpu"
    prefs.flame_model = "/nowhere/generic_model.pkl"
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    (request,) = fake_core
    assert request.source == str(photo_file)
    assert (request.quality, request.device, request.texture_size) == ("fast", "cpu", 512)
    assert request.assets == {"flame": "/nowhere/generic_model.pkl", "uv_template": "", "uv_checkpoint": "",
                              "normals_checkpoint": ""}
    head = settings.head
    assert head is not None and head.users_collection[0].name == "portrait"
    camera = next(o for o in head.users_collection[0].objects if o.type == "CAMERA")
    photo = camera.data.background_images[0].image
    assert tuple(photo.size) == (40, 30)
    # packed like the texture, so the .blend keeps its camera background wherever it goes
    assert photo.packed_file is not None and photo.packed_file.size == photo_file.stat().st_size
    assert photo.filepath == "//portrait.png"


def test_saved_blend_depends_on_no_outside_file(fake_core, photo_file, tmp_path):
    settings = bpy.context.scene.p3dmm
    settings.image_source = "FILE"
    settings.filepath = str(photo_file)
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    saved = tmp_path / "elsewhere" / "scene.blend"
    saved.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(saved))
    photo_file.unlink()
    bpy.ops.wm.open_mainfile(filepath=str(saved))
    assert bpy.utils.blend_paths(absolute=True) == []  # packed files are not outside dependencies
    camera = next(o for o in bpy.data.objects if o.type == "CAMERA")
    assert tuple(camera.data.background_images[0].image.size) == (40, 30)


def test_an_image_datablock_the_user_chose_is_not_packed(fake_core, photo_file):
    image = bpy.data.images.load(str(photo_file))
    settings = bpy.context.scene.p3dmm
    settings.image_source = "IMAGE"
    settings.image = image
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    assert image.packed_file is None and Path(image.filepath) == photo_file


def test_face_choice_reaches_the_core(fake_core, photo_file):
    settings = bpy.context.scene.p3dmm
    settings.image_source = "FILE"
    settings.filepath = str(photo_file)
    settings.face_index = 2
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    assert fake_core[0].face_index == 2


def test_core_messages_are_warnings(fake_core, reconstruction, photo_file):
    message = "'group.jpg' shows 3 faces and the largest (face 0) was fitted; choose another face number."
    noted = replace(reconstruction, reconstruction=SimpleNamespace(**{**vars(reconstruction.reconstruction),
                                                                      "messages": [message]}))
    source = operators.PhotoSource(str(photo_file), None, str(photo_file), "group")
    outcome = operators.build_result(bpy.context, source, noted)
    assert outcome.reports[0] == ("WARNING", message)


def test_photo_blender_cannot_read_still_builds_without_background(fake_core, tmp_path, reconstruction):
    odd = tmp_path / "photo.heic"
    odd.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # readable by the (faked) core, not by Blender
    source = operators.PhotoSource(str(odd), None, str(odd), "odd")
    outcome = operators.build_result(bpy.context, source, reconstruction)
    assert outcome.status == {"FINISHED"}
    assert outcome.reports[0][0] == "WARNING" and "cannot read this photo" in outcome.reports[0][1]
    camera = next(o for o in bpy.data.objects if o.type == "CAMERA")
    assert len(camera.data.background_images) == 0 and len(bpy.data.images) == 1  # only the texture


def test_a_failing_build_removes_what_it_made(monkeypatch, reconstruction, photo_file):
    rig = reconstruction.rig
    broken = replace(reconstruction, rig=replace(rig, corner_uv=rig.corner_uv[:-5]))  # too few triangle corners
    monkeypatch.setattr(bridge, "run_reconstruction", lambda request, on_progress=None, should_cancel=None: broken)
    bpy.context.scene.p3dmm.image_source = "FILE"
    bpy.context.scene.p3dmm.filepath = str(photo_file)
    before = scene_counts()
    with pytest.raises(RuntimeError, match="unexpected"):
        bpy.ops.pixel3dmm.reconstruct_face()
    after = scene_counts()
    assert after == before and len(bpy.data.armatures) == 0
    assert bpy.context.mode == "OBJECT"


def test_unsaved_image_datablock_is_sent_as_pixels(fake_core):
    image = bpy.data.images.new("painted", 4, 3, alpha=True)
    rgba = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    image.pixels.foreach_set(rgba.ravel())
    settings = bpy.context.scene.p3dmm
    settings.image_source = "IMAGE"
    settings.image = image
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    sent = fake_core[0].source  # the core's Photo of the pixels
    assert sent.name == "painted" and sent.rgb.shape == (3, 4, 3) and sent.rgb.dtype == np.float32
    over_white = rgba[:, :, :3] * rgba[:, :, 3:] + (1.0 - rgba[:, :, 3:])
    np.testing.assert_allclose(sent.rgb, over_white[::-1], atol=0.5 / 255 + 1e-6)  # top row first
    assert bpy.context.scene.p3dmm.head.users_collection[0].name == "painted"


def test_image_editor_source(fake_core):
    area = bpy.context.screen.areas[0]
    area.type = "IMAGE_EDITOR"
    image = bpy.data.images.new("shown.jpg", 8, 6)
    area.spaces.active.image = image
    bpy.context.scene.p3dmm.image_source = "EDITOR"
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    assert fake_core[0].source.rgb.shape == (6, 8, 3)
    head = bpy.context.scene.p3dmm.head
    assert head.users_collection[0].name == "shown"
    camera = next(o for o in head.users_collection[0].objects if o.type == "CAMERA")
    assert camera.data.background_images[0].image == image


def test_float_image_pixels_are_converted_to_srgb():
    image = bpy.data.images.new("linear", 3, 1, float_buffer=True)
    nan = float("nan")
    image.pixels.foreach_set(np.array([0.0, 0.18, 1.0, 1.0, 0.001, 0.5, 0.2, 1.0, nan, 0.3, 2.0, 1.0],
                                      dtype=np.float32))
    got = operators.image_photo(image).rgb
    linear = np.array([[[0.0, 0.18, 1.0], [0.001, 0.5, 0.2], [0.0, 0.3, 1.0]]])  # NaN -> 0, clipped to 1
    expected = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_image_without_pixels_is_one_clear_error(fake_core):
    image = bpy.data.images.new("gone.png", 4, 4)
    image.source = "FILE"
    image.filepath = "/no/such/folder/gone.png"
    assert tuple(image.size) == (0, 0)
    bpy.context.scene.p3dmm.image_source = "IMAGE"
    bpy.context.scene.p3dmm.image = image
    with pytest.raises(RuntimeError, match="has no pixels; reload it or pick another image"):
        bpy.ops.pixel3dmm.reconstruct_face()
    assert fake_core == []


def test_missing_source_is_one_clear_error(fake_core):
    settings = bpy.context.scene.p3dmm
    before = scene_counts()
    cases = (("EDITOR", "", "Image Editor"), ("IMAGE", "", "pick the photo"), ("FILE", "", "No photo file"),
             ("FILE", "/no/such/photo.jpg", "does not exist"))
    for source, filepath, expected in cases:
        settings.image_source = source
        settings.filepath = filepath
        with pytest.raises(RuntimeError, match=expected):
            bpy.ops.pixel3dmm.reconstruct_face()
    assert fake_core == [] and scene_counts() == before


@pytest.mark.parametrize(
    "error, expected",
    [
        (AssetMissingError("FLAME model: Not configured; set it in the preferences."), "FLAME model: Not"),
        (ValueError("shapes do not match"), "unexpected ValueError"),
    ],
)
def test_core_errors_are_reported_and_leave_the_scene(monkeypatch, photo_file, error, expected):
    def run(request, on_progress=None, should_cancel=None):
        raise error

    monkeypatch.setattr(bridge, "run_reconstruction", run)
    bpy.context.scene.p3dmm.image_source = "FILE"
    bpy.context.scene.p3dmm.filepath = str(photo_file)
    before = scene_counts()
    with pytest.raises(RuntimeError, match=expected):
        bpy.ops.pixel3dmm.reconstruct_face()
    assert scene_counts() == before


def test_reconstruction_undoes_in_one_step(fake_core, photo_file):
    """Background Blender only records undo steps pushed explicitly, so the step boundaries are pushed here
    around the operator (as the UI does for an operator with the UNDO option): one undo removes everything."""
    assert "UNDO" in operators.P3DMM_OT_reconstruct_face.bl_options
    bpy.context.scene.p3dmm.image_source = "FILE"
    bpy.context.scene.p3dmm.filepath = str(photo_file)
    bpy.ops.ed.undo_push(message="before")
    before = scene_counts()
    assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Reconstruct Face")
    assert len(bpy.data.objects) == before[0] + 3
    bpy.ops.ed.undo()
    assert scene_counts()[:3] == before[:3]


def _wait_for_outcome(run, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = run.tick(bpy.context)
        if outcome is not None:
            return outcome
        time.sleep(0.01)
    raise AssertionError("the worker did not finish")


def test_threaded_run_reports_progress_then_builds(monkeypatch, reconstruction, photo_file):
    main = threading.get_ident()
    release = threading.Event()
    seen = {}

    def run(request, on_progress=None, should_cancel=None):
        seen["thread"] = threading.get_ident()
        on_progress("network", 0.4)
        release.wait(5.0)
        return reconstruction

    monkeypatch.setattr(bridge, "run_reconstruction", run)
    source = operators.PhotoSource(str(photo_file), None, str(photo_file), "threaded")
    request = bridge.ReconstructionRequest(str(photo_file), {}, "fast", "cpu", 512, None)
    run_ = operators.ReconstructionRun(bpy.context, request, source)
    assert jobs.active_job() is run_.job and not bpy.ops.pixel3dmm.reconstruct_face.poll()
    deadline = time.monotonic() + 5.0
    while bpy.context.scene.p3dmm.stage != "network" and time.monotonic() < deadline:
        assert run_.tick(bpy.context) is None
        time.sleep(0.01)
    assert bpy.context.scene.p3dmm.progress == pytest.approx(0.4)
    assert len(bpy.data.objects) == 0  # nothing built while the worker runs
    release.set()
    outcome = _wait_for_outcome(run_)
    assert outcome.status == {"FINISHED"} and seen["thread"] != main
    assert bpy.context.scene.p3dmm.head is not None and len(bpy.data.objects) == 3
    assert jobs.active_job() is None and bpy.context.scene.p3dmm.progress == 0.0


def test_cancel_leaves_the_scene_and_stops_the_worker(monkeypatch, photo_file):
    stopped = threading.Event()

    def run(request, on_progress=None, should_cancel=None):
        while not should_cancel():
            time.sleep(0.005)
        stopped.set()
        raise FitCancelled("cancelled")

    monkeypatch.setattr(bridge, "run_reconstruction", run)
    source = operators.PhotoSource(str(photo_file), None, str(photo_file), "cancelled")
    request = bridge.ReconstructionRequest(str(photo_file), {}, "fast", "cpu", 512, None)
    before = scene_counts()
    run_ = operators.ReconstructionRun(bpy.context, request, source)
    assert run_.tick(bpy.context) is None
    assert bpy.ops.pixel3dmm.cancel_reconstruction() == {"FINISHED"}  # the panel's cancel button
    outcome = run_.tick(bpy.context)
    assert outcome.status == {"CANCELLED"} and outcome.reports[0][0] == "WARNING"
    assert stopped.wait(5.0)
    assert scene_counts() == before and jobs.active_job() is None


def test_result_arriving_in_sculpt_mode_is_built_in_object_mode(fake_core, photo_file):
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.object.mode_set(mode="SCULPT")
    source = operators.PhotoSource(str(photo_file), None, str(photo_file), "late")
    request = bridge.ReconstructionRequest(str(photo_file), {}, "fast", "cpu", 512, None)
    outcome = _wait_for_outcome(operators.ReconstructionRun(bpy.context, request, source))
    assert outcome.status == {"FINISHED"} and bpy.context.mode == "OBJECT"
    assert bpy.context.scene.p3dmm.head.name == "late head"


def test_worker_failure_becomes_an_error_outcome(monkeypatch, photo_file):
    def run(request, on_progress=None, should_cancel=None):
        raise AssetMissingError("Pixel3DMM UV network: No file at this path; download uv.ckpt.")

    monkeypatch.setattr(bridge, "run_reconstruction", run)
    source = operators.PhotoSource(str(photo_file), None, str(photo_file), "failing")
    request = bridge.ReconstructionRequest(str(photo_file), {}, "fast", "cpu", 512, None)
    outcome = _wait_for_outcome(operators.ReconstructionRun(bpy.context, request, source))
    assert outcome == operators.Outcome(
        {"CANCELLED"}, [("ERROR", "Pixel3DMM UV network: No file at this path; download uv.ckpt.")]
    )
    assert len(bpy.data.objects) == 0


def test_job_events_come_in_order():
    job = jobs.Job(lambda on_progress, should_cancel: [on_progress("a", 0.2), on_progress("b", 1.5)] and 42)
    job.start()
    job.join(5.0)
    events = job.drain()
    assert events == [jobs.Progress("a", 0.2), jobs.Progress("b", 1.0), jobs.Finished(42)]
    assert job.drain() == []


def test_only_one_job_at_a_time():
    gate = threading.Event()
    job = jobs.start_job(lambda on_progress, should_cancel: gate.wait(5.0))
    try:
        with pytest.raises(RuntimeError):
            jobs.start_job(lambda on_progress, should_cancel: None)
    finally:
        gate.set()
        jobs.cancel_active()
    assert jobs.active_job() is None and job.cancelled


def test_invoke_in_background_blender_runs_synchronously(fake_core, photo_file):
    """Background Blender calls ``execute`` even for INVOKE_DEFAULT, so scripts run by ``blender -b`` get the
    synchronous path and a finished head (the modal path is covered through ReconstructionRun above)."""
    bpy.context.scene.p3dmm.image_source = "FILE"
    bpy.context.scene.p3dmm.filepath = str(photo_file)
    assert bpy.ops.pixel3dmm.reconstruct_face("INVOKE_DEFAULT") == {"FINISHED"}
    assert jobs.active_job() is None and len(fake_core) == 1 and len(bpy.data.objects) == 3
