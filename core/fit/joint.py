"""The joint stage over several frames: one identity, per-frame motion, temporal smoothing (Levenberg-Marquardt).

The reference tracker ends a video with a joint stage: the identity (and camera) shared by every frame, each
frame's expression, jaw, neck, eyes, eyelids and head pose its own, and squared differences between consecutive
frames' parameters added to the loss (``smooth/*``, ``pixel3dmm.md`` section 3.5), optimised by (Sparse)Adam over
batches of frames for 5000 iterations. Here the same loss is minimised by Levenberg-Marquardt, which the
single-image fit already uses (:mod:`.refine`): each frame's terms are linearised as in one image, and the
normal equations over all frames keep their structure: the shared identity couples every frame (a dense border),
the smoothing couples neighbours (a block tridiagonal), so one iteration costs a linear pass over the frames
(block Thomas algorithm with a Schur complement on the identity) instead of a dense solve of ``T x 135 + 300``
unknowns. Without smoothing (several photos of one person) the frame blocks are independent.

Deviations from the reference's joint stage, each a choice measured in docs/PERFORMANCE.md ("Tracking"):

* the camera (focal, principal point) is the first frame's and stays fixed (the reference frees it here);
* the smoothing penalises second differences (acceleration), not first differences (:data:`SMOOTHING_ORDER`): a
  first-difference penalty resists every motion and lags a turning head, which the per-frame fit then makes up
  with a wrong neck, expression and identity;
* Levenberg-Marquardt over all frames at once in place of Adam over batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import FitCancelled
from ..flame.model import FlameModel, FlameParams
from ..flame.uv import UVTemplate
from .config import FitConfig, StageSpec
from .init import PoseInit
from .objective import FitData, Objective, Params
from .refine import gauss_newton_curvature
from .result import FitResult

__all__ = ["JointFrame", "REFERENCE_SMOOTHING", "SMOOTHING", "SMOOTHING_ORDER", "fit_joint", "smoothing_loss", "stencils"]

log = logging.getLogger(__name__)

#: The reference's temporal smoothing weights (``tracking.yaml``: smooth/*) per parameter group, on squared
#: differences of consecutive frames' raw parameters (6D rotations, metres, coefficients).
REFERENCE_SMOOTHING = {
    "expression": 50.0, "eyes": 10.0, "eyelids": 2.0, "jaw": 50.0, "neck": 1000.0, "rotation": 2000.0,
    "translation": 15200.0,
}
#: The weights the tracker uses (the reference's; see docs/PERFORMANCE.md, "Tracking").
SMOOTHING = dict(REFERENCE_SMOOTHING)
#: Which differences the tracker smooths: 2, the second difference (the reference smooths the first, 1).
SMOOTHING_ORDER = 2
#: Groups a frame owns in the joint stage (those the stage frees), in this order.
FRAME_GROUPS = ("expression", "jaw", "neck", "eyes", "eyelids", "rotation", "translation")
#: Initial damping, relative to the diagonal.
_DAMPING = 1e-2
_SUPPORT_KEPT = 0.9
_PIXEL_STRIDE = 4


@dataclass
class JointFrame:
    """One frame of the joint stage: its network prediction (None in the landmarks mode), its crop (masks,
    landmarks, transform) and its per-frame fit, where the joint stage starts."""

    prediction: object | None
    crop: object
    start: FitResult


def stencils(n: int, order: int, gaps: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """The finite differences the smoothing penalises over ``n`` frames: ``(first frame, coefficients)`` per
    difference. ``order`` 1: ``(x[t+1] - x[t]) / sqrt(gap)`` (a random walk: the variance of a change grows with the
    gap, the reference's form for consecutive frames); 2: the second divided difference ``x''`` at unevenly spaced
    frames (``x[t+1] - 2 x[t] + x[t-1]`` when consecutive), which leaves steady motion free."""
    h = np.ones(max(n - 1, 0)) if gaps is None else np.maximum(np.asarray(gaps, dtype=np.float64), 1.0)
    if order == 1:
        return [(t, np.array([-1.0, 1.0]) / np.sqrt(h[t])) for t in range(n - 1)]
    if order == 2:
        out = []
        for t in range(n - 2):
            h1, h2 = h[t], h[t + 1]
            out.append((t, np.array([2 / (h1 * (h1 + h2)), -2 / (h1 * h2), 2 / (h2 * (h1 + h2))])))
        return out
    raise ValueError(f"The smoothing order must be 1 or 2, got {order!r}.")


def smoothing_loss(values: list[np.ndarray], weights: np.ndarray, diffs: list[tuple[int, np.ndarray]]) -> float:
    """``sum_d sum_c w_c (sum_j a_dj x[t_d + j, c])^2`` of per-frame vectors ``values`` (T of (P,)), weights (P,) and
    differences ``diffs`` (:func:`stencils`)."""
    x = np.stack(values) if values else np.zeros((0, len(weights)))
    return float(sum((((a[:, None] * x[t : t + len(a)]).sum(0)) ** 2 @ weights) for t, a in diffs))


class _Frame:
    """A frame's data, parameters (its identity the shared leaf) and objective in the joint stage."""

    def __init__(self, frame: JointFrame, flame: FlameModel, uv: UVTemplate, cfg: FitConfig, stage: StageSpec,
                 shape: torch.Tensor, embedding) -> None:
        start = frame.start
        self.crop = frame.crop
        self.data = FitData(frame.prediction, frame.crop, flame, uv, cfg, embedding)
        self.data.match()
        like = flame.v_template
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)[None], dtype=like.dtype)  # noqa: E731
        init = FlameParams(
            expression=t(start.expression), jaw_pose=t(start.jaw_pose), neck_pose=t(start.neck_pose),
            eye_pose_left=t(start.eye_pose_left), eye_pose_right=t(start.eye_pose_right),
            eyelids=t(start.eyelids) if flame.has_eyelids else None, shape=shape.detach().cpu(),
        )
        pose = PoseInit(np.asarray(start.head_rotation, np.float64), np.asarray(start.head_translation, np.float64),
                        "track", 0, 0)
        self.p = Params(flame, pose, like, flame.has_eyelids, init, focal=float(start.focal),
                        principal_point=tuple(np.asarray(start.principal_point, dtype=np.float64)))
        self.p.groups["shape"] = [shape]
        if cfg.pose_frame == "neck":
            self.data.root_to_neck_frame(self.p)
        self.objective = Objective(self.data, stage)
        self.min_support = _SUPPORT_KEPT * self.objective.support(self.p)

    def loss(self, groups: list[str], x: torch.Tensor | None = None) -> float:
        p = self.p if x is None else self.p.with_flat(groups, x)
        with torch.no_grad():
            if x is not None and self.objective.support(p) < self.min_support:
                return math.inf
            value = float(sum(self.objective.losses(p).values()))
        return value if math.isfinite(value) else math.inf


def _block_tridiagonal_solve(diag: list[torch.Tensor], upper: list[torch.Tensor], rhs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Solve the symmetric block tridiagonal system with diagonal blocks ``diag`` (K of (P_k, P_k)), upper blocks
    ``upper`` (K - 1 of (P_k, P_k+1); the lower ones are their transposes) and right-hand sides ``rhs`` (K of
    (P_k, R)); the block Thomas algorithm."""
    n = len(diag)
    c_prime: list[torch.Tensor] = []
    r_prime: list[torch.Tensor] = []
    for k in range(n):
        m, r = diag[k], rhs[k]
        if k > 0:
            lower = upper[k - 1].T
            m = m - lower @ c_prime[k - 1]
            r = r - lower @ r_prime[k - 1]
        if k < n - 1:
            width = upper[k].shape[1]
            both = torch.linalg.solve(m, torch.cat([upper[k], r], 1))
            c_prime.append(both[:, :width])
            r_prime.append(both[:, width:])
        else:
            r_prime.append(torch.linalg.solve(m, r))
    out = [r_prime[-1]]
    for k in range(n - 2, -1, -1):
        out.append(r_prime[k] - c_prime[k] @ out[-1])
    return out[::-1]


def fit_joint(
    frames: list[JointFrame],
    flame: FlameModel,
    uv: UVTemplate,
    cfg: FitConfig,
    stage: StageSpec,
    iterations: int,
    *,
    smoothing: dict[str, float] | None = None,
    gaps: list[float] | None = None,
    order: int = SMOOTHING_ORDER,
    embedding=None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[FitResult]:
    """Refine per-frame fits jointly: one identity for all frames, each frame's motion, consecutive frames smoothed.

    Parameters
    ----------
    frames : the frames in time order, each with its per-frame fit (the start)
    flame, uv : the model (on the device to run on) and its UV template
    cfg : the fits' configuration (resolution, acceptance radii, pose frame)
    stage : the per-frame terms and their weights (an image or landmarks stage; its ``lr`` keys name the groups a
        frame owns, see :data:`FRAME_GROUPS`); every frame's terms count, its priors too, as in the reference
    iterations : Levenberg-Marquardt iterations
    smoothing : per-group weights of the squared difference of consecutive frames (:data:`SMOOTHING`); None or
        empty: none (several photos of one person)
    gaps : (T - 1,) how many frame steps lie between consecutive frames (frames without a face leave gaps); a pair's
        differences account for it (:func:`stencils`; default: all 1)
    order : 1 penalises the change between consecutive frames (the reference), 2 the second difference
        (acceleration; see :data:`SMOOTHING_ORDER`)
    on_progress : called with the fraction done after every frame of every iteration
    should_cancel : polled before every frame of every iteration; True raises :class:`~core.errors.FitCancelled`

    Returns
    -------
    One :class:`FitResult` per frame, all with the same ``shape``; ``info["joint"]`` holds the stage's loss per
    iteration and whether the step was taken.
    """
    if not frames:
        raise ValueError("The joint stage needs at least one frame.")
    flame = flame.component_major()
    n = len(frames)
    like = flame.v_template
    start_shape = np.mean([np.asarray(f.start.shape, dtype=np.float64) for f in frames], axis=0)
    shape = torch.as_tensor(start_shape[None], dtype=like.dtype, device=like.device).clone().requires_grad_(True)
    stage = dataclasses.replace(stage, name="joint", method="lm")
    own = [g for g in FRAME_GROUPS if g in stage.lr and (g != "neck" or cfg.include_neck)]
    states = [_Frame(f, flame, uv, cfg, stage, shape, embedding) for f in frames]
    own = [g for g in own if states[0].p.groups.get(g)]
    groups = ["shape"] + own
    n_shape = shape.numel()
    sizes = [t.numel() for g in own for t in states[0].p.groups[g]]
    n_own = sum(sizes)
    group_of = np.repeat([g for g in own for _ in states[0].p.groups[g]], [t.numel() for g in own for t in states[0].p.groups[g]])
    w_smooth = np.array([(smoothing or {}).get(g, 0.0) for g in group_of], dtype=np.float64)
    smooth = bool(smoothing) and n > 1 and bool(w_smooth.any())
    if gaps is not None and len(gaps) != max(n - 1, 0):
        raise ValueError(f"gaps needs {n - 1} values, one per pair of consecutive frames; got {len(gaps)}.")
    diffs = stencils(n, order, gaps) if smooth else []
    w_t = torch.from_numpy(w_smooth)
    block = order if smooth else 1  # frames per block of the solve: differences then couple neighbouring blocks only
    blocks = [list(range(k, min(k + block, n))) for k in range(0, n, block)]

    def own_values() -> list[np.ndarray]:
        return [s.p.flat(own).cpu().double().numpy() for s in states]

    def total(candidate_shape: torch.Tensor | None = None, candidate_own: list[torch.Tensor] | None = None) -> float:
        value = 0.0
        for i, s in enumerate(states):
            if candidate_shape is None:
                value += s.loss(groups)
            else:
                x = torch.cat([candidate_shape, candidate_own[i]]).to(like.device, like.dtype)
                value += s.loss(groups, x)
            if not math.isfinite(value):
                return math.inf
        values = own_values() if candidate_own is None else [c.cpu().double().numpy() for c in candidate_own]
        return value + (smoothing_loss(values, w_smooth, diffs) if smooth else 0.0)

    history: list[dict[str, float]] = []
    damping = _DAMPING
    value = total()
    work = max(iterations * n, 1)
    done = 0
    for it in range(iterations):
        grads, hessians = [], []
        for s in states:
            if should_cancel is not None and should_cancel():
                raise FitCancelled("The tracking was cancelled; run it again to resume from the frames already done.")
            x = s.p.flat(groups).requires_grad_(True)
            loss = sum(s.objective.losses(s.p.with_flat(groups, x)).values())
            g, = torch.autograd.grad(loss, x)
            x = x.detach()
            lin = s.objective.linearise(s.p, _PIXEL_STRIDE)
            h = gauss_newton_curvature(lambda y, s=s, lin=lin: s.objective.residuals(s.p.with_flat(groups, y), lin),
                                       x, s.objective.jacobian_chunk)
            hessians.append(h + s.objective.constant_curvature(s.p, groups))
            grads.append(g.cpu().double())
            done += 1
            if on_progress is not None:
                on_progress(done / work)
        own_now = [torch.from_numpy(v) for v in own_values()]
        g_s = sum(g[:n_shape] for g in grads)
        g_x = [g[n_shape:].clone() for g in grads]
        diag = [h[n_shape:, n_shape:].clone() for h in hessians]
        coupling: dict[tuple[int, int], torch.Tensor] = {}  # (t, u), t < u -> diagonal of block (t, u)
        for t0, a in diffs:
            r = sum(float(a[j]) * own_now[t0 + j] for j in range(len(a)))
            for i in range(len(a)):
                g_x[t0 + i] += 2.0 * float(a[i]) * w_t * r
                diag[t0 + i] += torch.diag(float(a[i]) ** 2 * w_t)
                for j in range(i + 1, len(a)):
                    key = (t0 + i, t0 + j)
                    coupling[key] = coupling.get(key, 0.0) + float(a[i] * a[j]) * w_t
        s_block = sum(h[:n_shape, :n_shape] for h in hessians)
        s_diag = s_block.diagonal().clone()
        x_diag = [d.diagonal().clone() for d in diag]

        def assemble(frames_a: list[int], frames_b: list[int]) -> torch.Tensor:
            out = torch.zeros(len(frames_a) * n_own, len(frames_b) * n_own, dtype=torch.float64)
            for i, t in enumerate(frames_a):
                for j, u in enumerate(frames_b):
                    if (t, u) in coupling:
                        out[i * n_own:(i + 1) * n_own, j * n_own:(j + 1) * n_own] = torch.diag(coupling[(t, u)])
            return out

        upper = [assemble(blocks[k], blocks[k + 1]) for k in range(len(blocks) - 1)]
        inner = [assemble(b, b) for b in blocks]
        borders = [torch.cat([hessians[t][n_shape:, :n_shape] for t in b]) for b in blocks]
        accepted = False
        for _ in range(4):
            # Marquardt's scaling: (A + lambda diag(A)) delta = -g / 2, with unit diagonals where A has none
            damped_s = s_block + torch.diag(damping * torch.where(s_diag > 0, s_diag, torch.ones_like(s_diag)))
            damped = [d + torch.diag(damping * torch.where(dd > 0, dd, torch.ones_like(dd))) for d, dd in zip(diag, x_diag)]
            blocks_diag = [c + c.T + torch.block_diag(*[damped[t] for t in b]) for c, b in zip(inner, blocks)]
            rhs = [torch.cat([border, torch.cat([-0.5 * g_x[t] for t in b])[:, None]], 1)
                   for border, b in zip(borders, blocks)]
            sol = _block_tridiagonal_solve(blocks_diag, upper, rhs)  # D^-1 [B, -g_x / 2], block by block
            schur = damped_s - sum(b.T @ y[:, :n_shape] for b, y in zip(borders, sol))
            r_s = -0.5 * g_s - sum(b.T @ y[:, n_shape] for b, y in zip(borders, sol))
            try:
                d_s = torch.linalg.solve(schur, r_s)
            except RuntimeError:
                damping *= 4.0
                continue
            d_x = torch.cat([y[:, n_shape] - y[:, :n_shape] @ d_s for y in sol]).split(n_own)
            cand_s = shape.detach().cpu().double().reshape(-1) + d_s
            cand_x = [o + d for o, d in zip(own_now, d_x)]
            new = total(cand_s, cand_x)
            if new < value:
                with torch.no_grad():
                    for s, c in zip(states, cand_x):
                        s.p.set_flat(groups, torch.cat([cand_s, c]).to(like.device, like.dtype))
                value, damping, accepted = new, max(damping / 3.0, 1e-7), True
                break
            damping *= 4.0
        history.append({"total": value, "accepted": float(accepted)})
        log.info("Joint iteration %d: loss %.6g (%s).", it + 1, value, "step taken" if accepted else "no step lowered it")
        if not accepted and damping > 1e6:
            break
    from .fitter import _result

    results = []
    for s, f in zip(states, frames):
        init = PoseInit(np.asarray(f.start.head_rotation, np.float64), np.asarray(f.start.head_translation, np.float64),
                        "track", 0, 0)
        r = _result(s.data, s.p, s.crop, init, {}, cfg, 0, iterations)
        r.info["joint"] = history
        results.append(r)
    return results
