"""ARKit keys on the full-size synthetic head, checked against independent computations (FLAME forward passes,
landmark evaluation, rigid rotations) rather than against the module's own bookkeeping."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.arkit import ARKIT_NAMES, arkit_keys, key_specs, mirror_point
from core.errors import AssetInvalidError
from core.flame import FlameModel, FlameParams, LandmarkEmbedding, synthetic_flame, vertices2landmarks
from core.flame.data import LEFT_EYE, RIGHT_EYE

from mediapipe_standin import _PAIRS, standin_embedding, standin_positions

# Apple's ARFaceAnchor.BlendShapeLocation list (developer.apple.com, arkit/arfaceanchor/blendshapelocation).
APPLE = """eyeBlinkLeft eyeLookDownLeft eyeLookInLeft eyeLookOutLeft eyeLookUpLeft eyeSquintLeft eyeWideLeft
eyeBlinkRight eyeLookDownRight eyeLookInRight eyeLookOutRight eyeLookUpRight eyeSquintRight eyeWideRight
jawForward jawLeft jawRight jawOpen mouthClose mouthFunnel mouthPucker mouthLeft mouthRight mouthSmileLeft
mouthSmileRight mouthFrownLeft mouthFrownRight mouthDimpleLeft mouthDimpleRight mouthStretchLeft mouthStretchRight
mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthPressLeft mouthPressRight mouthLowerDownLeft
mouthLowerDownRight mouthUpperUpLeft mouthUpperUpRight browDownLeft browDownRight browInnerUp browOuterUpLeft
browOuterUpRight cheekPuff cheekSquintLeft cheekSquintRight noseSneerLeft noseSneerRight tongueOut""".split()
FLIP = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def head():
    data, template = synthetic_flame("full", seed=0)
    return data, template.mirror_index, standin_embedding(data)


@pytest.fixture(scope="module")
def keys(head, one_thread):
    data, mirror, embedding = head
    return {k.name: k for k in arkit_keys(data, embedding, mirror)}


def _neutral_and_posed(data, shape=None, **params):
    """FLAME's vertices for the identity alone and with ``params`` added (an independent forward pass)."""
    model = FlameModel(data, dtype=torch.float64)
    t = {k: torch.as_tensor(np.asarray(v, dtype=np.float64))[None] for k, v in params.items()}
    s = None if shape is None else torch.as_tensor(shape)[None]
    with torch.no_grad():
        return model(FlameParams(shape=s)).vertices[0].numpy(), model(FlameParams(shape=s, **t)).vertices[0].numpy()


def _rodrigues(aa):
    theta = np.linalg.norm(aa)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def _landmark_motion(data, embedding, offsets, ids):
    rows = [int(np.flatnonzero(embedding.landmark_indices == i)[0]) for i in ids]
    faces = torch.as_tensor(data.faces)
    fi, bary = torch.as_tensor(embedding.face_idx[rows]), torch.as_tensor(embedding.bary[rows])
    before = vertices2landmarks(torch.as_tensor(data.v_template)[None], faces, fi, bary)
    after = vertices2landmarks(torch.as_tensor(data.v_template + offsets.astype(np.float64))[None], faces, fi, bary)
    return (after - before)[0].numpy()


def _place(data, embedding, point):
    """Rest position of a named point: a landmark, or roughly where the module's derived points are."""
    if isinstance(point, str):
        derived = {"chin": (17, 17, (0, -0.55 * 0.064, 0)), "cheek_left": (263, 291, (0, 0, 0)),
                   "cheek_right": (33, 61, (0, 0, 0))}
        a, b, offset = derived[point]
        return 0.5 * (_place(data, embedding, a) + _place(data, embedding, b)) + offset
    row = int(np.flatnonzero(embedding.landmark_indices == point)[0])
    return embedding.bary[row] @ data.v_template[data.faces[embedding.face_idx[row]]]


def test_names_are_apples_list_less_tongue_out_in_live_link_order():
    assert len(ARKIT_NAMES) == 51 and len(set(ARKIT_NAMES)) == 51
    assert set(ARKIT_NAMES) == set(APPLE) - {"tongueOut"}
    header = (  # a Live Link Face take's blendshape columns, TongueOut left out
        "EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,"
        "EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,EyeSquintRight,EyeWideRight,"
        "JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,"
        "MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,MouthStretchLeft,"
        "MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,MouthPressLeft,"
        "MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,"
        "BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,"
        "NoseSneerLeft,NoseSneerRight"
    )
    assert [n[0].upper() + n[1:] for n in ARKIT_NAMES] == header.split(",")
    assert list(key_specs()) == list(ARKIT_NAMES)


def test_mediapipe_mirror_ids_match_the_face_mesh_contours():
    # Pairs read off MediaPipe's FACEMESH_* connection lists (the same step along the left and right contour).
    known = {33: 263, 133: 362, 159: 386, 145: 374, 61: 291, 78: 308, 185: 409, 146: 375, 70: 300, 107: 336,
             46: 276, 55: 285, 129: 358, 98: 327, 97: 326, 246: 466, 7: 249}
    for right, left in known.items():
        assert mirror_point(right) == left and mirror_point(left) == right
    for midline in (0, 13, 14, 17, 4, 6, 168, 152, 2):
        assert mirror_point(midline) == midline
    for left, right in _PAIRS.items():
        assert mirror_point(left) == right


def test_keys_use_only_the_ids_of_flames_mediapipe_embedding():
    # The stand-in places exactly the 105 ids of FLAME's MediaPipe embedding (metrical-tracker's MP_LANDMARKS:
    # FACEMESH eyebrows, eyes and lips plus 13 nose ids).
    flame_ids = set(standin_positions())
    assert len(flame_ids) == 105
    used = {p for s in key_specs().values() for t in s.targets for p in (t.point, t.toward) if isinstance(p, int)}
    assert used <= flame_ids and len(used) > 40


def test_left_and_right_keys_mirror_each_other(head, keys):
    data, mirror, _ = head
    for name, key in keys.items():
        if not name.endswith("Left"):
            continue
        other = keys[name[:-4] + "Right"]
        asymmetry = np.linalg.norm(key.offsets[mirror] * FLIP - other.offsets, axis=1).max()
        if key.expression.any() or key.eyelids.any():
            # The synthetic expression blendshapes are random fields with no mirror symmetry: 0.35 mm at most here.
            assert asymmetry < 0.6e-3, name
            assert np.linalg.norm(key.offsets, axis=1).max() > 5 * asymmetry, name
        elif key.eye_poses.any():
            assert asymmetry < 1e-9, name
            np.testing.assert_allclose(other.eye_poses[1], key.eye_poses[0] * [1, -1, -1], atol=1e-12)
        else:
            np.testing.assert_allclose(other.jaw_pose, key.jaw_pose * [1, -1, -1], atol=1e-12)


def test_jaw_keys_mirror_exactly_when_the_pose_correctives_do(head):
    data, mirror, embedding = head
    # The synthetic jaw correctives are random (asymmetric) fields; without them the head is exactly symmetric.
    flat = replace(data, posedirs=np.zeros_like(data.posedirs))
    keys = {k.name: k for k in arkit_keys(flat, embedding, mirror)}
    asymmetry = np.abs(keys["jawLeft"].offsets[mirror] * FLIP - keys["jawRight"].offsets).max()
    assert asymmetry < 1e-7
    assert np.abs(keys["jawOpen"].offsets[mirror] * FLIP - keys["jawOpen"].offsets).max() < 1e-7


def test_every_named_point_moves_in_its_named_direction(head, keys):
    """Each key's main targets (at least half its largest) are met in direction and roughly in size; smaller
    secondary targets may give way to the main ones."""
    data, _, embedding = head
    checked = 0
    for name, spec in key_specs().items():
        targets = [t for t in spec.targets if t.toward is None and isinstance(t.point, int)]
        if not targets:
            continue
        ids = [t.point for t in targets]
        motion = _landmark_motion(data, embedding, keys[name].offsets, ids)
        wanted = []
        for t, point in zip(targets, ids):
            if t.motion is not None:
                wanted.append(np.asarray(t.motion) * 1e-3 * 0.064 / 0.063)  # synthetic eye distance 64 mm
            else:
                wanted.append(-t.fraction * _landmark_motion(data, embedding, keys[t.undo].offsets, [point])[0])
        size = [np.linalg.norm(w) for w in wanted]
        largest = max(size + [1e-3 * np.linalg.norm(t.motion) for t in spec.targets if t.motion is not None])
        for point, m, w, n in zip(ids, motion, wanted, size):
            if n < 0.5 * largest:
                continue
            cos = m @ w / (np.linalg.norm(m) * n)
            assert cos > 0.7, (name, point, cos)
            assert 0.35 < np.linalg.norm(m) / n < 1.5, (name, point)
            checked += 1
    assert checked > 80


def test_blink_closes_the_upper_lid_onto_the_lower(head, keys):
    data, _, embedding = head
    for name, upper, lower in (("eyeBlinkLeft", 386, 374), ("eyeBlinkRight", 159, 145)):
        before = _landmark_motion(data, embedding, np.zeros_like(data.v_template), [upper, lower])
        assert np.allclose(before, 0)
        rows = [int(np.flatnonzero(embedding.landmark_indices == i)[0]) for i in (upper, lower)]
        tri = data.v_template[data.faces[embedding.face_idx[rows]]]
        rest = np.einsum("lk,lkc->lc", embedding.bary[rows], tri)
        moved = rest + _landmark_motion(data, embedding, keys[name].offsets, [upper, lower])
        gap_before = rest[0, 1] - rest[1, 1]
        gap_after = moved[0, 1] - moved[1, 1]
        assert gap_before > 0.008 and abs(gap_after) < 0.15 * gap_before, name
        assert keys[name].eyelids[0 if name.endswith("Left") else 1] > 0.5


def test_distant_regions_stay_still(head, keys):
    data, _, embedding = head
    for name, spec in key_specs().items():
        key = keys[name]
        motion = np.linalg.norm(key.offsets, axis=1)
        if spec.targets:
            centres = np.stack([_place(data, embedding, t.point) for t in spec.targets])
            distance = np.linalg.norm(data.v_template[:, None] - centres[None], axis=2).min(1)
            far = distance > 0.064
            assert far.sum() > 2000, name
            # mouthClose pulls the lower lip up by 16 mm against jawOpen, more than the synthetic head's smooth
            # random expression fields can do locally: its bounds are five times looser.
            loose = 5.0 if name == "mouthClose" else 1.0
            assert motion[far].max() < loose * 1.0e-3, (name, motion[far].max())
            assert np.percentile(motion[far], 95) < loose * 0.15e-3, (name, np.percentile(motion[far], 95))
        else:
            joint = {"jaw": 2}.get(name[:3], LEFT_EYE if name.endswith("Left") else RIGHT_EYE)
            assert motion[data.weights[:, joint] == 0].max() < 1e-9, name


def test_keys_are_linear_and_are_flame_expressions(head, keys):
    data, _, _ = head
    a, b = keys["mouthSmileLeft"], keys["eyeBlinkRight"]
    neutral, posed = _neutral_and_posed(
        data, expression=a.expression + b.expression, eyelids=a.eyelids + b.eyelids
    )
    np.testing.assert_allclose(a.offsets + b.offsets, posed - neutral, atol=2e-7)


def test_eye_look_keys_are_pure_eye_rotations(head, keys):
    data, _, _ = head
    model = FlameModel(data, dtype=torch.float64)
    joints = (data.J_regressor @ data.v_template)
    expected_axis = {"Up": (-0.5, 0, 0), "Down": (0.5, 0, 0), "In": (0, -0.6, 0), "Out": (0, 0.6, 0)}
    for name, key in keys.items():
        if not name.startswith("eyeLook"):
            continue
        side = 0 if name.endswith("Left") else 1
        axis = np.array(expected_axis[name[7:].replace("Left", "").replace("Right", "")])
        if side == 1:
            axis = axis * [1, -1, -1]
        np.testing.assert_allclose(key.eye_poses[side], axis, atol=1e-12)
        assert not key.eye_poses[1 - side].any() and not key.jaw_pose.any()
        assert not key.expression.any() and not key.eyelids.any()
        joint = (LEFT_EYE, RIGHT_EYE)[side]
        ball = data.weights[:, joint] == 1
        rotated = (data.v_template[ball] - joints[joint]) @ _rodrigues(axis).T + joints[joint]
        np.testing.assert_allclose(key.offsets[ball], rotated - data.v_template[ball], atol=1e-7)
        assert np.abs(key.offsets[~ball]).max() < 1e-9
    assert model.n_expr == keys["jawOpen"].expression.size


def test_jaw_keys_bake_the_posed_head(head):
    data, mirror, embedding = head
    shape = np.random.default_rng(1).normal(size=20)
    keys = {k.name: k for k in arkit_keys(data, embedding, mirror, shape=shape)}
    for name, axis in (("jawOpen", (0.35, 0, 0)), ("jawLeft", (0, 0.1, 0)), ("jawRight", (0, -0.1, 0))):
        neutral, posed = _neutral_and_posed(data, shape=shape, jaw_pose=axis)
        np.testing.assert_allclose(keys[name].jaw_pose, axis, atol=1e-12)
        np.testing.assert_allclose(keys[name].offsets, posed - neutral, atol=2e-7)
    chin_motion = keys["jawOpen"].probe_motion
    assert chin_motion[1] < -0.01  # the chin drops by more than a centimetre


def test_keys_scale_with_the_head(head, keys):
    data, mirror, embedding = head
    s = 1.2
    big = replace(
        data, v_template=data.v_template * s, shapedirs=data.shapedirs * s, exprdirs=data.exprdirs * s,
        posedirs=data.posedirs * s, eyelids=data.eyelids * s,
    )
    scaled = {k.name: k for k in arkit_keys(big, embedding, mirror)}
    for name, key in keys.items():
        np.testing.assert_allclose(scaled[name].offsets, s * key.offsets, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(scaled[name].expression, key.expression, atol=1e-6, err_msg=name)


def test_the_torch_layer_gives_the_same_keys(head, keys):
    data, mirror, embedding = head
    from_layer = arkit_keys(FlameModel(data, n_shape=50), embedding, mirror)  # float32, as the pipeline holds it
    for key in from_layer:
        np.testing.assert_allclose(key.offsets, keys[key.name].offsets, atol=2e-6, err_msg=key.name)


def test_embeddings_without_the_ids_are_refused(head):
    data, mirror, embedding = head
    keep = embedding.landmark_indices != 291
    partial = LandmarkEmbedding(embedding.face_idx[keep], embedding.bary[keep], embedding.landmark_indices[keep],
                                "mediapipe", "partial.npz")
    with pytest.raises(AssetInvalidError, match=r"lacks MediaPipe ids \[291\]"):
        arkit_keys(data, partial, mirror)
    ibug = LandmarkEmbedding(embedding.face_idx, embedding.bary, None, "68", "landmark_embedding.npy")
    with pytest.raises(AssetInvalidError, match="not a MediaPipe embedding"):
        arkit_keys(data, ibug, mirror)
