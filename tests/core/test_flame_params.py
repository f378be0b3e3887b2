"""FLAME parameter files: round trips checked through FLAME's own root-joint posing, other tools' layouts, bad input."""

import json
import re

import numpy as np
import pytest
import torch

from core.errors import ParameterFileError
from core.fit.result import FitResult
from core.flame import FlameModel, FlameParams, axis_angle_to_matrix, synthetic_flame
from core.flame_params import FlameParameters, load_flame_params, save_flame_params


@pytest.fixture(scope="module")
def flame():
    return synthetic_flame("small", seed=4)[0]


def _rot(aa):
    return axis_angle_to_matrix(torch.as_tensor(aa, dtype=torch.float64)).numpy()


def _forward(flame, **params):
    model = FlameModel(flame, dtype=torch.float64)
    t = {k: torch.as_tensor(np.asarray(v, dtype=np.float64))[None] for k, v in params.items()}
    with torch.no_grad():
        return model(FlameParams(**t)).vertices[0].numpy()


def _fit(flame, seed=0, eyelids=True):
    """A FitResult as the fitter makes it: FLAME with the root at rest, then world = R v + t."""
    g = np.random.default_rng(seed)
    p = dict(
        shape=g.normal(size=flame.n_shape), expression=g.normal(size=flame.n_expr),
        eyelids=g.uniform(0, 1, 2) if eyelids else np.zeros(2), neck_pose=g.normal(0, 0.2, 3),
        jaw_pose=g.normal(0, 0.2, 3), eye_pose_left=g.normal(0, 0.2, 3), eye_pose_right=g.normal(0, 0.2, 3),
    )
    v = _forward(flame, **p)
    r, t = _rot(g.normal(0, 0.5, 3)), g.normal(0, 0.1, 3)
    f32 = {k: np.asarray(v_, np.float32) for k, v_ in p.items()}
    k_photo = np.array([[1500.0, 0, 320], [0, 1500, 240], [0, 0, 1]])
    return FitResult(
        **f32, head_rotation=r.astype(np.float32), head_translation=t.astype(np.float32), focal=4.0,
        principal_point=np.zeros(2, np.float32), K_crop=np.eye(3), K_photo=k_photo, photo_size=(480, 640),
        vertices_posed=(v @ r.T + t).astype(np.float32), vertices_neutral=_forward(flame, shape=p["shape"]),
    )


def _posed(flame, p: FlameParameters):
    """World vertices of loaded parameters in this project's convention (root at rest, then R v + t)."""
    v = _forward(flame, shape=p.shape, expression=p.expression, eyelids=p.eyelids, neck_pose=p.neck_pose,
                 jaw_pose=p.jaw_pose, eye_pose_left=p.eye_pose_left, eye_pose_right=p.eye_pose_right)
    return v @ p.head_rotation.T + p.head_translation


def _fail(match, fn, *args, **kwargs):
    with pytest.raises(ParameterFileError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert re.search(match, message), message
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message), message


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip_poses_the_same_head(tmp_path, flame, suffix):
    fit = _fit(flame)
    path = save_flame_params(tmp_path / f"head{suffix}", fit, flame)
    back = load_flame_params(path, flame)
    for name in ("shape", "expression", "eyelids", "jaw_pose", "neck_pose", "eye_pose_left", "eye_pose_right",
                 "head_translation"):
        np.testing.assert_allclose(getattr(back, name), getattr(fit, name), atol=1e-6, err_msg=name)
    np.testing.assert_allclose(back.head_rotation, fit.head_rotation, atol=1e-6)
    np.testing.assert_allclose(back.camera_K, fit.K_photo)
    assert back.image_size == (480, 640)
    np.testing.assert_allclose(_posed(flame, back), fit.vertices_posed, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_saved_file_poses_the_head_the_flame_way(tmp_path, flame, suffix):
    """FLAME's own posing (global_orient about the root joint, then transl) reproduces the fitted vertices."""
    fit = _fit(flame, seed=1, eyelids=False)  # the layer adds eyelids after the global rotation: leave them out
    path = save_flame_params(tmp_path / f"head{suffix}", fit, flame)
    if suffix == ".npz":
        with np.load(path) as z:
            raw = {k: z[k] for k in z.files}
        assert raw["betas"].shape == (1, flame.n_shape) and str(raw["format"]) == "pixel3dmm-flame-parameters"
    else:
        raw = {k: np.asarray(v) for k, v in json.loads(path.read_text()).items() if k not in ("format", "flame")}
        assert raw["betas"].shape == (flame.n_shape,)
    skip = ("camera_K", "camera_Rt", "format", "flame")
    flat = {k: np.asarray(v, np.float64).reshape(-1) for k, v in raw.items() if k not in skip}
    v = _forward(flame, shape=flat["betas"], expression=flat["expression"], global_pose=flat["global_orient"],
                 neck_pose=flat["neck_pose"], jaw_pose=flat["jaw_pose"], eye_pose_left=flat["leye_pose"],
                 eye_pose_right=flat["reye_pose"], translation=flat["transl"])
    np.testing.assert_allclose(v, fit.vertices_posed, atol=1e-5)
    k, rt = np.asarray(raw["camera_K"]), np.asarray(raw["camera_Rt"])
    cam = v @ rt[:, :3].T + rt[:, 3]  # OpenCV camera: the head is in front (z > 0)
    assert (cam[:, 2] > 0).all() and np.allclose(k, fit.K_photo)


def test_other_tools_layouts(tmp_path, flame):
    g = np.random.default_rng(2)
    jaw = g.normal(0, 0.2, 3)
    fields = dict(
        shape_params=g.normal(size=(1, 12)),  # shorter than the head's 20: padded
        expression_params=np.concatenate((g.normal(size=(1, 10)), np.zeros((1, 40))), axis=1),  # zero-padded to 50
        pose_params=np.concatenate(([[0.1, 0.2, 0.3]], jaw[None]), axis=1),  # global + jaw
        eye_pose_params=np.array([[0.01, 0.02, 0.03, -0.01, 0.02, -0.03]]),  # left + right
        neck_pose_params=_rot([0.0, 0.3, 0.0])[None],  # a rotation matrix
        transl=np.array([[0.0, 0.01, -0.5]]), cam=np.array([[5.0, 0, 0]]),  # DECA's camera: ignored
    )
    np.savez(tmp_path / "other.npz", **fields)
    p = load_flame_params(tmp_path / "other.npz", flame)
    np.testing.assert_allclose(p.shape[:12], fields["shape_params"][0])
    assert p.shape.shape == (20,) and not p.shape[12:].any() and p.expression.shape == (10,)
    np.testing.assert_allclose(p.jaw_pose, jaw)
    np.testing.assert_allclose(p.eye_pose_right, [-0.01, 0.02, -0.03])
    np.testing.assert_allclose(p.neck_pose, [0, 0.3, 0], atol=1e-12)
    np.testing.assert_allclose(p.head_rotation, _rot([0.1, 0.2, 0.3]), atol=1e-12)
    assert p.camera_K is None and p.image_size is None and not p.eyelids.any()
    # FLAME's posing with the file's values equals this project's posing with the loaded ones.
    v = _forward(flame, shape=p.shape, expression=p.expression, global_pose=[0.1, 0.2, 0.3], jaw_pose=jaw,
                 neck_pose=p.neck_pose, eye_pose_left=p.eye_pose_left, eye_pose_right=p.eye_pose_right,
                 translation=[0.0, 0.01, -0.5])
    np.testing.assert_allclose(_posed(flame, p), v, atol=1e-9)


def test_missing_entries_are_zero_and_fit_results_load(tmp_path, flame):
    (tmp_path / "betas.json").write_text(json.dumps({"betas": [0.5, -0.5]}))
    p = load_flame_params(tmp_path / "betas.json", flame)
    assert p.shape[:2].tolist() == [0.5, -0.5] and not p.expression.any() and not p.jaw_pose.any()
    np.testing.assert_allclose(p.head_rotation, np.eye(3))
    assert not p.head_translation.any()
    fit = _fit(flame, seed=3)
    fit.save(tmp_path / "fit")  # the CLI's fit.npz: this project's own pose convention
    q = load_flame_params(tmp_path / "fit.npz", flame)
    np.testing.assert_allclose(_posed(flame, q), fit.vertices_posed, atol=1e-5)


def test_another_camera_is_moved_into_this_projects_frame(tmp_path, flame):
    fit = _fit(flame, seed=5)
    path = save_flame_params(tmp_path / "head.npz", fit, flame)
    with np.load(path) as z:
        raw = {k: z[k] for k in z.files}
    # The same head as a tool with its OpenCV camera at the origin writes it: the pose in camera coordinates.
    ours = raw["camera_Rt"]
    raw["head_rotation"] = ours[:, :3] @ fit.head_rotation
    raw["head_translation"] = ours[:, :3] @ fit.head_translation + ours[:, 3]
    raw["camera_Rt"] = np.hstack((np.eye(3), np.zeros((3, 1))))
    del raw["global_orient"], raw["transl"]
    np.savez(tmp_path / "opencv.npz", **raw)
    p = load_flame_params(tmp_path / "opencv.npz", flame)
    np.testing.assert_allclose(_posed(flame, p), fit.vertices_posed, atol=1e-5)


def test_bad_files(tmp_path, flame):
    _fail("does not exist", load_flame_params, tmp_path / "none.npz", flame)
    (tmp_path / "a.txt").write_text("betas 1 2 3")
    _fail(r"is not a \.npz or \.json FLAME parameter file", load_flame_params, tmp_path / "a.txt", flame)
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04" + bytes(40))
    _fail("is damaged", load_flame_params, tmp_path / "b.npz", flame)
    (tmp_path / "c.json").write_text('{"betas": [1, 2,')
    _fail("cannot be read as FLAME parameters", load_flame_params, tmp_path / "c.json", flame)
    np.savez(tmp_path / "d.npz", betas=np.array([{"x": 1}], dtype=object))
    _fail("cannot be read as FLAME parameters", load_flame_params, tmp_path / "d.npz", flame)
    _fail(r"choose a \.npz or \.json file name", save_flame_params, tmp_path / "e.txt", _fit(flame), flame)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"betas": np.ones((2, 20))}, "holds 2 sets of values"),
        ({"betas": np.ones(30)}, "has 30 shape values but this head uses 20"),
        ({"expression": [0.0, float("nan")]}, "NaN or infinite"),
        ({"jaw_pose": np.ones(4)}, r"has shape \(4,\); save it as axis-angle"),
        ({"jaw_pose": 2 * np.eye(3)}, "not a rotation"),
        ({"transl": np.ones(4)}, "has shape"),
        ({"eye_pose": np.ones(5)}, "has 5 values where 6 are expected"),
        ({"betas": np.ones(3), "shape": np.ones(3)}, "gives 'betas' twice"),
        ({"global_orient": np.zeros(3), "head_rotation": np.eye(3)}, "gives the head pose twice"),
        ({"format": "pixel3dmm-flame-parameters", "version": 7}, "newer version"),
        ({"camera_K": np.eye(2)}, "save a 3x3 matrix"),
        ({"image_size": [480.5, 640]}, "height and width in pixels"),
        ({"betas": ["a", "b"]}, "not a list of numbers"),
    ],
)
def test_bad_values(tmp_path, flame, fields, match):
    (tmp_path / "p.json").write_text(json.dumps({k: np.asarray(v).tolist() for k, v in fields.items()}))
    _fail(match, load_flame_params, tmp_path / "p.json", flame)


def test_longer_vectors_fit_when_their_tails_are_zero(tmp_path, flame):
    (tmp_path / "p.json").write_text(json.dumps({"betas": [1.0] * 20 + [0.0] * 280, "expression": [0.5] * 100}))
    _fail("has 100 expression values but this head uses 10", load_flame_params, tmp_path / "p.json", flame)
    (tmp_path / "q.json").write_text(json.dumps({"betas": [1.0] * 20 + [0.0] * 280}))
    assert load_flame_params(tmp_path / "q.json", flame).shape.tolist() == [1.0] * 20
