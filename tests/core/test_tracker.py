"""The tracker: clip input, the joint stage's solve and smoothing, the stored track, and whole tracks of a generated
clip (issue 22)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage
import torch

from core.assets import AssetRegistry
from core.errors import AssetInvalidError, AssetMissingError, FitCancelled, ImageError, NoFaceError, Pixel3DMMError
from core.fit import FitConfig, fit
from core.fit.joint import _block_tridiagonal_solve, fit_joint, smoothing_loss, stencils
from core.fit.regions import derive_regions
from core.flame import FlameModel, synthetic_flame
from core.pipeline import write_standin_assets
from core.track import Track, TrackSettings, open_clip, track
from core.track.tracker import SequenceFit, static_box
from evaluation.groundtruth import inputs, jitter_mm, make_sequence, render_truth

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"
SHIFT = (3.0, 2.0)  # pixels per frame of the generated clip


def _write_clip(path: Path, frames: int, blank: tuple[int, ...] = (), size: tuple[int, int] | None = None) -> Path:
    """The astronaut moved by SHIFT pixels per frame (``blank`` frames grey), as an mp4."""
    img = cv2.imread(str(ASTRONAUT))
    h, w = img.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(frames):
        m = np.float32([[1, 0, SHIFT[0] * i], [0, 1, SHIFT[1] * i]])
        frame = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        out.write(np.full_like(frame, 128) if i in blank else frame)
    out.release()
    return path


@pytest.fixture(scope="module")
def flame_standins(tmp_path_factory):
    return write_standin_assets(tmp_path_factory.mktemp("standins"), networks=False)


# ------------------------------------------------------------------------------------------------ clip input
def test_bad_sources_are_one_sentence(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        open_clip(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ImageError, match="could not be opened as a video|holds no video frames") as info:
        open_clip(fake)
    assert str(info.value).count(". ") == 0  # one sentence
    empty = tmp_path / "empty.mp4"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 64)).release()
    with pytest.raises(ImageError):
        open_clip(empty)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="holds no images"):
        open_clip(folder)


def test_frames_of_another_size_are_reported_and_skipped(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, size in enumerate([(40, 50), (40, 50), (60, 50), (40, 50)]):
        cv2.imwrite(str(folder / f"f{i + 1}.png"), np.full((*size, 3), 100, np.uint8))
    clip = open_clip(folder)
    got = [(i, None if p is None else p.original_size) for i, p in clip.frames()]
    assert got == [(0, (40, 50)), (1, (40, 50)), (2, None), (3, (40, 50))]
    assert "Frame 2 is 50 x 60 pixels, not 50 x 40" in clip.problems[2]
    # natural order: f10 after f9
    for i in range(5, 11):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((40, 50, 3), 100, np.uint8))
    assert [p.name for p in open_clip(folder).paths][-3:] == ["f8.png", "f9.png", "f10.png"]


def test_a_video_is_read_with_its_rate_and_stride(tmp_path):
    clip = open_clip(_write_clip(tmp_path / "c.mp4", 7))
    assert clip.kind == "video" and clip.fps == pytest.approx(25.0) and clip.count == 7
    frames = list(clip.frames(stride=3))
    assert [i for i, _ in frames] == [0, 3, 6]
    # frame 3 is the astronaut moved by 3 * SHIFT: compare with the first frame shifted (an independent warp)
    first, third = frames[0][1].rgb, frames[1][1].rgb
    moved = cv2.warpAffine(first, np.float32([[1, 0, 3 * SHIFT[0]], [0, 1, 3 * SHIFT[1]]]), first.shape[1::-1])
    assert np.abs(moved[50:-50, 50:-50] - third[50:-50, 50:-50]).mean() < 0.03
    assert list(i for i, _ in clip.frames(max_frames=2)) == [0, 1]


def test_static_box_follows_the_reference_rule():
    still = np.array([[100, 100, 50, 50], [102, 98, 50, 52]], float)
    np.testing.assert_allclose(static_box(still), still.mean(0))
    moving = np.array([[0, 0, 50, 50], [200, 0, 50, 50]], float)
    x0, y0, w, h = static_box(moving)
    assert w == h == pytest.approx(250 * 1.1 / 1.42) and x0 + w / 2 == pytest.approx(125)


# ------------------------------------------------------------------------------------------- the joint solve
def test_block_tridiagonal_solve_matches_a_dense_solve():
    rng = np.random.default_rng(0)
    sizes = [3, 4, 2, 3]
    n = sum(sizes)
    a = rng.normal(size=(n, n))
    dense = a @ a.T + n * np.eye(n)
    starts = np.cumsum([0] + sizes)
    for i in range(len(sizes)):  # keep the block tridiagonal part only
        for j in range(len(sizes)):
            if abs(i - j) > 1:
                dense[starts[i]:starts[i + 1], starts[j]:starts[j + 1]] = 0
    rhs = rng.normal(size=(n, 2))
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    blk = lambda i, j: t(dense[starts[i]:starts[i + 1], starts[j]:starts[j + 1]])  # noqa: E731
    sol = _block_tridiagonal_solve([blk(i, i) for i in range(4)], [blk(i, i + 1) for i in range(3)],
                                   [t(rhs[starts[i]:starts[i + 1]]) for i in range(4)])
    np.testing.assert_allclose(torch.cat(sol).numpy(), np.linalg.solve(dense, rhs), atol=1e-10)


def test_smoothing_differences():
    rng = np.random.default_rng(1)
    x = [rng.normal(size=3) for _ in range(5)]
    w = np.array([1.0, 2.0, 0.5])
    second = sum(((x[t + 1] - 2 * x[t] + x[t - 1]) ** 2 * w).sum() for t in range(1, 4))
    assert smoothing_loss(x, w, stencils(5, 2)) == pytest.approx(second)
    first = sum(((x[t + 1] - x[t]) ** 2 * w).sum() for t in range(4))
    assert smoothing_loss(x, w, stencils(5, 1)) == pytest.approx(first)
    # a straight line costs nothing at order 2, even with a gap (frames 0, 1, 3: one frame missing)
    line = [np.array([2.0 * t, -t, 0.5]) for t in (0, 1, 3)]
    assert smoothing_loss(line, w, stencils(3, 2, [1, 2])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        stencils(4, 3)


@pytest.fixture(scope="module")
def small_sequence():
    """Five frames of the small synthetic head along a known trajectory, with their true maps."""
    data, uvt = synthetic_flame("small", 0)
    flame = FlameModel(data, dtype=torch.float64)
    reg = derive_regions(data.v_template, data.faces, data.J_regressor)
    eyeballs = np.flatnonzero(reg.eyeballs[data.faces].all(1))
    heads = make_sequence(np.random.default_rng(3), flame, 5)
    frames = []
    for h in heads:
        maps, neutral = render_truth(flame, uvt, h, size=128)
        frames.append((*inputs(maps, eyeballs), maps["vertices"]))
    return flame, uvt, frames


def test_joint_stage_shares_the_identity_and_lowers_the_loss(small_sequence):
    flame, uvt, frames = small_sequence
    cfg = FitConfig.preset("fast").with_steps(0.1).with_refinement(1)
    seq = SequenceFit(flame, uvt, "networks", "fast", first_cfg=cfg)
    for pred, crop, _ in frames:
        seq.add(pred, crop)
    starts = [f.start for f in seq.frames]
    # every later frame kept the first frame's identity and camera
    assert all(np.array_equal(s.shape, starts[0].shape) and s.focal == starts[0].focal for s in starts)
    results = seq.joint({"translation": 15200.0, "rotation": 2000.0}, iterations=2)
    assert all(np.array_equal(r.shape, results[0].shape) for r in results)
    history = results[0].info["joint"]
    assert history[-1]["total"] <= history[0]["total"] and any(h["accepted"] for h in history)
    truth = np.stack([f[2] for f in frames])
    before = np.abs(np.stack([s.vertices_posed for s in starts]) - truth).mean()
    after = np.abs(np.stack([r.vertices_posed for r in results]) - truth).mean()
    assert after < before * 1.05, (before, after)


def test_smoothing_cuts_jitter_of_noisy_frames(small_sequence):
    """Heavy smoothing on noisy landmark-free frames: the joint fit's vertices jitter less than the per-frame fits."""
    flame, uvt, frames = small_sequence
    rng = np.random.default_rng(0)
    cfg = FitConfig.preset("fast").with_steps(0.1)
    seq = SequenceFit(flame, uvt, "networks", "fast", first_cfg=cfg)
    for pred, crop, _ in frames:
        noisy = type(pred)(uv=np.clip(pred.uv + rng.normal(0, 0.01, pred.uv.shape), 0, 1).astype(np.float32),
                           normals=pred.normals, mask=pred.mask)
        seq.add(noisy, crop)
    per_frame = np.stack([f.start.vertices_posed for f in seq.frames])
    joint = np.stack([r.vertices_posed for r in seq.joint({"translation": 1e6, "rotation": 1e5}, iterations=2)])
    assert jitter_mm(joint) < jitter_mm(per_frame)


def test_joint_stage_rejects_mismatched_gaps(small_sequence):
    flame, uvt, frames = small_sequence
    cfg = FitConfig.preset("fast").with_steps(0.05)
    seq = SequenceFit(flame, uvt, "networks", "fast", first_cfg=cfg)
    for pred, crop, _ in frames[:3]:
        seq.add(pred, crop)
    with pytest.raises(ValueError, match="gaps needs 2 values"):
        fit_joint(seq.frames, flame, uvt, cfg, cfg.stages[-1], 1, smoothing={"translation": 1.0}, gaps=[1.0])


# ----------------------------------------------------------------------------------------------- the track
def _fake_track(n=4, photos=False) -> Track:
    rng = np.random.default_rng(0)
    r = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return Track(shape=r(10), expression=r(n, 5), eyelids=r(n, 2), jaw_pose=r(n, 3), neck_pose=r(n, 3),
                 eye_pose_left=r(n, 3), eye_pose_right=r(n, 3), head_rotation=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
                 head_translation=r(n, 3), vertices_posed=r(n, 7, 3), frames=np.arange(0, 2 * n, 2),
                 K_photo=np.tile(np.eye(3), (n, 1, 1)) if photos else np.eye(3), principal_point=r(n, 2),
                 K_crop=np.tile(np.eye(3), (n, 1, 1)), kind="photos" if photos else "video", source="clip.mp4",
                 fps=30.0, photo_size=np.array([[40, 50]] * n) if photos else (40, 50), focal=3.9,
                 skipped={5: "No face was found in frame 5."})


@pytest.mark.parametrize("photos", [False, True])
def test_track_round_trip(tmp_path, photos):
    t = _fake_track(photos=photos)
    t.save(tmp_path)
    back = Track.load(tmp_path / "track.npz")
    for name in ("shape", "expression", "vertices_posed", "frames", "K_photo", "head_translation"):
        np.testing.assert_array_equal(getattr(back, name), getattr(t, name))
    assert back.skipped == t.skipped and back.fps == 30.0 and back.size(1) == (40, 50)
    assert back.frame_result(2).expression.tolist() == t.expression[2].tolist()
    meta = json.loads((tmp_path / "track.json").read_text())
    assert meta["tracked_frames"] == 4 and meta["frames"] == [0, 2, 4, 6]


def test_damaged_tracks_are_one_sentence(tmp_path):
    with pytest.raises(AssetMissingError):
        Track.load(tmp_path)
    _fake_track().save(tmp_path)
    (tmp_path / "track.npz").write_bytes(b"garbage")
    with pytest.raises(AssetInvalidError, match="damaged"):
        Track.load(tmp_path)
    _fake_track().save(tmp_path)
    (tmp_path / "track.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AssetInvalidError, match="is not a track"):
        Track.load(tmp_path)


# ---------------------------------------------------------------------------------------------- whole tracks
def _projected(tr: Track, ids: np.ndarray) -> np.ndarray:
    """(T, 2) mean photo position of vertices ``ids`` in every tracked frame."""
    cam = tr.vertices_posed[:, ids].astype(np.float64) - np.array([0.0, 0.0, 1.0])
    out = []
    for i in range(len(tr)):
        k = tr.camera(i)
        x = k[0, 0] * cam[i, :, 0] / -cam[i, :, 2] + k[0, 2]
        y = -k[1, 1] * cam[i, :, 1] / -cam[i, :, 2] + k[1, 2]
        out.append((x.mean(), y.mean()))
    return np.array(out)


def test_a_moving_face_is_followed_and_a_lost_face_skipped(flame_standins, tmp_path):
    clip = _write_clip(tmp_path / "clip.mp4", 7, blank=(3,))
    result = track(clip, AssetRegistry(flame_standins, use_environment=False),
                   TrackSettings(mode="landmarks", device="cpu", texture_size=64), work_dir=tmp_path / "work")
    tr = result.track
    assert tr.frames.tolist() == [0, 1, 2, 4, 5, 6] and list(tr.skipped) == [3]
    assert "No face was found in frame 3." == tr.skipped[3]
    assert tr.K_photo.shape == (3, 3) and tr.vertices_posed.shape == (6, 5023, 3)
    assert any("1 of 7 frames were skipped" in m for m in result.messages)
    # the face (its silhouette region) follows the known shift within a few pixels
    face = np.flatnonzero(derive_regions(result.flame.v_template, result.flame.faces,
                                         result.flame.J_regressor).silhouette)
    path = _projected(tr, face)
    expected = path[0] + tr.frames[:, None] * np.array(SHIFT)
    assert np.abs(path - expected).max() < 3.0, path - expected
    assert not (tmp_path / "work").exists()  # the work folder goes once the track is done


def test_a_cancelled_track_resumes_without_redoing_frames(flame_standins, tmp_path, monkeypatch):
    clip = _write_clip(tmp_path / "clip.mp4", 5)
    assets = AssetRegistry(flame_standins, use_environment=False)
    settings = TrackSettings(mode="landmarks", device="cpu", texture_size=64)
    fitted = []
    original = SequenceFit.add

    def counting(self, prediction, crop):
        fitted.append(len(self.frames))
        return original(self, prediction, crop)

    monkeypatch.setattr(SequenceFit, "add", counting)
    with pytest.raises(FitCancelled, match="continue from the frames already tracked"):
        track(clip, assets, settings, work_dir=tmp_path / "work", should_cancel=lambda: len(fitted) >= 3)
    assert len(fitted) == 3 and len(list((tmp_path / "work").glob("frame_??????.npz"))) >= 2
    done_before = len(list((tmp_path / "work").glob("frame_??????.npz")))
    fitted.clear()
    resumed = track(clip, assets, settings, work_dir=tmp_path / "work").track
    assert len(fitted) == 5 - done_before and len(resumed) == 5
    fresh = track(clip, assets, settings, work_dir=tmp_path / "other").track
    np.testing.assert_allclose(resumed.vertices_posed, fresh.vertices_posed, atol=1e-5)


def test_no_face_anywhere_is_one_sentence(flame_standins, tmp_path):
    clip = _write_clip(tmp_path / "grey.mp4", 3, blank=(0, 1, 2))
    with pytest.raises(NoFaceError, match="No face was found in any frame of 'grey.mp4'"):
        track(clip, AssetRegistry(flame_standins, use_environment=False), TrackSettings(mode="landmarks"),
              work_dir=tmp_path / "w")
    with pytest.raises(Pixel3DMMError, match="stride"):
        TrackSettings(stride=0)


def test_several_photos_share_one_identity(flame_standins, tmp_path):
    import matplotlib.cbook

    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    result = track([ASTRONAUT, hopper], AssetRegistry(flame_standins, use_environment=False),
                   TrackSettings(mode="landmarks", device="cpu", texture_size=64), work_dir=tmp_path / "w")
    tr = result.track
    assert tr.kind == "photos" and len(tr) == 2 and tr.K_photo.shape == (2, 3, 3)
    assert tr.fps == 0.0 and tr.info["smooth"] is False
    assert [tuple(s) for s in tr.photo_size] == [(512, 512), (600, 512)]


def test_cli_track_writes_the_track(flame_standins, tmp_path):
    import os

    clip = _write_clip(tmp_path / "clip.mp4", 4)
    env = dict(os.environ, PIXEL3DMM_FLAME=str(flame_standins["flame"]),
               PIXEL3DMM_UV_TEMPLATE=str(flame_standins["uv_template"]), PIXEL3DMM_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "core", "track", str(clip), "--out", str(out), "--mode", "landmarks",
                           "--texture-size", "64", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert "tracked 4 frames (landmarks mode), skipped 0" in proc.stdout
    assert "100%  baking the texture" in proc.stdout and "fitting all frames together" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(["track.npz", "track.json", "texture.png", "head_neutral.obj"])
    assert len(Track.load(out)) == 4
    bad = subprocess.run([sys.executable, "-m", "core", "track", str(tmp_path / "nope.mp4"), "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: The clip") and bad.stderr.count("\n") == 1


def test_a_long_clip_gets_a_stride_offered(flame_standins, tmp_path):
    """A clip over ten minutes (here 5 frames at 0.008 fps: 625 s) is tracked with a warning that suggests a stride."""
    path = tmp_path / "slow.avi"
    img = cv2.imread(str(ASTRONAUT))
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 0.008, img.shape[1::-1])
    for _ in range(5):
        out.write(img)
    out.release()
    clip = open_clip(path)
    assert clip.duration > 600, (clip.fps, clip.count)
    result = track(path, AssetRegistry(flame_standins, use_environment=False),
                   TrackSettings(mode="landmarks", texture_size=64, max_frames=2), work_dir=tmp_path / "w")
    assert len(result.track) == 2
    assert any("runs 10 minutes" in m and "frame stride of 2" in m for m in result.messages), result.messages


def test_untrained_networks_fall_back_to_the_landmarks_and_say_so(tmp_path):
    """As the photo pipeline: networks that disagree with the landmarks on the first frames are not fitted; the clip
    is tracked with the landmarks alone, and a resumed run keeps to that."""
    assets = AssetRegistry(write_standin_assets(tmp_path / "standins", network_size="tiny"), use_environment=False)
    clip = _write_clip(tmp_path / "clip.mp4", 3)
    result = track(clip, assets, TrackSettings(mode="networks", texture_size=64), work_dir=tmp_path / "w")
    assert result.track.info["mode"] == "landmarks"
    assert any(m.startswith("The UV network's prediction disagrees with the face landmarks") for m in result.messages)
