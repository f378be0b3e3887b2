"""The rig against FLAME's forward pass, the pose feature's layout and the fit's pinhole, each computed apart.

The rig is evaluated here in numpy (its keys at their values, then linear blend skinning written out joint by
joint, then the head pose); the reference is core's float64 FlameModel forward pass, the head pose applied.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from core.arkit import ARKIT_NAMES, arkit_keys
from core.errors import AssetInvalidError
from core.fit.result import FitResult
from core.flame import FlameModel, FlameParams, LandmarkEmbedding, synthetic_flame
from core.flame.data import JOINT_NAMES
from core.flame.lbs import blend_shapes, pose_feature
from core.flame_params import FlameParameters
from core.rig import ArkitShapeKey, CorrectiveKey, build_rig, head_record, shown_parameters

from mediapipe_standin import standin_embedding

POSES = ("neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right")


@pytest.fixture(scope="module")
def head():
    return synthetic_flame("small", seed=3)


def forward(flame, fit) -> np.ndarray:
    """(V, 3) world vertices: FlameModel in float64 (eyelids, if the model has them, after skinning), then R v + t."""
    model = FlameModel(flame, n_shape=fit.shape.size, n_expr=fit.expression.size, dtype=torch.float64)

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64))[None]

    params = FlameParams(shape=t(fit.shape), expression=t(fit.expression),
                         eyelids=None if flame.eyelids is None else t(fit.eyelids),
                         **{name: t(getattr(fit, name)) for name in POSES})
    with torch.no_grad():
        canonical = model(params).vertices[0].numpy()
    return canonical @ fit.head_rotation.astype(np.float64).T + fit.head_translation


def make_fit(flame, seed, *, eyelids=False, n_expr=None, photo_size=(480, 640), max_degrees=30.0) -> FitResult:
    """A FitResult with random parameters, an off-centre principal point and its forward pass as vertices."""
    rng = np.random.default_rng(seed)
    n_expr = flame.n_expr if n_expr is None else n_expr
    axes = {name: rng.normal(size=3) for name in POSES}
    poses = {name: (axis / np.linalg.norm(axis) * np.radians(max_degrees) * rng.uniform(0.3, 1.0)).astype(np.float32)
             for name, axis in axes.items()}
    height, width = photo_size
    k_photo = np.array([[1560.0, 0.0, width / 2 + 23.0], [0.0, 1560.0, height / 2 - 17.0], [0.0, 0.0, 1.0]])
    fit = FitResult(
        shape=rng.normal(size=flame.n_shape).astype(np.float32),
        expression=rng.normal(size=n_expr).astype(np.float32),
        eyelids=(rng.uniform(-0.5, 1.0, size=2) if eyelids else np.zeros(2)).astype(np.float32),
        head_rotation=Rotation.from_rotvec(rng.normal(size=3) * 0.2).as_matrix().astype(np.float32),
        head_translation=np.array([0.01, -0.015, -0.05], dtype=np.float32),
        focal=3.9, principal_point=np.zeros(2, dtype=np.float32), K_crop=k_photo.copy(), K_photo=k_photo,
        photo_size=photo_size, vertices_posed=np.zeros((0, 3), np.float32),
        vertices_neutral=np.zeros((0, 3), np.float32), **poses,
    )
    fit.vertices_posed = forward(flame, fit).astype(np.float32)
    return fit


def evaluate(rig, rotations=None, include=lambda key: True, values=None, head_pose=None) -> np.ndarray:
    """(V, 3) world vertices of the rig: rest + sum of value * offsets (``values`` overrides keys' values by
    name; correctives follow the rotations), skinned, head pose applied."""
    rotations = rig.rotations if rotations is None else rotations
    head_pose = rig.head_pose if head_pose is None else head_pose
    values = {} if values is None else values
    mesh = rig.rest_vertices.copy()
    for key in rig.shape_keys:
        if include(key):
            if isinstance(key, CorrectiveKey):
                value = (rotations[key.joint] - np.eye(3))[key.row, key.col]
            else:
                value = values.get(key.name, key.value)
            mesh += value * key.offsets.astype(np.float64)
    world_rotation, world_position, skinning = [], [], []
    for j, parent in enumerate(rig.parents):
        if parent < 0:
            world_rotation.append(rotations[j])
            world_position.append(rig.joints[j])
        else:
            world_rotation.append(world_rotation[parent] @ rotations[j])
            offset = rig.joints[j] - rig.joints[parent]
            world_position.append(world_position[parent] + world_rotation[parent] @ offset)
        skinning.append((world_rotation[j], world_position[j] - world_rotation[j] @ rig.joints[j]))
    posed = np.zeros_like(mesh)
    for j, (rotation, shift) in enumerate(skinning):
        posed += rig.skin_weights[:, j:j + 1] * (mesh @ rotation.T + shift)
    return posed @ head_pose[:3, :3].T + head_pose[:3, 3]


@pytest.mark.parametrize("seed", [1, 2])
def test_rig_at_its_values_is_flames_forward_pass(head, seed):
    flame, uv = head
    fit = make_fit(flame, seed)
    rig = build_rig(flame, uv, fit)
    got = evaluate(rig)
    assert np.abs(got - forward(flame, fit)).max() < 1e-9
    assert np.abs(got - fit.vertices_posed).max() < 1e-6  # the fit's own float32 vertices
    without_correctives = evaluate(rig, include=lambda key: not isinstance(key, CorrectiveKey))
    assert np.abs(without_correctives - forward(flame, fit)).max() > 1e-4  # the correctives matter


def test_fewer_fitted_components_than_the_model_has(head):
    flame, uv = head
    fit = make_fit(flame, 4, n_expr=4)
    rig = build_rig(flame, uv, fit)
    assert [key.name for key in rig.expression_keys] == [f"expression_{k:03d}" for k in range(4)]
    assert np.abs(evaluate(rig) - forward(flame, fit)).max() < 1e-9
    too_many = make_fit(flame, 4)
    too_many.expression = np.zeros(flame.n_expr + 1, np.float32)
    with pytest.raises(ValueError, match="expression"):
        build_rig(flame, uv, too_many)


def test_eyelid_keys_act_before_skinning(head):
    """FLAME adds the eyelids after skinning; as keys they are skinned. The difference is the blended skinning
    rotation applied to the eyelid offsets, computed here from the fit's axis-angle poses."""
    flame, uv = head
    fit = make_fit(flame, 5, eyelids=True)
    rig = build_rig(flame, uv, fit)
    assert [(k.name, k.value) for k in rig.eyelid_keys] == [("eyelid.L", 0.0), ("eyelid.R", 0.0)]
    offsets = np.einsum("k,kvc->vc", fit.eyelids.astype(np.float64), flame.eyelids)
    # the fitted_expression key holds the fitted eyelids with the fitted expression
    np.testing.assert_allclose(rig.fitted_key.offsets, flame.exprdirs @ fit.expression.astype(np.float64) + offsets,
                               atol=1e-9)
    world = [np.eye(3)]
    for joint, name in enumerate(POSES, start=1):
        world.append(world[flame.parents[joint]] @ Rotation.from_rotvec(getattr(fit, name)).as_matrix())
    blend = np.einsum("vj,jab->vab", flame.weights, np.stack(world))
    shift = np.einsum("vab,vb->va", blend - np.eye(3), offsets) @ fit.head_rotation.astype(np.float64).T
    got = evaluate(rig)
    assert np.abs(got - (forward(flame, fit) + shift)).max() < 1e-9
    assert np.abs(shift).max() > 1e-6
    without = replace(flame, eyelids=None)
    assert build_rig(without, uv, make_fit(without, 5)).eyelid_keys == ()


def test_structure_follows_the_model_and_the_fit(head):
    flame, uv = head
    fit = make_fit(flame, 6, eyelids=True)
    rig = build_rig(flame, uv, fit)
    assert rig.joint_names == JOINT_NAMES
    np.testing.assert_array_equal(rig.parents, flame.parents)
    np.testing.assert_array_equal(rig.faces, flame.faces)
    np.testing.assert_array_equal(rig.corner_uv, uv.uv[uv.uv_faces])
    np.testing.assert_array_equal(rig.skin_weights, flame.weights)
    shape, expression = fit.shape.astype(np.float64), fit.expression.astype(np.float64)
    np.testing.assert_allclose(rig.rest_vertices, flame.v_template + flame.shapedirs @ shape, atol=1e-12)
    np.testing.assert_allclose(rig.joints, flame.J_regressor @ (flame.v_template + flame.shapedirs @ shape
                                                                + flame.exprdirs @ expression), atol=1e-12)
    np.testing.assert_array_equal(rig.rotations[0], np.eye(3))
    for joint, name in enumerate(POSES, start=1):
        np.testing.assert_allclose(rig.rotations[joint], Rotation.from_rotvec(getattr(fit, name)).as_matrix(),
                                   atol=1e-12)
    np.testing.assert_allclose(rig.head_pose[:3, :3], fit.head_rotation, atol=0)
    np.testing.assert_allclose(rig.head_pose[:3, 3], fit.head_translation, atol=0)
    np.testing.assert_array_equal(rig.head_pose[3], [0, 0, 0, 1])
    names = [key.name for key in rig.shape_keys]
    assert rig.arkit_keys == ()  # no landmark embedding given
    assert names[0] == "fitted_expression"
    assert names[1:flame.n_expr + 1] == [f"expression_{k:03d}" for k in range(flame.n_expr)]
    assert names[flame.n_expr + 1:flame.n_expr + 3] == ["eyelid.L", "eyelid.R"]
    assert len(names) == 1 + flame.n_expr + 2 + 36
    fitted = rig.fitted_key
    assert (fitted.value, fitted.slider_min, fitted.slider_max) == (1.0, 0.0, 1.0)
    for k, key in enumerate(rig.expression_keys):
        assert key.offsets.dtype == np.float32 and key.offsets.shape == (flame.n_vertices, 3)
        np.testing.assert_array_equal(key.offsets, flame.exprdirs[:, :, k].astype(np.float32))
        assert key.value == 0.0 and (key.slider_min, key.slider_max) == (-3.0, 3.0)
    assert rig.parameters.source == "fit" and rig.flame_release == flame.release
    np.testing.assert_array_equal(rig.parameters.shape, fit.shape)
    for key in rig.corrective_keys:
        assert (key.slider_min, key.slider_max) == (-2.0, 2.0)
        assert key.value == pytest.approx(rig.rotations[key.joint][key.row, key.col] - (key.row == key.col))


def test_corrective_layout_is_the_pose_feature(head):
    """For any rotations, the correctives driven by their stated (joint, row, col) entries of R - I give FLAME's
    pose-corrective offsets, ``blend_shapes(pose_feature(R), posedirs)``."""
    flame, uv = head
    rig = build_rig(flame, uv, make_fit(flame, 7))
    assert len(rig.corrective_keys) == 36
    assert len({(k.joint, k.row, k.col) for k in rig.corrective_keys}) == 36
    assert all(1 <= k.joint < len(JOINT_NAMES) and k.name == f"pose_{JOINT_NAMES[k.joint]}_{k.row}{k.col}"
               for k in rig.corrective_keys)
    rng = np.random.default_rng(0)
    for _ in range(3):
        rotations = Rotation.random(len(JOINT_NAMES), random_state=rng.integers(1 << 31)).as_matrix()
        driven = sum((rotations[k.joint] - np.eye(3))[k.row, k.col] * k.offsets.astype(np.float64)
                     for k in rig.corrective_keys)
        feature = pose_feature(torch.from_numpy(rotations)[None])
        expected = blend_shapes(feature, torch.from_numpy(flame.posedirs))[0].numpy()
        np.testing.assert_allclose(driven, expected, atol=1e-9)


def blender_pixels(film, world_points) -> np.ndarray:
    """Pixels of world points through a Blender camera with this film: the camera's view frame at depth ``lens``
    (horizontal sensor fit: sensor_width spans the image width; shifts in sensor widths), as
    bpy_extras.object_utils.world_to_camera_view maps points into it; pixel y down."""
    width, height = film.resolution
    local = (world_points - film.pose[:3, 3]) @ film.pose[:3, :3]
    plane = local[:, :2] / -local[:, 2:] * film.lens  # on the view frame at depth lens (millimetres)
    left, right = (np.array([-0.5, 0.5]) + film.shift_x) * film.sensor_width
    bottom, top = (np.array([-0.5, 0.5]) * height / width + film.shift_y) * film.sensor_width
    ndc = np.stack([(plane[:, 0] - left) / (right - left), (plane[:, 1] - bottom) / (top - bottom)], axis=1)
    return np.stack([ndc[:, 0] * width, (1.0 - ndc[:, 1]) * height], axis=1)


@pytest.mark.parametrize("photo_size", [(480, 640), (900, 600)])
def test_camera_film_reproduces_k_photo(head, photo_size):
    flame, uv = head
    fit = make_fit(flame, 8, photo_size=photo_size)
    film = build_rig(flame, uv, fit).camera
    assert film.resolution == (photo_size[1], photo_size[0])
    world = fit.vertices_posed.astype(np.float64)
    camera_cv = (world - np.array([0.0, 0.0, 1.0])) * np.array([1.0, -1.0, -1.0])  # the fit's OpenCV camera
    projected = camera_cv @ fit.K_photo.T
    expected = projected[:, :2] / projected[:, 2:]
    assert np.abs(blender_pixels(film, world) - expected).max() < 1e-6
    # the principal point is off-centre, so a film without shift would miss by pixels
    assert abs(film.shift_x) > 0.01 and abs(film.shift_y) > 0.01


@pytest.fixture(scope="module")
def embedding(head):
    return standin_embedding(head[0])


@pytest.fixture(scope="module")
def arkit_rig(head, embedding, one_thread):
    flame, uv = head
    fit = make_fit(flame, 9, eyelids=True)
    return fit, build_rig(flame, uv, fit, embedding)


def test_arkit_keys_come_first_at_rest_and_are_core_arkits(head, embedding, arkit_rig):
    flame, uv = head
    fit, rig = arkit_rig
    assert [key.name for key in rig.shape_keys[:52]] == list(ARKIT_NAMES) + ["fitted_expression"]
    reference = arkit_keys(flame, embedding, uv.mirror_index, shape=fit.shape)
    for key, ref in zip(rig.arkit_keys, reference):
        assert isinstance(key, ArkitShapeKey) and key.name == ref.name
        assert (key.value, key.slider_min, key.slider_max) == (0.0, 0.0, 1.0)
        np.testing.assert_array_equal(key.offsets, ref.offsets)
        np.testing.assert_array_equal(key.expression, ref.expression)
        np.testing.assert_array_equal(key.eye_poses, ref.eye_poses)
    # the keys rest at 0, so the rig still is FLAME's forward pass at the fit (away from the eyelids, which FLAME
    # adds after skinning)
    lid_free = np.abs(flame.eyelids).sum(axis=(0, 2)) == 0
    assert np.abs(evaluate(rig) - forward(flame, fit))[lid_free].max() < 1e-9


def test_arkit_keys_need_a_mediapipe_embedding(head, embedding):
    flame, uv = head
    ibug = LandmarkEmbedding(embedding.face_idx, embedding.bary, embedding.landmark_indices, "68", "iBUG test")
    with pytest.raises(AssetInvalidError, match="not a MediaPipe embedding"):
        build_rig(flame, uv, make_fit(flame, 10), ibug)


def test_parameters_rebuild_the_same_rig(head):
    """A rig from FLAME parameters (what a parameter file holds) equals the rig from the fit they came from."""
    flame, uv = head
    fit = make_fit(flame, 11, eyelids=True)
    from_fit, from_params = build_rig(flame, uv, fit), build_rig(flame, uv, FlameParameters.from_fit(fit, "file"))
    assert np.abs(evaluate(from_params) - evaluate(from_fit)).max() < 1e-12
    np.testing.assert_array_equal(from_params.joints, from_fit.joints)
    for name in ("resolution", "sensor_width", "lens", "shift_x", "shift_y"):
        assert getattr(from_params.camera, name) == getattr(from_fit.camera, name)
    no_camera = replace(FlameParameters.from_fit(fit), camera_K=None)
    with pytest.raises(ValueError, match="camera"):
        build_rig(flame, uv, no_camera)


def _close_parameters(got: FlameParameters, expected: FlameParameters, atol=1e-9):
    for name in ("shape", "expression", "eyelids", "neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right",
                 "head_rotation", "head_translation", "camera_K"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), atol=atol, err_msg=name)
    assert got.image_size == expected.image_size


def test_shown_parameters_of_the_built_rig_are_the_fit(arkit_rig):
    fit, rig = arkit_rig
    values = {key.name: key.value for key in rig.shape_keys}
    got = shown_parameters(head_record(rig), values, rig.rotations, rig.head_pose, rig.joints)
    _close_parameters(got, FlameParameters.from_fit(fit))


def _params_forward(flame, p: FlameParameters, root=None) -> np.ndarray:
    """FLAME's forward pass of parameters (eyelids after skinning, as FLAME adds them), then R v + t."""
    model = FlameModel(flame, n_shape=p.shape.size, n_expr=p.expression.size, dtype=torch.float64)
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))[None]  # noqa: E731
    with torch.no_grad():
        v = model(FlameParams(shape=t(p.shape), expression=t(p.expression), eyelids=t(p.eyelids),
                              neck_pose=t(p.neck_pose), jaw_pose=t(p.jaw_pose), eye_pose_left=t(p.eye_pose_left),
                              eye_pose_right=t(p.eye_pose_right))).vertices[0].numpy()
    return v @ p.head_rotation.T + p.head_translation


def test_shown_parameters_follow_moved_keys(head, arkit_rig):
    """Keys moved at the rest pose: the mesh the rig shows is FLAME's forward pass of the parameters read off it
    (every key is linear in FLAME's blendshapes, or a baked rotation that FLAME poses the same way)."""
    flame, _ = head
    fit, rig = arkit_rig
    rest = np.tile(np.eye(3), (5, 1, 1))
    record = head_record(rig)
    head_pose = np.eye(4)
    cases = [
        {"fitted_expression": 0.0, "mouthSmileLeft": 0.8, "browInnerUp": 0.5, "expression_003": 1.5},
        {"fitted_expression": 0.0, "eyeBlinkRight": 1.0, "eyelid.L": 0.4},
        {"fitted_expression": 0.0, "jawOpen": 1.0},
        {"fitted_expression": 0.0, "eyeLookUpLeft": 1.0},
        {"fitted_expression": 0.6, "expression_001": -2.0},
    ]
    for values in cases:
        got = shown_parameters(record, values, rest, head_pose, rig.joints)
        shown = evaluate(rig, rotations=rest, values=values, head_pose=head_pose)
        # (eyelids act before skinning here and after it in FLAME: the same at the rest pose)
        assert np.abs(shown - _params_forward(flame, got)).max() < 1e-9, values
    smile = {k.name: k for k in rig.arkit_keys}["mouthSmileLeft"]
    got = shown_parameters(record, cases[0], rest, head_pose, rig.joints)
    expected = 0.8 * smile.expression + 0.5 * {k.name: k for k in rig.arkit_keys}["browInnerUp"].expression
    expected[3] += 1.5
    np.testing.assert_allclose(got.expression, expected, atol=1e-12)


def test_shown_parameters_follow_the_joints_and_root(head, arkit_rig):
    """Random joint rotations, the root's included, and a moved head pose: FLAME's forward pass of the
    parameters read off the rig is the rig's own skinned mesh."""
    flame, _ = head
    fit, rig = arkit_rig
    rng = np.random.default_rng(3)
    rotations = Rotation.random(5, random_state=rng.integers(1 << 31)).as_matrix()
    rotations = Rotation.from_rotvec(Rotation.from_matrix(rotations).as_rotvec() * 0.3).as_matrix()
    head_pose = np.eye(4)
    head_pose[:3, :3] = Rotation.from_rotvec([0.1, -0.3, 0.05]).as_matrix()
    head_pose[:3, 3] = [0.02, -0.01, 0.1]
    values = {key.name: key.value for key in rig.shape_keys}
    got = shown_parameters(head_record(rig), values, rotations, head_pose, rig.joints)
    shown = evaluate(rig, rotations=rotations, head_pose=head_pose)
    # eyelids: FLAME adds them after skinning, the rig before (see test_eyelid_keys_act_before_skinning)
    lid_free = np.abs(flame.eyelids).sum(axis=(0, 2)) == 0
    assert np.abs(shown - _params_forward(flame, got))[lid_free].max() < 1e-9
    np.testing.assert_allclose(Rotation.from_rotvec(got.neck_pose).as_matrix(), rotations[1], atol=1e-12)


def test_arkit_split_shows_an_arkit_expression_on_the_arkit_keys(arkit_rig):
    """Expressions made of ARKit keys are shown by the ARKit keys alone (this small head's 51 keys span only its 10
    expression components, so the weights themselves are not unique); any expression's split gives the same mesh
    as the expression itself, and its weights are the bounded least-squares optimum on the vertices (scipy's
    solver as the independent computation)."""
    from scipy.optimize import lsq_linear

    from core.animation import arkit_split

    _, rig = arkit_rig
    names = [k.name for k in rig.arkit_keys]
    n_expr = len(rig.expression_keys)
    rng = np.random.default_rng(4)
    made = np.zeros((3, len(names)))
    for row, chosen in enumerate((["mouthSmileLeft", "mouthSmileRight"], ["browInnerUp", "cheekPuff"],
                                  ["mouthFunnel", "noseSneerLeft", "eyeBlinkRight"])):
        made[row, [names.index(n) for n in chosen]] = rng.uniform(0.2, 0.9, size=len(chosen))
    expr = made @ np.stack([k.expression[:n_expr] for k in rig.arkit_keys])
    lids = made @ np.stack([k.eyelids for k in rig.arkit_keys])
    free = np.random.default_rng(5).normal(size=(2, n_expr)) * 0.7
    expr = np.vstack([expr, free])
    lids = np.vstack([lids, np.zeros((2, 2))])
    split = arkit_split(rig, expr, lids)
    assert split.weights.shape == (5, len(names)) and split.weights.min() >= 0 and split.weights.max() <= 1
    for name in ("jawOpen", "eyeLookUpLeft"):  # the bones carry the rotations
        assert np.all(split.weights[:, names.index(name)] == 0)

    def mesh(weights, e, l):
        out = sum(w * k.offsets.astype(np.float64) for w, k in zip(weights, rig.arkit_keys))
        out = out + sum(c * k.offsets.astype(np.float64) for c, k in zip(e, rig.expression_keys))
        return out + sum(c * k.offsets.astype(np.float64) for c, k in zip(l, rig.eyelid_keys))

    for t in range(3):
        shown = mesh(split.weights[t], np.zeros(n_expr), np.zeros(2))
        wanted = mesh(made[t], np.zeros(n_expr), np.zeros(2))
        assert np.abs(shown - wanted).max() < 0.02 * np.abs(wanted).max(), np.abs(shown - wanted).max()
    for t in range(5):
        np.testing.assert_allclose(mesh(split.weights[t], split.expression[t], split.eyelids[t]),
                                   mesh(np.zeros(len(names)), expr[t], lids[t]), atol=1e-5)
    # the free expressions: the weights are the bounded least-squares optimum on the vertices
    usable = [k for k, key in enumerate(rig.arkit_keys) if not key.jaw_pose.any() and not key.eye_poses.any()]
    a = np.stack([rig.arkit_keys[k].offsets.astype(np.float64).reshape(-1) for k in usable], 1)
    for t in (3, 4):
        b = mesh(np.zeros(len(names)), expr[t], lids[t]).reshape(-1)
        ref = lsq_linear(a, b, bounds=(0, 1), tol=1e-12).x
        cost = lambda w: np.sum((a @ w - b) ** 2)  # noqa: E731
        assert cost(split.weights[t, usable].astype(np.float64)) <= cost(ref) * (1 + 1e-3) + 1e-12
