"""Pure-torch differentiable rasterizer with nvdiffrast's data layouts (CPU, CUDA and MPS).

Conventions (the one place they are stated for the renderer)
-------------------------------------------------------------
* Input positions are homogeneous clip-space coordinates ``pos`` of shape (B, V, 4) as in OpenGL:
  ``x_ndc = x / w``, ``y_ndc = y / w``, ``z_ndc = z / w``. Triangles with a vertex at ``w <= 0`` are dropped
  (there is no near-plane clipping) and pixels whose depth ``z/w`` lies outside [-1, 1] are discarded.
* Image layout is NHWC with **row 0 at the top**: NDC ``y = +1`` is the top edge of the image and ``y = -1``
  the bottom edge, NDC ``x = -1`` is the left edge. This differs from nvdiffrast (whose row 0 is at ``y = -1``)
  so that images match the project's convention (x right, y down). In pixel units
  ``x_px = (x_ndc + 1) * W / 2`` and ``y_px = (1 - y_ndc) * H / 2``; pixel ``(row i, column j)`` is sampled at its
  centre ``(j + 0.5, i + 0.5)``. Rasterizing UV coordinates as positions, ``pos = (2u - 1, 2v - 1, 0, 1)``, puts
  ``v = 1`` in row 0, i.e. an ordinary texture image with the origin of ``v`` at the bottom.
* Both windings are drawn unless ``cull_back=True`` (then only counter-clockwise triangles in NDC). A pixel
  belongs to a triangle when its centre lies inside or on the triangle's edges. The test is watertight: the two
  triangles that share an edge decide from the same edge line, computed from the same two vertices in the same
  order, and a centre exactly on a shared edge goes to exactly one of them (the one to its right; on a horizontal
  edge to both, the z-buffer then choosing), so a closed surface has no cracks. The z-buffer keeps the smallest
  ``z/w`` (ties go to the larger triangle id).
* :func:`rasterize` returns a :class:`Rasterization`: the covered pixels (flat indices into (B, H, W)), the visible
  triangle, the perspective-correct barycentrics ``(u, v)`` (an attribute is ``u * a0 + v * a1 + (1 - u - v) * a2``
  for the triangle's vertices ``(i0, i1, i2) = tri[triangle_id]``) and the z-buffer's ``z/w`` of each. Its
  ``image()`` is nvdiffrast's ``rast`` layout, (B, H, W, 4) ``(u, v, z/w, triangle_id + 1)`` with
  ``triangle_id + 1 == 0`` on background.

Gradients
---------
* :func:`rasterize` is point sampled: the triangle id and coverage are piecewise constant and carry no gradient.
  When ``pos`` requires grad, ``u`` and ``v`` are recomputed differentiably for the winning triangle of each
  pixel, so the barycentrics carry gradients to the vertex positions; ``z/w`` and the id carry none.
* :func:`interpolate_covered` (per covered pixel) and :func:`interpolate` (as an image) are differentiable with
  respect to ``attr`` and, through the barycentrics, to ``pos``.
* :func:`antialias` blends colours across silhouette edges by the analytic sub-pixel position of the edge, which
  gives the silhouette (visibility) gradients to ``pos`` that point sampling lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Rasterization", "rasterize", "pixel_barycentrics", "interpolate", "interpolate_covered", "antialias"]

_W_EPS = 1e-8
_DEFAULT_CHUNK = 1 << 22
#: Edge crossings are clamped to +-this many columns (far outside any image, exact in float32).
_COLUMN_LIMIT = float(1 << 24)


def _check_pos_tri(pos: torch.Tensor, tri: torch.Tensor) -> None:
    if not isinstance(pos, torch.Tensor) or pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"pos must be a (B, V, 4) clip-space tensor, got shape {tuple(getattr(pos, 'shape', ()))}.")
    if not pos.is_floating_point():
        raise ValueError("pos must be a floating-point tensor.")
    if not isinstance(tri, torch.Tensor) or tri.dim() != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must be an (F, 3) integer tensor, got shape {tuple(getattr(tri, 'shape', ()))}.")
    if tri.is_floating_point() or tri.dtype == torch.bool:
        raise ValueError("tri must hold integer vertex indices.")
    if tri.device != pos.device:
        raise ValueError("pos and tri must be on the same device.")
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= pos.shape[1]):
        raise ValueError("tri indexes vertices outside pos.")


def _check_rast(rast: Rasterization) -> None:
    if not isinstance(rast, Rasterization):
        raise ValueError(f"rast must be the Rasterization that rasterize returned, got {type(rast).__name__}.")


def _screen(pos: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip space (..., 4) -> pixel x, pixel y, z/w and w, each (...)."""
    w = pos[..., 3]
    w_safe = torch.where(w.abs() > _W_EPS, w, torch.full_like(w, _W_EPS))
    x = (pos[..., 0] / w_safe + 1.0) * (0.5 * width)
    y = (1.0 - pos[..., 1] / w_safe) * (0.5 * height)
    return x, y, pos[..., 2] / w_safe, w


def _corners(pos: torch.Tensor, tri: torch.Tensor, b_idx: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
    """(N, 3, C) corner rows ``pos[b_idx[n], tri[tid[n]]]`` of (B, V, C) ``pos`` (one packed ``index_select``)."""
    n_vert = pos.shape[1]
    rows = (tri.index_select(0, tid) + (b_idx * n_vert)[:, None]).reshape(-1)
    return pos.reshape(-1, pos.shape[-1]).index_select(0, rows).view(tid.shape[0], 3, pos.shape[-1])


def _edge_bary(x: torch.Tensor, y: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Screen-space barycentrics of points (px, py) for triangles with corners x, y of shape (..., 3).

    Returns l0, l1, l2 and the doubled signed area, each of shape (...).
    """
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    area_safe = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    l0 = e0 / area_safe
    l1 = e1 / area_safe
    return l0, l1, 1.0 - l0 - l1, area


@dataclass(frozen=True)
class Rasterization:
    """What :func:`rasterize` found: the covered pixel centres, each with its visible triangle.

    Attributes
    ----------
    shape : (B, H, W)
    pid : (N,) long
        Flat index of each covered pixel into (B, H, W), increasing.
    tid : (N,) long
        Index of the visible triangle at each covered pixel.
    bary : (N, 2)
        Perspective-correct barycentrics ``(u, v)`` of the pixel centre in that triangle (an attribute is
        ``u * a0 + v * a1 + (1 - u - v) * a2``); differentiable with respect to the clip-space positions when they
        require grad.
    depth : (N,)
        The z-buffer's ``z/w`` (no gradient).

    :meth:`image` gives nvdiffrast's ``rast`` layout; :func:`interpolate` and :func:`antialias` read the samples
    directly.
    """

    shape: tuple[int, int, int]
    pid: torch.Tensor
    tid: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    def _scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(N, C) per-pixel values -> (B, H, W, C) image, zero on background."""
        batch, height, width = self.shape
        out = values.new_zeros(batch * height * width, values.shape[-1])
        return out.index_put_((self.pid,), values).view(batch, height, width, values.shape[-1])

    def image(self) -> torch.Tensor:
        """(B, H, W, 4) ``(u, v, z/w, triangle_id + 1)`` as nvdiffrast's ``rast``: zero on background, ``u, v``
        carrying the barycentrics' gradients."""
        extra = torch.stack([self.depth.to(self.bary.dtype), (self.tid + 1).to(self.bary.dtype)], -1)
        return self._scatter(torch.cat([self.bary, extra], -1))

    def triangle_ids(self) -> torch.Tensor:
        """(B, H, W) long index of the visible triangle, -1 on background."""
        batch, height, width = self.shape
        ids = torch.full((batch * height * width,), -1, dtype=torch.long, device=self.pid.device)
        return ids.index_put_((self.pid,), self.tid).view(batch, height, width)

    def coverage(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, H, W) 1 where a triangle covers the pixel centre, 0 elsewhere (``dtype``: the barycentrics')."""
        batch, height, width = self.shape
        cov = torch.zeros(batch * height * width, dtype=dtype or self.bary.dtype, device=self.pid.device)
        return cov.index_fill_(0, self.pid, 1.0).view(batch, height, width)


def rasterize(
    pos: torch.Tensor,
    tri: torch.Tensor,
    resolution: tuple[int, int],
    *,
    chunk_size: int = _DEFAULT_CHUNK,
    cull_back: bool = False,
) -> torch.Tensor:
    """Rasterize triangles with a z-buffer into nvdiffrast's ``rast`` layout.

    Parameters
    ----------
    pos : (B, V, 4) float tensor
        Clip-space vertex positions (see the module docstring for conventions).
    tri : (F, 3) integer tensor
        Vertex indices of each triangle, on the device of ``pos``.
    resolution : (H, W)
        Output size in pixels.
    chunk_size : int
        Largest number of candidate (triangle, pixel) pairs processed at once; bounds peak memory.
    cull_back : bool
        Skip triangles that are clockwise in NDC (OpenGL back faces); about halves the work for closed meshes
        seen from outside. Off by default, like nvdiffrast.

    Returns
    -------
    Rasterization
        The covered pixels with their triangles, barycentrics (carrying gradients to ``pos`` when it requires
        grad) and depths; ``.image()`` is nvdiffrast's ``(B, H, W, 4)`` layout.
    """
    _check_pos_tri(pos, tri)
    if len(resolution) != 2 or int(resolution[0]) <= 0 or int(resolution[1]) <= 0:
        raise ValueError(f"resolution must be a positive (H, W) pair, got {resolution}.")
    height, width = int(resolution[0]), int(resolution[1])
    batch = pos.shape[0]
    tri = tri.long()
    shape = (batch, height, width)
    empty = torch.zeros(0, dtype=torch.long, device=pos.device)
    if tri.shape[0] == 0:
        return Rasterization(shape, empty, empty, pos.new_zeros(0, 2), pos.new_zeros(0))
    rows = corner_rows(tri, batch, pos.shape[1])
    pid, tid, depth = _visible_samples(pos.detach(), tri, rows, height, width, chunk_size, cull_back)
    # Recompute the winners' barycentrics, differentiably when pos requires grad; the depth is the z-buffer's.
    bary = _barycentrics(pos, tri, pid, tid, (height, width), rows)
    return Rasterization(shape, pid, tid, bary, depth)


def pixel_barycentrics(
    pos: torch.Tensor, tri: torch.Tensor, pid: torch.Tensor, tid: torch.Tensor | None, resolution: tuple[int, int]
) -> torch.Tensor:
    """Perspective-correct barycentrics ``(u, v)`` of given triangles at given pixel centres.

    The differentiable half of :func:`rasterize`, for a visibility that is already known (for example kept fixed
    while a Jacobian is taken): no data-dependent shapes, so it works under ``torch.func`` transforms.

    Parameters
    ----------
    pos : (B, V, 4) clip-space positions; tri : (F, 3) long tensor
    pid : (N,) flat pixel indices into (B, H, W)
    tid : (N,) triangle index per pixel, or None when ``tri`` holds one triangle per pixel (F == N, row n for
        ``pid[n]``; what a Jacobian over a fixed visibility wants: no per-triangle table, no gather)
    resolution : (H, W)

    Returns
    -------
    (N, 2) ``(u, v)`` as in :attr:`Rasterization.bary`
    """
    return _barycentrics(pos, tri, pid, tid, resolution)


def corner_rows(tri: torch.Tensor, batch: int, n_vert: int) -> torch.Tensor:
    """(3*B*F,) rows of flat (B*V, ...) vertex arrays at the triangles' corners, corner-major: corner c of
    triangle f in image b at ``c*B*F + b*F + f`` (one dim-0 gather fetches every corner of every image)."""
    if batch == 1:
        return tri.T.reshape(-1)
    return (tri.T[:, None, :] + n_vert * torch.arange(batch, device=tri.device)[:, None]).reshape(-1)


def _barycentrics(
    pos: torch.Tensor, tri: torch.Tensor, pid: torch.Tensor, tid: torch.Tensor | None, resolution: tuple[int, int],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`pixel_barycentrics`, reusing the caller's :func:`corner_rows` when it has them (``tid`` given)."""
    height, width = int(resolution[0]), int(resolution[1])
    n_vert = pos.shape[1]
    n_tri = tri.shape[0]
    b_idx = torch.div(pid, height * width, rounding_mode="floor")
    pix = pid - b_idx * (height * width)
    py = torch.div(pix, width, rounding_mode="floor").to(pos.dtype) + 0.5
    px = (pix % width).to(pos.dtype) + 0.5
    # Per triangle, relative to corner 2 (d = corner - corner 2, in pixels): the screen barycentrics are
    # l0 = (d1y dx - d1x dy) / A, l1 = (d0x dy - d0y dx) / A with (dx, dy) = pixel - corner 2 and A the doubled
    # area, and the perspective-correct ones are q_i / (q0 + q1 + q2) with q_i = l_i / w_i. Scaled by A w0 w1 w2
    # (which cancels), each q_i is affine in (dx, dy) with division-free coefficients, so the per-pixel work is
    # a few multiply-adds on per-triangle coefficients, and most of the graph is per triangle, not per pixel.
    x, y, _, w = (c.reshape(-1) for c in _screen(pos, height, width))
    if tid is None:
        rows = (tri.T + n_vert * b_idx).reshape(-1)  # (3*N,)
    elif rows is None:
        rows = corner_rows(tri, pos.shape[0], n_vert)
    x0, x1, x2 = x.index_select(0, rows).view(3, -1).unbind(0)
    y0, y1, y2 = y.index_select(0, rows).view(3, -1).unbind(0)
    w0, w1, w2 = w.index_select(0, rows).view(3, -1).unbind(0)
    d0x, d1x, d0y, d1y = x0 - x2, x1 - x2, y0 - y2, y1 - y2
    area = d0x * d1y - d1x * d0y
    w12, w02, w01 = w1 * w2, w0 * w2, w0 * w1
    per_tri = (
        x2, y2,
        d1y * w12, -d1x * w12,  # q0 = a0 dx + b0 dy
        -d0y * w02, d0x * w02,  # q1 = a1 dx + b1 dy
        (d0y - d1y) * w01, (d1x - d0x) * w01, area * w01,  # q2 = a2 dx + b2 dy + c2
    )
    # One 1-D gather per coefficient (its gradient is a 1-D index_add, the fast CPU path).
    g = per_tri if tid is None else [c.index_select(0, tid + b_idx * n_tri) for c in per_tri]
    dx, dy = px - g[0], py - g[1]
    q0 = torch.addcmul(g[2] * dx, g[3], dy)
    q1 = torch.addcmul(g[4] * dx, g[5], dy)
    denom = q0 + q1 + torch.addcmul(torch.addcmul(g[8], g[6], dx), g[7], dy)
    return torch.stack([q0 / denom, q1 / denom], -1)


def _min3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.minimum(a, b), c)


def _max3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.maximum(a, b), c)


@torch.no_grad()
def _visible_samples(
    pos: torch.Tensor, tri: torch.Tensor, rows: torch.Tensor, height: int, width: int, chunk_size: int,
    cull_back: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z-buffered flat pixel index, triangle index and ``z/w`` of the visible triangle at each covered pixel, in
    pixel order (``rows``: :func:`corner_rows`)."""
    batch = pos.shape[0]
    n_tri = tri.shape[0]
    dev = pos.device
    # Per corner, contiguous (3, B*F) screen coordinates (x right, y down, in pixels), z/w and w.
    w = pos[..., 3]
    w_safe = torch.where(w.abs() > _W_EPS, w, torch.full_like(w, _W_EPS))
    vert = torch.stack([(pos[..., 0] / w_safe + 1.0) * (0.5 * width), (1.0 - pos[..., 1] / w_safe) * (0.5 * height),
                        pos[..., 2] / w_safe, w], 0).reshape(4, -1)  # (4, B*V)
    x, y, z, w = (vert[c].index_select(0, rows).view(3, -1) for c in range(4))
    # x + y is finite exactly when both are (short of an overflow at ~1e38 pixels)
    finite = torch.isfinite(x + y)
    valid = (w[0] > _W_EPS) & (w[1] > _W_EPS) & (w[2] > _W_EPS) & finite[0] & finite[1] & finite[2]
    area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])
    # Pixel rows grow downwards, so counter-clockwise triangles in NDC have a negative area here.
    valid &= (area < -1e-12) if cull_back else (area.abs() > 1e-12)
    # Rows whose centres fall in the bounding box; columns are decided by the edges alone, within the box widened
    # by a pixel (which only bounds the work of sliver triangles) and the image.
    x_lo = torch.ceil(_min3(x[0], x[1], x[2]) - 1.5).clamp(0, width)
    x_hi = torch.floor(_max3(x[0], x[1], x[2]) + 0.5).clamp(-1, width - 1)
    y_lo = torch.ceil(_min3(y[0], y[1], y[2]) - 0.5).clamp(0, height)
    y_hi = torch.floor(_max3(y[0], y[1], y[2]) - 0.5).clamp(-1, height - 1)
    ny = (y_hi - y_lo + 1).long()
    counts = torch.where(valid & (x_hi >= x_lo), ny.clamp(min=0), torch.zeros_like(ny))  # rows per triangle
    keep = counts.nonzero().squeeze(1)
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if keep.numel() == 0:
        return empty, empty, pos.new_zeros(0)
    x, y, z = x.index_select(1, keep), y.index_select(1, keep), z.index_select(1, keep)
    area = area.index_select(0, keep)
    ox, oy = x_lo.index_select(0, keep), y_lo.index_select(0, keep)
    # Coverage. Each edge's line function E = a x + b y + c is formed from its two vertices in a canonical order
    # (lower vertex id first) in image-centred coordinates: the same numbers for both triangles that share the
    # edge. On a pixel row it crosses at u = -(b y + c) / a (again the same number for both); with s = +-1 the
    # sign that makes E positive inside the triangle, the edge admits the columns whose centres are >= u when
    # s a > 0 and < u when s a < 0, so that the two triangles of an edge split every row between them, with no
    # pixel centre lost or shared (watertight). Horizontal edges (a = 0) bound no row inside the bounding box.
    vid = tri.index_select(0, torch.remainder(keep, n_tri)).T  # (3, K)
    cx, cy = x - 0.5 * width, y - 0.5 * height
    # The three edges at once, (3, K) each: edge i runs between corners i + 1 and i + 2.
    swap = vid.roll(-1, 0) > vid.roll(-2, 0)
    xj, xk = cx.roll(-1, 0), cx.roll(-2, 0)
    yj, yk = cy.roll(-1, 0), cy.roll(-2, 0)
    xp, yp = torch.where(swap, xk, xj), torch.where(swap, yk, yj)
    dx, dy = torch.where(swap, xj, xk) - xp, torch.where(swap, yj, yk) - yp
    bounds_left = (dy < 0) == ((area > 0) != swap)  # s * a > 0 with a = -dy, s = +1 for (orient xor swap)
    flat = dy == 0
    zero, inf = torch.zeros_like(dy), torch.full_like(dy, float("inf"))
    # Per triangle: per edge -a (1 where horizontal), b, c, padding of the left bound, padding of the right bound
    # minus one (each (3,)), then the row origin, the right and the left end of the widened box.
    table = torch.cat([
        torch.where(flat, torch.ones_like(dy), dy), dx, dy * xp - dx * yp,
        torch.where(bounds_left & ~flat, zero, -inf), torch.where(~bounds_left & ~flat, zero, inf) - 1.0,
        torch.stack([oy - 0.5 * height, x_hi.index_select(0, keep), ox]),
    ])  # (18, K)
    rows_per = counts.index_select(0, keep)
    n_rows = int(rows_per.sum())
    row_tri = torch.repeat_interleave(torch.arange(keep.numel(), device=dev), rows_per, output_size=n_rows)
    row_first = torch.cumsum(rows_per, 0) - rows_per
    qy = torch.arange(n_rows, device=dev) - row_first.index_select(0, row_tri)
    t = table.index_select(1, row_tri)  # (18, n_rows)
    e0, e1, e2, pad_lo, pad_hi = t[:15].view(5, 3, -1).unbind(0)  # each (3, n_rows)
    ys = qy.to(pos.dtype) + 0.5 + t[15]  # image-centred row coordinate
    # column >= u'  <=>  column >= ceil(u'), column < u'  <=>  column <= ceil(u') - 1, u' = u + W/2 - 1/2
    # (clamped: a nearly horizontal edge may cross at +-inf, and inf + padding must not give nan)
    col = torch.ceil(torch.addcmul(e2, e1, ys) / e0 + (0.5 * width - 0.5)).clamp_(-_COLUMN_LIMIT, _COLUMN_LIMIT)
    lo = torch.maximum(t[17], (col + pad_lo).amax(0))
    hi = torch.minimum(t[16], (col + pad_hi).amin(0))
    span = (hi - lo + 1.0).clamp(min=0.0)
    rows = span.nonzero().squeeze(1)
    if rows.numel() == 0:
        return empty, empty, pos.new_zeros(0)
    row_tri = row_tri.index_select(0, rows)
    span = span.index_select(0, rows).long()
    lo = lo.index_select(0, rows)
    # Depth, affine in the pixel coordinates relative to the bounding-box corner (small numbers: accurate).
    x, y = x - ox, y - oy
    dx0, dx1, dy0, dy1 = x[0] - x[2], x[1] - x[2], y[0] - y[2], y[1] - y[2]
    dz0, dz1 = z[0] - z[2], z[1] - z[2]
    za = (dz0 * dy1 - dz1 * dy0) / area  # d depth / d x
    zb = (dz1 * dx0 - dz0 * dx1) / area  # d depth / d y
    zc = z[2] - za * x[2] - zb * y[2]
    qy = qy.index_select(0, rows).to(pos.dtype) + 0.5
    rz = torch.stack([za, zb, zc, ox], 1).index_select(0, row_tri)  # (R, 4)
    packed = torch.stack([rz[:, 0], torch.addcmul(rz[:, 2], rz[:, 1], qy), lo - rz[:, 3]], 1)  # (R, 3)
    flat_tri = keep.index_select(0, row_tri)
    b_row = torch.div(flat_tri, n_tri, rounding_mode="floor")
    tri_row = flat_tri - b_row * n_tri
    base_row = (b_row * height + (oy.index_select(0, row_tri) + qy - 0.5).long()) * width + lo.long()
    ends = torch.cumsum(span, 0)
    starts = ends - span
    n_span_rows = rows.numel()
    pids, depths, tids = [], [], []
    start_row = 0
    start_count = 0
    while start_row < n_span_rows:
        # Largest run of rows whose candidates fit in the chunk (at least one row).
        stop_row = max(int(torch.searchsorted(ends, start_count + chunk_size, right=True)), start_row + 1)
        n_cand = int(ends[stop_row - 1]) - start_count
        local_row = torch.repeat_interleave(
            torch.arange(start_row, stop_row, device=dev), span[start_row:stop_row], output_size=n_cand
        )
        v = packed.index_select(0, local_row)
        qx = torch.arange(start_count, start_count + n_cand, device=dev) - starts.index_select(0, local_row)
        depth = torch.addcmul(v[:, 1], v[:, 0], qx.to(pos.dtype) + v[:, 2] + 0.5)
        # Samples outside [-1, 1] (or nan) get an infinite depth, which never wins below.
        depths.append(torch.where((depth >= -1.0) & (depth <= 1.0), depth, float("inf")))
        pids.append(base_row.index_select(0, local_row) + qx)
        tids.append(tri_row.index_select(0, local_row))
        start_row = stop_row
        start_count = int(ends[stop_row - 1])
    pid = torch.cat(pids)
    depth = torch.cat(depths)
    tid = torch.cat(tids)
    n_pix = batch * height * width
    zbuf = torch.full((n_pix,), float("inf"), dtype=depth.dtype, device=dev)
    zbuf.scatter_reduce_(0, pid, depth, reduce="amin")
    front = torch.where((depth <= zbuf.index_select(0, pid)) & (depth < float("inf")), tid, torch.full_like(tid, -1))
    best = torch.full((n_pix,), -1, dtype=torch.long, device=dev)
    best.scatter_reduce_(0, pid, front, reduce="amax")
    pid = (best >= 0).nonzero().squeeze(1)
    return pid, best.index_select(0, pid), zbuf.index_select(0, pid)


def interpolate_covered(attr: torch.Tensor, rast: Rasterization, tri: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at the covered pixels of ``rast``.

    Parameters
    ----------
    attr : (B, V, C) or (V, C) float tensor
        Vertex attributes; a (V, C) tensor (or batch 1) is shared by every image in the batch.
    rast : Rasterization
        Output of :func:`rasterize` for the same ``tri``.
    tri : (F, 3) integer tensor

    Returns
    -------
    (N, C) tensor
        The attribute at each covered pixel ``rast.pid[n]``. Differentiable with respect to ``attr`` and, through
        ``rast.bary``, to the vertex positions given to :func:`rasterize`.
    """
    _check_rast(rast)
    if not isinstance(attr, torch.Tensor) or attr.dim() not in (2, 3):
        raise ValueError("attr must be a (B, V, C) or (V, C) tensor.")
    batch, height, width = rast.shape
    if attr.dim() == 3 and attr.shape[0] not in (1, batch):
        raise ValueError(f"attr has batch size {attr.shape[0]} but rast has {batch}.")
    tri = tri.long()
    pid, tid = rast.pid, rast.tid
    if attr.dim() == 2 or attr.shape[0] == 1:
        a = _corners((attr if attr.dim() == 2 else attr[0])[None], tri, torch.zeros_like(tid), tid)
    else:
        a = _corners(attr, tri, torch.div(pid, height * width, rounding_mode="floor"), tid)
    a0, a1, a2 = a.unbind(1)
    u, v = rast.bary.to(attr.dtype).unbind(-1)
    return torch.addcmul(torch.addcmul(a2, u[:, None], a0 - a2), v[:, None], a1 - a2)  # u a0 + v a1 + (1-u-v) a2


def interpolate(attr: torch.Tensor, rast: Rasterization, tri: torch.Tensor) -> torch.Tensor:
    """:func:`interpolate_covered` as an image: (B, H, W, C), zero on background pixels."""
    return rast._scatter(interpolate_covered(attr, rast, tri))


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Blend colours across silhouette edges by the edges' analytic sub-pixel positions.

    Candidates are pairs of horizontally or vertically adjacent pixels where one is background or whose
    triangles share no vertex (triangles that share one belong to one continuous surface). In a pair, the pixel
    whose triangle ``T`` has an edge crossing the segment between the two pixel centres is the front pixel when
    the other pixel is background or lies behind ``T``'s plane, and ``T``'s crossing edge is not shared with the
    other pixel's triangle. With ``t`` the fraction of the centre-to-centre segment at which that edge crosses
    it, the back pixel receives ``max(t - 0.5, 0)`` of the front colour and the front pixel ``max(0.5 - t, 0)``
    of the back colour. This is the idea of nvdiffrast's ``antialias`` in pure torch; only ``t`` carries
    gradients to ``pos`` (the choice of pairs and edges is piecewise constant).

    Parameters
    ----------
    color : (B, H, W, C) float tensor
        Image to antialias (for example the output of :func:`interpolate`).
    rast : Rasterization
        Output of :func:`rasterize` for ``pos`` and ``tri``.
    pos : (B, V, 4) float tensor
        Clip-space positions used for ``rast``.
    tri : (F, 3) integer tensor

    Returns
    -------
    (B, H, W, C) tensor
        Antialiased image; differentiable with respect to ``color`` and ``pos`` (silhouette gradients).
    """
    _check_rast(rast)
    _check_pos_tri(pos, tri)
    if color.dim() != 4 or tuple(color.shape[:3]) != tuple(rast.shape):
        raise ValueError("color must be a (B, H, W, C) tensor with the size of rast.")
    if pos.shape[0] != rast.shape[0]:
        raise ValueError("pos and rast must have the same batch size.")
    batch, height, width, channels = color.shape
    n_pix = height * width
    tri = tri.long()
    sel = _silhouette_pairs(rast, pos.detach(), tri)
    if sel is None:
        return color
    front, back, v0, v1 = sel
    # t = e(front) / (e(front) - e(back)) for the crossing edge's line function e (its scale cancels), with
    # the edge's end points taken differentiably from pos.
    b = torch.div(front, n_pix, rounding_mode="floor")
    screen = torch.stack(_screen(pos, height, width)[:2], -1).reshape(-1, 2)  # (B*V, 2)
    offset = b * pos.shape[1]
    p0 = screen.index_select(0, v0 + offset)
    d = screen.index_select(0, v1 + offset) - p0
    centres = torch.stack(
        _pixel_centres(front, height, width, pos.dtype) + _pixel_centres(back, height, width, pos.dtype)
    )  # (4, N): front x, y, back x, y
    ef = d[:, 0] * (centres[1] - p0[:, 1]) - d[:, 1] * (centres[0] - p0[:, 0])
    eb = d[:, 0] * (centres[3] - p0[:, 1]) - d[:, 1] * (centres[2] - p0[:, 0])
    t = (ef / (ef - eb)).clamp(0.0, 1.0)[:, None].to(color.dtype)
    flat_color = color.reshape(-1, channels)
    cf = flat_color.index_select(0, front)
    cb = flat_color.index_select(0, back)
    diff = cf - cb
    delta = torch.cat([(t - 0.5).clamp(min=0.0) * diff, (t - 0.5).clamp(max=0.0) * diff])
    return flat_color.index_add(0, torch.cat([back, front]), delta).view(batch, height, width, channels)


def _pixel_centres(idx: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y) of flat (B, H, W) pixel indices."""
    pix = idx % (height * width)
    return (pix % width).to(dtype) + 0.5, torch.div(pix, width, rounding_mode="floor").to(dtype) + 0.5


@torch.no_grad()
def _silhouette_pairs(
    rast: Rasterization, pos: torch.Tensor, tri: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The antialiased pairs of :func:`antialias`: flat front and back pixel indices and the vertex ids of the
    front triangle's crossing edge, each (N,); None when there are none."""
    batch, height, width = rast.shape
    ids = rast.triangle_ids() + 1  # (B, H, W) triangle id + 1, 0 on background
    # Flat indices of the left / upper pixel of each differing pair, from the positions k of the differences:
    # in the (B, H, W - 1) grid of horizontal pairs, k + k // (W - 1); in the (B, H - 1, W) grid of vertical
    # pairs, k + W * (k // ((H - 1) W)).
    k = (ids[..., :-1] != ids[..., 1:]).view(-1).nonzero().squeeze(1)
    left = k + torch.div(k, width - 1, rounding_mode="floor")  # (empty when W == 1)
    k = (ids[:, :-1] != ids[:, 1:]).view(-1).nonzero().squeeze(1)
    upper = k + width * torch.div(k, (height - 1) * width, rounding_mode="floor")
    a_idx = torch.cat([left, upper])
    b_idx = torch.cat([left + 1, upper + width])
    flat_ids = ids.view(-1)
    ta = flat_ids.index_select(0, a_idx).long() - 1
    tb = flat_ids.index_select(0, b_idx).long() - 1
    # Shared vertex: nine comparisons of contiguous corner columns (a broadcast (N, 3, 3) test is several times
    # slower on the CPU), in 32 bits.
    corner_ids = tri.T.to(torch.int32).contiguous()
    ia, ib = ta.clamp(min=0), tb.clamp(min=0)
    cols_a = [c.index_select(0, ia) for c in corner_ids]
    cols_b = [c.index_select(0, ib) for c in corner_ids]
    share = torch.zeros_like(ta, dtype=torch.bool)
    for ca in cols_a:
        for cb in cols_b:
            share |= ca == cb
    cand = ((ta < 0) | (tb < 0) | ~share).nonzero().squeeze(1)
    a_idx, b_idx, ta, tb = (x.index_select(0, cand) for x in (a_idx, b_idx, ta, tb))
    # Each ordered (front, back) candidate: the front pixel's triangle tested against the back pixel.
    front, back = torch.cat([a_idx, b_idx]), torch.cat([b_idx, a_idx])
    tf, tbk = torch.cat([ta, tb]), torch.cat([tb, ta])
    ok = (tf >= 0).nonzero().squeeze(1)
    front, back, tf, tbk = (x.index_select(0, ok) for x in (front, back, tf, tbk))
    if front.numel() == 0:
        return None
    bf = torch.div(front, height * width, rounding_mode="floor")
    sx, sy, sz, _ = _screen(_corners(pos, tri, bf, tf), height, width)  # each (N, 3)
    lf = torch.stack(_edge_bary(sx, sy, *_pixel_centres(front, height, width, pos.dtype))[:3], -1)  # (N, 3)
    lb = torch.stack(_edge_bary(sx, sy, *_pixel_centres(back, height, width, pos.dtype))[:3], -1)
    k = lb.argmin(-1, keepdim=True)
    tri_f = tri.index_select(0, tf)
    v0 = tri_f.gather(1, (k + 1) % 3).squeeze(1)
    v1 = tri_f.gather(1, (k + 2) % 3).squeeze(1)
    # The crossing edge (opposite corner k) must not be shared with the back pixel's triangle, and the back pixel
    # must be background or behind the front triangle's plane.
    tri_b = tri.index_select(0, tbk.clamp(min=0))
    shared = (tri_b == v0[:, None]).any(-1) & (tri_b == v1[:, None]).any(-1) & (tbk >= 0)
    zbuf = pos.new_zeros(batch * height * width).index_put_((rast.pid,), rast.depth.to(pos.dtype))
    behind = (tbk < 0) | ((lb * sz).sum(-1) < zbuf.index_select(0, back))
    crosses = (lb.gather(1, k).squeeze(1) < 0) & (lf.gather(1, k).squeeze(1) >= 0)
    sel = (crosses & behind & ~shared).nonzero().squeeze(1)
    if sel.numel() == 0:
        return None
    return tuple(x.index_select(0, sel) for x in (front, back, v0, v1))
