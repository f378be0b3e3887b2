"""Track Video: a track keyed onto one head, checked against the track's own arrays and FLAME's forward pass.

The tracks here are made from FitResults of the small synthetic head whose expression, eyelids, joints and head
pose vary per frame (their vertices from ``core.flame.FlameModel``), so these tests do not depend on the tracker;
the operator's and the headless runner's calls to the core are replaced by a fake that returns such a track. The
last test runs the headless ``--video`` path through the real tracker.
"""

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import bpy
import cv2
import numpy as np
import pygltflib
import pytest
import skimage
from scipy.spatial.transform import Rotation

import core.track
from core.errors import FitCancelled, ImageError
from core.flame import load_flame
from core.pipeline import write_standin_assets
from core.rig import build_rig
from core.track import Track
from heads import flame_forward, random_fit, random_rotation, rodrigues, synthetic_head
from pixel3dmm_blender import animation, bridge, export, headless, jobs, operators, scene, tracking
from test_export import _accessor
from test_headless import ENV_NAMES

C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # FLAME Y-up -> Blender Z-up
ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"


def tracked_fits(flame, count: int, seed: int = 0) -> list:
    """``count`` fits of one identity and camera with their own expression, eyelids, joints (up to 10 degrees) and
    head pose.

    Every synthetic expression component moves the whole head by about a millimetre, so the coefficients are
    0.2 standard deviations here: the rig's joints (regressed with the first frame's expression) then move by
    well under a millimetre, as FLAME's do for a real expression. Frame 2 holds a coefficient of 4.5, beyond the
    slider's default range of 3, with its joints at rest, where the joints' place does not matter.
    """
    base = random_fit(flame, seed=seed, max_degrees=10.0, eyelids=True)
    rng = np.random.default_rng(seed + 100)
    fits = []
    for i in range(count):
        expression = (rng.normal(size=flame.n_expr) * 0.2).astype(np.float32)
        lids = rng.uniform(0.0, 0.8, size=2).astype(np.float32)
        poses = [random_rotation(rng, 10.0).astype(np.float32) for _ in range(4)]
        if i == 2:
            expression[0] = 4.5
            poses = [np.zeros(3, np.float32)] * 4
        rotation = rodrigues(random_rotation(rng, 25.0))
        translation = base.head_translation + rng.normal(size=3) * 0.01
        posed = flame_forward(flame, base.shape, expression, poses, lids)
        fits.append(replace(
            base, expression=expression, eyelids=lids, neck_pose=poses[0], jaw_pose=poses[1],
            eye_pose_left=poses[2], eye_pose_right=poses[3], head_rotation=rotation.astype(np.float32),
            head_translation=translation.astype(np.float32),
            vertices_posed=(posed @ rotation.T + translation).astype(np.float32)))
    return fits


def tracked_clip(flame, uv, fits, frames, kind="video", source="clip.mp4", fps=29.97, messages=(), embedding=None):
    """A TrackedClip as the core's tracker returns it."""
    track = Track.from_results(fits, list(frames), kind=kind, source=source, fps=fps)
    return SimpleNamespace(track=track, flame=flame, uv=uv, landmark_embedding=embedding,
                           texture=np.full((16, 16, 3), 0.3, dtype=np.float32),
                           first_frame=np.zeros((480, 640, 3), dtype=np.float32),
                           neutral=fits[0].vertices_neutral, messages=list(messages), used_synthetic=False)


def write_clip(path: Path, frames: int = 6, size: int = 256, fps: float = 24.0) -> Path:
    """The astronaut moved a few pixels per frame, as an mp4 clip."""
    image = cv2.resize(cv2.imread(str(ASTRONAUT)), (size, size))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for i in range(frames):
        writer.write(np.roll(image, (2 * i, 3 * i), axis=(0, 1)))
    writer.release()
    return path


def write_png(path: Path, width: int = 40, height: int = 30) -> Path:
    image = bpy.data.images.new("tmp", width, height)
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


@pytest.fixture(scope="module")
def head_model():
    return synthetic_head(seed=5)


@pytest.fixture(scope="module")
def video(head_model, tmp_path_factory):
    """A 6-frame track of an 11-frame clip at stride 2 (frames 0, 2, ..., 10), prepared for the scene."""
    flame, uv = head_model
    clip_path = write_clip(tmp_path_factory.mktemp("clip") / "walk.mp4", frames=11)
    clip = tracked_clip(flame, uv, tracked_fits(flame, 6), range(0, 12, 2), source=str(clip_path),
                        messages=["The FLAME model is the project's synthetic stand-in."])
    return clip_path, bridge.prepare_track(clip)


def scene_counts():
    return (len(bpy.data.objects), len(bpy.data.collections), len(bpy.data.meshes), len(bpy.data.images),
            len(bpy.data.materials), len(bpy.data.actions), len(bpy.data.movieclips), len(bpy.data.shape_keys))


def build_video(video, start=5):
    clip_path, result = video
    bpy.context.scene.frame_start = start
    source = tracking.resolve_source([str(clip_path)])
    outcome = tracking.build_track(bpy.context, source, result)
    assert outcome.status == {"FINISHED"}, outcome.reports
    return bpy.context.scene.p3dmm.head, outcome


def curve_points(datablock, data_path: str, index: int = 0) -> np.ndarray:
    points = animation.fcurves(datablock)[(data_path, index)].keyframe_points
    co = np.empty(2 * len(points), dtype=np.float32)
    points.foreach_get("co", co)
    return co.reshape(-1, 2)


def evaluated_world(obj) -> np.ndarray:
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    local = np.array([v.co for v in mesh.vertices], dtype=np.float64)
    evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return local @ world[:3, :3].T + world[:3, 3]


def one_sentence(exc) -> str:
    text = str(exc.value).strip()
    assert text.startswith("Error: ") and "\n" not in text and text.endswith(".")
    return text[len("Error: "):]


# ------------------------------------------------------------------------------------------------ the keys
def test_keys_are_the_tracks_values_on_every_tracked_frame(video):
    head, outcome = build_video(video)
    track = video[1].clip.track
    frames = 5 + track.frames
    keys = head.data.shape_keys
    for k in range(track.expression.shape[1]):
        co = curve_points(keys, f'key_blocks["expression_{k:03d}"].value')
        np.testing.assert_array_equal(co[:, 0], frames)
        np.testing.assert_allclose(co[:, 1], track.expression[:, k], atol=1e-6)
    for side, name in enumerate(("eyelid.L", "eyelid.R")):
        np.testing.assert_allclose(curve_points(keys, f'key_blocks["{name}"].value')[:, 1], track.eyelids[:, side],
                                   atol=1e-6)
    assert curve_points(keys, 'key_blocks["fitted_expression"].value').tolist() == [[5.0, 0.0]]
    # a value beyond the default slider range of 3 is shown as it is
    bpy.context.scene.frame_set(5 + 4)
    assert keys.key_blocks["expression_000"].value == pytest.approx(4.5)
    assert keys.key_blocks["expression_000"].slider_max >= 4.5
    armature = head.parent
    bones = {"neck": track.neck_pose, "jaw": track.jaw_pose, "eye.L": track.eye_pose_left,
             "eye.R": track.eye_pose_right}
    for bone, axis_angle in bones.items():
        q = np.stack([curve_points(armature, f'pose.bones["{bone}"].rotation_quaternion', c)[:, 1]
                      for c in range(4)], 1)
        assert np.all(np.sum(q[1:] * q[:-1], axis=1) > 0)  # sign-continuous
        got = Rotation.from_quat(np.roll(q, -1, axis=1)).as_matrix()
        np.testing.assert_allclose(got, Rotation.from_rotvec(axis_angle).as_matrix(), atol=1e-5)
    location = np.stack([curve_points(armature, "location", c)[:, 1] for c in range(3)], 1)
    np.testing.assert_allclose(location, track.head_translation @ C.T, atol=1e-6)
    q = np.stack([curve_points(armature, "rotation_quaternion", c)[:, 1] for c in range(4)], 1)
    np.testing.assert_allclose(Rotation.from_quat(np.roll(q, -1, axis=1)).as_matrix(), C @ track.head_rotation,
                               atol=1e-5)
    assert armature.rotation_mode == "QUATERNION"
    assert outcome.reports[0] == ("WARNING", "The FLAME model is the project's synthetic stand-in.")
    assert ("INFO", f"Built the head '{head.name}' in the collection 'walk', keyed on 6 tracked frames (5 to 15).") \
        in outcome.reports


def test_arkit_keys_carry_what_they_can_and_flame_keys_the_rest(arkit_head, tmp_path):
    """On a head with ARKit keys the expression is split (core.animation.arkit_split): the ARKit curves hold its
    weights, FLAME's keys the rest, and the evaluated head is still the tracked one."""
    from core.animation import arkit_split

    flame, uv, embedding = arkit_head
    clip_path = write_clip(tmp_path / "talk.mp4", frames=3)
    clip = tracked_clip(flame, uv, tracked_fits(flame, 3, seed=2), range(3), source=str(clip_path), embedding=embedding)
    result = bridge.prepare_track(clip)
    assert result.rig.arkit_keys
    head, _ = build_video((clip_path, result), start=1)
    track = clip.track
    split = arkit_split(result.rig, track.expression, track.eyelids)
    assert split.weights.max() > 0.05  # the ARKit keys show part of it
    keys = head.data.shape_keys
    for k, key in enumerate(result.rig.arkit_keys):
        np.testing.assert_allclose(curve_points(keys, f'key_blocks["{key.name}"].value')[:, 1], split.weights[:, k],
                                   atol=1e-6)
    np.testing.assert_allclose(curve_points(keys, 'key_blocks["expression_004"].value')[:, 1], split.expression[:, 4],
                               atol=1e-6)
    for i in range(3):
        bpy.context.scene.frame_set(1 + i)
        error = np.linalg.norm(evaluated_world(head) - track.vertices_posed[i] @ C.T, axis=1)
        assert error.max() < 1e-3, error.max()


def test_the_evaluated_head_is_the_tracked_head_on_every_frame(video):
    """World-space vertices of each tracked frame against the track's vertices_posed (FLAME's forward pass). The
    rig keeps the first frame's joints and puts the eyelids before skinning (core/rig.py), hence not float
    precision."""
    head, _ = build_video(video)
    track = video[1].clip.track
    errors = []
    for i, frame in enumerate(track.frames):
        bpy.context.scene.frame_set(5 + int(frame))
        error = np.linalg.norm(evaluated_world(head) - track.vertices_posed[i] @ C.T, axis=1)
        errors.append(error.max())
    assert max(errors) < 1e-3, errors  # 0.6 mm at most here; frame 0 (the rig's own frame) to float precision
    assert errors[0] < 1e-5
    bpy.context.scene.frame_set(5 + 3)  # between tracked frames 2 and 4: the keys interpolate
    between = evaluated_world(head)
    assert np.linalg.norm(between - track.vertices_posed[1] @ C.T, axis=1).max() > 1e-3


def test_scene_takes_the_clips_rate_range_and_background(video):
    clip_path, _ = video
    head, _ = build_video(video, start=5)
    blender_scene = bpy.context.scene
    assert blender_scene.render.fps / blender_scene.render.fps_base == pytest.approx(29.97)
    assert (blender_scene.frame_start, blender_scene.frame_end, blender_scene.frame_current) == (5, 15, 5)
    camera = scene.head_camera(head)
    assert blender_scene.camera == camera and camera.data.show_background_images
    (background,) = camera.data.background_images
    assert background.source == "MOVIE_CLIP" and Path(background.clip.filepath) == clip_path
    assert background.clip.frame_start == 5 and background.clip.frame_duration == 11  # clip frame 0 at frame 5


def test_glb_carries_a_key_per_frame(video, tmp_path):
    head, _ = build_video(video, start=1)
    track = video[1].clip.track
    gltf = pygltflib.GLTF2().load(str(export.export_glb(bpy.context, head, str(tmp_path / "track.glb"))))
    assert bpy.context.scene.render.fps_base == pytest.approx(30 / 29.97)  # as it was before the export
    (anim,) = gltf.animations
    targets = {}
    for channel in anim.channels:
        node = "weights" if channel.target.path == "weights" else gltf.nodes[channel.target.node].name
        targets[(node, channel.target.path)] = anim.samplers[channel.sampler]
    rig = head.parent.name
    assert {("weights", "weights"), (rig, "translation"), (rig, "rotation"), ("neck", "rotation"),
            ("jaw", "rotation"), ("eye.L", "rotation"), ("eye.R", "rotation")} <= set(targets)
    for sampler in targets.values():  # frames 0 to 10: a key per frame, also between the tracked ones
        np.testing.assert_allclose(_accessor(gltf, sampler.input)[:, 0], np.arange(11) / 29.97, atol=1e-5)
    names = gltf.meshes[0].extras["targetNames"]
    weights = _accessor(gltf, targets[("weights", "weights")].output).reshape(11, len(names))
    np.testing.assert_allclose(weights[track.frames, names.index("expression_007")], track.expression[:, 7],
                               atol=1e-5)
    translation = _accessor(gltf, targets[(rig, "translation")].output)
    np.testing.assert_allclose(translation[track.frames], track.head_translation, atol=1e-5)  # glTF is Y-up again


# ------------------------------------------------------------------------------------------------ sources
def test_folder_of_frames_becomes_an_image_sequence(head_model, tmp_path):
    flame, uv = head_model
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in range(7, 13):
        write_png(folder / f"shot_{number:04d}.png")
    clip = tracked_clip(flame, uv, tracked_fits(flame, 3, seed=1), [0, 2, 4], kind="frames", source=str(folder),
                        fps=25.0)
    bpy.context.scene.frame_start = 3
    outcome = tracking.build_track(bpy.context, tracking.resolve_source([str(folder)]), bridge.prepare_track(clip))
    assert outcome.status == {"FINISHED"}
    (background,) = scene.head_camera(bpy.context.scene.p3dmm.head).data.background_images
    image, user = background.image, background.image_user
    assert image.source == "SEQUENCE"
    for frame in range(6):  # Blender's own choice of file at each scene frame
        bpy.context.scene.frame_set(3 + frame)
        assert Path(image.filepath_from_user(image_user=user)).name == f"shot_{7 + frame:04d}.png"
    assert bpy.context.scene.frame_end == 3 + 4


def test_frames_named_without_a_sequence_show_the_first_tracked_frame(head_model, tmp_path):
    flame, uv = head_model
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_png(folder / name, width=20 + len(name))
    clip = tracked_clip(flame, uv, tracked_fits(flame, 2, seed=1), [1, 2], kind="frames", source=str(folder))
    outcome = tracking.build_track(bpy.context, tracking.resolve_source([str(folder)]), bridge.prepare_track(clip))
    assert any(level == "WARNING" and "not numbered consecutively" in text for level, text in outcome.reports)
    (background,) = scene.head_camera(bpy.context.scene.p3dmm.head).data.background_images
    assert background.image.source == "FILE" and background.image.filepath == "//b.png"


def test_photos_are_keyed_one_per_frame_with_the_first_photo_behind(head_model, tmp_path, monkeypatch):
    flame, uv = head_model
    photos = [write_png(tmp_path / f"p{i}.png", width=40 + i) for i in range(3)]
    fits = tracked_fits(flame, 2, seed=2)
    clip = tracked_clip(flame, uv, fits, [1, 2], kind="photos", source=", ".join(map(str, photos)), fps=0.0)
    requests = []
    monkeypatch.setattr(bridge, "run_tracking", lambda request, on_progress=None, should_cancel=None: (
        requests.append(request) or bridge.prepare_track(clip)))
    fps = (bpy.context.scene.render.fps, bpy.context.scene.render.fps_base)
    files = [{"name": p.name} for p in photos]
    assert bpy.ops.pixel3dmm.track_video(directory=str(tmp_path), files=files) == {"FINISHED"}
    assert requests[0].source == [str(p) for p in photos]
    head = bpy.context.scene.p3dmm.head
    co = curve_points(head.data.shape_keys, 'key_blocks["expression_003"].value')
    np.testing.assert_array_equal(co[:, 0], [1, 2])  # one frame per tracked photo from the start frame
    np.testing.assert_allclose(co[:, 1], [f.expression[3] for f in fits], atol=1e-6)
    assert (bpy.context.scene.render.fps, bpy.context.scene.render.fps_base) == fps  # photos have no frame rate
    (background,) = scene.head_camera(head).data.background_images
    assert tuple(background.image.size) == (41, 30) and background.image.packed_file is not None  # photo 1


def test_clip_blender_cannot_read_builds_without_background(head_model, tmp_path):
    flame, uv = head_model
    odd = tmp_path / "odd.mp4"
    odd.write_bytes(b"\x00\x00\x00\x18ftypodd!" + bytes(64))  # readable by the (faked) core, not by Blender
    clip = tracked_clip(flame, uv, tracked_fits(flame, 2, seed=3), [0, 1], source=str(odd))
    outcome = tracking.build_track(bpy.context, tracking.resolve_source([str(odd)]), bridge.prepare_track(clip))
    assert outcome.status == {"FINISHED"}
    assert any("cannot read this clip" in text for level, text in outcome.reports if level == "WARNING")
    assert len(scene.head_camera(bpy.context.scene.p3dmm.head).data.background_images) == 0
    assert len(bpy.data.movieclips) == 0


# ------------------------------------------------------------------------------------------------ the operator
@pytest.fixture()
def fake_tracker(monkeypatch, video):
    calls = []

    def run(request, on_progress=None, should_cancel=None):
        calls.append(request)
        if on_progress is not None:
            on_progress("fit", 0.5)
        return video[1]

    monkeypatch.setattr(bridge, "run_tracking", run)
    return calls


def test_operator_passes_its_options_and_builds(fake_tracker, video):
    clip_path, _ = video
    bpy.context.scene.p3dmm.texture_size = "512"
    assert bpy.ops.pixel3dmm.track_video(filepath=str(clip_path), stride=2, quality="balanced",
                                         mode="landmarks") == {"FINISHED"}
    (request,) = fake_tracker
    assert (request.source, request.stride, request.quality, request.mode, request.texture_size) == (
        str(clip_path), 2, "balanced", "landmarks", 512)
    assert set(request.assets) == {"flame", "uv_template", "uv_checkpoint", "normals_checkpoint"}
    head = bpy.context.scene.p3dmm.head
    assert head.users_collection[0].name == "walk" and bpy.context.scene.frame_end == 1 + 10


def test_invoke_in_background_blender_runs_synchronously(fake_tracker, video):
    assert bpy.ops.pixel3dmm.track_video("INVOKE_DEFAULT", filepath=str(video[0])) == {"FINISHED"}
    assert jobs.active_job() is None and len(fake_tracker) == 1 and len(bpy.data.objects) == 3


@pytest.mark.parametrize("paths, expected", [
    ([""], "No clip is chosen; choose a video file, a folder of frames or several photos of one person."),
    (["/no/such/clip.mp4"], "'/no/such/clip.mp4' does not exist; choose a video file, a folder of frames or several "
                            "photos of one person."),
])
def test_a_bad_clip_path_is_one_sentence_and_builds_nothing(fake_tracker, paths, expected):
    before = scene_counts()
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.track_video(filepath=paths[0])
    assert one_sentence(exc) == expected
    assert scene_counts() == before and fake_tracker == []


def test_core_errors_are_one_sentence_and_build_nothing(monkeypatch, video):
    def run(request, on_progress=None, should_cancel=None):
        raise ImageError("'walk.mp4' could not be opened as a video; use an mp4, mov, avi or webm file that plays "
                         "in a video player, or a folder of frames.")

    monkeypatch.setattr(bridge, "run_tracking", run)
    before = scene_counts()
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.track_video(filepath=str(video[0]))
    assert one_sentence(exc).startswith("'walk.mp4' could not be opened as a video")
    assert scene_counts() == before


def test_a_failing_build_removes_what_it_made(monkeypatch, video):
    def broken(*args):
        raise ValueError("no room for keys")

    monkeypatch.setattr(tracking, "key_track", broken)
    render = bpy.context.scene.render
    settings = (render.fps, render.fps_base, bpy.context.scene.frame_end, render.resolution_x, render.resolution_y)
    before = scene_counts()
    outcome = tracking.build_track(bpy.context, tracking.resolve_source([str(video[0])]), video[1])
    assert outcome.status == {"CANCELLED"}
    ((level, text),) = outcome.reports
    assert level == "ERROR" and text.startswith("Tracking failed with an unexpected ValueError (no room for keys)")
    assert scene_counts() == before and len(bpy.data.armatures) == len(bpy.data.cameras) == 0
    assert (render.fps, render.fps_base, bpy.context.scene.frame_end, render.resolution_x,
            render.resolution_y) == settings and bpy.context.scene.camera is None


def _wait_for_outcome(run, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = run.tick(bpy.context)
        if outcome is not None:
            return outcome
        time.sleep(0.01)
    raise AssertionError("the worker did not finish")


def test_threaded_track_reports_progress_then_builds(monkeypatch, video):
    main = threading.get_ident()
    release = threading.Event()
    seen = {}

    def run(request, on_progress=None, should_cancel=None):
        seen["thread"] = threading.get_ident()
        on_progress("fit", 0.3)
        release.wait(5.0)
        return video[1]

    monkeypatch.setattr(bridge, "run_tracking", run)
    source = tracking.resolve_source([str(video[0])])
    request = tracking.prepare_request(bpy.context, source, stride=1, quality="fast", mode="auto")
    run_ = tracking.TrackingRun(bpy.context, request, source)
    assert jobs.active_job() is run_.job and not bpy.ops.pixel3dmm.track_video.poll()
    assert not bpy.ops.pixel3dmm.reconstruct_face.poll()
    deadline = time.monotonic() + 5.0
    while bpy.context.scene.p3dmm.stage != "fit" and time.monotonic() < deadline:
        assert run_.tick(bpy.context) is None
        time.sleep(0.01)
    assert bpy.context.scene.p3dmm.progress == pytest.approx(0.3) and len(bpy.data.objects) == 0
    release.set()
    outcome = _wait_for_outcome(run_)
    assert outcome.status == {"FINISHED"} and seen["thread"] != main
    assert len(bpy.data.objects) == 3 and jobs.active_job() is None


def test_cancel_leaves_the_scene_as_it_was(monkeypatch, video):
    stopped = threading.Event()

    def run(request, on_progress=None, should_cancel=None):
        while not should_cancel():
            time.sleep(0.005)
        stopped.set()
        raise FitCancelled("Tracking cancelled; run it again to continue from the frames already tracked.")

    monkeypatch.setattr(bridge, "run_tracking", run)
    bpy.ops.mesh.primitive_cube_add()
    settings = (bpy.context.scene.render.fps, bpy.context.scene.frame_start, bpy.context.scene.frame_end)
    before = scene_counts()
    source = tracking.resolve_source([str(video[0])])
    request = tracking.prepare_request(bpy.context, source, stride=1, quality="fast", mode="auto")
    run_ = tracking.TrackingRun(bpy.context, request, source)
    assert run_.tick(bpy.context) is None
    assert bpy.ops.pixel3dmm.cancel_reconstruction() == {"FINISHED"}  # the panel's cancel button (Esc alike)
    outcome = run_.tick(bpy.context)
    assert outcome == operators.Outcome({"CANCELLED"}, [("WARNING", "Tracking cancelled; the scene was not changed.")])
    assert stopped.wait(5.0)
    assert scene_counts() == before and jobs.active_job() is None
    assert (bpy.context.scene.render.fps, bpy.context.scene.frame_start, bpy.context.scene.frame_end) == settings


def test_bridge_hands_the_request_to_the_tracker(monkeypatch, video, tmp_path):
    clip = video[1].clip
    seen = {}

    def fake_track(source, assets, settings, *, on_progress=None, should_cancel=None, work_dir=None):
        seen.update(source=source, assets=assets, settings=settings, cancel=should_cancel, work_dir=work_dir)
        return clip

    monkeypatch.setattr(core.track, "track", fake_track)
    monkeypatch.setenv("PIXEL3DMM_FLAME", str(tmp_path / "from_env.pkl"))
    request = bridge.TrackRequest(["a.jpg", "b.jpg"], {"flame": ""}, "best", "cpu", 512, str(tmp_path), stride=3,
                                  mode="landmarks")
    stop = lambda: False  # noqa: E731
    result = bridge.run_tracking(request, should_cancel=stop)
    settings = seen["settings"]
    assert (settings.quality, settings.mode, settings.device, settings.stride, settings.texture_size,
            settings.cache_dir) == ("best", "landmarks", "cpu", 3, 512, str(tmp_path))
    assert seen["source"] == ["a.jpg", "b.jpg"] and seen["cancel"] is stop
    assert seen["work_dir"] is None  # the tracker's own folder in the cache, so a cancelled track resumes
    assert seen["assets"].locate("flame") == (None, "not configured")  # preferences only, not the environment
    # the rig of the first tracked frame on the identity mesh, the texture in Blender's pixel order
    first = build_rig(clip.flame, clip.uv, clip.track.frame_result(0, vertices_neutral=clip.neutral))
    np.testing.assert_array_equal(result.rig.rest_vertices, first.rest_vertices)
    np.testing.assert_array_equal(result.rig.rotations, first.rotations)
    assert result.clip is clip and result.warnings == (bridge.NO_EMBEDDING,)
    assert result.texture.shape == (16, 16, 4) and np.all(result.texture[:, :, 3] == 1.0)
    np.testing.assert_array_equal(result.texture[::-1, :, :3], clip.texture)


def test_rotation_quaternions_follow_each_other_through_half_turns():
    angles = np.radians(np.arange(150.0, 400.0, 25.0))  # through 180 and 360 degrees about z
    matrices = Rotation.from_euler("z", angles[:, None]).as_matrix()
    q = bridge.rotation_quaternions(matrices)
    assert np.all(np.sum(q[1:] * q[:-1], axis=1) > 0)
    np.testing.assert_allclose(Rotation.from_quat(np.roll(q, -1, axis=1)).as_matrix(), matrices, atol=1e-12)


def test_the_operator_says_what_it_does():
    rna = bpy.ops.pixel3dmm.track_video.get_rna_type()
    assert rna.name == "Track Video" and rna.description
    assert {p.identifier for p in rna.properties} >= {"filepath", "directory", "files", "stride", "quality", "mode"}


# ------------------------------------------------------------------------------------------------ headless
def test_headless_video_writes_the_head_and_the_track(monkeypatch, video, tmp_path):
    clip_path, result = video
    monkeypatch.setattr(bridge, "run_tracking", lambda request, on_progress=None, should_cancel=None: result)
    monkeypatch.setattr(headless, "_choose_assets", lambda prefs, args, say: (
        {k: "" for k in ("flame", "uv_template", "uv_checkpoint", "normals_checkpoint")}, "test"))
    out = tmp_path / "out"
    assert headless.main(["--video", str(clip_path), "--out", str(out), "--stride", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["head.blend", "head.glb", "track.json", "track.npz"]
    saved, track = Track.load(out), result.clip.track
    for name in ("expression", "head_rotation", "vertices_posed", "frames"):
        np.testing.assert_array_equal(getattr(saved, name), getattr(track, name))
    gltf = pygltflib.GLTF2().load(str(out / "head.glb"))
    (anim,) = gltf.animations
    assert {gltf.accessors[s.input].count for s in anim.samplers} == {11}
    bpy.ops.wm.open_mainfile(filepath=str(out / "head.blend"))
    assert bpy.utils.blend_paths(absolute=True) == [str(clip_path)]  # the clip stays a file beside the .blend
    assert bpy.context.scene.frame_end == 11
    before = sorted(p.name for p in out.iterdir())
    assert headless.main(["--video", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == before


def test_headless_photos_ctrl_c_and_arguments(monkeypatch, video, tmp_path, capfd):
    requests = []

    def interrupted(request, on_progress=None, should_cancel=None):
        requests.append(request)
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge, "run_tracking", interrupted)
    monkeypatch.setattr(headless, "_choose_assets", lambda prefs, args, say: (
        {k: "" for k in ("flame", "uv_template", "uv_checkpoint", "normals_checkpoint")}, "test"))
    photos = [write_png(tmp_path / f"{name}.png") for name in ("front", "left")]
    out = tmp_path / "out"
    capfd.readouterr()
    assert headless.main(["--photos", *map(str, photos), "--out", str(out)]) == 130
    assert requests[0].source == [str(p) for p in photos] and requests[0].quality == "fast"
    assert capfd.readouterr().err == ("[pixel3dmm] Cancelled (Ctrl-C); nothing was written, so run the command again "
                                      "to continue from the frames already tracked.\n")
    assert not out.exists()
    for argv in (["--video", "clip.mp4"], [str(photos[0]), "--video", "clip.mp4", "--out", str(out)],
                 ["--video", "clip.mp4", "--out", str(out), "--livelink", "take.csv"]):
        with pytest.raises(SystemExit) as exc:
            headless.main(argv)
        assert exc.value.code == 2


RUNNER = """
import sys
import core.fit.config
config = core.fit.config.FitConfig
preset, landmarks = config.preset, config.landmarks_preset
config.preset = classmethod(lambda cls, name: preset(name).with_steps(0.05))
config.landmarks_preset = classmethod(lambda cls, name: landmarks(name).with_steps(0.05))
from pixel3dmm_blender import headless
sys.exit(headless.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_headless_video_through_the_real_tracker(tmp_path):
    """Six frames of the moving astronaut, the stand-in assets configured as `python -m core assets` says, the
    landmarks alone, the fast preset cut to 5 % of its steps."""
    clip_path = write_clip(tmp_path / "astronaut.mp4", frames=6)
    assets = write_standin_assets(tmp_path / "standins", network_size="tiny")
    env = dict(os.environ, PIXEL3DMM_CACHE_DIR=str(tmp_path / "cache"),
               **{ENV_NAMES[key]: str(path) for key, path in assets.items()})
    out = tmp_path / "out"
    command = [sys.executable, "-c", RUNNER, "--video", str(clip_path), "--out", str(out), "--mode", "landmarks",
               "--device", "cpu"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert all(line.startswith("[pixel3dmm] ") for line in lines), proc.stdout
    assert "[pixel3dmm] tracking astronaut.mp4 (fast preset)" in lines
    assert lines[-1].startswith("[pixel3dmm] tracked 6 frames in ")
    assert sorted(p.name for p in out.iterdir()) == ["head.blend", "head.glb", "track.json", "track.npz"]
    track = Track.load(out)
    assert track.kind == "video" and track.fps == pytest.approx(24.0) and track.frames.tolist() == list(range(6))
    gltf = pygltflib.GLTF2().load(str(out / "head.glb"))
    (anim,) = gltf.animations
    assert {gltf.accessors[s.input].count for s in anim.samplers} == {6}
    bpy.ops.wm.open_mainfile(filepath=str(out / "head.blend"))
    head = next(o for o in bpy.data.objects if o.get(scene.HEAD_TAG))
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (1, 6)
    # away from the eyelids (which FLAME adds after skinning and the rig before it, core/rig.py) the head shows the
    # track's vertices on every frame
    lids = np.abs(load_flame(assets["flame"]).eyelids).sum(axis=(0, 2)) > 0
    for i, frame in enumerate(track.frames):
        bpy.context.scene.frame_set(1 + int(frame))
        error = np.linalg.norm(evaluated_world(head) - track.vertices_posed[i] @ C.T, axis=1)
        assert error[~lids].max() < 1e-3, (frame, error[~lids].max())
