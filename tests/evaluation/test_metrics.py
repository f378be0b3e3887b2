"""Known-case tests of evaluation.metrics: alignment, nearest neighbours, Chamfer, normal consistency, F-score."""

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from core.errors import Pixel3DMMError
from evaluation.metrics import (
    RigidTransform,
    chamfer,
    f_score,
    icp_align,
    nearest_neighbors,
    normal_consistency,
    point_to_mesh,
    rigid_align,
    sample_surface,
    score_mesh,
    vertex_error,
)


def icosphere(radius: float, subdivisions: int = 3):
    """Unit icosahedron subdivided and projected to a sphere (outward faces), scaled to ``radius``."""
    t = (1 + 5**0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [np.array(p, float) / np.linalg.norm(p) for p in v]
    faces = f
    for _ in range(subdivisions):
        cache = {}

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return np.array(verts) * radius, np.array(faces, dtype=np.int64)


def random_head_like_points(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) * np.array([0.08, 0.11, 0.09])


def test_rigid_align_recovers_exact_transform():
    src = random_head_like_points()
    R = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    t = np.array([0.05, -0.2, 1.3])
    tgt = src @ R.T + t
    tr = rigid_align(src, tgt)
    np.testing.assert_allclose(tr.R, R, atol=1e-10)
    np.testing.assert_allclose(tr.t, t, atol=1e-10)
    assert tr.s == 1.0
    np.testing.assert_allclose(tr.apply(src), tgt, atol=1e-10)
    assert vertex_error(src, tgt) < 1e-7
    assert vertex_error(src, tgt, align="none") > 100.0  # mm: unaligned error is large


def test_rigid_align_with_scale_and_weights():
    src = random_head_like_points(seed=1)
    R = Rotation.from_rotvec([0.3, 0.2, -0.5]).as_matrix()
    tgt = 1.7 * src @ R.T + np.array([1.0, 2.0, 3.0])
    # corrupt a few target points and give them zero weight: they must not matter
    w = np.ones(len(src))
    tgt_bad = tgt.copy()
    tgt_bad[:20] += 5.0
    w[:20] = 0.0
    tr = rigid_align(src, tgt_bad, weights=w, with_scale=True)
    np.testing.assert_allclose(tr.s, 1.7, rtol=1e-10)
    np.testing.assert_allclose(tr.R, R, atol=1e-10)
    np.testing.assert_allclose(tr.apply(src[20:]), tgt[20:], atol=1e-9)


def test_rigid_align_with_noise_is_close():
    rng = np.random.default_rng(3)
    src = random_head_like_points(2000, seed=2)
    R = Rotation.from_euler("zyx", [10, 80, -30], degrees=True).as_matrix()
    t = np.array([0.0, 0.1, -0.3])
    tgt = src @ R.T + t + rng.normal(scale=1e-3, size=src.shape)
    tr = rigid_align(src, tgt)
    angle = np.degrees(Rotation.from_matrix(tr.R @ R.T).magnitude())
    assert angle < 0.1
    assert np.linalg.norm(tr.t - t) < 2e-4


def test_rigid_align_never_returns_a_reflection():
    src = random_head_like_points(200, seed=4)
    mirrored = src * np.array([-1.0, 1.0, 1.0])  # the best orthogonal fit is a reflection
    tr = rigid_align(src, mirrored)
    assert np.linalg.det(tr.R) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(tr.R @ tr.R.T, np.eye(3), atol=1e-12)
    # the residual is worse than the (forbidden) reflection's zero residual, but optimal among rotations:
    resid = np.linalg.norm(tr.apply(src) - mirrored, axis=1).mean()
    for rv in Rotation.random(50, random_state=0).as_rotvec() * 0.05:
        dR = Rotation.from_rotvec(rv).as_matrix()
        other = RigidTransform(dR @ tr.R, tr.t)
        assert np.sum((other.apply(src) - mirrored) ** 2) >= np.sum((tr.apply(src) - mirrored) ** 2) - 1e-12
    assert resid > 0.01


def test_rigid_align_rejects_bad_input():
    with pytest.raises(Pixel3DMMError):
        rigid_align(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(Pixel3DMMError):
        rigid_align(np.zeros((5, 3)), np.zeros((6, 3)))


def test_nearest_neighbors_match_kdtree_on_grid_path():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(20000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    q = rng.normal(size=(3000, 3))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= 1 + rng.normal(scale=0.02, size=(3000, 1))
    q[:5] *= 4.0  # far queries exercise the brute-force fallback
    d, i = nearest_neighbors(q, pts)
    d_ref, i_ref = cKDTree(pts).query(q)
    np.testing.assert_allclose(d, d_ref, atol=1e-12)
    np.testing.assert_array_equal(i, i_ref)


def test_nearest_neighbors_brute_force_path_matches_numpy():
    rng = np.random.default_rng(6)
    a, b = rng.random((300, 3)), rng.random((400, 3))
    d, i = nearest_neighbors(a, b)
    full = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_allclose(d, full.min(1), atol=1e-12)
    np.testing.assert_array_equal(i, full.argmin(1))


def test_sample_surface_is_area_uniform_and_on_surface():
    # two triangles in z=0 with areas 1/2 and 3/2 (a 1x1 and a 1x3 right triangle)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0, 0], [2, 3, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    s = sample_surface(v, f, 40000, seed=0)
    share = np.mean(s.face_index == 1)
    assert abs(share - 0.75) < 0.01
    np.testing.assert_allclose(s.normals, np.tile([0, 0, 1.0], (40000, 1)))
    on0 = s.points[s.face_index == 0]
    assert np.all(on0[:, 0] + on0[:, 1] <= 1 + 1e-12) and np.all(on0[:, :2] >= -1e-12)
    # uniform in the triangle: the mean is the centroid
    np.testing.assert_allclose(on0.mean(0), [1 / 3, 1 / 3, 0], atol=0.01)
    np.testing.assert_array_equal(sample_surface(v, f, 10, seed=3).points, sample_surface(v, f, 10, seed=3).points)


def test_point_set_chamfer_matches_kdtree():
    v, f = icosphere(0.1, 3)
    a = sample_surface(v, f, 8000, seed=0)
    b = sample_surface(v * 1.02, f, 9000, seed=1)
    ref_ab, ref_ba = cKDTree(b.points).query(a.points)[0], cKDTree(a.points).query(b.points)[0]
    assert chamfer(a.points, b.points) == pytest.approx(0.5 * (ref_ab.mean() + ref_ba.mean()) * 1000, rel=1e-12)
    (fs,) = f_score(a.points, b.points, thresholds_mm=(2.5,))
    assert fs.precision == pytest.approx(np.mean(ref_ab < 2.5e-3))
    assert fs.recall == pytest.approx(np.mean(ref_ba < 2.5e-3))


def test_concentric_spheres_chamfer_and_fscore():
    r, d = 0.1, 0.003  # metres: the scan is a sphere 3 mm outside the prediction
    v1, f1 = icosphere(r, 4)
    v2, f2 = icosphere(r + d, 4)
    scan = sample_surface(v2, f2, 20000, seed=1)
    s = score_mesh(v1, f1, scan.points, scan.normals, align="none", n_samples=10000)
    # facets of both icospheres are parallel planes d·cos(α) apart, α < 5° at this subdivision
    assert s.completeness_mm == pytest.approx(3.0, abs=0.02)
    # point-to-point accuracy is sqrt(d² + ρ²) with ρ the lateral gap to the nearest scan sample: slightly
    # above d, and equal to a KD-tree evaluation on the same prediction samples (same seed, no alignment)
    pred = sample_surface(v1, f1, 10000, seed=0).points
    assert s.accuracy_mm == pytest.approx(cKDTree(scan.points).query(pred)[0].mean() * 1000, rel=1e-9)
    assert 3.0 < s.accuracy_mm < 3.5
    assert s.chamfer_mm == pytest.approx(0.5 * (s.accuracy_mm + s.completeness_mm))
    low, mid, high = s.f_scores
    assert (low.threshold_mm, mid.threshold_mm, high.threshold_mm) == (1.0, 2.5, 5.0)
    assert low.f == 0.0 and mid.f == 0.0
    assert high.precision == 1.0 and high.recall == 1.0 and high.f == 1.0
    assert s.normal_consistency > 0.995
    # the other way round (prediction outside the scan) gives the same analytic offset
    inner = sample_surface(v1, f1, 20000, seed=2)
    outside = score_mesh(v2, f2, inner.points, align="none", n_samples=10000)
    assert outside.completeness_mm == pytest.approx(3.0, abs=0.02)


def brute_force_point_triangle_distance(q, tri):
    """Distance from each point (Q, 3) to each triangle (F, 3, 3): plane projection if it falls inside the
    triangle, otherwise the closest of the three edges (clamped segment projection). Returns (Q, F)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    h = np.einsum("qfc,fc->qf", q[:, None] - a[None], n)
    proj = q[:, None] - h[..., None] * n[None]

    def same_side(p1, e0, e1, opposite):
        return np.einsum("qfc,fc->qf", np.cross(e1 - e0, p1 - e0), n) * np.einsum(
            "fc,fc->f", np.cross(e1 - e0, opposite - e0), n) >= 0

    inside = same_side(proj, a, b, c) & same_side(proj, b, c, a) & same_side(proj, c, a, b)

    def seg(e0, e1):
        d = e1 - e0
        t = np.clip(np.einsum("qfc,fc->qf", q[:, None] - e0[None], d) / np.einsum("fc,fc->f", d, d), 0, 1)
        return np.linalg.norm(q[:, None] - (e0[None] + t[..., None] * d[None]), axis=-1)

    edge = np.minimum(np.minimum(seg(a, b), seg(b, c)), seg(c, a))
    return np.where(inside, np.abs(h), edge)


def test_point_to_mesh_matches_brute_force():
    rng = np.random.default_rng(8)
    v, f = icosphere(0.1, 2)
    v = v * rng.uniform(0.9, 1.1, size=(len(v), 1))  # bumpy, irregular surface
    near = sample_surface(v, f, 1500, seed=3).points + rng.normal(size=(1500, 3)) * 0.01  # scan-like queries
    res = point_to_mesh(near, v, f)
    ref = brute_force_point_triangle_distance(near, v[f])
    np.testing.assert_allclose(res.distances, ref.min(axis=1), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(res.closest - near, axis=1), res.distances, atol=1e-15)
    np.testing.assert_allclose(ref[np.arange(len(near)), res.face_index], res.distances, atol=1e-12)


def test_normal_consistency_self_flipped_and_perpendicular():
    v, f = icosphere(0.1, 2)
    s = sample_surface(v, f, 3000, seed=0)
    assert normal_consistency(s.points, s.normals, s.points, s.normals) == pytest.approx(1.0)
    assert normal_consistency(s.points, s.normals, s.points, -s.normals) == pytest.approx(1.0)
    perp = np.cross(s.normals, [0.0, 0.0, 1.0])
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    assert normal_consistency(s.points, s.normals, s.points, perp) == pytest.approx(0.0, abs=1e-12)


def test_score_mesh_recovers_misaligned_copy():
    # an ellipsoid-like mesh (not rotationally symmetric), scored against a moved dense copy of itself
    v, f = icosphere(1.0, 3)
    v = v * np.array([0.08, 0.11, 0.095])
    v[:, 2] += 0.02 * v[:, 1] ** 2 / 0.01  # break the remaining symmetries
    R = Rotation.from_euler("xyz", [4, -3, 5], degrees=True).as_matrix()
    t = np.array([0.004, -0.003, 0.002])
    scan = sample_surface(v @ R.T + t, f, 12000, seed=7)
    unaligned = score_mesh(v, f, scan.points, scan.normals, align="none", n_samples=3000)
    aligned = score_mesh(v, f, scan.points, scan.normals, align="rigid", n_samples=3000)
    ideal = score_mesh(v @ R.T + t, f, scan.points, scan.normals, align="none", n_samples=3000)
    assert unaligned.chamfer_mm > 2.0
    assert aligned.completeness_mm < 0.01  # scan points lie on the aligned surface
    assert aligned.chamfer_mm == pytest.approx(ideal.chamfer_mm, abs=0.01)
    np.testing.assert_allclose(aligned.transform.R, R, atol=1e-4)
    np.testing.assert_allclose(aligned.transform.t, t, atol=1e-5)
    assert aligned.normal_consistency > 0.99
    # recall is point-to-surface (exact); precision is point-to-point against the sparse scan
    assert aligned.f_scores[-1].recall == 1.0 and aligned.f_scores[-1].precision > 0.99
    assert aligned.f_scores[0].recall == 1.0
    # point-to-point ICP started from the exact correspondence solution stays there
    init = rigid_align(v, v @ R.T + t)
    refined = icp_align(v, scan.points, init, iterations=5)
    np.testing.assert_allclose(refined.R, R, atol=5e-3)
    # similarity alignment recovers a scale as well
    scaled = score_mesh(v * 0.95, f, scan.points, align="similarity", n_samples=3000)
    assert scaled.transform.s == pytest.approx(1 / 0.95, rel=1e-3)


def test_score_mesh_region_crops_scan():
    v, f = icosphere(0.1, 3)
    region = v[:, 2] > 0.0  # front hemisphere of the prediction
    scan = sample_surface(v, f, 8000, seed=2)
    full = score_mesh(v, f, scan.points, align="none", n_samples=3000)
    half = score_mesh(v, f, scan.points, align="none", region=region, n_samples=3000)
    assert half.normal_consistency is None
    # only scan points next to the front hemisphere are kept, and they are well covered by the prediction
    assert 0.4 * len(scan.points) < half.n_scan_points < 0.6 * len(scan.points)
    assert half.completeness_mm < 1.0
    assert full.n_scan_points == len(scan.points)
    with pytest.raises(Pixel3DMMError):
        score_mesh(v, f, scan.points, align="sideways")


def test_trimmed_icp_ignores_scan_parts_the_prediction_lacks():
    v, f = icosphere(1.0, 3)
    v = v * np.array([0.08, 0.11, 0.095])
    v[:, 2] += 0.02 * v[:, 1] ** 2 / 0.01
    R = Rotation.from_euler("xyz", [-3, 4, 2], degrees=True).as_matrix()
    t = np.array([-0.003, 0.002, 0.004])
    src = sample_surface(v, f, 3000, seed=0)
    scan = sample_surface(v @ R.T + t, f, 12000, seed=1).points
    rng = np.random.default_rng(2)
    shoulders = rng.normal(size=(600, 3)) * 0.02 + np.array([0.0, -0.16, 0.0])  # 5 % extra points off the head
    tr = icp_align(src.points, np.concatenate([scan, shoulders]), source_normals=src.normals)
    np.testing.assert_allclose(tr.R, R, atol=2e-4)
    np.testing.assert_allclose(tr.t, t, atol=2e-5)


def test_vertex_error_on_a_region():
    rng = np.random.default_rng(9)
    true = random_head_like_points(400, seed=5)
    region = true[:, 2] > 0
    pred = true.copy()
    pred[~region] += rng.normal(scale=0.01, size=((~region).sum(), 3))  # wrong only outside the region
    R = Rotation.from_rotvec([0.1, -0.2, 0.05]).as_matrix()
    moved = pred @ R.T + np.array([0.01, 0.02, -0.03])
    assert vertex_error(moved, true, region) < 1e-7
    assert vertex_error(moved, true, np.flatnonzero(region)) < 1e-7
    # over all vertices the (aligned) error is the mean offset norm, of the order of the 1 cm noise
    assert 1.0 < vertex_error(moved, true) < 20.0
