"""The FLAME layer against an independent numpy implementation, on the small synthetic head."""

import math

import numpy as np
import pytest
import torch

from core.flame import FlameModel, FlameParams, matrix_to_rotation_6d, axis_angle_to_matrix, synthetic_flame


@pytest.fixture(scope="module")
def data():
    return synthetic_flame("small", seed=3)[0]


def _rot(aa):
    theta = np.linalg.norm(aa)
    if theta == 0:
        return np.eye(3)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return math.cos(theta) * np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * np.outer(k, k)


def _reference(data, shape, expr, poses, eyelids, trans):
    """Plain FLAME: blendshapes, regressed joints, (R - I) correctives, chain, per-joint skinning loop."""
    v = data.v_template + data.shapedirs[:, :, : len(shape)] @ shape + data.exprdirs[:, :, : len(expr)] @ expr
    rest = data.J_regressor @ v
    rots = [_rot(p) for p in poses]
    feature = np.concatenate([(rots[j] - np.eye(3)).ravel() for j in range(1, 5)])
    v_posed = v + data.posedirs @ feature
    world = []
    for j, parent in enumerate(data.parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = rest[j] - (rest[parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    out = np.zeros_like(v_posed)
    for j in range(5):
        moved = (v_posed - rest[j]) @ world[j][:3, :3].T + world[j][:3, 3]
        out += data.weights[:, j : j + 1] * moved
    out += eyelids[0] * data.eyelids[0] + eyelids[1] * data.eyelids[1] + trans
    joints = np.stack([w[:3, 3] for w in world]) + trans
    return out, joints, world, v


def _random_case(rng, data, batch):
    axis = rng.normal(size=(batch, 5, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    poses = axis * rng.uniform(-math.pi / 4, math.pi / 4, size=(batch, 5, 1))
    return dict(
        shape=rng.normal(size=(batch, data.n_shape)) * 2,
        expr=rng.normal(size=(batch, data.n_expr)) * 2,
        poses=poses,
        eyelids=rng.uniform(-0.5, 1.0, size=(batch, 2)),
        trans=rng.normal(size=(batch, 3)) * 0.05,
    )


def _params(case, rep):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    poses = t(case["poses"])
    if rep != "axis_angle":
        poses = axis_angle_to_matrix(poses)
        if rep == "6d":
            poses = matrix_to_rotation_6d(poses)
    names = ("global_pose", "neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right")
    return FlameParams(
        shape=t(case["shape"]),
        expression=t(case["expr"]),
        eyelids=t(case["eyelids"]),
        translation=t(case["trans"]),
        **{n: poses[:, i] for i, n in enumerate(names)},
    )


@pytest.mark.parametrize("rep", ["axis_angle", "6d", "matrix"])
def test_forward_matches_numpy_reference(data, rep):
    rng = np.random.default_rng(7)
    case = _random_case(rng, data, batch=4)
    model = FlameModel(data, dtype=torch.float64)
    out = model(_params(case, rep))
    for b in range(4):
        verts, joints, world, shaped = _reference(
            data, case["shape"][b], case["expr"][b], case["poses"][b], case["eyelids"][b], case["trans"][b]
        )
        assert np.abs(out.vertices[b].numpy() - verts).max() < 1e-9
        assert np.abs(out.joints[b].numpy() - joints).max() < 1e-9
        assert np.abs(out.vertices_shaped[b].numpy() - shaped).max() < 1e-9
        for j in range(5):
            np.testing.assert_allclose(out.joint_transforms[b, j, :3, :3].numpy(), world[j][:3, :3], atol=1e-9)
        np.testing.assert_allclose(out.joint_transforms[b, :, :3, 3].numpy(), joints, atol=1e-9)
        np.testing.assert_allclose(out.joint_transforms[b, :, 3].numpy(), [[0, 0, 0, 1]] * 5, atol=0)


def test_eye_rotation_turns_the_eyeball_about_its_centre(data):
    model = FlameModel(data, dtype=torch.float64)
    eye = data.weights[:, 3] == 1.0
    centre = data.J_regressor[3] @ data.v_template
    out = model(FlameParams(eye_pose_left=torch.tensor([[0.0, 0.4, 0.0]], dtype=torch.float64)))
    moved = out.vertices[0].numpy()[eye]
    np.testing.assert_allclose(
        np.linalg.norm(moved - centre, axis=1), np.linalg.norm(data.v_template[eye] - centre, axis=1), atol=1e-12
    )
    assert np.abs(moved - data.v_template[eye]).max() > 1e-3


def test_none_fields_mean_zero_and_identity(data):
    model = FlameModel(data, dtype=torch.float64)
    out = model(FlameParams())
    np.testing.assert_allclose(out.vertices[0].numpy(), data.v_template, atol=1e-12)
    np.testing.assert_allclose(out.joints[0].numpy(), data.J_regressor @ data.v_template, atol=1e-12)
    zeros = FlameParams.zeros(2, data.n_shape, data.n_expr, dtype=torch.float64, rotation="6d", eyelids=True)
    want = np.broadcast_to(data.v_template, (2,) + data.v_template.shape)
    np.testing.assert_allclose(model(zeros).vertices.numpy(), want, atol=1e-12)


def test_fewer_components_and_neutral(data):
    model = FlameModel(data, n_shape=5, n_expr=3, dtype=torch.float64)
    assert model.shapedirs.shape[-1] == 5 and model.exprdirs.shape[-1] == 3
    shape = torch.tensor(np.random.default_rng(0).normal(size=(2, 4)))
    want = data.v_template + np.einsum("vck,bk->bvc", data.shapedirs[:, :, :4], shape.numpy())
    np.testing.assert_allclose(model.neutral(shape).numpy(), want, atol=1e-12)
    np.testing.assert_allclose(model(FlameParams(shape=shape)).vertices_shaped.numpy(), want, atol=1e-12)
    with pytest.raises(ValueError, match="components"):
        model(FlameParams(shape=torch.zeros(1, 6, dtype=torch.float64)))
    with pytest.raises(ValueError, match="at most"):
        FlameModel(data, n_shape=data.n_shape + 1)


def test_gradients_reach_every_parameter(data):
    rng = np.random.default_rng(11)
    model = FlameModel(data)  # float32, the fitter's dtype
    case = _random_case(rng, data, batch=2)
    params = _params(case, "6d")
    for name in vars(params):
        value = getattr(params, name)
        setattr(params, name, value.float().requires_grad_(True))
    out = model(params)
    weights = torch.tensor(rng.normal(size=out.vertices.shape), dtype=torch.float32)
    ((out.vertices * weights).sum() + out.joints.sum()).backward()
    for name in vars(params):
        grad = getattr(params, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_buffers_follow_dtype_and_eyelids_require_blendshapes(data):
    model = FlameModel(data).to(torch.float64)
    assert model.dirs.dtype == torch.float64 and model.faces.dtype == torch.int64
    assert model.faces.shape == (data.faces.shape[0], 3)
    no_lids = FlameModel(
        type(data)(**{**vars(data), "eyelids": None}), dtype=torch.float64
    )
    assert not no_lids.has_eyelids
    with pytest.raises(ValueError, match="eyelid"):
        no_lids(FlameParams(eyelids=torch.zeros(1, 2, dtype=torch.float64)))


def test_vertices2landmarks_is_barycentric_interpolation(data):
    from core.flame import vertices2landmarks

    rng = np.random.default_rng(4)
    verts = rng.normal(size=(2,) + data.v_template.shape)
    face_idx = rng.integers(0, len(data.faces), size=7)
    bary = rng.dirichlet(np.ones(3), size=7)
    got = vertices2landmarks(torch.tensor(verts), torch.tensor(data.faces), torch.tensor(face_idx), torch.tensor(bary))
    for b in range(2):
        for i, (f, w) in enumerate(zip(face_idx, bary)):
            want = sum(w[c] * verts[b, data.faces[f, c]] for c in range(3))
            np.testing.assert_allclose(got[b, i].numpy(), want, atol=1e-12)


def test_flame_data_rejects_inconsistent_arrays(data):
    from core.errors import AssetInvalidError

    base = dict(vars(data))
    broken = {
        "weights": np.ones((len(data.v_template), 4)),
        "faces": np.array([[0, 1, len(data.v_template)]]),
        "parents": np.array([-1, 0, 3, 1, 1]),
        "eyelids": np.zeros((1, len(data.v_template), 3)),
    }
    for name, value in broken.items():
        with pytest.raises(AssetInvalidError, match="download the model file again"):
            type(data)(**{**base, name: value})


def test_restricted_model_evaluates_a_vertex_subset_exactly(data):
    """A restricted copy gives the full model's posed vertices, joints and faces on its vertices (only the ones asked
    for: its joints come from the regressor applied in advance), and ``shaped`` equals the unposed mesh of
    ``forward``."""
    rng = np.random.default_rng(11)
    params = _params(_random_case(rng, data, batch=2), "6d")
    model = FlameModel(data, dtype=torch.float64)
    full = model(params)
    wanted = torch.tensor(rng.choice(data.v_template.shape[0], 40, replace=False))
    sub = model.restricted(torch.cat([wanted, wanted[:5]]))
    ids = sub.vertex_ids
    assert bool((ids[1:] > ids[:-1]).all())
    torch.testing.assert_close(ids, torch.unique(wanted))
    assert sub.J_regressor is None
    out = sub(params)
    torch.testing.assert_close(out.vertices, full.vertices[:, ids], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.joints, full.joints, rtol=0, atol=1e-12)
    kept = np.isin(data.faces, ids.numpy()).all(1)
    np.testing.assert_array_equal(ids.numpy()[sub.faces.numpy()], data.faces[kept])
    torch.testing.assert_close(model.shaped(params), full.vertices_shaped, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="vertex_ids"):
        model.restricted(torch.tensor([data.v_template.shape[0]]))


def test_coefficients_of_batch_one_serve_every_pose(data):
    """shape and expression with batch 1 next to poses of batch 3 give what repeating them gives; other batch
    mismatches are refused with one sentence."""
    rng = np.random.default_rng(5)
    params = _params(_random_case(rng, data, batch=3), "6d")
    model = FlameModel(data, dtype=torch.float64)
    single = FlameParams(**{**params.__dict__, "shape": params.shape[:1], "expression": params.expression[:1]})
    repeated = FlameParams(
        **{**single.__dict__, "shape": single.shape.expand(3, -1), "expression": single.expression.expand(3, -1)}
    )
    a, b = model(single), model(repeated)
    torch.testing.assert_close(a.vertices, b.vertices, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.joints, b.joints, rtol=0, atol=1e-12)
    assert a.vertices_shaped.shape[0] == 1
    torch.testing.assert_close(a.vertices_shaped[0], b.vertices_shaped[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one batch size"):
        model(FlameParams(**{**params.__dict__, "jaw_pose": params.jaw_pose[:2]}))
