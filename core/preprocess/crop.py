"""The square face crop the networks see, and the exact transform back to the full photo.

Crop rule (Pixel3DMM's static crop for one frame): the detector box is made square by growing its shorter side
about its centre and scaled by 1.42. Unlike the reference, a box that leaves the photo is padded with black
rather than shifted, so the face stays centred; the ``valid`` mask marks crop pixels that come from the photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import NoFaceError
from . import _mediapipe
from .detect import DetectorName, FaceDetection, detect_faces
from .intake import Photo, to_uint8_rgb
from .masks import masks_from_box, masks_from_landmarks, masks_from_prediction_mask
from .transform import OUT_SIZE, CropTransform, render_crop

logger = logging.getLogger(__name__)

CROP_SCALE = 1.42
"""Crop side / longer side of the detector box (the reference's rule)."""
MIN_FACE_PX = 40
"""Smallest usable face box side in photo pixels (the crop is then upsampled about 9×)."""


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


def _foreground(image_u8: np.ndarray) -> np.ndarray | None:
    try:
        return _mediapipe.selfie_segmentation(image_u8) > 0.5
    except _mediapipe.MediapipeUnavailableError as exc:
        logger.warning("no person segmentation (%s); the foreground mask is approximate", exc)
        return None


def select_face(photo: Photo, faces: list[FaceDetection], face_index: int = 0) -> FaceDetection:
    """The face to fit among those :func:`detect_faces` found (largest first).

    Parameters
    ----------
    photo : Photo
        Named in the messages.
    faces : list[FaceDetection]
        Largest first.
    face_index : int
        0 = the largest, 1 = the next, ...

    Raises
    ------
    NoFaceError
        No face was found, or ``face_index`` is out of range.
    """
    if not faces:
        raise NoFaceError(f"No face was found in '{photo.name}'; use a photo with a clearly visible, "
                          "roughly frontal face.")
    if not 0 <= face_index < len(faces):
        raise NoFaceError(f"'{photo.name}' has {len(faces)} face(s); choose a face index from 0 to "
                          f"{len(faces) - 1}.")
    return faces[face_index]


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
        detection = select_face(photo, detect_faces(photo, detector=detector), face_index)
    if detection.size < MIN_FACE_PX:
        raise NoFaceError(f"The face in '{photo.name}' is only {detection.size:.0f} px wide; use a photo where "
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
