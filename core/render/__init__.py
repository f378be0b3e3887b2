"""Pure-torch differentiable rendering: nvdiffrast-style primitives and the Pixel3DMM pinhole camera.

``raster`` holds :func:`rasterize`, :func:`interpolate` and :func:`antialias` (no camera inside); ``camera`` holds
the reference camera (normalised focal, principal point, OpenGL camera at (0, 0, 1)) and its conversions.
"""

from .raster import antialias, interpolate, rasterize

__all__ = ["rasterize", "interpolate", "antialias"]
