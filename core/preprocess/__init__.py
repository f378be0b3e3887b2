"""Photo intake, face detection, the 512² face crop with its exact transform, landmarks and region masks.

Typical use::

    photo = load_photo("portrait.jpg")           # or photo_from_pixels(...) for a Blender image
    crop = crop_face(photo)                      # detect + crop + 478 landmarks + masks
    ...                                          # networks run on crop.image
    crop = refine_crop_masks(crop, prediction.mask)   # only changes crops without landmarks
"""

from .crop import (
    CROP_SCALE,
    MIN_FACE_PX,
    OUT_SIZE,
    CropTransform,
    FaceCrop,
    crop_face,
    crop_transform_for_box,
    refine_crop_masks,
    render_crop,
    select_face,
)
from .detect import DetectorUnavailableError, FaceDetection, FaceDetector, detect_faces
from .intake import Photo, linear_to_srgb, load_photo, photo_from_pixels
from .masks import MASK_KEYS, masks_from_prediction_mask

__all__ = [
    "CROP_SCALE", "MASK_KEYS", "MIN_FACE_PX", "OUT_SIZE", "CropTransform", "DetectorUnavailableError",
    "FaceCrop", "FaceDetection", "FaceDetector", "Photo", "crop_face", "crop_transform_for_box", "detect_faces",
    "linear_to_srgb", "load_photo", "masks_from_prediction_mask", "photo_from_pixels",
    "refine_crop_masks", "render_crop", "select_face",
]
