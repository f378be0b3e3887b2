"""The crop transform (full photo px ↔ crop px) and resampling that is exactly consistent with it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .intake import REDUCTIONS, Photo, to_float_rgb

OUT_SIZE = 512
"""Side of the crop the networks see, in pixels."""


@dataclass(frozen=True)
class CropTransform:
    """Square crop box in full-photo pixels; it may extend past the photo border (that part is padded).

    Continuous pixel coordinates throughout (x right, y down, pixel centres at integer + 0.5):
    ``x_crop = (x_photo - x0) * out_size / size`` and the same for y.

    Attributes
    ----------
    x0, y0 : float
        Top-left corner of the box in photo px.
    size : float
        Side of the box in photo px.
    out_size : int
        Side of the crop image in px.
    """

    x0: float
    y0: float
    size: float
    out_size: int = OUT_SIZE

    @property
    def scale(self) -> float:
        """Crop px per photo px."""
        return self.out_size / self.size

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        """Map photo px to crop px.

        Parameters
        ----------
        xy : np.ndarray
            (N, 2) (or (2,)) x, y in photo px.

        Returns
        -------
        np.ndarray
            Same shape, float64, in crop px.
        """
        return (np.asarray(xy, dtype=np.float64) - (self.x0, self.y0)) * self.scale

    def to_photo(self, xy: np.ndarray) -> np.ndarray:
        """Map crop px to photo px (inverse of :meth:`to_crop`); same shapes."""
        return np.asarray(xy, dtype=np.float64) / self.scale + (self.x0, self.y0)

    def crop_from_photo_matrix(self) -> np.ndarray:
        """(3, 3) homogeneous matrix A with ``[x_crop, y_crop, 1] = A @ [x_photo, y_photo, 1]``."""
        s = self.scale
        return np.array([[s, 0.0, -s * self.x0], [0.0, s, -s * self.y0], [0.0, 0.0, 1.0]])

    def intrinsics_to_photo(self, k_crop: np.ndarray) -> np.ndarray:
        """Pinhole intrinsics in crop px → the same camera in full-photo px: ``K_photo = A⁻¹ K_crop``.

        Parameters
        ----------
        k_crop : np.ndarray
            (3, 3) with y down, pixel centres at integer + 0.5.

        Returns
        -------
        np.ndarray
            (3, 3) float64.
        """
        return np.linalg.inv(self.crop_from_photo_matrix()) @ np.asarray(k_crop, dtype=np.float64)

    def intrinsics_to_crop(self, k_photo: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`intrinsics_to_photo`: ``K_crop = A K_photo``; (3, 3) float64."""
        return self.crop_from_photo_matrix() @ np.asarray(k_photo, dtype=np.float64)

    def valid_mask(self, photo_size: tuple[int, int]) -> np.ndarray:
        """(out_size, out_size) bool: crop pixels whose centre falls inside the photo (the rest is padding)."""
        h, w = photo_size
        centres = (np.arange(self.out_size) + 0.5) / self.scale
        inside_x = (centres + self.x0 >= 0) & (centres + self.x0 < w)
        inside_y = (centres + self.y0 >= 0) & (centres + self.y0 < h)
        return inside_y[:, None] & inside_x[None, :]


def render_crop(photo: Photo, transform: CropTransform) -> np.ndarray:
    """Resample the crop from the photo, exactly consistent with ``transform`` (bilinear, black padding).

    The photo is decoded at the largest integer reduction r that keeps at least ``out_size`` pixels across
    the box, so huge photos are never decoded in full when the face is large.

    Returns
    -------
    np.ndarray
        (S, S, 3) float32 sRGB in [0, 1].
    """
    r = max(q for q in REDUCTIONS if q == 1 or transform.size / q >= transform.out_size)
    pixels = photo.pixels(r)
    # Destination pixel index j has centre j + 0.5 in crop px; its photo position x = (j + 0.5) / s + x0 and
    # its source index in the r-reduced image is x / r - 0.5.
    a = 1.0 / (transform.scale * r)
    bx = (0.5 / transform.scale + transform.x0) / r - 0.5
    by = (0.5 / transform.scale + transform.y0) / r - 0.5
    matrix = np.array([[a, 0.0, bx], [0.0, a, by]])
    size = transform.out_size
    out = cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return to_float_rgb(out)
