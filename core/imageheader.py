"""Image dimensions read from a file's header without decoding any pixels, and the largest photo accepted.

OpenCV has no header-only call, so a decompression bomb (a few hundred kB that decode to gigabytes) would be
decoded in full before its size is known. :func:`image_size` reads the size from the header of every format
the pinned OpenCV decodes: PNG, JPEG, BMP, WebP, TIFF (also BigTIFF), JPEG 2000, PNM / PAM, PFM, Radiance HDR
and Sun raster, plus GIF for OpenCV builds that decode it. Only the standard library is used (Blender's Python
has no Pillow) and importing this module loads nothing else, so entry points can read :data:`MAX_PIXELS`
before OpenCV is loaded.
"""

from __future__ import annotations

import re
import struct

MAX_PIXELS = 160_000_000
"""The largest photo accepted, in pixels. Every current camera is below it (the largest, 151 MP medium-format
backs, included), and the pipeline keeps about 20 bytes per photo pixel (the decode, a float32 copy the texture
is sampled from, masks), so an accepted photo needs at most about 3 GB."""

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: markers without a length field


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height stored in an image file's header.

    Parameters
    ----------
    data : bytes
        The whole file (only its first kilobytes are read, except for JPEG, whose frame header may follow
        large EXIF / ICC segments: those are skipped by their lengths).

    Returns
    -------
    tuple[int, int] or None
        ``(width, height)`` of the stored image (before any EXIF rotation), or None when the format is not one
        of those listed in the module docstring or its header is cut short.
    """
    try:
        for reader in _READERS:
            size = reader(data)
            if size is not None:
                return size
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg(data: bytes) -> tuple[int, int] | None:
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    return struct.unpack("<HH", data[6:10])


def _bmp(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM":
        return None
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag (3 bytes), start code (3 bytes), then 14-bit sizes
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then width - 1 and height - 1 in 14 bits each
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas width - 1 and height - 1 in 24 bits each
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        entries = (data[offset + 2 + 12 * i:offset + 14 + 12 * i] for i in range(count))
        value_at, value_size = 8, 4
    elif version == 43:  # BigTIFF
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count = struct.unpack(order + "Q", data[offset:offset + 8])[0]
        entries = (data[offset + 8 + 20 * i:offset + 28 + 20 * i] for i in range(count))
        value_at, value_size = 12, 8
    else:
        return None
    found = {}
    formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for entry in entries:
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257) and kind in formats:
            found[tag] = struct.unpack_from(order + formats[kind], entry[value_at:value_at + value_size])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _jpeg2000(data: bytes) -> tuple[int, int] | None:
    if data[:4] == b"\xff\x4f\xff\x51":  # raw codestream: SIZ segment right after SOC
        x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", data[8:24])
        return x_size - x_offset, y_size - y_offset
    if data[4:12] == b"jP  \r\n\x87\n":  # JP2 boxes: the image header box inside the header superbox
        at = data.find(b"ihdr", 0, 4096)
        if at < 0:
            return None
        height, width = struct.unpack(">II", data[at + 4:at + 12])
        return width, height
    return None


_PNM = re.compile(rb"\AP[1-6](?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)")
_PFM = re.compile(rb"\AP[Ff]\s+(\d+)\s+(\d+)")
_HDR_RESOLUTION = re.compile(rb"\n\n([-+][YX]) (\d+) ([-+][YX]) (\d+)")


def _text_headers(data: bytes) -> tuple[int, int] | None:
    head = data[:4096]
    if match := _PNM.match(head):
        return int(match[1]), int(match[2])
    if head.startswith(b"P7"):
        width, height = (re.search(rb"^%s\s+(\d+)" % key, head, re.MULTILINE) for key in (b"WIDTH", b"HEIGHT"))
        return (int(width[1]), int(height[1])) if width and height else None
    if match := _PFM.match(head):
        return int(match[1]), int(match[2])
    if head.startswith((b"#?RADIANCE", b"#?RGBE")) and (match := _HDR_RESOLUTION.search(head)):
        first, second = int(match[2]), int(match[4])
        return (second, first) if match[1].endswith(b"Y") else (first, second)
    return None


def _sun_raster(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"\x59\xa6\x6a\x95":
        return None
    return struct.unpack(">II", data[4:12])


_READERS = (_png, _jpeg, _gif, _bmp, _webp, _tiff, _jpeg2000, _text_headers, _sun_raster)
