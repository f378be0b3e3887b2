"""Fitting building blocks: config, result storage, vertex regions, losses, target maps."""

import dataclasses
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.errors import AssetMissingError
from core.fit import FitConfig, FitResult
from core.fit import losses as L
from core.fit.config import PRIOR_TERMS, REFINE_PRIOR_SCALE, SIZE_MARGINAL
from core.fit.regions import connected_components, derive_regions
from core.fit.targets import build_targets
from core.flame import synthetic_flame


@pytest.fixture(scope="module")
def small():
    return synthetic_flame("small", 0)


def test_presets_and_from_dict():
    bal = FitConfig.preset("balanced")
    assert [(s.name, s.method) for s in bal.stages] == [("camera", "adam"), ("image", "adam"), ("refine", "lm")]
    refine, image = bal.stages[2], bal.stages[1]
    assert refine.lr == image.lr and refine.lr_decay_at is None
    with pytest.raises(ValueError, match="optimiser"):
        dataclasses.replace(image, method="sgd")
    assert bal.dense_uv_max == 0.1 and FitConfig().dense_uv_max is None  # the reference keeps every pixel
    assert bal.camera_accept_quantile == 0.5 and FitConfig().camera_accept_quantile is None
    assert bal.stages[0].lr == {"translation": 1e-3, "rotation": 5e-3, "focal": 2e-2, "principal_point": 1e-4}
    assert bal.stages[1].weights["uv_corr"] == 2e5 and bal.stages[1].weights["sil"] == 50.0
    fast, best = FitConfig.preset("fast"), FitConfig.preset("best")
    assert sum(s.steps for s in fast.stages) < sum(s.steps for s in bal.stages) < sum(s.steps for s in best.stages)
    assert FitConfig.from_dict(bal.to_dict()) == bal
    assert FitConfig.from_dict({"preset": "fast", "resolution": 128}).resolution == 128
    # Identity prior: the reference README's no-MICA weights by default, tracking.yaml's on request.
    image = bal.stages[1]
    assert (image.weights["reg_shape"], image.weights["reg_shape_general"], image.lr["shape"]) == (0.01, 0.001, 0.03)
    ref = FitConfig.from_dict({"preset": "balanced", "shape_prior": "tracking", "shape_lr": 2e-3}).stages[1]
    assert (ref.weights["reg_shape"], ref.weights["reg_shape_general"], ref.lr["shape"]) == (0.2, 0.05, 2e-3)
    assert ref.weights["reg_expression"] == image.weights["reg_expression"] == 0.05
    # The refinement weighs the priors by refine_prior_scale, every other term as the image stage does.
    for scale, stages in ((REFINE_PRIOR_SCALE, bal.stages),
                          (0.25, FitConfig.from_dict({"preset": "balanced", "refine_prior_scale": 0.25}).stages)):
        assert stages[:2] == bal.stages[:2] and set(stages[2].weights) == set(image.weights) | {"size_marginal"}
        assert stages[2].weights["size_marginal"] == SIZE_MARGINAL and "size_marginal" not in image.weights
        for k, v in image.weights.items():
            assert stages[2].weights[k] == pytest.approx(v * scale if k in PRIOR_TERMS else v, rel=1e-12)
    assert {"reg_shape", "reg_expression", "reg_mirror"} <= set(PRIOR_TERMS) and "reg_jaw" not in PRIOR_TERMS
    with pytest.raises(ValueError, match="prior scale"):
        FitConfig.preset("fast", refine_prior_scale=-1.0)
    # with_refinement replaces, adds or removes the LM stage after the image stage.
    fast = FitConfig.preset("fast")
    assert fast.with_refinement(0) == fast and bal.with_refinement(0).stages == bal.stages[:2]
    more = fast.with_refinement(3, 0.5)
    assert more.stages[:2] == fast.stages and more.stages[2].steps == 3 and more.stages[2].method == "lm"
    assert more.stages[2].weights["reg_shape"] == 0.5 * image.weights["reg_shape"]
    assert more.with_refinement(3, 0.5) == more and bal.with_refinement(6, REFINE_PRIOR_SCALE) == bal
    with pytest.raises(ValueError, match="image stage"):
        FitConfig(stages=(bal.stages[0],)).with_refinement(2)
    with pytest.raises(ValueError, match="shape prior"):
        FitConfig.preset("fast", shape_prior="mica")
    with pytest.raises(ValueError, match="give a preset"):
        FitConfig.from_dict({"shape_prior": "tracking"})
    with pytest.raises(ValueError):
        FitConfig.from_dict({"resolutoin": 128})
    with pytest.raises(ValueError):
        FitConfig.from_dict({"stages": [{"name": "x", "steps": 1, "lr": {}, "weights": {}, "bogus": 1}]})
    with pytest.raises(ValueError):
        FitConfig.preset("slow")
    off = bal.with_weights(uv_corr=0.0, uv_corr_l1=0.0)
    assert off.stages[0].weights["uv_corr_l1"] == 0.0 and off.stages[1].weights["uv_corr"] == 0.0
    assert off.stages[1].weights["normal"] == 1000.0


def test_result_roundtrip(tmp_path):
    g = np.random.default_rng(0)
    res = FitResult(
        shape=g.normal(size=5).astype(np.float32), expression=g.normal(size=3).astype(np.float32),
        eyelids=np.zeros(2, np.float32), neck_pose=g.normal(size=3).astype(np.float32),
        jaw_pose=g.normal(size=3).astype(np.float32), eye_pose_left=np.zeros(3, np.float32),
        eye_pose_right=np.ones(3, np.float32), head_rotation=np.eye(3, dtype=np.float32),
        head_translation=np.array([0.0, 0.1, 0.2], np.float32), focal=3.9, principal_point=np.array([0.01, 0.02], np.float32),
        K_crop=np.eye(3), K_photo=2 * np.eye(3), photo_size=(480, 640), vertices_posed=g.normal(size=(7, 3)).astype(np.float32),
        vertices_neutral=g.normal(size=(7, 3)).astype(np.float32), loss_history={"image/total": [3.0, 2.0]},
        info={"init": "pnp"},
    )
    res.save(tmp_path / "fit")
    back = FitResult.load(tmp_path / "fit")
    for name in ("shape", "K_photo", "vertices_posed", "principal_point", "eye_pose_right"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.focal == pytest.approx(3.9) and back.photo_size == (480, 640)
    assert back.loss_history == res.loss_history and back.info == res.info
    with pytest.raises(AssetMissingError):
        FitResult.load(tmp_path / "missing")


def _bfs_components(n, faces):
    adj = [[] for _ in range(n)]
    for a, b, c in faces:
        adj[a] += [b, c]
        adj[b] += [a, c]
        adj[c] += [a, b]
    label = -np.ones(n, int)
    for s in range(n):
        if label[s] >= 0:
            continue
        label[s] = s
        q = deque([s])
        while q:
            u = q.popleft()
            for v in adj[u]:
                if label[v] < 0:
                    label[v] = s
                    q.append(v)
    return label


def test_regions_on_synthetic_head(small):
    data, _ = small
    labels = connected_components(len(data.v_template), data.faces)
    ref = _bfs_components(len(data.v_template), data.faces)
    # Same partition (labels may differ but components must coincide).
    assert len(set(zip(labels, ref))) == len(set(ref)) == len(set(labels)) == 3
    reg = derive_regions(data.v_template, data.faces, data.J_regressor)
    assert reg.eyeballs.sum() == len(data.v_template) - np.bincount(ref).max()
    assert not (reg.uv_valid & reg.eyeballs).any() and not (reg.uv_valid & reg.eye_region).any()
    v = data.v_template
    assert reg.uv_valid.sum() > 20
    assert v[reg.uv_valid, 2].mean() > v[:, 2].mean()  # the face is at the front
    assert reg.silhouette[reg.eyeballs].all()


def test_match_uv_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(9, 11, 2, generator=g)
    mask = torch.rand(9, 11, generator=g) > 0.3
    q = torch.rand(17, 2, generator=g)
    xy, sq = L.match_uv(q, pred, mask)
    pts = pred.reshape(-1, 2).numpy()
    valid = mask.reshape(-1).numpy()
    for i in range(17):
        d = ((pts - q[i].numpy()) ** 2).sum(1)
        d[~valid] = np.inf
        j = d.argmin()
        assert sq[i].item() == pytest.approx(d[j], abs=1e-6)
        assert xy[i].tolist() == [j % 11 + 0.5, j // 11 + 0.5]
    xy0, sq0 = L.match_uv(q, pred, torch.zeros(9, 11, dtype=torch.bool))
    assert torch.isinf(sq0).all()


@pytest.fixture(scope="module")
def scene(small):
    """A rendered head as the prediction, and parameters away from it (pose, identity, expression, jaw, eyes)."""
    from core.fit import render_maps
    from core.fit.config import _image_stage
    from core.fit.init import PoseInit
    from core.fit.objective import FitData, Params
    from core.flame import FlameModel, FlameParams, axis_angle_to_matrix
    from core.render.camera import Camera

    data, uvt = small
    flame = FlameModel(data, dtype=torch.float64)
    g = np.random.default_rng(0)
    truth = FlameParams(shape=torch.tensor(g.normal(size=(1, flame.n_shape)) * 0.5),
                        expression=torch.tensor(g.normal(size=(1, flame.n_expr)) * 0.3))
    rot = axis_angle_to_matrix(torch.tensor([0.05, 0.3, 0.0], dtype=torch.float64)).numpy()
    t = np.array([0.005, -0.01, 0.03])
    maps = render_maps(flame, uvt, truth, rot, t, Camera.of(size=64))
    normals = maps["normals"].copy()
    normals[28:34, 26:34] *= -1.0  # outliers for the normal term's rejection
    pred = SimpleNamespace(uv=maps["uv"], normals=normals, mask=maps["mask"])
    bg = ~maps["mask"]
    bg[:, :8] = True  # background beside the head, where the moved head's silhouette spills
    crop = SimpleNamespace(masks={"skin": maps["mask"], "eyes": np.zeros_like(bg), "background": bg}, landmarks=None)
    cfg = FitConfig(resolution=64, stages=(_image_stage(1),), dense_uv_max=0.1, cull_back=False)
    fd = FitData(pred, crop, flame, uvt, cfg)
    fd.match()
    start = PoseInit(rot @ axis_angle_to_matrix(torch.tensor([0.0, 0.12, 0.02], dtype=torch.float64)).numpy(),
                     t + np.array([-0.012, 0.003, 0.0]), "test", 0, 0)
    p = Params(flame, start, flame.v_template, flame.has_eyelids)
    with torch.no_grad():
        p.shape.add_(torch.tensor(g.normal(size=tuple(p.shape.shape)) * 0.3))
        p.jaw.add_(torch.tensor([[0.0, 0.0, 0.0, 0.0, -0.05, 0.05]], dtype=torch.float64))
    return SimpleNamespace(data=fd, p=p, stage=cfg.stages[0], maps=maps, rot=rot, t=t, flame=flame, uvt=uvt)


def test_terms_equal_the_reference_image_formulas(scene):
    """Each data term of the objective (summed over its samples) against the reference's image form: masks over
    the whole rendered image, then the mean, written independently here with full images."""
    from core.fit.objective import Objective
    from core.render import antialias, interpolate

    data, p, stage = scene.data, scene.p, scene.stage
    objective = Objective(data, stage)
    got = objective.losses(p)
    view = objective.view(p)  # the same camera and rasterization; everything below is image arithmetic
    t, cfg, size = data.targets, data.cfg, data.size
    rast, faces = view.rast, data.faces
    cov = rast.coverage()[0]
    uv = interpolate(data.corner_uv, rast, data.uv_tri)[0]
    sq = (t.uv - uv).square()
    m = t.uv_mask.to(sq.dtype) * cov * (sq.sum(-1) < cfg.dense_uv_max ** 2).to(sq.dtype)
    dense = (sq * m[..., None]).mean() * stage.weights["uv_dense"]
    normals = torch.nn.functional.normalize(interpolate(view.geometry.normals, rast, faces)[0], dim=-1, eps=1e-12)
    err = (t.normals - normals).abs()
    regions = interpolate(data.region_attr, rast, faces)
    eye = L.gaussian_blur(regions[0, ..., 1], cfg.eye_blur_size, cfg.eye_blur_sigma)
    keep = (err.mean(-1) < cfg.delta_n).to(err.dtype) * t.normal_mask * cov * (1 - eye).clamp(0, 1)
    normal = (err * keep[..., None]).mean() * stage.weights["normal"]
    sil = antialias(regions[..., 0:1].contiguous(), rast, view.camera.clip(view.cam), faces)[0, ..., 0]
    silhouette = ((t.fg_mask - sil).abs() * t.valid_bg).mean() * stage.weights["sil"]
    xy, depth = view.camera.project(view.cam[:, data.valid])
    depth_img = torch.where(cov > 0, interpolate(-view.cam[..., 2:3], rast, faces)[0, ..., 0], torch.tensor(float("inf")))
    ix, iy = xy[0, :, 0].floor().long(), xy[0, :, 1].floor().long()
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    behind = torch.where(inside, depth_img[iy.clamp(0, size - 1), ix.clamp(0, size - 1)], torch.tensor(float("inf")))
    accepted = data.matched & ((xy[0] - data.target_xy).abs().sum(-1) < data.max_px) & (depth[0] < behind + cfg.visibility_eps)
    corr = ((((xy[0] - data.target_xy) / size).square().mean(-1)) * accepted).mean() * stage.weights["uv_corr"]
    for name, expected in (("uv_dense", dense), ("normal", normal), ("sil", silhouette), ("uv_corr", corr)):
        assert expected.item() > 0, name
        assert got[name].item() == pytest.approx(expected.item(), rel=1e-9), name
    # Samples were rejected by every acceptance test (not a trivially full mask).
    assert 0 < accepted.sum() < data.matched.sum() and 0 < m.sum() < (t.uv_mask.to(sq.dtype) * cov).sum()
    assert 0 < keep.gt(0).sum() < (t.normal_mask * cov).sum()
    # The shape prior is one term: the reference's two weights (towards MICA, zero here, and towards zero) summed.
    prior = p.shape.square().sum() * (stage.weights["reg_shape"] + stage.weights["reg_shape_general"])
    assert got["reg_shape"].item() == pytest.approx(prior.item(), rel=1e-12) and "reg_shape_general" not in got


def test_uv_correspondence_acceptance():
    """Accepted: UV-matched, within dist_uv pixels (L1) of the target, and not behind the rendered surface; the camera
    stage widens the radius to a quantile of the current distances."""
    from core.fit.objective import UVCorrespondence, VertexCandidates

    xy = torch.tensor([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [5.0, 5.0], [40.0, 40.0]])
    target = torch.tensor([[11.0, 10.0], [20.0, 45.0], [31.0, 31.0], [5.0, 6.0], [40.0, 52.0]])
    depth = torch.tensor([1.0, 1.0, 1.0, 1.2, 1.0])
    depth_map = torch.full((64, 64), float("inf"))
    depth_map[5, 5] = 1.0  # vertex 3 lies behind the rendered surface
    matched = torch.tensor([True, True, False, True, True])
    data = SimpleNamespace(matched=matched, max_px=20.0, cfg=SimpleNamespace(visibility_eps=0.01), size=64)
    view = SimpleNamespace(project=lambda ids: (xy[ids], depth[ids]), depth_image=lambda: depth_map)
    cand = VertexCandidates(torch.arange(5), target)
    r = (xy - target) / 64
    fixed = UVCorrespondence(data, "uv_corr", None).accept(view, cand, r)
    assert fixed.accepted.tolist() == [True, False, False, False, True]
    assert fixed.weight.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    widened = UVCorrespondence(data, "uv_corr", 0.9).accept(view, cand, r)  # 90 % of (1, 25, 1, 12): 21.1 px
    assert widened.accepted.tolist() == [True, False, False, False, True]
    widest = UVCorrespondence(data, "uv_corr", 1.0).accept(view, cand, r)
    assert widest.accepted.tolist() == [True, False, False, False, True]
    data.max_px = 2.0
    assert UVCorrespondence(data, "uv_corr", None).accept(view, cand, r).accepted.tolist() == [True, False, False, False, False]
    assert UVCorrespondence(data, "uv_corr", 0.75).accept(view, cand, r).accepted.tolist() == [True, False, False, False, True]


def test_mirror_offsets_and_blur(small):
    data, uvt = small
    v = torch.tensor(data.v_template)
    mi = torch.tensor(uvt.mirror_index)
    assert L.mirror_offsets(v, mi).abs().max().item() < 1e-9  # the synthetic template is exactly symmetric
    j = int(np.flatnonzero(uvt.mirror_index != np.arange(len(uvt.mirror_index)))[0])  # off the mid-plane
    bumped = v.clone()
    bumped[j, 0] += 0.01
    off = L.mirror_offsets(bumped, mi)
    assert off[j, 0].item() == pytest.approx(0.01) and off[mi[j], 0].item() == pytest.approx(0.01)
    assert off.abs().sum().item() == pytest.approx(0.02)
    img = torch.zeros(31, 31, dtype=torch.float64)
    img[15, 15] = 1.0
    blurred = L.gaussian_blur(img, 13, 13.0)
    assert blurred.sum().item() == pytest.approx(1.0)
    x = torch.arange(13, dtype=torch.float64) - 6
    k = torch.exp(-0.5 * (x / 13) ** 2)
    assert blurred[15, 9].item() == pytest.approx((k[0] * k[6] / k.sum() ** 2).item())


def test_targets_masks_and_resize():
    h = 32
    g = np.random.default_rng(0)
    uv = g.uniform(0.2, 0.8, (h, h, 2)).astype(np.float32)
    n = g.normal(size=(h, h, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    mask = np.zeros((h, h), bool)
    mask[4:28, 6:26] = True
    skin = np.zeros((h, h), bool)
    skin[8:24, 8:24] = True
    crop = SimpleNamespace(masks={"skin": skin, "background": ~mask})
    t = build_targets(SimpleNamespace(uv=uv, normals=n, mask=mask), crop, 16, torch.zeros((), dtype=torch.float64))
    assert t.uv.shape == (16, 16, 2) and t.normals.shape == (16, 16, 3)
    np.testing.assert_array_equal(t.uv_mask.numpy(), skin[::2, ::2])
    np.testing.assert_allclose(t.uv[5, 6].numpy(), uv[10:12, 12:14].reshape(-1, 2).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(t.valid_bg.numpy() > 0, (~mask)[::2, ::2])
    assert t.crop_size == h and t.face_mask is None  # no face mask given
    bare = build_targets(SimpleNamespace(uv=uv, normals=n, mask=mask), None, 16, torch.zeros(()))
    np.testing.assert_array_equal(bare.uv_mask.numpy(), mask[::2, ::2])
    face = np.zeros((h, h), bool)
    face[4:20, 4:20] = True
    with_face = SimpleNamespace(masks={"face": face}, approximate_masks=frozenset())
    np.testing.assert_array_equal(build_targets(None, with_face, 16, torch.zeros(())).face_mask.numpy(), face[::2, ::2])
    guessed = SimpleNamespace(masks={"face": face}, approximate_masks=frozenset({"face"}))
    assert build_targets(None, guessed, 16, torch.zeros(())).face_mask is None  # a rough guess is not a reference


def test_target_masks_follow_the_reference_label_sets():
    """uv_mask = skin | brows | nose | lips; normal_mask adds the inner mouth; fg_mask adds the eyes instead;
    valid_bg is the background (reference section 2.3, without neck and ears, which FaceCrop has no masks for)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (32, 32))  # 0 background, then one label per region
    names = ["background", "skin", "brows", "nose", "lips", "eyes", "mouth"]
    crop = SimpleNamespace(masks={name: labels == i for i, name in enumerate(names)}, landmarks=None)
    ones = np.ones((32, 32), bool)
    pred = SimpleNamespace(uv=np.full((32, 32, 2), 0.5, np.float32), normals=np.tile(np.float32([0, 0, 1]), (32, 32, 1)),
                           mask=ones)
    t = build_targets(pred, crop, 32, torch.zeros((), dtype=torch.float64))
    np.testing.assert_array_equal(t.uv_mask.numpy(), np.isin(labels, [1, 2, 3, 4]))
    np.testing.assert_array_equal(t.normal_mask.numpy() > 0, np.isin(labels, [1, 2, 3, 4, 6]))
    np.testing.assert_array_equal(t.fg_mask.numpy() > 0, np.isin(labels, [1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(t.valid_bg.numpy() > 0, labels == 0)


def test_component_major_flame_copy_is_equivalent():
    from core.flame import FlameModel, FlameParams

    data, _ = synthetic_flame("small", 0)
    flame = FlameModel(data, dtype=torch.float64)
    before = flame.dirs.clone()
    fast = flame.component_major()
    assert fast.dirs.reshape(-1, fast.dirs.shape[2]).T.is_contiguous()
    assert flame.dirs.is_contiguous() and torch.equal(flame.dirs, before)  # the caller's model is untouched
    g = torch.Generator().manual_seed(0)
    params = FlameParams(
        shape=torch.randn(2, flame.n_shape, generator=g, dtype=torch.float64),
        expression=torch.randn(2, flame.n_expr, generator=g, dtype=torch.float64),
        jaw_pose=torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.2,
    )
    a, b = flame(params), fast(params)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-12)
    assert torch.allclose(a.vertices_shaped, b.vertices_shaped, atol=1e-12)
    assert torch.allclose(flame.neutral(params.shape), fast.neutral(params.shape), atol=1e-12)


def test_gaussian_blur_matches_full_image_convolution():
    def full(image, size, sigma):
        half = size // 2
        x = torch.arange(-half, half + 1, dtype=image.dtype)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        img = torch.nn.functional.conv2d(image[None, None], k.view(1, 1, 1, -1), padding=(0, half))
        return torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1), padding=(half, 0))[0, 0]

    g = torch.Generator().manual_seed(0)
    img = torch.zeros(64, 64, dtype=torch.float64)
    img[20:30, 5:15] = torch.rand(10, 10, generator=g, dtype=torch.float64)
    img[0:2, 60:64] = 1.0  # touches the border: zero padding must still apply
    blurred = L.gaussian_blur(img, 9, 2.0)
    assert torch.allclose(blurred, full(img, 9, 2.0), atol=1e-12)
    assert blurred[40:, :].abs().max() == 0 and blurred[22, 14] > 0
    assert torch.equal(L.gaussian_blur(torch.zeros(8, 8), 5, 1.0), torch.zeros(8, 8))


def test_view_depth_image_equals_render_maps_depth(scene):
    """The depth image behind the correspondences' visibility test, against render_maps' at the same pose."""
    from core.fit import render_maps
    from core.fit.init import PoseInit
    from core.fit.objective import Objective, Params
    from core.flame import FlameParams
    from core.render.camera import Camera

    data = scene.data  # its config draws both sides, as render_maps does
    p = Params(scene.flame, PoseInit(scene.rot, scene.t, "test", 0, 0), scene.flame.v_template, False)
    view = Objective(data, scene.stage).view(p)

    ref = render_maps(scene.flame, scene.uvt, FlameParams(), scene.rot, scene.t, Camera.of(size=data.size))["depth"]
    got = view.depth_image().numpy()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    assert finite.sum() > 100
    np.testing.assert_allclose(got[finite], ref[finite], atol=1e-6)


def test_vertex_normals_match_a_per_vertex_sum_and_finite_differences():
    """Area-weighted normals against a plain loop over each vertex's faces (two meshes in a batch), and their
    gradient against finite differences."""
    from core.fit.maps import vertex_normals

    data, _ = synthetic_flame("small", 0)
    faces = torch.as_tensor(data.faces)
    g = np.random.default_rng(3)
    verts = data.v_template[None] + g.normal(scale=1e-3, size=(2,) + data.v_template.shape)
    got = vertex_normals(torch.tensor(verts), faces).numpy()
    for b in range(2):
        v = verts[b]
        for i in g.choice(v.shape[0], 40, replace=False):
            n = sum(np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]]) for f in data.faces if i in f)
            np.testing.assert_allclose(got[b, i], n / np.linalg.norm(n), atol=1e-10)
    tiny = torch.tensor([[[0.0, 0, 0], [1, 0, 0.2], [0, 1, 0.1], [1, 1, 0.5]]], dtype=torch.float64)
    two = torch.tensor([[0, 1, 2], [1, 3, 2]])
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, two), (tiny.requires_grad_(True),))
