"""Takes on a rig and back: quaternions, the eyes' split between keys and joints, round trips; checked with
scipy's rotations and the app's own angle conventions rather than the module's helpers."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from core.animation import (RigMotion, key_gaze, matrices_from_quaternions, motion_from_take,
                            quaternions_from_matrices, take_from_motion)
from core.arkit import ARKIT_NAMES, EYE_LOOK_SIDEWAYS, EYE_LOOK_VERTICAL, arkit_keys
from core.flame import synthetic_flame
from core.livelink import Take

from mediapipe_standin import standin_embedding

INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}


@pytest.fixture(scope="module")
def eye_poses(one_thread):
    data, template = synthetic_flame("small", seed=0)
    return np.stack([k.eye_poses for k in arkit_keys(data, standin_embedding(data), template.mirror_index)])


def app_matrices(angles):
    """The app's yaw, pitch, roll as core.livelink states them: R_y(-yaw) R_x(pitch) R_z(-roll), via scipy."""
    a = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_euler("YXZ", np.stack((-a[:, 0], a[:, 1], -a[:, 2]), 1)).as_matrix()


def test_quaternions_match_scipy_up_to_sign():
    rng = np.random.default_rng(0)
    rotations = Rotation.random(200, random_state=1)
    half_turns = Rotation.from_rotvec(np.pi * np.eye(3)[rng.integers(0, 3, 20)])
    matrices = np.concatenate((rotations.as_matrix(), half_turns.as_matrix(), np.eye(3)[None]))
    q = quaternions_from_matrices(matrices)
    xyzw = Rotation.from_matrix(matrices).as_quat()
    expected = np.concatenate((xyzw[:, 3:], xyzw[:, :3]), 1)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.abs(np.sum(q * expected, 1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrices_from_quaternions(q), matrices, atol=1e-12)
    np.testing.assert_allclose(matrices_from_quaternions(3.0 * q), matrices, atol=1e-12)  # normalised


def test_key_gaze_is_the_rotation_of_the_summed_axis_angles(eye_poses):
    rng = np.random.default_rng(1)
    weights = rng.uniform(0, 1, (6, len(ARKIT_NAMES)))
    expected = Rotation.from_rotvec(np.einsum("tk,kec->tec", weights, eye_poses).reshape(-1, 3)).as_matrix()
    np.testing.assert_allclose(key_gaze(weights, eye_poses).reshape(-1, 3, 3), expected, atol=1e-12)
    # only the eye-look keys turn an eye, each its own side's eye
    turning = {ARKIT_NAMES[k] for k in np.flatnonzero(np.abs(eye_poses).sum((1, 2)))}
    assert turning == {f"eyeLook{d}{s}" for d in ("Down", "In", "Out", "Up") for s in ("Left", "Right")}
    assert all(np.abs(eye_poses[INDEX[n], 1 if n.endswith("Left") else 0]).max() == 0 for n in turning)


def _take(rng, rows=40, fps=60.0):
    return Take.from_frames(rng.uniform(0, 1, (rows, 51)), fps=fps, frames=np.cumsum(rng.integers(1, 3, rows)),
                            head=rng.normal(0, 0.3, (rows, 3)), eyes=rng.normal(0, 0.3, (rows, 2, 3)),
                            start=12 * 3600.0 + 7.25)


def test_motion_turns_the_head_at_the_neck_and_the_eyes_once(eye_poses):
    rng = np.random.default_rng(2)
    take = _take(rng)
    motion = motion_from_take(take, eye_poses)
    np.testing.assert_array_equal(motion.weights, take.weights)
    np.testing.assert_array_equal(motion.frames, take.frames)
    np.testing.assert_allclose(matrices_from_quaternions(motion.neck), app_matrices(take.head), atol=1e-12)
    keys = Rotation.from_rotvec(np.einsum("tk,kec->tec", take.weights.astype(np.float64), eye_poses).reshape(-1, 3))
    joints = Rotation.from_matrix(matrices_from_quaternions(motion.eyes).reshape(-1, 3, 3))
    # the joint after the keys' gaze is the take's eye rotation: the eyes turn by the take's angles, once
    np.testing.assert_allclose((joints * keys).as_matrix(), app_matrices(take.eyes), atol=1e-12)
    # interpolating components never takes the long way: neighbouring quaternions agree in sign
    assert np.all(np.sum(motion.neck[1:] * motion.neck[:-1], -1) > 0)
    assert np.all(np.sum(motion.eyes[1:] * motion.eyes[:-1], -1) > 0)


def test_round_trip_gives_the_take_back(eye_poses):
    rng = np.random.default_rng(3)
    take = _take(rng, fps=30.0)
    motion = motion_from_take(take, eye_poses)
    back = take_from_motion(motion, 30.0, eye_poses, start=float(take.times[0]))
    np.testing.assert_array_equal(back.frames, take.frames)
    np.testing.assert_allclose(back.times, take.times, atol=1e-9)
    np.testing.assert_array_equal(back.weights, take.weights)
    np.testing.assert_allclose(back.head, take.head, atol=1e-6)
    np.testing.assert_allclose(back.eyes, take.eyes, atol=1e-6)
    # quaternions need not be unit length (interpolated curves)
    scaled = RigMotion(motion.frames, motion.weights, 1.7 * motion.neck, 0.6 * motion.eyes)
    np.testing.assert_allclose(take_from_motion(scaled, 30.0, eye_poses).eyes, take.eyes, atol=1e-6)


def test_an_app_like_take_leaves_the_eye_joints_nearly_still(eye_poses):
    """In the app's takes the eye angles follow the eyeLook weights (yaw to the subject's right, pitch down):
    the keys show that gaze, so the joints keep almost nothing (exactly nothing for a turn about one axis)."""
    rng = np.random.default_rng(4)
    w = np.zeros((30, 51))
    for name in ("eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownLeft", "eyeLookInRight",
                 "eyeLookOutRight", "eyeLookUpRight", "eyeLookDownRight"):
        w[:, INDEX[name]] = rng.uniform(0, 0.6, 30)
    eyes = np.zeros((30, 2, 3))
    eyes[:, 0, 0] = EYE_LOOK_SIDEWAYS * (w[:, INDEX["eyeLookInLeft"]] - w[:, INDEX["eyeLookOutLeft"]])
    eyes[:, 1, 0] = EYE_LOOK_SIDEWAYS * (w[:, INDEX["eyeLookOutRight"]] - w[:, INDEX["eyeLookInRight"]])
    eyes[:, 0, 1] = EYE_LOOK_VERTICAL * (w[:, INDEX["eyeLookDownLeft"]] - w[:, INDEX["eyeLookUpLeft"]])
    eyes[:, 1, 1] = EYE_LOOK_VERTICAL * (w[:, INDEX["eyeLookDownRight"]] - w[:, INDEX["eyeLookUpRight"]])
    motion = motion_from_take(Take.from_frames(w, fps=60.0, eyes=eyes), eye_poses)
    angles = np.linalg.norm(Rotation.from_quat(np.roll(motion.eyes.reshape(-1, 4), -1, axis=1)).as_rotvec(), axis=1)
    assert angles.max() < 0.03  # second order in the angles: the keys add yaw and pitch, the app composes them
    one_axis = eyes.copy()
    one_axis[:, :, 1] = 0.0
    w_one = w.copy()
    for name in ("eyeLookUpLeft", "eyeLookDownLeft", "eyeLookUpRight", "eyeLookDownRight"):
        w_one[:, INDEX[name]] = 0.0
    motion = motion_from_take(Take.from_frames(w_one, fps=60.0, eyes=one_axis), eye_poses)
    np.testing.assert_allclose(np.abs(motion.eyes[..., 0]), 1.0, atol=1e-6)


def test_eye_poses_must_cover_the_keys(eye_poses):
    take = _take(np.random.default_rng(5), rows=3)
    with pytest.raises(ValueError, match="eye_poses"):
        motion_from_take(take, eye_poses[:50])
