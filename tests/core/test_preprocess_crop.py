"""Crop transform: exact mapping between photo and crop pixels, intrinsics, resampling, padding, crop rule."""

import cv2
import numpy as np
import pytest

from core.preprocess import CropTransform, crop_transform_for_box, load_photo, render_crop
from core.preprocess.intake import Photo


def _dot_image(h, w, centre, sigma):
    """Gaussian dot sampled at pixel centres (integer + 0.5)."""
    gx = np.exp(-((np.arange(w) + 0.5 - centre[0]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((np.arange(h) + 0.5 - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.outer(gy, gx).astype(np.float32)[:, :, None], 3, axis=2)


def _centroid(image):
    g = image[:, :, 0].astype(np.float64)
    y, x = np.mgrid[0 : g.shape[0], 0 : g.shape[1]] + 0.5
    return np.array([(g * x).sum(), (g * y).sum()]) / g.sum()


def test_to_crop_and_to_photo_are_inverse_and_match_the_formula():
    t = CropTransform(12.5, -30.25, 300.0, 512)
    xy = np.random.default_rng(0).uniform(-100, 600, (50, 2))
    crop = t.to_crop(xy)
    np.testing.assert_allclose(crop[:, 0], (xy[:, 0] - 12.5) * 512 / 300)
    np.testing.assert_allclose(crop[:, 1], (xy[:, 1] + 30.25) * 512 / 300)
    np.testing.assert_allclose(t.to_photo(crop), xy, atol=1e-9)


def test_intrinsics_map_projections_between_crop_and_photo():
    t = CropTransform(210.3, 95.7, 412.9, 512)
    k_crop = np.array([[900.0, 0, 250.0], [0, 910.0, 262.0], [0, 0, 1]])
    points = np.random.default_rng(1).uniform([-0.1, -0.1, 0.5], [0.1, 0.1, 1.5], (20, 3))
    proj_crop = (points @ k_crop.T)[:, :2] / points[:, 2:]
    k_photo = t.intrinsics_to_photo(k_crop)
    proj_photo = (points @ k_photo.T)[:, :2] / points[:, 2:]
    np.testing.assert_allclose(proj_photo, t.to_photo(proj_crop), atol=1e-9)
    np.testing.assert_allclose(t.intrinsics_to_crop(k_photo), k_crop, atol=1e-9)


@pytest.mark.parametrize(("transform", "sigma"), [
    (CropTransform(100.7, 50.2, 60.1, 512), 2.0),    # 8.5× upsampling
    (CropTransform(61.3, 17.9, 250.0, 512), 6.0),    # about 2× upsampling
])
def test_dot_lands_where_to_crop_says(transform, sigma):
    dot = np.array([123.3, 77.8])
    photo = Photo.from_array(_dot_image(200, 300, dot, sigma))
    crop = render_crop(photo, transform)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.float32
    np.testing.assert_allclose(_centroid(crop), transform.to_crop(dot), atol=0.05)


def test_dot_through_reduced_decode_of_large_photo():
    # Box of 2100 px → the photo is reduced 4× before the warp; centring must survive the reduction.
    dot = np.array([1311.0, 1033.0])
    photo = Photo.from_array((_dot_image(2200, 2600, dot, 30.0) * 65535).round().astype(np.uint16))
    transform = CropTransform(300.4, 50.6, 2100.0, 512)
    crop = render_crop(photo, transform)
    assert photo._reduced == {} and photo.pixels(4).shape == (550, 650, 3)  # block-reduced path
    np.testing.assert_allclose(_centroid(crop), transform.to_crop(dot), atol=0.1)


def test_dot_through_reduced_jpeg_decode(tmp_path):
    dot = np.array([1501.3, 902.6])
    image = (_dot_image(2000, 2600, dot, 30.0) * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / "dot.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 98])
    photo = load_photo(tmp_path / "dot.jpg")
    transform = CropTransform(900.0, 300.0, 1900.0, 512)   # 1900 / 2 ≥ 512 → decoded at 1/2
    crop = render_crop(photo, transform)
    assert photo._full is None and 2 in photo._reduced
    np.testing.assert_allclose(_centroid(crop), transform.to_crop(dot), atol=0.15)


def test_padding_outside_the_photo_and_valid_mask():
    photo = Photo.from_array(np.ones((100, 80, 3), np.float32))
    transform = CropTransform(-30.0, 40.0, 120.0, 512)   # leaves the photo on the left and at the bottom
    crop = render_crop(photo, transform)
    valid = transform.valid_mask(photo.original_size)
    # valid pixels: centre maps inside [0, 80) × [0, 100)
    centres = transform.to_photo(np.stack(np.meshgrid(np.arange(512) + 0.5, np.arange(512) + 0.5), -1).reshape(-1, 2))
    inside = ((centres[:, 0] >= 0) & (centres[:, 0] < 80) & (centres[:, 1] >= 0) & (centres[:, 1] < 100))
    np.testing.assert_array_equal(valid.reshape(-1), inside)
    kernel = np.ones((11, 11), np.uint8)
    deep_inside = cv2.erode(valid.astype(np.uint8), kernel).astype(bool)
    deep_outside = cv2.erode((~valid).astype(np.uint8), kernel).astype(bool)
    assert deep_inside.any() and deep_outside.any()
    assert np.all(crop[deep_inside] > 0.999) and np.all(crop[deep_outside] == 0)


def test_crop_rule_is_square_scaled_box_about_the_centre():
    t = crop_transform_for_box((100.0, 50.0, 80.0, 120.0))
    assert t.size == pytest.approx(1.42 * 120)
    assert t.x0 + t.size / 2 == pytest.approx(140.0) and t.y0 + t.size / 2 == pytest.approx(110.0)
    near_border = crop_transform_for_box((-5.0, -10.0, 50.0, 50.0))
    assert near_border.x0 < 0 and near_border.y0 < 0   # padded, not shifted
