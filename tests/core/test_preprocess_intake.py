"""Photo intake: every file kind users load, every bad input, and Blender pixel buffers."""

import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from core.errors import ImageError
from core.preprocess import intake, load_photo, photo_from_pixels

ROOT = Path(__file__).resolve().parents[2]


def _pattern(h=24, w=40):
    """Non-symmetric colour pattern so any wrong flip or rotation shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], axis=-1).astype(np.uint8)


def _srgb(lin):
    lin = np.clip(lin, 0, 1)
    return np.piecewise(lin, [lin <= 0.0031308, lin > 0.0031308],
                        [lambda v: v * 12.92, lambda v: 1.055 * v ** (1 / 2.4) - 0.055])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_matches_pillow(tmp_path, fmt, orientation):
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_pattern()).save(path, format=fmt, exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.float32) / 255
    photo = load_photo(path)
    assert photo.rgb.shape == expected.shape
    assert photo.original_size == expected.shape[:2]
    assert np.abs(photo.rgb - expected).mean() < 3 / 255
    assert any(note.startswith("EXIF") for note in photo.notes)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_35mm_focal_length_is_read(tmp_path, fmt):
    """FocalLengthIn35mmFilm (0xA405 in the Exif IFD) as phones write it; absent or 0 (unknown) gives None."""
    for value, want in ((26, 26.0), (0, None), (None, None)):
        path = tmp_path / f"f{value}.{fmt.lower()}"
        exif = Image.Exif()
        exif[0x0112] = 6
        if value is not None:
            exif.get_ifd(0x8769)[0xA405] = value
        Image.fromarray(_pattern()).save(path, format=fmt, exif=exif, quality=95)
        photo = load_photo(path)
        assert photo.focal_35mm == want and photo.original_size == (40, 24)  # the orientation still applies
    assert photo_from_pixels(np.zeros(4 * 3 * 4), 4, 3).focal_35mm is None


def test_reduced_jpeg_decode_is_oriented_and_aligned(tmp_path):
    path = tmp_path / "big.jpg"
    image = cv2.resize(_pattern(), (400, 240), interpolation=cv2.INTER_LINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(path, exif=exif, quality=95)
    photo = load_photo(path)
    full = photo.rgb
    reduced = photo.pixels(4).astype(np.float32) / 255
    assert reduced.shape == (100, 60, 3)
    block = cv2.resize(full, (60, 100), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced - block).mean() < 3 / 255


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    rgb = cv2.resize(_pattern(), (80, 48))
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    photo = load_photo(path)
    assert "converted from CMYK" in photo.notes
    assert np.abs(photo.rgb - rgb / 255).mean() < 4 / 255


def test_sixteen_bit_png_keeps_precision(tmp_path):
    path = tmp_path / "deep.png"
    rgb16 = _pattern().astype(np.uint16) * 257 + np.arange(3, dtype=np.uint16)
    cv2.imwrite(str(path), rgb16[:, :, ::-1])
    photo = load_photo(path)
    assert "16-bit" in photo.notes
    np.testing.assert_allclose(photo.rgb, rgb16 / 65535, atol=1e-6)


def test_float_tiff_is_linear(tmp_path):
    path = tmp_path / "linear.tiff"
    linear = np.linspace(0, 1.2, 24 * 40 * 3, dtype=np.float32).reshape(24, 40, 3)
    cv2.imwrite(str(path), linear[:, :, ::-1], [cv2.IMWRITE_TIFF_COMPRESSION, 1])  # default is lossy LogLuv
    photo = load_photo(path)
    assert any("linear→sRGB" in note for note in photo.notes)
    np.testing.assert_allclose(photo.rgb, _srgb(linear.astype(np.float64)), atol=1e-5)


def test_grey_palette_and_alpha_pngs(tmp_path):
    rgb = _pattern()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    photo = load_photo(tmp_path / "grey.png")
    assert "greyscale" in photo.notes
    np.testing.assert_allclose(photo.rgb, np.repeat(grey[:, :, None], 3, 2) / 255, atol=1e-6)

    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_allclose(load_photo(tmp_path / "pal.png").rgb,
                               np.asarray(pal.convert("RGB")) / 255, atol=1e-6)

    alpha = (np.arange(40)[None, :].repeat(24, 0) * 255 // 39).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    photo = load_photo(tmp_path / "rgba.png")
    a = alpha[:, :, None] / 255
    assert "alpha composited over white" in photo.notes
    np.testing.assert_allclose(photo.rgb, rgb / 255 * a + (1 - a), atol=1e-5)

    Image.fromarray(np.dstack([grey, alpha])).convert("LA").save(tmp_path / "la.png")
    photo = load_photo(tmp_path / "la.png")
    assert "greyscale" in photo.notes
    np.testing.assert_allclose(photo.rgb, np.repeat(grey[:, :, None] / 255 * a + (1 - a), 3, 2), atol=1e-5)


def _jpeg_bytes():
    buffer = io.BytesIO()
    Image.fromarray(cv2.resize(_pattern(), (200, 120))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "content", "words"), [
    ("missing.jpg", None, "Cannot find"),
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"this is a shopping list, not a photo\n" * 20, "not an image"),
    ("cut.jpg", _jpeg_bytes()[:700], "truncated"),
])
def test_bad_files_get_one_clear_sentence(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_photo(path).rgb
    message = str(info.value)
    assert words in message and name in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated.*cut.png|cut.png.*truncated"):
        load_photo(tmp_path / "cut.png")


def png_bomb(width: int, height: int, rows_per_block: int = 500) -> bytes:
    """A valid black greyscale PNG of ``width`` × ``height`` pixels that is tiny on disk (0.4 MB for 20000²)."""
    block = bytes(width + 1) * rows_per_block  # each row: filter byte 0, then black pixels
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    # a full flush resets the compressor, so every later block compresses to the same bytes
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows_per_block):
        adler = zlib.adler32(block, adler)
    idat = first + repeated * (height // rows_per_block - 1) + b"\x03\x00" + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_png_bomb_helper_makes_a_valid_png():
    decoded = cv2.imdecode(np.frombuffer(png_bomb(1500, 1000), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (1000, 1500) and decoded.max() == 0


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20000, 20000))
    assert path.stat().st_size < 500_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("the bomb was handed to the decoder")

    monkeypatch.setattr(intake.cv2, "imdecode", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as info:
            load_photo(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith("The image 'bomb.png' is 20000 × 20000 pixels (400 megapixels), more than the "
                                      "160 megapixels")
    assert peak < 5 * path.stat().st_size  # the file's bytes, nothing decoded


def test_a_photo_at_the_limit_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(intake, "MAX_PIXELS", 1500 * 1000)
    path = tmp_path / "large.png"
    path.write_bytes(png_bomb(1500, 1000))
    assert load_photo(path).original_size == (1000, 1500)
    monkeypatch.setattr(intake, "MAX_PIXELS", 1500 * 1000 - 1)
    with pytest.raises(ImageError, match="1500 × 1000 pixels"):
        load_photo(path)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_formats_without_a_readable_header_meet_opencvs_own_limit(tmp_path):
    """The command-line tools set OpenCV's pixel limit before it loads; a bomb whose header this code cannot read
    (simulated) is then refused by OpenCV itself, as one sentence, without decoding."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20000, 20000))
    script = (
        "from core.console import cap_image_decoding\n"
        "cap_image_decoding()\n"
        "from core.preprocess import intake\n"
        "intake.image_size = lambda data: None\n"
        "try:\n"
        f"    intake.load_photo({str(path)!r})\n"
        "except intake.ImageError as exc:\n"
        "    print(exc)\n"
        "from pathlib import Path\n"
        "print(next(line.split()[1] for line in Path('/proc/self/status').read_text().splitlines()\n"
        "           if line.startswith('VmHWM')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith("The image 'bomb.png' is too large to decode (more than 160 megapixels)")
    assert int(out[1]) < 300_000  # kB of peak memory, imports included: the decode alone would take 400 MB


def test_blender_pixels_bottom_up_rgba():
    top_down = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    top_down[:, :, 3] = 1.0
    flat = top_down[::-1].reshape(-1)
    photo = photo_from_pixels(tuple(flat.tolist()), 5, 6, name="Portrait.png")
    np.testing.assert_allclose(photo.rgb, top_down[:, :, :3], atol=1e-7)
    assert photo.source == "Portrait.png" and photo.original_size == (6, 5)


def test_blender_pixels_linear_and_alpha():
    top_down = np.random.default_rng(1).random((4, 3, 4)).astype(np.float32)
    photo = photo_from_pixels(top_down, 3, 4, bottom_up=False, linear=True)
    a = top_down[:, :, 3:]
    np.testing.assert_allclose(photo.rgb, _srgb(top_down[:, :, :3].astype(np.float64)) * a + (1 - a), atol=1e-5)
    assert "linear→sRGB" in photo.notes


@pytest.mark.parametrize(("values", "w", "h", "words"), [
    (np.zeros(0), 0, 0, "zero size"),
    (np.zeros(4 * 10 * 10 - 1), 10, 10, "does not fit"),
])
def test_bad_pixel_buffers(values, w, h, words):
    with pytest.raises(ImageError, match=words) as info:
        photo_from_pixels(values, w, h, name="Broken")
    assert "Broken" in str(info.value)


def test_arrays_are_accepted_and_checked():
    rgb = _pattern()
    photo = load_photo(rgb)
    np.testing.assert_allclose(photo.rgb, rgb / 255, atol=1e-7)
    assert photo.pixels(2).shape == (12, 20, 3)
    with pytest.raises(ImageError, match="H×W×3"):
        load_photo(np.zeros((0, 5, 3)))


def test_blender_pixels_nan_and_out_of_range_values_are_sanitised():
    values = np.array([[np.nan, 2.0, -1.0, 1.0], [0.25, 0.5, 0.75, 1.0]], np.float32)   # two RGBA pixels
    photo = photo_from_pixels(values.reshape(-1), 2, 1)
    np.testing.assert_array_equal(photo.rgb, [[[0.0, 1.0, 0.0], [0.25, 0.5, 0.75]]])
