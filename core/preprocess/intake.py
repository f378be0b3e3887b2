"""Photo intake: read a file or a Blender image's pixels into one canonical RGB image plus its provenance.

Files are read once into memory, their size is checked from the header (:mod:`core.imageheader`) and they are
decoded with OpenCV (8/16-bit, float, grey, alpha, palette, CMYK JPEG); Pillow only reads the EXIF orientation.
JPEGs decode lazily at the scale asked for (``cv2.IMREAD_REDUCED_COLOR_*``), so a large photo is detected on a
cheap reduced decode and only the resolution the crop needs is decoded afterwards.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from ..imageheader import MAX_PIXELS, image_size

logger = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}
_ORIENTATION_NOTES = {2: "EXIF mirrored", 3: "EXIF rotated 180°", 4: "EXIF flipped", 5: "EXIF transposed",
                      6: "EXIF rotated 90°", 7: "EXIF transversed", 8: "EXIF rotated 270°"}
REDUCTIONS = (1, 2, 4, 8)
"""Integer reduction factors :meth:`Photo.pixels` accepts."""


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Encode scene-linear values with the sRGB transfer function, clipping to [0, 1].

    Parameters
    ----------
    linear : np.ndarray
        Any shape, float; NaN becomes 0.

    Returns
    -------
    np.ndarray
        Same shape, float32 in [0, 1].
    """
    x = np.clip(np.nan_to_num(np.asarray(linear, dtype=np.float32), nan=0.0), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """Scale canonical pixels (uint8, uint16 or float32 sRGB) to float32 in [0, 1].

    Parameters
    ----------
    pixels : np.ndarray
        (H, W, 3) uint8, uint16 or float32.

    Returns
    -------
    np.ndarray
        (H, W, 3) float32 in [0, 1].
    """
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * np.float32(1 / 255)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(1 / 65535)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def to_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    """Quantise canonical pixels to uint8 (what the face detectors take).

    Parameters
    ----------
    pixels : np.ndarray
        (H, W, 3) uint8, uint16 or float32 in [0, 1].

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8, C-contiguous.
    """
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    if pixels.dtype == np.uint16:
        return np.ascontiguousarray((pixels >> 8).astype(np.uint8))
    return np.ascontiguousarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _block_reduce(pixels: np.ndarray, reduction: int) -> np.ndarray:
    """Average ``reduction``² blocks; reduced pixel i covers full pixels [r·i, r·i + r), so x_red = x / r."""
    if reduction == 1:
        return pixels
    h, w = (pixels.shape[0] // reduction, pixels.shape[1] // reduction)
    return cv2.resize(pixels[: h * reduction, : w * reduction], (w, h), interpolation=cv2.INTER_AREA)


class Photo:
    """One photo as canonical sRGB pixels, decoded lazily, plus where it came from.

    Parameters
    ----------
    decode : Callable[[int], np.ndarray]
        ``decode(r)`` returns the photo reduced by ``r`` (one of :data:`REDUCTIONS`) as (≈H/r, ≈W/r, 3) uint8,
        uint16 or float32 sRGB pixels, row 0 at the top, EXIF orientation already applied; reduced pixel i
        covers full-resolution pixels [r·i, r·i + r).
    size : tuple[int, int]
        (H, W) of the full-resolution, oriented photo.
    source : str
        File path or Blender datablock name, used in messages.
    notes : Sequence[str]
        Provenance, e.g. ``"EXIF rotated 90°"``, ``"converted from CMYK"``, ``"16-bit"``, ``"linear→sRGB"``.

    Attributes
    ----------
    focal_35mm : float or None
        The camera's 35 mm-equivalent focal length in mm from the file's EXIF (FocalLengthIn35mmFilm), when it
        states one; :func:`load_photo` sets it.

    Notes
    -----
    Build photos with :func:`load_photo`, :func:`photo_from_pixels` or :meth:`Photo.from_array`.
    """

    def __init__(self, decode: Callable[[int], np.ndarray], size: tuple[int, int], source: str = "",
                 notes: Sequence[str] = ()):
        self._decode = decode
        self.original_size = (int(size[0]), int(size[1]))
        self.source = source
        self.notes = tuple(notes)
        self.focal_35mm: float | None = None
        self._full: np.ndarray | None = None
        self._reduced: dict[int, np.ndarray] = {}
        self._rgb: np.ndarray | None = None

    @classmethod
    def from_array(cls, rgb: np.ndarray, source: str = "array", notes: Sequence[str] = ()) -> Photo:
        """Wrap an in-memory sRGB image.

        Parameters
        ----------
        rgb : np.ndarray
            (H, W, 3) uint8, uint16 or float32 in [0, 1], row 0 at the top.
        source, notes
            As in the class.
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ImageError(f"The image '{source}' has shape {rgb.shape}; pass a non-empty H×W×3 RGB array.")
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb = np.nan_to_num(rgb.astype(np.float32), nan=0.0, copy=False)   # one copy, then in place
            np.clip(rgb, 0.0, 1.0, out=rgb)
        photo = cls(lambda r: _block_reduce(rgb, r), rgb.shape[:2], source, notes)
        photo._full = rgb
        return photo

    def pixels(self, reduction: int = 1) -> np.ndarray:
        """Canonical pixels, reduced by an integer factor.

        Parameters
        ----------
        reduction : int
            One of :data:`REDUCTIONS`. A JPEG decodes directly at that scale (each scale once, then kept);
            other images are decoded once at full size (kept) and block-averaged.

        Returns
        -------
        np.ndarray
            (≈H/r, ≈W/r, 3) uint8, uint16 or float32; reduced pixel i covers full pixels [r·i, r·i + r).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction}")
        if self._full is not None:
            return _block_reduce(self._full, reduction)
        if reduction == 1:
            self._full = self._decode(1)
            self._reduced.clear()
            return self._full
        if reduction not in self._reduced:
            self._reduced[reduction] = self._decode(reduction)
        return self._reduced[reduction]

    @property
    def name(self) -> str:
        """File name (without folders) or datablock name, for messages."""
        return Path(self.source).name or self.source

    @property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) float32 sRGB in [0, 1] at full resolution (decoded and converted on first use)."""
        if self._rgb is None:
            self._rgb = to_float_rgb(self.pixels(1))
        return self._rgb

    def __repr__(self) -> str:
        return f"Photo(source={self.source!r}, original_size={self.original_size}, notes={self.notes})"


def _exif(data: bytes) -> tuple[int, float | None, tuple[int, int] | None]:
    """EXIF orientation tag (1 when absent or unreadable), the 35 mm-equivalent focal length in mm (tag 0xA405 of
    the Exif IFD; None when absent, zero or unreadable) and Pillow's (H, W) when Pillow knows the format."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow cannot parse every format OpenCV reads (float TIFF, HDR)
        return 1, None, None
    with im:
        size = (im.size[1], im.size[0])
        # Pillow decodes a whole PNG to look for EXIF; only do that when the PNG has an eXIf chunk.
        orientation, focal = 1, None
        try:
            if im.format != "PNG" or b"eXIf" in data:
                exif = im.getexif()
                orientation = int(exif.get(0x0112, 1))
                focal = float(exif.get_ifd(0x8769).get(0xA405, 0)) or None
        except Exception:  # noqa: BLE001 - unreadable EXIF: keep the stored orientation, no focal
            pass
    return (orientation if orientation in range(1, 9) else 1), focal, size


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright according to an EXIF orientation tag (1 to 8).

    Parameters
    ----------
    pixels : np.ndarray
        (H, W, ...) as stored in the file.
    orientation : int
        EXIF tag 0x0112.

    Returns
    -------
    np.ndarray
        The displayed image: (H, W, ...) for tags 1-4, (W, H, ...) for tags 5-8.
    """
    if orientation in (5, 6, 7, 8):
        pixels = pixels.swapaxes(0, 1)
    flip_x = orientation in (2, 3, 6, 7)
    flip_y = orientation in (3, 4, 7, 8)
    if flip_x:
        pixels = pixels[:, ::-1]
    if flip_y:
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def _canonical(decoded: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """OpenCV's decode (grey / BGR / BGRA, any depth) to (H, W, 3) RGB uint8, uint16 or float32 sRGB."""
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    channels = decoded.shape[2]
    if decoded.dtype in (np.float32, np.float64, np.float16):
        decoded = linear_to_srgb(decoded)
        notes.append("float, linear→sRGB")
    elif decoded.dtype == np.uint16:
        notes.append("16-bit")
    elif decoded.dtype != np.uint8:
        raise ImageError(f"The image '{name}' stores {decoded.dtype} samples; save it as 8- or 16-bit JPEG, "
                         "PNG or TIFF and load it again.")
    if channels in (1, 2):
        notes.append("greyscale")
        rgb = np.repeat(decoded[:, :, :1], 3, axis=2)
        alpha = decoded[:, :, 1] if channels == 2 else None
    else:
        rgb = decoded[:, :, 2::-1]
        alpha = decoded[:, :, 3] if channels >= 4 else None
    if alpha is not None:
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(decoded.dtype, 1.0)
        a = alpha.astype(np.float32)[:, :, None] * np.float32(1 / scale)
        rgb = to_float_rgb(np.ascontiguousarray(rgb)) * a + (1.0 - a)
        notes.append("alpha composited over white")
    return np.ascontiguousarray(rgb)


def _decode(buffer: np.ndarray, flags: int, name: str) -> np.ndarray | None:
    """``cv2.imdecode``, whose refusal of an image above its pixel limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, which
    :func:`core.console.cap_image_decoding` sets for the command-line tools) becomes an :class:`ImageError`."""
    try:
        return cv2.imdecode(buffer, flags)
    except cv2.error as exc:
        raise ImageError(f"The image '{name}' is too large to decode (more than {MAX_PIXELS / 1e6:.0f} megapixels) "
                         "or damaged; save it as a JPEG or PNG of at most that size and try again.") from exc


def load_photo(path: str | Path | np.ndarray) -> Photo:
    """Read an image file into a :class:`Photo` (decoding is deferred until pixels are asked for).

    Parameters
    ----------
    path : str, Path or np.ndarray
        An (H, W, 3) sRGB array (uint8, uint16 or float in [0, 1]) is wrapped by :meth:`Photo.from_array`.
        A file may be any format OpenCV reads: JPEG (also CMYK), PNG (grey, palette, alpha, 16-bit), TIFF (also float),
        WebP, BMP, ... EXIF orientation is applied; alpha is composited over white; float images are taken
        as scene-linear and encoded to sRGB.

    Returns
    -------
    Photo

    Raises
    ------
    ImageError
        The file is missing, empty, not an image, truncated or corrupt, or its header says it has more than
        :data:`~core.imageheader.MAX_PIXELS` pixels (checked before anything is decoded, so a decompression bomb
        costs nothing). Formats whose header :func:`~core.imageheader.image_size` cannot read are left to
        OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``: 2^30 pixels unless set before OpenCV loads).
    """
    if isinstance(path, np.ndarray):
        return Photo.from_array(path)
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ImageError(f"Cannot find the image file '{path}'; check the path and try again.")
    data = path.read_bytes()
    if not data:
        raise ImageError(f"The image file '{name}' is empty (0 bytes); choose another photo.")
    stored = image_size(data)
    if stored is not None and stored[0] * stored[1] > MAX_PIXELS:
        width, height = stored
        raise ImageError(f"The image '{name}' is {width} × {height} pixels ({width * height / 1e6:.0f} megapixels), "
                         f"more than the {MAX_PIXELS / 1e6:.0f} megapixels this add-on reads; scale it down (4000 "
                         "pixels on the long side are plenty) and try again.")
    orientation, focal_35mm, header_size = _exif(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    notes: list[str] = []
    if orientation != 1:
        notes.append(_ORIENTATION_NOTES[orientation])

    def fail() -> ImageError:
        if header_size is None:
            return ImageError(f"The file '{name}' is not an image this add-on can read; save it as JPEG or PNG "
                              "and try again.")
        return ImageError(f"The image '{name}' is truncated or corrupt; re-export or re-download it and try "
                          "again.")

    if data.startswith(_JPEG_MAGIC) and header_size is not None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "CMYK":
                notes.append("converted from CMYK")
            elif im.mode == "L":
                notes.append("greyscale")

        def decode_jpeg(reduction: int) -> np.ndarray:
            bgr = _decode(buffer, _REDUCED_FLAGS[reduction] | cv2.IMREAD_IGNORE_ORIENTATION, name)
            if bgr is None:
                raise fail()
            return apply_orientation(bgr[:, :, ::-1], orientation)

        size = header_size if orientation < 5 else header_size[::-1]
        if min(size) == 0:
            raise ImageError(f"The image '{name}' has zero size; choose another photo.")
        photo = Photo(decode_jpeg, size, str(path), notes)
        photo.focal_35mm = focal_35mm
        logger.debug("Opened %s lazily: %s, %s", path, size, notes)
        return photo

    decoded = _decode(buffer, cv2.IMREAD_UNCHANGED, name)
    if decoded is None:
        raise fail()
    if decoded.size == 0:
        raise ImageError(f"The image '{name}' has zero size; choose another photo.")
    if decoded.ndim == 3 and decoded.shape[2] == 4 and header_size is not None:
        # OpenCV decodes grey+alpha PNGs as BGRA; keep the note accurate.
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("LA", "La"):
                notes.append("greyscale")
    rgb = apply_orientation(_canonical(decoded, name, notes), orientation)
    photo = Photo.from_array(rgb, str(path), notes)
    photo.focal_35mm = focal_35mm
    return photo


def photo_from_pixels(pixels: np.ndarray | Sequence[float], width: int, height: int, *, bottom_up: bool = True,
                      linear: bool = False, name: str = "") -> Photo:
    """Build a :class:`Photo` from a Blender image's pixel buffer.

    Parameters
    ----------
    pixels : array-like
        ``width * height * C`` floats (flat, as ``Image.pixels``) or an (H, W, C) array; C is 1, 3 or 4 (RGBA;
        alpha is composited over white). Values are in [0, 1] (NaN becomes 0, others are clipped).
    width, height : int
        Image size in pixels.
    bottom_up : bool
        True when row 0 is the bottom row (Blender's order).
    linear : bool
        True when the values are scene-linear (float buffers in Blender); they are encoded to sRGB.
    name : str
        Datablock name used in messages.

    Returns
    -------
    Photo

    Raises
    ------
    ImageError
        The size is zero or does not match the number of values.
    """
    label = name or "image"
    if width <= 0 or height <= 0:
        raise ImageError(f"The image '{label}' has zero size ({width}×{height}); load a photo with pixels.")
    values = np.asarray(pixels, dtype=np.float32).reshape(-1)
    channels = values.size // (width * height)
    if channels not in (1, 3, 4) or values.size != channels * width * height:
        raise ImageError(f"The image '{label}' has {values.size} values, which does not fit {width}×{height} "
                         "pixels with 1, 3 or 4 channels; reload the image and try again.")
    image = values.reshape(height, width, channels)
    notes = []
    if bottom_up:
        image = image[::-1]
        notes.append("bottom-up rows flipped")
    rgb = np.repeat(image[:, :, :1], 3, axis=2) if channels == 1 else image[:, :, :3]
    alpha = np.clip(np.nan_to_num(image[:, :, 3:4], nan=1.0), 0.0, 1.0) if channels == 4 else None
    if linear:
        notes.append("linear→sRGB")
        rgb = linear_to_srgb(rgb)
    if alpha is not None and float(alpha.min()) < 1.0:
        rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0) * alpha + (1.0 - alpha)
        notes.append("alpha composited over white")
    return Photo.from_array(rgb, name or "image", notes)   # copies once, clips, NaN → 0
