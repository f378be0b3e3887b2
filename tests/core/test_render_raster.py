"""Rasterizer checks against brute-force per-pixel ray casting and finite differences."""

import numpy as np
import pytest
import torch

from core.render import antialias, interpolate, interpolate_covered, pixel_barycentrics, rasterize

H, W = 24, 20
NEAR, FAR = 0.1, 10.0


def _projection(dtype=torch.float64):
    """A symmetric OpenGL perspective matrix (fov 60 deg)."""
    f = 1.0 / np.tan(np.radians(30.0))
    m = np.zeros((4, 4))
    m[0, 0] = f * H / W
    m[1, 1] = f
    m[2, 2] = -(FAR + NEAR) / (FAR - NEAR)
    m[2, 3] = -2 * FAR * NEAR / (FAR - NEAR)
    m[3, 2] = -1.0
    return torch.tensor(m, dtype=dtype)


def _random_scene(seed, n_tri=6, dtype=torch.float64):
    g = np.random.default_rng(seed)
    centres = g.uniform([-0.6, -0.6, -3.0], [0.6, 0.6, -1.5], size=(n_tri, 1, 3))
    verts = (centres + g.normal(scale=0.45, size=(n_tri, 3, 3))).reshape(-1, 3)
    tri = np.arange(n_tri * 3).reshape(-1, 3)
    return torch.tensor(verts, dtype=dtype), torch.tensor(tri, dtype=torch.int32)


def _to_clip(verts):
    hom = torch.cat([verts, torch.ones_like(verts[:, :1])], -1)
    return (hom @ _projection(verts.dtype).T)[None]


def _brute_force(verts, tri):
    """Per-pixel ray/triangle intersection (Moller-Trumbore) in camera space; nearest hit wins."""
    v = verts.numpy()
    f = 1.0 / np.tan(np.radians(30.0))
    tid = np.full((H, W), -1)
    bary = np.zeros((H, W, 2))
    for i in range(H):
        for j in range(W):
            x_ndc = (j + 0.5) / W * 2 - 1
            y_ndc = 1 - (i + 0.5) / H * 2
            d = np.array([x_ndc / (f * H / W), y_ndc / f, -1.0])
            best = np.inf
            for k, (a, b, c) in enumerate(tri.numpy()):
                e1, e2 = v[b] - v[a], v[c] - v[a]
                p = np.cross(d, e2)
                det = e1 @ p
                if abs(det) < 1e-12:
                    continue
                s = -v[a]
                u = (s @ p) / det
                q = np.cross(s, e1)
                w = (d @ q) / det
                t = (e2 @ q) / det
                if u < 0 or w < 0 or u + w > 1 or t <= 0 or t >= best:
                    continue
                best = t
                tid[i, j] = k
                bary[i, j] = (1 - u - w, u)  # weights of corners a and b
    return tid, bary


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_matches_ray_casting(seed):
    verts, tri = _random_scene(seed)
    rast = rasterize(_to_clip(verts), tri, (H, W)).image()
    tid_ref, bary_ref = _brute_force(verts, tri)
    tid = rast[0, ..., 3].long().numpy() - 1
    assert (tid >= 0).sum() > 20
    assert (tid == tid_ref).mean() > 0.995  # only exact edge ties may differ
    same = (tid == tid_ref) & (tid >= 0)
    np.testing.assert_allclose(rast[0, ..., :2].numpy()[same], bary_ref[same], atol=1e-9)


def test_rasterize_layout_and_uv_space():
    """A UV-space quad fills the texture; rows start at the top (v = 1)."""
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    pos = torch.cat([uv * 2 - 1, torch.zeros(4, 1), torch.ones(4, 1)], -1)[None]
    rast = rasterize(pos, tri, (8, 16))
    assert rast.image().shape == (1, 8, 16, 4)
    assert (rast.image()[..., 3] > 0).all() and (rast.triangle_ids() >= 0).all()
    img = interpolate(uv, rast, tri)[0]
    xs = (torch.arange(16) + 0.5) / 16
    ys = 1 - (torch.arange(8) + 0.5) / 8
    torch.testing.assert_close(img[..., 0], xs.expand(8, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[..., 1], ys[:, None].expand(8, 16), atol=1e-6, rtol=0)


def test_rasterize_batch_and_chunking_agree():
    verts, tri = _random_scene(3, n_tri=10)
    pos = _to_clip(verts)
    pos2 = torch.cat([pos, pos.flip(1)], 0)  # second image has the triangles' vertices permuted
    tri2 = tri
    full = rasterize(pos2, tri2, (H, W)).image()
    small = rasterize(pos2, tri2, (H, W), chunk_size=7).image()
    torch.testing.assert_close(full, small)
    torch.testing.assert_close(full[0], rasterize(pos, tri, (H, W)).image()[0])


def test_rasterize_rejects_bad_input():
    with pytest.raises(ValueError):
        rasterize(torch.zeros(3, 4), torch.zeros(1, 3, dtype=torch.long), (4, 4))
    with pytest.raises(ValueError):
        rasterize(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 5]]), (4, 4))
    with pytest.raises(ValueError):
        rasterize(torch.zeros(1, 3, 4), torch.tensor([[0.0, 1.0, 2.0]]), (4, 4))


def _pixel_fan(seed, size, n=40):
    """A triangle fan whose centre and rim vertices sit exactly on pixel centres, so that its interior edges
    pass through pixel centres; in doubled pixel units (integers) for exact tests. None if a triangle is thin."""
    g = np.random.default_rng(seed)
    centre = np.array([size // 2, size // 2]) * 2 + 1
    ang = np.sort(g.uniform(0, 2 * np.pi, n))
    rim = (np.floor(size / 2 + np.stack([np.cos(ang), np.sin(ang)], 1) * g.uniform(0.3, 0.48, (n, 1)) * size)) * 2 + 1
    pts = np.concatenate([centre[None], rim]).astype(np.int64)
    tri = np.array([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    if (np.abs(_edge(pts[tri[:, 1]], pts[tri[:, 2]], pts[tri[:, 0]])) < 4).any():
        return None
    return pts, tri


def _edge(a, b, p):
    """Edge function of p against the line a -> b (exact for integer inputs)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rasterize_is_watertight_on_edges_through_pixel_centres(dtype):
    """Every pixel centre inside a fan, including those exactly on interior edges and vertices, is covered by a
    triangle that contains it (exact integer test); only the outer boundary may go either way."""
    checked = 0
    for seed in range(12):
        for size in (31, 64):
            fan = _pixel_fan(seed, size)
            if fan is None:
                continue
            pts, tri = fan
            ndc = np.stack([pts[:, 0] / size - 1, 1 - pts[:, 1] / size], 1)
            pos = torch.tensor(np.concatenate([ndc, np.zeros((len(pts), 1)), np.ones((len(pts), 1))], 1), dtype=dtype)
            centres = np.stack(np.meshgrid(np.arange(size) * 2 + 1, np.arange(size) * 2 + 1), -1)  # (H, W, 2) as (x, y)
            corners = pts[tri]  # (F, 3, 2)
            ends = [corners[None, None, :, i % 3] for i in range(1, 5)]
            e = np.stack([_edge(ends[i], ends[i + 1], centres[:, :, None]) for i in range(3)], -1)  # (H, W, F, 3)
            contains = (e >= 0).all(-1) | (e <= 0).all(-1)
            rim_a, rim_b = pts[tri[:, 1]], pts[tri[:, 2]]
            on_rim = (_edge(rim_a[None, None], rim_b[None, None], centres[:, :, None]) == 0).any(-1)
            must = contains.any(-1) & ~on_rim
            for t in (tri, tri[:, ::-1].copy()):
                tid = rasterize(pos[None], torch.tensor(t), (size, size)).triangle_ids()[0].numpy()
                assert (tid[must] >= 0).all(), f"crack at seed {seed}, size {size}"
                hit = tid >= 0
                assert contains[hit, tid[hit]].all()
            checked += must.sum()
    assert checked > 5000


def _smooth_scene(dtype=torch.float64):
    """Two triangles sharing an edge (a bent quad) plus a separate occluder."""
    verts = torch.tensor(
        [
            [-0.9, -0.7, -2.2], [0.8, -0.8, -2.6], [0.7, 0.9, -2.3], [-0.8, 0.7, -2.0],
            [-0.2, -0.3, -1.6], [0.4, -0.1, -1.7], [0.0, 0.5, -1.65],
        ],
        dtype=dtype,
    )
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]], dtype=torch.int32)
    return verts, tri


def _fd_check(fn, pos, eps=1e-6, n_check=12, seed=0):
    pos = pos.clone().requires_grad_(True)
    out = fn(pos)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    grad = pos.grad.clone()
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, pos.shape[1], (n_check,), generator=g)
    comp = torch.randint(0, 4, (n_check,), generator=g)
    checked = 0
    for v, c in zip(idx.tolist(), comp.tolist()):
        p1, p2 = pos.detach().clone(), pos.detach().clone()
        p1[0, v, c] += eps
        p2[0, v, c] -= eps
        num = ((fn(p1) - fn(p2)) * weights).sum() / (2 * eps)
        torch.testing.assert_close(grad[0, v, c], num, atol=1e-5, rtol=1e-4)
        checked += abs(float(num)) > 1e-6
    return checked


def test_interpolate_gradients_match_finite_differences():
    verts, tri = _smooth_scene()
    attr = torch.randn(verts.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def render(pos):
        return interpolate(attr, rasterize(pos, tri, (H, W)), tri)

    assert _fd_check(render, _to_clip(verts)) >= 4


def test_interpolate_matches_the_rast_image_pixel_by_pixel():
    """interpolate (and interpolate_covered) against an independent reading of nvdiffrast's rast image: per covered
    pixel, the corners' attributes blended with the image's (u, v); values and gradients to the positions and the
    attributes, on a batch of two images with per-image attributes."""
    verts, tri = _random_scene(3, n_tri=10)
    pos = torch.cat([_to_clip(verts), _to_clip(verts * torch.tensor([1.1, 0.9, 1.0], dtype=verts.dtype))])
    pos.requires_grad_(True)
    g = torch.Generator().manual_seed(7)
    attr = torch.randn(2, verts.shape[0], 3, dtype=pos.dtype, generator=g, requires_grad=True)
    weights = torch.randn(2, H, W, 3, dtype=pos.dtype, generator=g)
    rast = rasterize(pos, tri, (H, W))
    image = rast.image()
    assert (image[..., 3] > 0).sum() > 100
    got = interpolate(attr, rast, tri)
    expected = torch.zeros_like(got)
    for b in range(2):
        for i in range(H):
            for j in range(W):
                t = int(image[b, i, j, 3]) - 1
                if t >= 0:
                    u, v = image[b, i, j, 0], image[b, i, j, 1]
                    a0, a1, a2 = (attr[b, int(k)] for k in tri[t])
                    expected[b, i, j] = u * a0 + v * a1 + (1 - u - v) * a2
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    covered = interpolate_covered(attr, rast, tri)
    torch.testing.assert_close(covered, got.reshape(-1, 3)[rast.pid], rtol=0, atol=0)
    g_got = torch.autograd.grad((got * weights).sum(), (pos, attr), retain_graph=True)
    g_exp = torch.autograd.grad((expected * weights).sum(), (pos, attr))
    assert g_got[0].abs().sum() > 0
    for a, b in zip(g_got, g_exp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_interpolate_gradient_wrt_attributes():
    verts, tri = _smooth_scene()
    attr = torch.randn(verts.shape[0], 2, dtype=torch.float64, requires_grad=True)
    rast = rasterize(_to_clip(verts), tri, (H, W))
    out = interpolate(attr, rast, tri)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, rast, tri), (attr,))
    assert out.shape == (1, H, W, 2)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")  # raised inside torch.func (torch 2.14)
def test_pixel_barycentrics_values_and_derivatives_in_both_modes():
    """Barycentrics of fixed (pixel, triangle) pairs on a batch of two images: equal to rasterize's in both forms (a
    triangle index per pixel, or one triangle row per pixel), derivatives checked by finite differences in reverse
    and forward mode, and a vmap of forward-mode derivatives of the per-pixel form (how the Levenberg-Marquardt
    stage takes its Jacobian) equal to one jvp per tangent. Rasterize's depth is the z-buffer's: equal to ``z/w``
    interpolated with the screen-space weights ``l_i ~ u_i w_i`` recovered from the barycentrics."""
    verts, tri = _smooth_scene()
    shift = torch.tensor([0.05, -0.03, 0.1], dtype=verts.dtype)
    pos = torch.cat([_to_clip(verts), _to_clip(verts + shift)])  # two images: pixel ids carry a batch index
    rast = rasterize(pos, tri, (H, W))
    flat = rast.image().view(-1, 4)
    pid = (flat[:, 3] > 0).nonzero().squeeze(1)
    tid = flat[pid, 3].long() - 1
    bary = pixel_barycentrics(pos, tri, pid, tid, (H, W))
    torch.testing.assert_close(bary, flat[pid, :2], atol=1e-12, rtol=0)
    per_pixel = tri.index_select(0, tid)
    torch.testing.assert_close(pixel_barycentrics(pos, per_pixel, pid, None, (H, W)), bary, atol=1e-12, rtol=0)

    corners = pos[torch.div(pid, H * W, rounding_mode="floor")[:, None], per_pixel.long()]  # (N, 3, 4)
    weights = torch.cat([bary, 1 - bary.sum(-1, keepdim=True)], -1) * corners[..., 3]
    depth = (weights * corners[..., 2] / corners[..., 3]).sum(-1) / weights.sum(-1)
    torch.testing.assert_close(flat[pid, 2], depth, atol=1e-9, rtol=0)

    sub = torch.arange(0, pid.numel(), 7)  # a few pixels keep gradcheck quick
    assert torch.autograd.gradcheck(
        lambda p: pixel_barycentrics(p, tri, pid[sub], tid[sub], (H, W)), (pos.clone().requires_grad_(True),),
        check_forward_ad=True, check_backward_ad=True,
    )
    tangents = torch.randn(3, *pos.shape, dtype=pos.dtype, generator=torch.Generator().manual_seed(2))

    def uv(p):
        return pixel_barycentrics(p, per_pixel, pid, None, (H, W))

    batched = torch.func.vmap(lambda t: torch.func.jvp(uv, (pos,), (t,))[1])(tangents)
    for k in range(3):
        torch.testing.assert_close(batched[k], torch.func.jvp(uv, (pos,), (tangents[k],))[1])


def test_antialias_gradients_match_finite_differences():
    verts, tri = _smooth_scene()
    ones = torch.ones(verts.shape[0], 1, dtype=torch.float64)
    shade = torch.linspace(0.2, 1.0, verts.shape[0], dtype=torch.float64)[:, None]

    def render(pos):
        rast = rasterize(pos, tri, (H, W))
        col = interpolate(torch.cat([ones, shade], -1), rast, tri)
        return antialias(col, rast, pos, tri)

    assert _fd_check(render, _to_clip(verts), n_check=20) >= 6


def test_antialias_coverage_tracks_edge_position():
    """A vertical edge at a sub-pixel position x_e gives the straddling pixel a coverage of x_e - floor(x_e)."""
    for x_edge in (5.3, 5.7, 6.1):
        x_ndc = x_edge / 10 * 2 - 1
        pos = torch.tensor(
            [[[-1.5, -1.5, 0.0, 1.0], [x_ndc, -1.5, 0.0, 1.0], [x_ndc, 1.5, 0.0, 1.0], [-1.5, 1.5, 0.0, 1.0]]],
            dtype=torch.float64,
        )
        tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
        rast = rasterize(pos, tri, (4, 10))
        mask = rast.coverage(torch.float64)[..., None]
        cov = antialias(mask, rast, pos, tri)[0, 2, :, 0]
        col = int(np.floor(x_edge))
        assert cov[col].item() == pytest.approx(x_edge - col, abs=1e-9)
        assert cov[: col].min().item() == 1.0
        assert cov[col + 1 :].max().item() == 0.0


def test_antialias_of_a_batch_equals_each_image_alone():
    """Pixel pairs are found across the whole batch: the second image's pairs must land in the second image."""
    verts, tri = _smooth_scene()
    shade = torch.linspace(0.2, 1.0, verts.shape[0], dtype=torch.float64)[:, None]
    shift = torch.tensor([0.07, -0.05, 0.1], dtype=verts.dtype)
    images = [_to_clip(verts), _to_clip(verts + shift)]
    alone = []
    for pos in images:
        rast = rasterize(pos, tri, (H, W))
        alone.append(antialias(interpolate(shade, rast, tri), rast, pos, tri))
    pos = torch.cat(images)
    rast = rasterize(pos, tri, (H, W))
    batched = antialias(interpolate(shade, rast, tri), rast, pos, tri)
    assert not torch.equal(alone[1], interpolate(shade, rasterize(images[1], tri, (H, W)), tri))  # edges blended
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-12, rtol=0)


def test_back_face_culling():
    """A closed mesh seen from outside looks the same with culling; a clockwise triangle disappears."""
    cube = torch.tensor([[x, y, z] for x in (-0.4, 0.4) for y in (-0.4, 0.4) for z in (-0.4, 0.4)], dtype=torch.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tri = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    rot = torch.tensor([[0.8, 0.0, 0.6], [0.36, 0.8, -0.48], [-0.48, 0.6, 0.64]], dtype=torch.float64)
    verts = cube @ rot.T + torch.tensor([0.0, 0.0, -2.5], dtype=torch.float64)
    pos = _to_clip(verts)
    # Outward normals of the cube, so that counter-clockwise faces point away from the centre.
    corners = verts[tri]
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    outward = (normal * (corners.mean(1) - verts.mean(0))).sum(-1) > 0
    tri = torch.where(outward[:, None], tri, tri.flip(1))
    full = rasterize(pos, tri, (H, W)).image()
    culled = rasterize(pos, tri, (H, W), cull_back=True).image()
    assert (full[..., 3] > 0).sum() > 50
    torch.testing.assert_close(full, culled)
    single = _to_clip(torch.tensor([[-0.5, -0.5, -2.0], [0.5, -0.5, -2.0], [0.0, 0.5, -2.0]], dtype=torch.float64))
    tri1 = torch.tensor([[0, 1, 2]])
    assert rasterize(single, tri1, (H, W), cull_back=True).pid.numel() > 0
    assert rasterize(single, tri1.flip(1), (H, W), cull_back=True).pid.numel() == 0
