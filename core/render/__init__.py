"""Pure-torch differentiable rendering: nvdiffrast-style primitives and the Pixel3DMM pinhole camera.

``raster`` holds :func:`rasterize`, :func:`interpolate` and :func:`antialias` (no camera inside), and
:func:`pixel_barycentrics` for a visibility already found; ``camera`` holds
the reference camera (normalised focal, principal point, OpenGL camera at (0, 0, 1)) and its conversions.
"""

from .camera import (
    DEFAULT_FOCAL,
    clip_from_camera,
    crop_to_photo_intrinsics,
    intrinsics_matrix,
    opencv_pose_to_world,
    project,
    world_to_camera,
)
from .raster import antialias, interpolate, pixel_barycentrics, rasterize

__all__ = [
    "rasterize",
    "pixel_barycentrics",
    "interpolate",
    "antialias",
    "DEFAULT_FOCAL",
    "world_to_camera",
    "project",
    "clip_from_camera",
    "intrinsics_matrix",
    "crop_to_photo_intrinsics",
    "opencv_pose_to_world",
]
