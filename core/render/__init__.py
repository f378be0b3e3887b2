"""Pure-torch differentiable rendering: nvdiffrast-style primitives and the Pixel3DMM pinhole camera.

``raster`` holds :func:`rasterize` (returning a :class:`Rasterization`), :func:`interpolate`,
:func:`interpolate_covered` and :func:`antialias` (no camera inside), and :func:`pixel_barycentrics` for a
visibility already found; ``camera`` holds the reference :class:`Camera` (normalised focal, principal point,
image size; OpenGL camera at (0, 0, 1)) and its conversions.
"""

from .camera import (
    DEFAULT_FOCAL,
    Camera,
    crop_to_photo_intrinsics,
    opencv_pose_to_world,
    world_to_camera,
)
from .raster import Rasterization, antialias, interpolate, interpolate_covered, pixel_barycentrics, rasterize

__all__ = [
    "Camera",
    "DEFAULT_FOCAL",
    "Rasterization",
    "antialias",
    "crop_to_photo_intrinsics",
    "interpolate",
    "interpolate_covered",
    "opencv_pose_to_world",
    "pixel_barycentrics",
    "rasterize",
    "world_to_camera",
]
