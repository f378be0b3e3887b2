"""Landmarks on FLAME: the iBUG / MediaPipe groups, embeddings from files or derived with MediaPipe, and the fit's
landmark terms, bounds and verdict."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.fit import FitConfig, fit, render_maps
from core.fit.config import BOUNDS
from core.fit.init import PoseInit
from core.fit.objective import Bounds, FitData, Objective, Params
from core.fit.verdict import uv_agreement
from core.flame import FlameModel, FlameParams, axis_angle_to_matrix, synthetic_flame
from core.flame.io import LandmarkEmbedding
from core.flame.landmarks import GROUPS, IBUG68, LID_PAIRS, group_points, pair_points
from core.landmarks import EMBEDDING_FILES, resolve_embedding
from core.render.camera import Camera, world_to_camera


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    data, uvt = synthetic_flame("full", 0)
    embedding, note = resolve_embedding(data, None, tmp_path_factory.mktemp("cache"))
    assert embedding is not None, note
    return data, uvt, embedding


def _detected(vertices, data, embedding, noise=0.0, seed=0):
    points = np.einsum("lk,lkc->lc", embedding.bary, vertices[data.faces[embedding.face_idx]])
    xy, _ = Camera.of(size=512).project(world_to_camera(torch.tensor(points)[None]))
    out = np.full((478, 2), np.nan)
    out[embedding.landmark_indices] = xy[0].numpy() + np.random.default_rng(seed).normal(scale=noise, size=(len(points), 2))
    return out


def test_derived_embedding_places_the_landmarks_where_the_face_has_them(head):
    """MediaPipe's face mesh on renders of the synthetic head: every landmark placed, the subject's right eye
    (iBUG 36-41) on -x and the left (42-47) on +x around the eye joints, the lips below the nose tip, the chin on
    the mid-plane below the lips, the irises on the eyeballs."""
    data, _, embedding = head
    assert embedding.kind == "mediapipe" and len(embedding.face_idx) >= 470
    assert np.allclose(embedding.bary.sum(1), 1.0, atol=1e-6) and (embedding.bary >= 0).all()
    v = data.v_template
    eyes = data.J_regressor[3:5] @ v  # left (+x), right
    d = np.linalg.norm(eyes[0] - eyes[1])
    right = group_points("eye", embedding, data.faces, None).positions(v)[:6]
    left = group_points("eye", embedding, data.faces, None).positions(v)[6:]
    assert (right[:, 0] < 0).all() and (left[:, 0] > 0).all()
    assert np.linalg.norm(right.mean(0)[:2] - eyes[1][:2]) < 0.2 * d
    assert np.linalg.norm(left.mean(0)[:2] - eyes[0][:2]) < 0.2 * d
    static = group_points("static", embedding, data.faces, None)
    p = dict(zip(static.ids.tolist(), static.positions(v)))
    assert p[51][1] < p[30][1] < p[27][1]  # upper lip below the nose tip below the bridge
    contour = group_points("contour", embedding, data.faces, None).positions(v)
    assert abs(contour[8][0]) < 0.1 * d and contour[8][1] < p[57][1]  # the chin
    assert (contour[:8, 0] < 0).all() and (contour[9:, 0] > 0).all()  # the subject's right side first
    iris = group_points("iris", embedding, data.faces, None)
    from core.fit.regions import derive_regions

    eyeballs = derive_regions(v, data.faces, data.J_regressor).eyeballs
    assert eyeballs[iris.corners].all()


def test_embedding_files_from_the_flame_download_win_and_bad_ones_are_skipped(head, tmp_path):
    data, _, derived = head
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(b"")
    cache = tmp_path / "cache"
    emb, note = resolve_embedding(data, model, cache)
    assert "derived" in note and (cache / "landmarks").is_dir()  # derived once, cached
    emb2, note2 = resolve_embedding(data, model, cache)
    assert "cached" in note2 and np.array_equal(emb2.face_idx, emb.face_idx)
    # A user's file next to the model is used instead; one indexing triangles the model lacks is skipped.
    bad = tmp_path / EMBEDDING_FILES[0]
    np.savez(bad, lmk_face_idx=np.array([len(data.faces) + 5]), lmk_b_coords=np.full((1, 3), 1 / 3),
             landmark_indices=np.array([1]))
    assert "derived" in resolve_embedding(data, model, cache)[1] or "cached" in resolve_embedding(data, model, cache)[1]
    np.savez(bad, lmk_face_idx=derived.face_idx[:105], lmk_b_coords=derived.bary[:105],
             landmark_indices=derived.landmark_indices[:105])
    user, note = resolve_embedding(data, model, cache)
    assert EMBEDDING_FILES[0] in note and len(user.face_idx) == 105


def test_groups_average_the_mediapipe_points_of_an_ibug_landmark_or_read_ibug_ids(head):
    data, _, embedding = head
    detected = _detected(data.v_template, data, embedding)
    mp = group_points("contour", embedding, data.faces, detected)
    i = mp.ids.tolist().index(3)  # iBUG 3 = the midpoint of MediaPipe 132 and 58
    rows = {int(k): r for r, k in enumerate(embedding.landmark_indices)}
    expected = np.mean([np.einsum("k,kc->c", embedding.bary[rows[m]], data.v_template[data.faces[embedding.face_idx[rows[m]]]])
                        for m in IBUG68[3]], axis=0)
    np.testing.assert_allclose(mp.positions(data.v_template)[i], expected, atol=1e-12)
    np.testing.assert_allclose(mp.targets[i], detected[list(IBUG68[3])].mean(0))
    # A 68-point embedding (as DECA's file): landmark i is iBUG i.
    ibug = LandmarkEmbedding(np.arange(68), np.full((68, 3), 1 / 3), np.arange(68), "68", "test")
    eye = group_points("eye", ibug, data.faces, detected)
    assert eye.ids.tolist() == list(GROUPS["eye"])
    np.testing.assert_array_equal(eye.corners, data.faces[36:48])
    upper, lower = pair_points(LID_PAIRS, ibug, data.faces, detected)
    assert upper.ids.tolist() == [37, 38, 43, 44] and lower.ids.tolist() == [41, 40, 47, 46]
    assert group_points("dense", ibug, data.faces, detected) is None  # MediaPipe-only points


@pytest.fixture(scope="module")
def truth(head):
    data, uvt, embedding = head
    flame = FlameModel(data, dtype=torch.float64)
    g = np.random.default_rng(2)
    params = FlameParams(shape=torch.tensor(g.normal(size=(1, flame.n_shape)) * 0.5),
                         expression=torch.tensor(g.normal(size=(1, flame.n_expr)) * 0.3),
                         jaw_pose=torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64),
                         eyelids=torch.tensor([[0.4, 0.2]], dtype=torch.float64))
    rot = axis_angle_to_matrix(torch.tensor([0.1, -0.4, 0.05], dtype=torch.float64)).numpy()
    t = np.array([0.01, -0.005, 0.05])
    maps = render_maps(flame, uvt, params, rot, t, Camera.of(size=512))
    crop = SimpleNamespace(masks={}, landmarks=_detected(maps["vertices"], data, embedding),
                           transform=SimpleNamespace(x0=0.0, y0=0.0, size=512.0, out_size=512), photo_size=(512, 512))
    return SimpleNamespace(flame=flame, params=params, rot=rot, t=t, maps=maps, crop=crop, data=data, uvt=uvt,
                           embedding=embedding)


def _at_truth(truth, cfg):
    fd = FitData(None, truth.crop, truth.flame, truth.uvt, cfg, truth.embedding)
    p = Params(truth.flame, PoseInit(truth.rot, truth.t, "test", 0, 0), truth.flame.v_template, True, truth.params)
    if cfg.pose_frame == "neck":
        fd.root_to_neck_frame(p)
    return fd, p


def test_landmark_and_closure_terms_vanish_at_the_truth_and_match_an_independent_projection(truth):
    cfg = FitConfig.landmarks_preset("balanced")
    stage = cfg.stages[1]
    fd, p = _at_truth(truth, cfg)
    objective = Objective(fd, stage)
    losses = objective.losses(p)
    for name in ("lmk_dense", "lmk_static", "lmk_eye", "lmk_lid", "lmk_iris", "lmk_mouth", "lmk_mouth_lid"):
        assert losses[name].item() < 1e-5, name  # float32 render: about 0.01 px
    # Move the head: the eye term equals the mean squared offset of independently projected landmarks.
    with torch.no_grad():
        p.translation.add_(torch.tensor([[0.004, -0.002, 0.0]], dtype=torch.float64))  # moves the whole head
    losses = objective.losses(p)
    with torch.no_grad():
        verts = (truth.flame(p.flame_params()).vertices[0] @ torch.tensor(truth.rot).T + torch.tensor(truth.t)
                 + torch.tensor([0.004, -0.002, 0.0], dtype=torch.float64)).numpy()
    eye = group_points("eye", truth.embedding, truth.data.faces, truth.crop.landmarks)
    xy, _ = Camera.of(size=512).project(world_to_camera(torch.tensor(eye.positions(verts))[None]))
    offsets = (xy[0].numpy() - eye.targets) / 512  # fitting at 256: pixels and size scale together
    expected = stage.weights["lmk_eye"] * np.mean(offsets ** 2)
    assert losses["lmk_eye"].item() == pytest.approx(expected, rel=1e-6)


def test_landmarks_alone_recover_the_pose_from_a_frontal_start(truth):
    cfg = dataclasses.replace(FitConfig.landmarks_preset("balanced"), init="frontal")
    res = fit(None, truth.crop, truth.flame, truth.uvt, cfg, embedding=truth.embedding)
    # the face's orientation: the root's rotation and the neck's (the truth's neck is straight)
    face = res.head_rotation @ axis_angle_to_matrix(torch.tensor(res.neck_pose, dtype=torch.float64)).numpy()
    angle = np.degrees(np.arccos(np.clip((np.trace(face.T @ truth.rot) - 1) / 2, -1, 1)))
    assert angle < 3.0 and res.verdict.ok, (angle, res.verdict.summary())
    assert res.verdict.metrics["landmark_error_px"] < 3.0
    assert res.info["init"] == "frontal" and len(res.loss_history["landmarks/total"]) == cfg.stages[1].steps


def test_bounds_are_zero_inside_and_measure_the_excess_outside(truth):
    fd, p = _at_truth(truth, FitConfig.landmarks_preset("fast"))
    bounds = Bounds(fd)
    with torch.no_grad():
        assert all(float(v.max()) == 0.0 for v in bounds.excess(p).values())
    with torch.no_grad():
        p.jaw.copy_(torch.cat([axis_angle_to_matrix(torch.tensor([[0.9, 0.0, 0.0]], dtype=torch.float64))[0, :, 0],
                               axis_angle_to_matrix(torch.tensor([[0.9, 0.0, 0.0]], dtype=torch.float64))[0, :, 1]])[None])
        p.shape[0, 3] = 4.0
        p.translation[0, 2] = 0.9  # 10 cm from the camera
        excess = bounds.excess(p)
    assert excess["jaw opening"].item() == pytest.approx(np.sin(0.9) - np.sin(BOUNDS["jaw_open"][1]), rel=1e-9)
    assert excess["identity (head size and shape)"].max().item() == pytest.approx(1.0)
    assert excess["distance"].item() == pytest.approx(0.1, rel=1e-9)
    assert excess["eye rotation"].max().item() == 0.0


def test_verdict_says_doubtful_with_the_reason(truth):
    """Landmarks 40 px off the fitted head: doubtful, naming the landmark error; a jaw beyond its bound: doubtful,
    naming the jaw."""
    from core.fit.verdict import judge

    cfg = FitConfig.landmarks_preset("fast")
    fd, p = _at_truth(truth, cfg)
    view = Objective(fd, cfg.stages[1]).view(p)
    view.rasterize(differentiable=False)
    good = judge(fd, view, Bounds(fd).excess(p), 0, 10)
    assert good.ok and good.metrics["landmark_error_px"] < 0.1
    shifted = SimpleNamespace(**{**truth.crop.__dict__, "landmarks": truth.crop.landmarks + 40.0})
    fd2 = FitData(None, shifted, truth.flame, truth.uvt, cfg, truth.embedding)
    view2 = Objective(fd2, cfg.stages[1]).view(p)
    view2.rasterize(differentiable=False)
    bad = judge(fd2, view2, Bounds(fd2).excess(p), 0, 10)
    assert not bad.ok and "landmarks lie" in bad.reasons[0] and bad.metrics["landmark_error_px"] > 50
    with torch.no_grad():
        p.jaw.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.5, 0.87]], dtype=torch.float64))
    held = judge(fd, view, Bounds(fd).excess(p), 0, 10)
    assert not held.ok and held.metrics["held_at_bound"] == ["jaw opening"] and "jaw opening" in held.reasons[-1]
    assert "skipped" in judge(fd, view, Bounds(fd).excess(p), 5, 10).reasons[-1]


def test_uv_agreement_tells_trained_from_untrained_networks(truth):
    pred = SimpleNamespace(uv=truth.maps["uv"], mask=truth.maps["mask"])
    share, median = uv_agreement(pred, truth.crop.landmarks, truth.embedding, truth.uvt)
    assert share > 0.75 and median < 0.01
    flat = SimpleNamespace(uv=np.full_like(truth.maps["uv"], 0.5), mask=truth.maps["mask"])
    share, median = uv_agreement(flat, truth.crop.landmarks, truth.embedding, truth.uvt)
    assert share < 0.3 and median > 0.05
    assert uv_agreement(pred, None, truth.embedding, truth.uvt) is None
