"""A picture to judge a fit by: the photo with the fitted head's outline, the detected and the fitted landmarks.

:func:`overlay_image` draws, on the photo (scaled so its longer side is at most ``max_side`` pixels):

* the outline of the fitted head as the photo's camera sees it (green), from the core rasterizer;
* the detected face landmarks (MediaPipe, red dots) and where the fitted head puts the same landmarks (blue
  dots), when the fit had landmarks and an embedding;
* the verdict in the top-left corner ("ok", or "doubtful" with its first reason).
"""

from __future__ import annotations

import numpy as np

__all__ = ["overlay_image"]

_GREEN, _RED, _BLUE, _WHITE = (60, 220, 60), (235, 60, 50), (60, 120, 255), (255, 255, 255)


def _render_mask(vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool coverage of the posed mesh through the pinhole ``k`` (OpenCV convention, camera at (0, 0, 1))."""
    import torch

    from .render import rasterize

    cv = (np.asarray(vertices, dtype=np.float64) - np.array([0.0, 0.0, 1.0])) * np.array([1.0, -1.0, -1.0])
    z = cv[:, 2]
    x = (k[0, 0] * cv[:, 0] / z + k[0, 2]) / width * 2.0 - 1.0
    y = 1.0 - (k[1, 1] * cv[:, 1] / z + k[1, 2]) / height * 2.0
    # clip space with w = z (in front: z > 0) and a depth that the rasterizer keeps (z/w in [-1, 1])
    pos = torch.tensor(np.stack([x * z, y * z, np.zeros_like(z), z], 1))[None]
    rast = rasterize(pos, torch.as_tensor(np.asarray(faces, dtype=np.int64)), (height, width))
    return rast.coverage(torch.bool)[0].numpy()


def overlay_image(
    photo_rgb: np.ndarray,
    fit_result,
    faces: np.ndarray,
    detected: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    max_side: int = 1024,
) -> np.ndarray:
    """The overlay as an (H', W', 3) uint8 RGB image.

    Parameters
    ----------
    photo_rgb : (H, W, 3) float32 sRGB photo in [0, 1] (row 0 at the top)
    fit_result : FitResult (``vertices_posed``, ``K_photo``, ``verdict``)
    faces : (F, 3) triangles of the model
    detected : (N, 2) detected landmarks in photo pixels (NaN rows skipped), or None
    fitted : (N, 3) the fitted head's landmark points in world space, or None
    max_side : the longer side of the output, at most (the photo is never enlarged)
    """
    import cv2

    photo = np.asarray(photo_rgb, dtype=np.float32)
    h, w = photo.shape[:2]
    s = min(1.0, max_side / float(max(h, w)))
    out_h, out_w = max(1, int(round(h * s))), max(1, int(round(w * s)))
    image = cv2.resize((np.clip(photo, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), (out_w, out_h),
                       interpolation=cv2.INTER_AREA)
    k = np.diag([out_w / w, out_h / h, 1.0]) @ np.asarray(fit_result.K_photo, dtype=np.float64)
    mask = _render_mask(fit_result.vertices_posed, faces, k, out_h, out_w)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thick = max(1, int(round(max(out_h, out_w) / 400)))
    cv2.drawContours(image, contours, -1, _GREEN, thick, lineType=cv2.LINE_AA)
    radius = max(1, thick)
    if fitted is not None:
        cv = (np.asarray(fitted, dtype=np.float64) - np.array([0.0, 0.0, 1.0])) * np.array([1.0, -1.0, -1.0])
        proj = cv @ k.T
        for x, y in proj[:, :2] / proj[:, 2:]:
            cv2.circle(image, (int(round(x)), int(round(y))), radius, _BLUE, -1, lineType=cv2.LINE_AA)
    if detected is not None:
        for x, y in np.asarray(detected, dtype=np.float64) * np.array([out_w / w, out_h / h]):
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(image, (int(round(x)), int(round(y))), radius, _RED, -1, lineType=cv2.LINE_AA)
    verdict = fit_result.verdict
    text = "fit: ok" if verdict.ok else "fit: doubtful - " + (verdict.reasons[0] if verdict.reasons else "")
    scale = max(0.4, max(out_h, out_w) / 1600)
    cv2.putText(image, text[:110], (8, int(24 * scale / 0.6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2,
                lineType=cv2.LINE_AA)
    cv2.putText(image, text[:110], (8, int(24 * scale / 0.6)), cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, thick,
                lineType=cv2.LINE_AA)
    return image
