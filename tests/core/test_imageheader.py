"""Image sizes read from headers agree with what OpenCV decodes, for every format it reads; bad headers give None."""

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from core.imageheader import image_size

IMAGE = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)   # 53 wide, 37 high


def _opencv(ext: str) -> bytes:
    image = IMAGE.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else IMAGE
    image = image[:, :, 0] if ext in (".pgm", ".pbm") else image
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def _pillow(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(IMAGE).save(out, format=fmt, **options)
    return out.getvalue()


FILES = {
    **{ext: (lambda ext=ext: _opencv(ext)) for ext in (".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pgm",
                                                        ".pbm", ".pam", ".pfm", ".hdr", ".ras", ".jp2")},
    "webp lossless": lambda: cv2.imencode(".webp", IMAGE, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
    "webp extended": lambda: _pillow("WEBP", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"),
    "progressive jpeg": lambda: _pillow("JPEG", progressive=True),
    "jpeg after 60 kB of EXIF": lambda: _pillow("JPEG", exif=b"Exif\x00\x00" + bytes(60000)),
    "lzw tiff": lambda: _pillow("TIFF", compression="tiff_lzw"),
    "bigtiff": lambda: _pillow("TIFF", big_tiff=True),
    "j2k codestream": lambda: _pillow("JPEG2000", no_jp2=True),
    "gif": lambda: _pillow("GIF"),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_header_size_is_the_stored_size(kind):
    data = FILES[kind]()
    assert image_size(data) == (53, 37)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is not None:   # this OpenCV decodes no GIF
        assert decoded.shape[1::-1] == (53, 37)


def test_big_endian_tiff_and_os2_bitmap():
    big_endian = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 2) + \
        struct.pack(">HHIHH", 256, 3, 1, 5000, 0) + struct.pack(">HHII", 257, 4, 1, 7000) + bytes(4)
    assert image_size(big_endian) == (5000, 7000)
    os2 = b"BM" + bytes(12) + struct.pack("<IHH", 12, 300, 200) + bytes(8)
    assert image_size(os2) == (300, 200)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00\x10JFIF",
                                  b"II*\x00\xff\xff\xff\x00", b"not an image at all", bytes(1000)])
def test_unknown_or_cut_short_headers_give_none(data):
    assert image_size(data) is None
