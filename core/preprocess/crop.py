"""The square face crop the networks see, and the exact transform back to the full photo.

Crop rule (Pixel3DMM's static crop for one frame): the detector box is made square by growing its shorter side
about its centre and scaled by 1.42. Unlike the reference, a box that leaves the photo is padded with black
rather than shifted, so the face stays centred; the ``valid`` mask marks crop pixels that come from the photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..errors import NoFaceError
from . import _mediapipe
from .detect import DetectorName, FaceDetection, detect_faces
from .intake import REDUCTIONS, Photo, to_float_rgb, to_uint8_rgb
from .masks import masks_from_box, masks_from_landmarks, masks_from_prediction_mask

logger = logging.getLogger(__name__)

CROP_SCALE = 1.42
"""Crop side / longer side of the detector box (the reference's rule)."""
OUT_SIZE = 512
"""Side of the crop the networks see, in pixels."""
MIN_FACE_PX = 40
"""Smallest usable face box side in photo pixels (the crop is then upsampled about 9×)."""


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


@dataclass
class FaceCrop:
    """Everything the fitter needs from the photo besides the network outputs.

    Attributes
    ----------
    image : np.ndarray
        (S, S, 3) float32 sRGB in [0, 1], S = ``transform.out_size`` (512); padding is black.
    transform : CropTransform
    photo_size : tuple[int, int]
        (H, W) of the full photo.
    landmarks : np.ndarray or None
        (478, 2) mediapipe face mesh with irises, in crop px; None when mediapipe is unavailable or found no mesh.
    masks : dict[str, np.ndarray]
        (S, S) bool: ``face`` (mesh face oval), ``skin`` (face minus the parts), ``brows``, ``nose``, ``lips``,
        ``eyes`` (eye openings incl. irises), ``mouth`` (inner mouth), ``foreground`` (person), ``background``
        (photo pixels that are not person), ``valid`` (pixels from the photo, not padding).
    approximate_masks : frozenset[str]
        Keys of ``masks`` that are rough guesses (no landmarks, no segmentation).
    detection : FaceDetection or None
        The detection the crop was built from.
    """

    image: np.ndarray
    transform: CropTransform
    photo_size: tuple[int, int]
    landmarks: np.ndarray | None
    masks: dict[str, np.ndarray]
    approximate_masks: frozenset[str]
    detection: FaceDetection | None = field(default=None)


def crop_transform_for_box(box: tuple[float, float, float, float], out_size: int = OUT_SIZE,
                           scale: float = CROP_SCALE) -> CropTransform:
    """The reference crop rule for one box: square about the box centre, side ``scale`` × the longer side.

    Parameters
    ----------
    box : tuple
        (x0, y0, w, h) in photo px.
    out_size : int
    scale : float

    Returns
    -------
    CropTransform
    """
    x, y, w, h = (float(v) for v in box)
    side = scale * max(w, h)
    return CropTransform(x + w / 2 - side / 2, y + h / 2 - side / 2, side, out_size)


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


def _foreground(image_u8: np.ndarray) -> np.ndarray | None:
    try:
        return _mediapipe.selfie_segmentation(image_u8) > 0.5
    except _mediapipe.MediapipeUnavailableError as exc:
        logger.warning("no person segmentation (%s); the foreground mask is approximate", exc)
        return None


def crop_face(photo: Photo, detection: FaceDetection | None = None, *, face_index: int = 0,
              detector: DetectorName = "auto") -> FaceCrop:
    """Detect, crop to 512², find the 478 landmarks and build the masks: everything in one call.

    Parameters
    ----------
    photo : Photo
    detection : FaceDetection, optional
        Use this face instead of detecting.
    face_index : int
        Which detected face, largest first (0 = largest).
    detector : {"auto", "mediapipe", "opencv"}
        See :func:`detect_faces`. With ``"opencv"`` mediapipe is not used at all: no landmarks, approximate
        masks.

    Returns
    -------
    FaceCrop

    Raises
    ------
    NoFaceError
        No face found, ``face_index`` out of range, or the face is smaller than :data:`MIN_FACE_PX`.
    """
    if detection is None:
        faces = detect_faces(photo, detector=detector)
        if not faces:
            raise NoFaceError(f"No face was found in '{photo.source}'; use a photo with a clearly visible, "
                              "roughly frontal face.")
        if not 0 <= face_index < len(faces):
            raise NoFaceError(f"'{photo.source}' has {len(faces)} face(s); choose a face number from 1 to "
                              f"{len(faces)}.")
        detection = faces[face_index]
    if detection.size < MIN_FACE_PX:
        raise NoFaceError(f"The face in '{photo.source}' is only {detection.size:.0f} px wide; use a photo where "
                          f"it is at least {MIN_FACE_PX} px wide.")
    transform = crop_transform_for_box(detection.box)
    image = render_crop(photo, transform)
    valid = transform.valid_mask(photo.original_size)
    image_u8 = to_uint8_rgb(image)
    landmarks = None
    if detector != "opencv":
        try:
            landmarks = _mediapipe.face_mesh(image_u8)
            if landmarks is None:
                logger.warning("mediapipe found no face mesh in the crop of %s; masks are approximate",
                               photo.source)
        except _mediapipe.MediapipeUnavailableError as exc:
            logger.warning("no face mesh for %s (%s); masks are approximate", photo.source, exc)
    if landmarks is not None:
        masks, approximate = masks_from_landmarks(landmarks, transform.out_size, valid, _foreground(image_u8))
    else:
        box_crop = transform.to_crop(np.array([detection.box[:2]]))[0]
        box_crop = (*box_crop, detection.box[2] * transform.scale, detection.box[3] * transform.scale)
        masks, approximate = masks_from_box(box_crop, transform.out_size, valid)
    return FaceCrop(image, transform, photo.original_size, landmarks, masks, approximate, detection)


def refine_crop_masks(crop: FaceCrop, prediction_mask: np.ndarray) -> FaceCrop:
    """Replace a landmark-less crop's box-based masks by ones derived from the network's validity mask.

    Call it after the networks ran. Crops with landmarks are returned unchanged (their masks are better).

    Parameters
    ----------
    crop : FaceCrop
    prediction_mask : np.ndarray
        (S, S) bool, :attr:`Prediction.mask`.

    Returns
    -------
    FaceCrop
        A new crop (or ``crop`` itself when it has landmarks); ``approximate_masks`` says which masks are rough.
    """
    if crop.landmarks is not None:
        return crop
    masks, approximate = masks_from_prediction_mask(prediction_mask, crop.masks["valid"])
    return replace(crop, masks=masks, approximate_masks=approximate)
