"""The Pixel3DMM pinhole camera: OpenGL camera at (0, 0, 1) looking down -z, normalised focal and principal point.

Conventions
-----------
* World space is the FLAME canonical frame after the head pose: ``world = R @ v + t`` (metres, +y up).
* The camera never moves: it sits at ``(0, 0, 1)`` with identity rotation, so OpenGL camera coordinates are
  ``X_gl = world - (0, 0, 1)`` and visible points have ``Z_gl < 0``. OpenCV camera coordinates (y down,
  z forward) are ``X_cv = diag(1, -1, -1) @ X_gl``.
* Intrinsics at a square render size ``S``: ``fx = fy = fl * S`` (``fl`` initialised to 2000 / 512) and the
  principal point ``c = S / 2 + pp * S / 2`` in pixel coordinates whose pixel centres lie at integer + 0.5, x to
  the right and y down. So ``x = c_x + fx * X / |Z|`` and ``y = c_y - fy * Y / |Z|`` (OpenGL ``X, Y, Z``), i.e.
  ``K @ X_cv`` with ``K = [[fx, 0, c_x], [0, fy, c_y], [0, 0, 1]]``.
* Deviation from the reference (which puts the centre at ``S/2 - 0.5`` for the loss projection and at
  ``S/2 + 0.5`` in its rasterizer, with ``pp`` scaled by ``S/2 + 0.5``): one pinhole is used for both the losses
  and the rasterizer, with ``pp = 0`` at the exact image centre.
* :class:`Camera` holds the intrinsics (focal, principal point, image size); :meth:`Camera.clip` turns the same
  pinhole into clip space for :mod:`.raster` (NDC ``y = +1`` is the top row), with OpenGL depth between ``near``
  and ``far``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_FOCAL",
    "CAMERA_POSITION",
    "NEAR",
    "FAR",
    "Camera",
    "world_to_camera",
    "crop_to_photo_intrinsics",
    "focal_from_35mm",
    "opencv_pose_to_world",
]

DEFAULT_FOCAL = 2000.0 / 512.0
CAMERA_POSITION = (0.0, 0.0, 1.0)
NEAR = 0.1
FAR = 5.0


def world_to_camera(points: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) -> OpenGL camera coordinates (..., 3) of the fixed camera at (0, 0, 1)."""
    offset = torch.tensor(CAMERA_POSITION, dtype=points.dtype, device=points.device)
    return points - offset


@dataclass(frozen=True)
class Camera:
    """The reference pinhole camera at a square image size (see the module docstring).

    Attributes
    ----------
    focal : (B,) tensor
        Normalised focal ``fl`` (``fx = fy = fl * size``).
    principal_point : (B, 2) tensor
        Reference-convention principal point ``pp`` (``c = size / 2 + pp * size / 2``).
    size : int
        Square image size ``S`` in pixels.

    The tensors may require grad (the fitter optimises them); every method is differentiable in them.
    """

    focal: torch.Tensor
    principal_point: torch.Tensor
    size: int

    @classmethod
    def of(cls, focal: float = DEFAULT_FOCAL, principal_point=(0.0, 0.0), size: int = 512,
           like: torch.Tensor | None = None) -> Camera:
        """A camera of batch 1 from plain numbers, on ``like``'s device and dtype (float64 on the CPU by default)."""
        kw = {"dtype": torch.float64} if like is None else {"dtype": like.dtype, "device": like.device}
        pp = torch.as_tensor(np.asarray(principal_point, dtype=np.float64).reshape(1, 2), **kw)
        return cls(torch.tensor([float(focal)], **kw), pp, int(size))

    def _pixel_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = torch.as_tensor(self.focal).reshape(-1, 1) * self.size
        pp = torch.as_tensor(self.principal_point).reshape(-1, 2)
        half = self.size / 2.0
        return f, half + pp[:, 0:1] * half, half + pp[:, 1:2] * half

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project OpenGL camera-space points (B, N, 3) (see :func:`world_to_camera`) to pixels.

        Returns
        -------
        xy : (B, N, 2) pixel coordinates (x right, y down, pixel centres at integer + 0.5)
        depth : (B, N) distance along the viewing direction, ``-Z`` (positive in front of the camera)
        """
        f, cx, cy = self._pixel_params()
        depth = -points_cam[..., 2]
        safe = depth.clamp(min=1e-6)
        x = cx + f * points_cam[..., 0] / safe
        y = cy - f * points_cam[..., 1] / safe
        return torch.stack([x, y], -1), depth

    def clip(self, points_cam: torch.Tensor, near: float = NEAR, far: float = FAR) -> torch.Tensor:
        """OpenGL camera-space points (B, N, 3) -> clip-space positions (B, N, 4) for :func:`.raster.rasterize`.

        The pixel position of ``clip[..., :2] / clip[..., 3]`` equals :meth:`project`'s exactly, and ``z / w``
        maps depths ``near .. far`` to -1 .. 1.
        """
        f, cx, cy = self._pixel_params()
        size = self.size
        x, y, z = points_cam.unbind(-1)
        w = -z
        cx_ndc = 2.0 * cx / size - 1.0
        cy_ndc = 1.0 - 2.0 * cy / size
        xc = (2.0 * f / size) * x + cx_ndc * w
        yc = (2.0 * f / size) * y + cy_ndc * w
        zc = -(far + near) / (far - near) * z - 2.0 * far * near / (far - near)
        return torch.stack([xc, yc, zc, w], -1)

    def intrinsics(self, size: float | None = None) -> np.ndarray:
        """(3, 3) float64 pinhole matrix ``K`` (OpenCV camera coordinates, y down) of the first camera in the
        batch, at its own size or at another square image ``size`` (the normalised focal and principal point
        scale with the image: the crop's intrinsics at 512 from a fit at 256)."""
        size = float(self.size if size is None else size)
        f = float(torch.as_tensor(self.focal).reshape(-1)[0]) * size
        pp = torch.as_tensor(self.principal_point).reshape(-1, 2)[0].detach().cpu().double().numpy()
        half = size / 2.0
        return np.array([[f, 0.0, half + pp[0] * half], [0.0, f, half + pp[1] * half], [0.0, 0.0, 1.0]])

    def detach(self) -> Camera:
        """The same camera without gradients."""
        return Camera(self.focal.detach(), self.principal_point.detach(), self.size)


def crop_to_photo_intrinsics(k_crop: np.ndarray, transform) -> np.ndarray:
    """Map crop intrinsics to full-photo intrinsics through a crop transform.

    Parameters
    ----------
    k_crop : (3, 3) array
        Intrinsics in crop pixels (crop of ``transform.out_size`` pixels).
    transform : CropTransform
        Square crop box ``x0, y0, size`` in photo pixels; ``x_photo = x0 + x_crop * size / out_size``.

    Returns
    -------
    (3, 3) array
        Intrinsics in full-photo pixels.
    """
    s = float(transform.size) / float(transform.out_size)
    a = np.array([[s, 0.0, float(transform.x0)], [0.0, s, float(transform.y0)], [0.0, 0.0, 1.0]])
    return a @ np.asarray(k_crop, dtype=np.float64)


def focal_from_35mm(focal_35mm: float, photo_size: tuple[int, int], transform) -> float:
    """The normalised crop focal ``fl`` of a photo taken at a 35 mm-equivalent focal length.

    The 35 mm equivalent scales the focal by the frame's diagonal (43.27 mm for 36 x 24 mm), so in photo pixels
    ``f = focal_35mm * hypot(W, H) / 43.27``; the crop scales it by ``out_size / size`` and ``fl = f_crop /
    out_size``.

    Parameters
    ----------
    focal_35mm : EXIF FocalLengthIn35mmFilm, mm
    photo_size : (H, W) of the full photo, pixels
    transform : CropTransform of the crop the fit sees
    """
    diagonal = float(np.hypot(*photo_size))
    return float(focal_35mm) * diagonal / float(np.hypot(36.0, 24.0)) / float(transform.size)


def opencv_pose_to_world(rotation_cv: np.ndarray, translation_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert an OpenCV object pose (``X_cv = R_cv v + t_cv``) to the head pose ``world = R v + t``.

    Returns R (3, 3) and t (3,) such that ``world_to_camera(R v + t)`` equals ``diag(1, -1, -1) X_cv``.
    """
    d = np.diag([1.0, -1.0, -1.0])
    r = d @ np.asarray(rotation_cv, dtype=np.float64)
    t = d @ np.asarray(translation_cv, dtype=np.float64).reshape(3) + np.asarray(CAMERA_POSITION)
    return r, t
