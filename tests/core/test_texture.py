"""Texture baking on the synthetic head: a known texture is rendered into a photo by ray casting written here,
baked back, and compared with the truth (colours, visibility, mirror fill, seam padding)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from core.errors import ImageError, Pixel3DMMError
from core.flame import synthetic_flame
from core.render import interpolate, rasterize
from core.render.camera import Camera, world_to_camera
from core.texture import (
    _depth_map,
    bake_from_fit,
    bake_texture,
    blender_pixels,
    mirror_corner_uv,
    project_to_photo,
    rasterize_uv,
)

SIZE = 128
PHOTO_HW = (200, 160)
K = np.array([[620.0, 0.0, 83.0], [0.0, 600.0, 104.0], [0.0, 0.0, 1.0]])


def known_texture(uv):
    """A smooth colour field over UV space (OBJ convention), (..., 2) -> (..., 3) in [0.15, 0.85]."""
    u, v = uv[..., 0], uv[..., 1]
    return np.stack(
        [0.5 + 0.35 * np.sin(2 * np.pi * 2 * u + 1.0), 0.5 + 0.35 * np.sin(2 * np.pi * 1.5 * v),
         0.5 + 0.35 * np.cos(2 * np.pi * (u + v))], axis=-1)


def yaw(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def ray_cast(dirs, tri):
    """Nearest hit of rays from the camera centre (0, 0, 1) along ``dirs`` (R, 3) with triangles (F, 3, 3)
    (Möller–Trumbore, both sides; only pairs whose ray passes the triangle's projected bounding box are tested).

    Returns t (R,) (inf for a miss; the hit is at camera + t · dir), face (R,) and barycentrics (R, 3)."""
    cam = np.array([0.0, 0.0, 1.0])
    slope = lambda p: p[..., :2] / -p[..., 2:3]  # noqa: E731  (direction -> image-plane position at depth 1)
    ray_xy = slope(dirs)
    tri_xy = slope(tri - cam)
    lo, hi = tri_xy.min(axis=1) - 1e-9, tri_xy.max(axis=1) + 1e-9
    r, f = np.nonzero((ray_xy[:, None, 0] >= lo[None, :, 0]) & (ray_xy[:, None, 0] <= hi[None, :, 0])
                      & (ray_xy[:, None, 1] >= lo[None, :, 1]) & (ray_xy[:, None, 1] <= hi[None, :, 1]))
    e1, e2 = tri[f, 1] - tri[f, 0], tri[f, 2] - tri[f, 0]
    d = dirs[r]
    p = np.cross(d, e2)
    det = np.einsum("nc,nc->n", p, e1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tv = cam - tri[f, 0]
    b1 = np.einsum("nc,nc->n", tv, p) * inv
    q = np.cross(tv, e1)
    b2 = np.einsum("nc,nc->n", d, q) * inv
    t = np.einsum("nc,nc->n", e2, q) * inv
    hit = ok & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 1e-9)
    t_best = np.full(len(dirs), np.inf)
    np.minimum.at(t_best, r[hit], t[hit])
    win = hit & (t == t_best[r])
    f_best = np.zeros(len(dirs), dtype=np.int64)
    b_best = np.zeros((len(dirs), 3))
    f_best[r[win]] = f[win]
    b_best[r[win]] = np.stack([1 - b1[win] - b2[win], b1[win], b2[win]], axis=1)
    return t_best, f_best, b_best


def pixel_rays(hw, k):
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]]
    x, y = xs.ravel() + 0.5, ys.ravel() + 0.5
    d = np.stack([(x - k[0, 2]) / k[0, 0], -(y - k[1, 2]) / k[1, 1], -np.ones_like(x)], axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scene():
    _, tpl = synthetic_flame("small", seed=0)
    verts = tpl.vertices @ yaw(50).T + np.array([0.004, -0.01, 0.02])
    tri = verts[tpl.faces]
    t, face, bary = ray_cast(pixel_rays(PHOTO_HW, K), tri)
    hit = np.isfinite(t)
    uv = np.einsum("rk,rkc->rc", bary[hit], tpl.corner_uv[face[hit]])
    photo = np.full((PHOTO_HW[0] * PHOTO_HW[1], 3), 0.05, dtype=np.float32)
    photo[hit] = known_texture(uv)
    photo = photo.reshape(PHOTO_HW[0], PHOTO_HW[1], 3)
    baked = bake_texture(photo, verts, tpl.faces, tpl.corner_uv, K, size=SIZE, mirror_index=tpl.mirror_index)
    return SimpleNamespace(tpl=tpl, verts=verts, photo=photo, baked=baked)


def texel_uv(size):
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], axis=-1)


def reference_uv_raster(corner_uv, size):
    """Texel triangle ids and barycentrics from core.render.rasterize fed with UV positions as clip coordinates."""
    flat = torch.from_numpy(corner_uv.reshape(-1, 2))
    zeros = torch.zeros(len(flat), 1, dtype=flat.dtype)
    pos = torch.cat([flat * 2 - 1, zeros, zeros + 1], 1)
    tri = torch.arange(len(flat)).reshape(-1, 3)
    return rasterize(pos[None], tri, (size, size))


def test_uv_raster_agrees_with_core_rasterizer(scene):
    corner_uv = scene.tpl.corner_uv
    rast = reference_uv_raster(corner_uv, SIZE).image()[0].numpy()
    mine = rasterize_uv(corner_uv, SIZE)
    face = np.full(SIZE * SIZE, -1)
    face[mine.texel] = mine.face
    bary = np.zeros((SIZE * SIZE, 3))
    bary[mine.texel] = mine.bary
    ref_face = rast[..., 3].reshape(-1).astype(np.int64) - 1
    ref_b = np.stack([rast[..., 0], rast[..., 1], 1 - rast[..., 0] - rast[..., 1]], -1).reshape(-1, 3)
    covered = ref_face >= 0
    assert np.all(face[covered] >= 0)  # conservative: every texel centre inside a triangle is taken
    strict = covered & (ref_b.min(axis=1) > 1e-3)
    assert strict.sum() > 0.6 * covered.sum()
    np.testing.assert_array_equal(face[strict], ref_face[strict])
    np.testing.assert_allclose(bary[strict], ref_b[strict], atol=1e-5)
    # texels taken beyond the exact coverage touch their triangle: the clamped surface point is within a texel
    extra = np.flatnonzero((face >= 0) & ~covered)
    assert extra.size > 0
    centre = np.stack([(extra % SIZE + 0.5) / SIZE, 1 - (extra // SIZE + 0.5) / SIZE], axis=1)
    on_tri = np.einsum("nk,nkc->nc", bary[extra], corner_uv[face[extra]])
    assert np.abs(on_tri - centre).max() * SIZE <= 1.0 + 1e-9


def test_projection_agrees_with_render_camera():
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=0.1, size=(50, 3))
    fl, pp, s = 3.7, np.array([0.05, -0.03]), 512
    camera = Camera.of(fl, pp, s)
    xy, depth = project_to_photo(pts, camera.intrinsics())
    ref_xy, ref_depth = camera.project(world_to_camera(torch.from_numpy(pts)[None]))
    np.testing.assert_allclose(xy, ref_xy[0].numpy(), atol=1e-9)
    np.testing.assert_allclose(depth, ref_depth[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(depth, 1.0 - pts[:, 2])


def test_depth_map_matches_ray_casting(scene):
    dmap, origin, scale = _depth_map(scene.verts, scene.tpl.faces, K, PHOTO_HW, 64)
    h, w = dmap.shape
    ys, xs = np.mgrid[0:h, 0:w]
    px = origin[0] + (xs.ravel() + 0.5) / scale
    py = origin[1] + (ys.ravel() + 0.5) / scale
    d = np.stack([(px - K[0, 2]) / K[0, 0], -(py - K[1, 2]) / K[1, 1], -np.ones_like(px)], axis=1)
    t, _, _ = ray_cast(d, scene.verts[scene.tpl.faces])
    ref = t  # with an unnormalised direction of z = -1, t is the depth -Z
    hit = np.isfinite(ref)
    mine = dmap.ravel()
    both = hit & np.isfinite(mine)
    assert np.all(np.isfinite(mine[hit]))  # every pixel centre on the head has a depth
    np.testing.assert_allclose(mine[hit], ref[hit], atol=1e-9)
    # the extra (silhouette) pixels lie next to hit pixels and extrapolate a nearby plane
    extra = np.isfinite(mine) & ~hit
    assert extra.sum() < 0.1 * hit.sum()


def test_visible_texels_reproduce_the_known_texture(scene):
    b = scene.baked
    assert b.image.shape == (SIZE, SIZE, 3) and b.image.dtype == np.float32
    truth = known_texture(texel_uv(SIZE))
    full = b.weight >= 1.0
    assert full.sum() > 1000
    err = np.abs(b.image - truth).max(axis=-1)[full]
    assert np.median(err) < 0.01
    assert np.quantile(err, 0.9) < 0.04
    # row order: row 0 is v = 1; flipping the rows would break the match
    flipped = np.abs(b.image[::-1] - truth).max(axis=-1)[full[::-1]]
    assert np.median(flipped) > 0.05


def test_visibility_matches_ray_casting(scene):
    """Texels clearly occluded in the photo are never visible; clearly visible, camera-facing ones are."""
    tpl, verts, b = scene.tpl, scene.verts, scene.baked
    raster = reference_uv_raster(tpl.corner_uv, SIZE)
    rast = raster.image()[0].numpy()
    corner_pos = torch.from_numpy(verts[tpl.faces].reshape(-1, 3))
    tri = torch.arange(corner_pos.shape[0]).reshape(-1, 3)
    pts = interpolate(corner_pos, raster, tri)[0].numpy().reshape(-1, 3)
    covered = rast[..., 3].reshape(-1) > 0
    idx = np.flatnonzero(covered)
    p = pts[idx]
    cam = np.array([0.0, 0.0, 1.0])
    to_p = p - cam
    dist = np.linalg.norm(to_p, axis=1)
    t, _, _ = ray_cast(to_p / dist[:, None], verts[tpl.faces])
    occluded = t < dist - 0.01
    # smooth normal of each texel: area-weighted vertex normals interpolated with core.render.interpolate
    fn = np.cross(verts[tpl.faces[:, 1]] - verts[tpl.faces[:, 0]], verts[tpl.faces[:, 2]] - verts[tpl.faces[:, 0]])
    vn = np.zeros_like(verts)
    for c in range(3):
        np.add.at(vn, tpl.faces[:, c], fn)
    corner_n = torch.from_numpy(vn[tpl.faces].reshape(-1, 3))
    n = interpolate(corner_n, raster, tri)[0].numpy().reshape(-1, 3)[idx]
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    cos = np.einsum("nc,nc->n", n, -to_p / dist[:, None])
    x = K[0, 0] * to_p[:, 0] / -to_p[:, 2] + K[0, 2]
    y = -K[1, 1] * to_p[:, 1] / -to_p[:, 2] + K[1, 2]
    in_photo = (x > 1) & (x < PHOTO_HW[1] - 1) & (y > 1) & (y < PHOTO_HW[0] - 1)
    clear = (t >= dist - 1e-6) & (cos > 0.45) & in_photo
    vis = b.visible.reshape(-1)[idx]
    assert occluded.sum() > 50 and clear.sum() > 500
    assert not np.any(vis[occluded])
    assert np.all(b.weight.reshape(-1)[idx][clear] == 1.0)
    # the back of the head (facing away) is never visible
    assert not np.any(vis[cos < -0.2])
    assert not np.any(vis[~in_photo & ((x < -1) | (y > PHOTO_HW[0] + 1))])


def test_hidden_side_is_filled_from_the_mirror(scene):
    b = scene.baked
    uv = texel_uv(SIZE)
    mirrored_truth = known_texture(np.stack([1.0 - uv[..., 0], uv[..., 1]], -1))  # the layout mirrors at u = 0.5
    # texels whose own side is hidden and whose mirror texel is fully visible
    mirror_full = (b.weight[:, ::-1] >= 1.0) & b.covered[:, ::-1]
    target = b.covered & (b.weight == 0) & mirror_full
    assert target.sum() > 300
    assert np.all(b.filled_from_mirror[target])
    err = np.abs(b.image - mirrored_truth).max(axis=-1)[target]
    assert np.median(err) < 0.01
    assert np.quantile(err, 0.9) < 0.05
    assert not np.any(b.filled_from_mirror & b.visible)


def test_skin_tone_and_remaining_texels():
    _, tpl = synthetic_flame("small", seed=0)
    verts = tpl.vertices @ yaw(50).T
    photo = np.empty(PHOTO_HW + (3,), np.float32)
    photo[:] = [0.7, 0.5, 0.4]
    mask = np.zeros(PHOTO_HW, bool)
    mask[:20, :20] = True
    photo[:20, :20] = [0.9, 0.6, 0.3]
    baked = bake_texture(photo, verts, tpl.faces, tpl.corner_uv, K, size=64, skin_mask=mask)
    np.testing.assert_allclose(baked.skin_tone, [0.9, 0.6, 0.3], atol=1e-6)
    # without a mirror index, hidden chart texels take the skin tone
    hidden = baked.covered & (baked.weight == 0)
    assert hidden.any() and not baked.filled_from_mirror.any()
    np.testing.assert_allclose(baked.image[hidden], np.broadcast_to([0.9, 0.6, 0.3], (hidden.sum(), 3)), atol=1e-6)
    # without a mask, the skin tone is the median photo colour of fully visible texels (uniform photo here)
    plain = bake_texture(np.full_like(photo, 0.3), verts, tpl.faces, tpl.corner_uv, K, size=64)
    np.testing.assert_allclose(plain.skin_tone, [0.3, 0.3, 0.3], atol=1e-6)


def test_head_outside_the_photo_is_one_clear_error():
    _, tpl = synthetic_flame("small", seed=0)
    verts = tpl.vertices + np.array([3.0, 0.0, 0.0])  # far to the side: no texel projects into the photo
    photo = np.full(PHOTO_HW + (3,), 0.4, np.float32)
    with pytest.raises(Pixel3DMMError, match="No part of the head faces the camera"):
        bake_texture(photo, verts, tpl.faces, tpl.corner_uv, K, size=32)


def test_charts_are_padded_past_their_borders(scene):
    b = scene.baked
    cov = b.covered
    img = b.image
    # reference: the nearest covered texel of every other texel (Euclidean texel distance, KD-tree)
    rows, cols = np.nonzero(cov)
    out_r, out_c = np.nonzero(~cov)
    dist, nearest = cKDTree(np.stack([rows, cols], 1)).query(np.stack([out_r, out_c], 1))
    ring = dist <= 8 - 0.5  # inside the padding (away from its rim, where distance approximations may differ)
    assert ring.sum() > 500
    got = img[out_r[ring], out_c[ring]]
    want = img[rows[nearest[ring]], cols[nearest[ring]]]
    # ties between equally near chart texels may pick either: compare to the best of the nearest candidates
    close = np.abs(got - want).max(axis=1) < 1e-6
    assert close.mean() > 0.97
    # far from every chart the skin tone fills the image
    far = dist > 8 + 0.5
    assert far.any()
    np.testing.assert_allclose(img[out_r[far], out_c[far]], np.broadcast_to(b.skin_tone, (far.sum(), 3)), atol=1e-6)


def test_blender_pixels_are_bottom_up_rgba():
    img = np.zeros((2, 3, 3), np.float32)
    img[0, :, 0] = 1.0  # top row red
    px = blender_pixels(img).reshape(2, 3, 4)
    np.testing.assert_array_equal(px[1, :, 0], 1.0)  # Blender's last row is the top
    np.testing.assert_array_equal(px[0, :, 0], 0.0)
    np.testing.assert_array_equal(px[..., 3], 1.0)


def test_bake_from_fit_and_input_errors(scene):
    fit = SimpleNamespace(vertices_posed=scene.verts, K_photo=K)
    again = bake_from_fit(scene.photo, fit, scene.tpl, size=SIZE)
    np.testing.assert_array_equal(again.image, scene.baked.image)
    with pytest.raises(ImageError):
        bake_texture(scene.photo[..., 0], scene.verts, scene.tpl.faces, scene.tpl.corner_uv, K)
    with pytest.raises(ImageError):  # 8-bit values instead of [0, 1]
        bake_texture((scene.photo * 255).astype(np.uint8), scene.verts, scene.tpl.faces, scene.tpl.corner_uv, K)
    with pytest.raises(Pixel3DMMError):
        bake_texture(scene.photo, scene.verts, scene.tpl.faces, scene.tpl.corner_uv[:-1], K)
    with pytest.raises(Pixel3DMMError):  # head behind the camera
        bake_texture(scene.photo, scene.verts + [0, 0, 3.0], scene.tpl.faces, scene.tpl.corner_uv, K)


def test_mirror_corner_uv_follows_the_mirror_partners():
    _, tpl = synthetic_flame("small", seed=0)
    faces, uv = tpl.faces, tpl.corner_uv
    # the synthetic layout mirrors exactly at u = 0.5 (seam vertices at the back have two UVs each)
    np.testing.assert_allclose(mirror_corner_uv(faces, uv, tpl.mirror_index), uv * [-1, 1] + [1, 0], atol=1e-12)
    # an asymmetric distortion of u: the mirrored corner is the partner's own (distorted) UV, not a reflection
    distort = lambda u: u + 0.03 * u**2  # noqa: E731
    warped = np.stack([distort(uv[..., 0]), uv[..., 1]], -1)
    want = np.stack([distort(1 - uv[..., 0]), uv[..., 1]], -1)
    np.testing.assert_allclose(mirror_corner_uv(faces, warped, tpl.mirror_index), want, atol=1e-12)


def test_fine_photo_detail_is_averaged_not_aliased():
    _, tpl = synthetic_flame("small", seed=0)
    rows, cols = np.mgrid[0:PHOTO_HW[0], 0:PHOTO_HW[1]]
    checker = np.repeat(((rows + cols) % 2).astype(np.float32)[..., None], 3, axis=2)  # 1-pixel checkerboard
    args = (checker, tpl.vertices, tpl.faces, tpl.corner_uv, K)
    smooth = bake_texture(*args, size=32)
    raw = bake_texture(*args, size=32, antialias=False)
    full = smooth.weight >= 1.0
    assert full.sum() > 30
    # the prefiltered bake sees the checkerboard's mean; point sampling between pixels sees anything in [0, 1]
    assert np.abs(smooth.image[full] - 0.5).max() < 0.1
    assert np.abs(raw.image[full] - 0.5).max() > 0.2
