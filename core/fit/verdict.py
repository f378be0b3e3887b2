"""Whether a fit can be trusted: ok or doubtful, with the reasons and the figures behind them.

A fit is doubtful when the landmarks it was given (or, without networks, fitted to) lie far from where the fitted
head puts them, when the fitted face covers too little of the face found in the photo, when a parameter is held at
a plausibility bound (:data:`.config.BOUNDS`), or when many steps were skipped for non-finite values. The pipeline
adds reasons of its own (the networks disagreeing with the landmarks). Thresholds are stated here and measured in
docs/PERFORMANCE.md ("Verdict").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "Verdict", "judge", "uv_agreement", "LANDMARK_NME", "SILHOUETTE_IOU", "SKIPPED_SHARE", "BOUND_TOLERANCE",
    "NETWORK_UV_AGREEMENT", "UV_AGREEMENT_RADIUS",
]

#: Mean landmark offset (static iBUG 17-67 points, or whatever the embedding places) over the distance between
#: the outer eye corners, above which a fit is doubtful.
LANDMARK_NME = 0.08
#: Intersection over union of the rendered face region and the photo's face region below which a fit is doubtful.
SILHOUETTE_IOU = 0.6
#: Share of skipped (non-finite) steps above which a fit is doubtful.
SKIPPED_SHARE = 0.1
#: Distance beyond a bound (radians, standard deviations, metres) that counts as held at it.
BOUND_TOLERANCE = 1e-3
#: Share of the detected landmarks at which the network's UV lies within :data:`UV_AGREEMENT_RADIUS` of the
#: landmark's own UV on the template (:func:`uv_agreement`) below which the networks are not trusted (the pipeline
#: then fits the landmarks alone). See docs/PERFORMANCE.md ("Verdict") for the figures it was set from.
NETWORK_UV_AGREEMENT = 0.5
#: UV distance within which a landmark's predicted UV agrees (a few millimetres on the face).
UV_AGREEMENT_RADIUS = 0.03


@dataclass
class Verdict:
    """``status`` "ok" or "doubtful"; ``reasons``: one sentence each; ``metrics``: the figures (JSON-friendly)."""

    status: str = "ok"
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def doubt(self, reason: str) -> None:
        """Mark the fit doubtful for ``reason`` (one sentence)."""
        self.status = "doubtful"
        self.reasons.append(reason)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        """One line: ``ok`` or ``doubtful: reason; reason``."""
        return "ok" if self.ok else "doubtful: " + " ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": list(self.reasons), "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(str(data.get("status", "ok")), list(data.get("reasons", [])), dict(data.get("metrics", {})))


def uv_agreement(prediction, landmarks: np.ndarray | None, embedding, uv_template) -> tuple[float, float] | None:
    """How well the predicted UV at the detected landmarks (iBUG 17-67) matches their UV on the template: the share
    of them within :data:`UV_AGREEMENT_RADIUS`, and the median UV distance; None when fewer than 10 landmarks fall on
    pixels the prediction covers.

    Parameters
    ----------
    prediction : Prediction (``uv`` (H, W, 2) network convention, ``mask`` (H, W)) at the crop resolution
    landmarks : (478, 2) detected landmarks in crop pixels, or None
    embedding : the landmark embedding (None: no check)
    uv_template : UVTemplate of the model (``vertex_uv``, ``faces``)
    """
    from ..flame.landmarks import group_points, landmark_uv

    if landmarks is None or embedding is None:
        return None
    points = group_points("static", embedding, uv_template.faces, landmarks)
    if points is None:
        return None
    uv = np.asarray(prediction.uv, dtype=np.float64)
    mask = np.asarray(prediction.mask, dtype=bool)
    h, w = mask.shape
    finite = np.isfinite(points.targets).all(1)
    xy = np.floor(np.nan_to_num(points.targets)).astype(int)
    inside = finite & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    ok = np.zeros_like(inside)
    ok[inside] = mask[xy[inside, 1], xy[inside, 0]]
    if ok.sum() < 10:
        return None
    predicted = uv[xy[ok, 1], xy[ok, 0]]
    distance = np.linalg.norm(predicted - landmark_uv(points, uv_template)[ok], axis=1)
    return float(np.mean(distance < UV_AGREEMENT_RADIUS)), float(np.median(distance))


def judge(objective_data, view, bounds_excess: dict[str, torch.Tensor], skipped: int, steps: int) -> Verdict:
    """The verdict of a finished fit.

    Parameters
    ----------
    objective_data : the fit's :class:`.objective.FitData`
    view : the full :class:`.objective.View` at the fitted parameters, rasterized
    bounds_excess : :meth:`.objective.Bounds.excess` at the fitted parameters
    skipped, steps : skipped (non-finite) steps and all steps run
    """
    data = objective_data
    verdict = Verdict()
    scale = data.targets.crop_size / float(data.size)  # fitting pixels -> crop pixels
    with torch.no_grad():
        name = next((k for k in ("lmk_static", "lmk_dense", "lmk_eye") if k in data.landmarks), None)
        if name is not None:
            from .objective import Landmarks  # the term states how the points project

            term = Landmarks(data, name)
            cand = term.candidates(view)
            offsets = term.residual(view, cand) * data.size
            accepted = term.accept(view, cand, offsets).accepted
            if bool(accepted.any()):
                err = torch.linalg.norm(offsets[accepted], dim=-1)
                mean_px = float(err.mean()) * scale
                verdict.metrics["landmark_error_px"] = round(mean_px, 2)
                ids = data.landmark_ids[name]
                t = cand.targets
                if 36 in ids and 45 in ids:  # the outer eye corners
                    span = float(torch.linalg.norm(t[ids.index(36)] - t[ids.index(45)]))
                else:  # half the diagonal of the detected landmarks' box
                    span = float(torch.linalg.norm(t[cand.detected].amax(0) - t[cand.detected].amin(0))) / 2
                nme = mean_px / max(span * scale, 1e-6)
                verdict.metrics["landmark_nme"] = round(nme, 4)
                if nme > LANDMARK_NME:
                    verdict.doubt(
                        f"The face landmarks lie {mean_px:.1f} px ({100 * nme:.0f} % of the eye distance) from where the "
                        "fitted head puts them on average."
                    )
        face = data.targets.face_mask
        if face is not None and view.rast is not None and bool(face.any()):
            rendered = view.region_image()[0, ..., 0] >= 0.5
            inter = float((rendered & face).sum())
            union = float((rendered | face).sum())
            iou = inter / union if union else 0.0
            verdict.metrics["silhouette_iou"] = round(iou, 3)
            if iou < SILHOUETTE_IOU:
                verdict.doubt(f"The fitted face covers the photo's face region poorly (overlap {100 * iou:.0f} %).")
        held = [k for k, v in bounds_excess.items() if float(v.max()) > BOUND_TOLERANCE]
        verdict.metrics["held_at_bound"] = held
        if held:
            verdict.doubt(f"The {', '.join(held)} {'is' if len(held) == 1 else 'are'} held at the plausible limit.")
    verdict.metrics["skipped_steps"] = skipped
    if steps and skipped > SKIPPED_SHARE * steps:
        verdict.doubt(f"{skipped} of {steps} fitting steps were skipped for non-finite values.")
    return verdict
