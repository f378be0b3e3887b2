"""evaluation.groundtruth: truth heads, their rendered maps and crop masks, corruption and fit errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.fit.regions import derive_regions
from core.flame import FlameModel, axis_angle_to_matrix, matrix_to_axis_angle, synthetic_flame
from evaluation.groundtruth import corrupt, errors_mm, inputs, make_head, render_truth, visible_vertices, yawed

SIZE = 128


@pytest.fixture(scope="module")
def scene():
    """The full-size synthetic head (the small one hides its eyeballs), its scoring region and eyeball faces,
    and one rendered neutral truth head."""
    data, uvt = synthetic_flame("full", 0)
    flame = FlameModel(data)
    reg = derive_regions(data.v_template, data.faces, data.J_regressor)
    head = make_head(np.random.default_rng(0), flame, expressive=False)
    maps, neutral = render_truth(flame, uvt, head, SIZE)
    return SimpleNamespace(
        data=data, flame=flame, head=head, maps=maps, neutral=neutral,
        region=(reg.uv_valid | reg.eye_region) & ~reg.eyeballs,
        eyeball_faces=np.flatnonzero(reg.eyeballs[data.faces].all(1)),
        face_faces=np.flatnonzero((reg.silhouette & ~reg.eyeballs)[data.faces].all(1)),
    )


def test_make_head_repeats_per_seed_and_keeps_neutral_heads_neutral(scene):
    a = make_head(np.random.default_rng(3), scene.flame, expressive=False)
    b = make_head(np.random.default_rng(3), scene.flame, expressive=False)
    assert torch.equal(a.params.shape, b.params.shape) and np.array_equal(a.rotation, b.rotation)
    assert not a.params.expression.any() and not a.params.jaw_pose.any()
    e = make_head(np.random.default_rng(3), scene.flame, expressive=True)
    assert e.params.expression.abs().sum() > 0 and e.params.jaw_pose[0, 0] > 0
    for h in (a, e):
        assert h.params.shape.shape == (1, scene.flame.n_shape) and h.params.shape.dtype == scene.flame.v_template.dtype
        np.testing.assert_allclose(h.rotation @ h.rotation.T, np.eye(3), atol=1e-6)
        assert abs(h.yaw_deg) <= 35


def test_render_truth_gives_the_posed_and_neutral_meshes(scene):
    m = scene.maps
    assert m["uv"].shape == (SIZE, SIZE, 2) and m["mask"].shape == (SIZE, SIZE) and m["mask"].dtype == bool
    assert 0.05 < m["mask"].mean() < 0.9
    with torch.no_grad():
        posed = scene.flame(scene.head.params).vertices[0].numpy()
    np.testing.assert_allclose(m["vertices"], posed @ scene.head.rotation.T + scene.head.translation, atol=1e-6)
    assert scene.neutral.shape == posed.shape
    assert np.abs(scene.neutral - scene.data.v_template).max() > 1e-4  # the identity is applied, not the template


def test_inputs_split_the_rendered_head_into_eyes_and_skin(scene):
    pred, crop = inputs(scene.maps, scene.eyeball_faces)
    skin, eyes, background = crop.masks["skin"], crop.masks["eyes"], crop.masks["background"]
    assert eyes.any() and skin.any()
    assert not (skin & eyes).any()
    np.testing.assert_array_equal(skin | eyes, scene.maps["mask"])
    np.testing.assert_array_equal(background, ~scene.maps["mask"])
    assert pred.mask is scene.maps["mask"] and crop.photo_size == (SIZE, SIZE) and crop.transform.out_size == SIZE
    _, oval = inputs(scene.maps, scene.eyeball_faces, scene.face_faces)
    np.testing.assert_array_equal(oval.masks["eyes"], eyes)
    assert not (oval.masks["skin"] & ~skin).any() and oval.masks["skin"].sum() < skin.sum()


def test_errors_are_zero_for_the_truth_and_for_a_rigidly_moved_truth(scene):
    posed, neutral, region = scene.maps["vertices"].astype(np.float64), scene.neutral.astype(np.float64), scene.region
    exact = SimpleNamespace(vertices_posed=posed, vertices_neutral=neutral)
    assert errors_mm(exact, posed, neutral, region) == pytest.approx((0.0, 0.0), abs=1e-9)

    rot = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)).numpy()
    shift = np.array([0.01, -0.02, 0.05])
    moved = SimpleNamespace(vertices_posed=posed @ rot.T + shift, vertices_neutral=neutral @ rot.T - shift)
    assert errors_mm(moved, posed, neutral, region) == pytest.approx((0.0, 0.0), abs=1e-6)

    # 2 % larger: a rigid alignment cannot remove it, a similarity alignment can
    centre = posed[region].mean(0)
    larger = SimpleNamespace(vertices_posed=centre + 1.02 * (posed - centre), vertices_neutral=neutral)
    rigid, still = errors_mm(larger, posed, neutral, region)
    assert rigid > 0.2 and still == pytest.approx(0.0, abs=1e-9)
    assert errors_mm(larger, posed, neutral, region, with_scale=True)[0] == pytest.approx(0.0, abs=1e-6)


def test_errors_within_average_only_the_chosen_vertices(scene):
    posed, neutral, region = scene.maps["vertices"].astype(np.float64), scene.neutral.astype(np.float64), scene.region
    idx = np.flatnonzero(region)
    bumped = posed.copy()
    bumped[idx[0], 2] += 0.001  # one region vertex 1 mm off, no alignment can hide it entirely
    result = SimpleNamespace(vertices_posed=bumped, vertices_neutral=neutral)
    everywhere = errors_mm(result, posed, neutral, region)[0]
    only_it = np.zeros_like(region)
    only_it[idx[0]] = True
    assert errors_mm(result, posed, neutral, region, within=only_it)[0] > 10 * everywhere > 0


def test_visible_vertices_see_the_front_and_not_the_back(scene):
    seen = visible_vertices(scene.maps)
    assert seen.shape == (len(scene.maps["vertices"]),) and seen.dtype == bool
    assert 0.2 < seen.mean() < 0.8
    # in the head's own frame (world = R v + t), the camera sits along +z: the nose tip is seen, the back is not
    local = (scene.maps["vertices"] - scene.head.translation) @ scene.head.rotation
    assert seen[np.argmax(local[:, 2])] and not seen[np.argmin(local[:, 2])]


def test_corrupt_outliers_change_only_head_pixels_and_keep_normals_unit(scene):
    noisy = corrupt(scene.maps, np.random.default_rng(0), 0.0, 0.0, 0.5)
    mask = scene.maps["mask"]
    changed = np.any(noisy["uv"] != scene.maps["uv"], axis=-1)
    assert not (changed & ~mask).any() and 0.3 < changed[mask].mean() < 0.7
    np.testing.assert_array_equal(noisy["mask"], mask)
    assert noisy["uv"].dtype == np.float32 and noisy["uv"].min() >= 0 and noisy["uv"].max() <= 1
    np.testing.assert_allclose(np.linalg.norm(noisy["normals"][mask], axis=-1), 1.0, atol=1e-5)
    again = corrupt(scene.maps, np.random.default_rng(0), 0.0, 0.0, 0.5)
    np.testing.assert_array_equal(again["uv"], noisy["uv"])


@pytest.mark.parametrize("yaw_deg", [-30.0, 15.0])
def test_yawed_turns_the_true_pose_about_the_heads_vertical_axis(scene, yaw_deg):
    start = yawed(scene.head.rotation, scene.head.translation, yaw_deg)
    relative = torch.from_numpy(scene.head.rotation.T @ start.rotation)
    np.testing.assert_allclose(matrix_to_axis_angle(relative).numpy(), [0.0, np.radians(yaw_deg), 0.0], atol=1e-6)
    np.testing.assert_array_equal(start.translation, scene.head.translation)
