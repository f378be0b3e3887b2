"""Levenberg-Marquardt steps: exact gradient, Gauss-Newton curvature from forward-mode autodiff.

Adam moves every parameter by about its learning rate per step, whatever the curvature: the few identity
components that size the head converge in a few hundred steps, while the hundreds of small ones (each a tenth of
a millimetre) and their correlations with expression and pose stay where Adam leaves them. A Gauss-Newton step
solves for all of them at once.

The caller supplies the loss's gradient (reverse mode, exact, including terms that are not least squares) and a
residual function whose Jacobian gives the curvature ``JᵀJ``. The residuals may cover a subsample of the data
(scaled to the whole) and approximate non-quadratic terms by reweighting: the curvature only shapes the step,
the gradient decides where the iteration converges, and every step must lower the true loss to be kept.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from torch.func import jvp, vmap

__all__ = ["gauss_newton_curvature", "lm_step"]

#: Tangent directions pushed through the residual function at once (bounds the memory of the forward pass).
_CHUNK = 64


def gauss_newton_curvature(residuals: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """``JᵀJ`` (P, P) of ``residuals`` (P,) -> (M,) at ``x``, the Jacobian taken column by column with jvp.

    The product is formed in float64 on the CPU (MPS has no float64; P is a few hundred), whatever ``x``'s device.
    """
    basis = torch.eye(x.numel(), dtype=x.dtype, device=x.device)

    def column(v: torch.Tensor) -> torch.Tensor:
        return jvp(residuals, (x,), (v,))[1]

    with torch.no_grad(), warnings.catch_warnings():
        # torch.func's own decompositions still call the deprecated torch.jit.script (torch 2.14).
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        jt = torch.cat([vmap(column)(basis[i : i + chunk]) for i in range(0, x.numel(), chunk)])
    # float64 through numpy (a third of the time of torch's own conversion of these ~30 M entries on the CPU), then
    # the upper block rows only (the product is symmetric): 0.7x the time of one full product.
    jt = jt.to("cpu")
    jt = torch.from_numpy((jt if jt.dtype == torch.float64 else jt.float()).numpy().astype(np.float64, copy=False))
    n = jt.shape[0]
    gram = torch.empty(n, n, dtype=torch.float64)
    for i in range(0, n, chunk):
        block = jt[i : i + chunk] @ jt[i:].T
        gram[i : i + chunk, i:] = block
        gram[i:, i : i + chunk] = block.T
    return gram


def lm_step(
    x: torch.Tensor,
    value: float,
    gradient: torch.Tensor,
    curvature: torch.Tensor,
    loss: Callable[[torch.Tensor], float],
    damping: float,
    tries: int = 4,
) -> tuple[torch.Tensor, float, float, bool]:
    """One Levenberg-Marquardt iteration with Marquardt's diagonal scaling.

    For a loss ``Σ r²`` with gradient ``g = 2 Jᵀr`` and curvature ``H = JᵀJ``, solves
    ``(H + λ diag(H)) δ = -g / 2`` and keeps ``x + δ`` when it lowers ``loss``; otherwise raises λ and tries
    again, up to ``tries`` times.

    Parameters
    ----------
    x : (P,) current point; value : the loss there
    gradient : (P,) gradient of the loss at ``x``
    curvature : (P, P) Gauss-Newton matrix ``JᵀJ`` (see :func:`gauss_newton_curvature`); the system is solved in
        its dtype and on its device, and the step moved to ``x``'s
    loss : the objective, (P,) -> float (``inf`` for a non-finite value)
    damping : λ (carried from one call to the next)
    tries : solves per iteration before giving up

    Returns
    -------
    x : the new point (``x`` itself when no step was accepted)
    damping : λ for the next iteration
    value : the loss at the returned point
    accepted : whether a step was taken
    """
    diag = curvature.diagonal()
    # Parameters the residuals do not see (zero column) get a unit diagonal so that the system stays regular.
    diag = torch.where(diag > 0, diag, torch.ones_like(diag))
    rhs = -0.5 * gradient.to(curvature.device, curvature.dtype)
    for _ in range(tries):
        step = torch.linalg.solve(curvature + torch.diag(damping * diag), rhs).to(x.device, x.dtype)
        candidate = x + step
        new = loss(candidate)
        if new < value:
            return candidate, max(damping / 3.0, 1e-7), new, True
        damping *= 4.0
    return x, damping, value, False
