"""Pure tensor helpers of the fitting terms (:mod:`.objective` states the terms themselves): nearest-UV matching,
nearest-pixel sampling, mirror offsets and the eye mask's Gaussian blur."""

from __future__ import annotations

import torch

__all__ = ["match_uv", "sample_nearest", "mirror_offsets", "gaussian_blur"]

_MATCH_CHUNK = 256


def match_uv(vertex_uv: torch.Tensor, pred_uv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest predicted pixel in UV space for each vertex (the reference's K=1 ``knn_points``).

    Parameters
    ----------
    vertex_uv : (N, 2) canonical vertex UVs (network convention)
    pred_uv : (S, S, 2) predicted UV map
    mask : (S, S) bool, pixels that may be matched

    Returns
    -------
    target_xy : (N, 2) pixel centre of the nearest pixel (x, y), zero when no pixel is valid
    sq_dist : (N,) squared UV distance, +inf when no pixel is valid
    """
    size_w = pred_uv.shape[1]
    idx = mask.reshape(-1).nonzero().squeeze(1)
    n = vertex_uv.shape[0]
    if idx.numel() == 0:
        return vertex_uv.new_zeros(n, 2), vertex_uv.new_full((n,), float("inf"))
    pix_uv = pred_uv.reshape(-1, 2)[idx]
    best_d = []
    best_i = []
    for start in range(0, n, _MATCH_CHUNK):
        # the nearest distance squared afterwards (squaring the whole distance matrix cost a third of the match)
        dmin, imin = torch.cdist(vertex_uv[start : start + _MATCH_CHUNK], pix_uv).min(1)
        best_d.append(dmin)
        best_i.append(imin)
    sq = torch.cat(best_d).square()
    flat = idx[torch.cat(best_i)]
    xy = torch.stack([(flat % size_w).to(vertex_uv.dtype) + 0.5, torch.div(flat, size_w, rounding_mode="floor").to(vertex_uv.dtype) + 0.5], -1)
    return xy, sq


def sample_nearest(image: torch.Tensor, xy: torch.Tensor, fill: float) -> torch.Tensor:
    """Values of an (S, S) image at the pixels containing points ``xy`` (N, 2); ``fill`` outside the image."""
    h, w = image.shape
    ix = torch.floor(xy[:, 0]).long()
    iy = torch.floor(xy[:, 1]).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    vals = image[iy.clamp(0, h - 1), ix.clamp(0, w - 1)]
    return torch.where(inside, vals, torch.full_like(vals, fill))


def mirror_offsets(vertices: torch.Tensor, mirror_index: torch.Tensor) -> torch.Tensor:
    """(V, 3) offset of each vertex from its mirror vertex reflected through x = 0 (metres).

    Parameters
    ----------
    vertices : (V, 3) unposed shape + expression mesh; mirror_index : (V,) long
    """
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    return vertices - vertices.index_select(0, mirror_index) * flip


def gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (S, S) image with zero padding.

    Only the bounding box of the non-zero pixels, grown by the kernel radius, is convolved: everything outside it
    blurs to exactly zero (the eye mask it is used for covers a small part of the image).
    """
    half = size // 2
    rows = image.ne(0).any(1).nonzero().squeeze(1)
    cols = image.ne(0).any(0).nonzero().squeeze(1)
    out = torch.zeros_like(image)
    if rows.numel() == 0:
        return out
    h, w = image.shape
    y0, y1 = max(int(rows[0]) - half, 0), min(int(rows[-1]) + half + 1, h)
    x0, x1 = max(int(cols[0]) - half, 0), min(int(cols[-1]) + half + 1, w)
    x = torch.arange(-half, half + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = image[None, None, y0:y1, x0:x1]
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1), padding=(0, half))
    img = torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1), padding=(half, 0))
    out[y0:y1, x0:x1] = img[0, 0]
    return out
