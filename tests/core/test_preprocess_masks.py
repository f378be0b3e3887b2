"""Mask helpers: edge chaining, masks from the network's validity mask, the fitter's combinations."""

import logging

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

from core.preprocess import MASK_KEYS, masks_from_prediction_mask
from core.preprocess.masks import _paths


def test_edges_chain_into_loops_and_lines():
    loop = {(3, 7), (7, 9), (9, 3)}
    line = {(20, 21), (22, 21), (23, 22)}
    paths = _paths(loop | line)
    closed = [p for p in paths if p[0] == p[-1]]
    open_ = [p for p in paths if p[0] != p[-1]]
    assert len(closed) == 1 and sorted(closed[0][:-1]) == [3, 7, 9]
    assert len(open_) == 1 and open_[0] in ([20, 21, 22, 23], [23, 22, 21, 20])


def _disk(size, centre, radius):
    canvas = np.zeros((size, size), np.uint8)
    cv2.circle(canvas, centre, radius, 1, -1)
    return canvas.astype(bool)


def test_masks_from_prediction_mask_keeps_the_face_region():
    size = 128
    face = _disk(size, (60, 64), 30)
    mask = face & ~_disk(size, (60, 70), 5) | _disk(size, (115, 10), 4)   # a hole (mouth) and a speck
    valid = np.ones((size, size), bool)
    valid[:, 120:] = False
    masks, approximate = masks_from_prediction_mask(mask, valid)
    assert set(masks) == set(MASK_KEYS) and approximate == frozenset(MASK_KEYS) - {"valid"}
    np.testing.assert_array_equal(masks["face"], face)          # hole filled, speck dropped
    np.testing.assert_array_equal(masks["skin"], face)
    assert not any(masks[k].any() for k in ("brows", "nose", "lips", "eyes", "mouth"))
    distance = distance_transform_edt(~face)   # scipy only in the tests, as an independent reference
    np.testing.assert_array_equal(masks["background"], valid & (distance > 0.05 * size))
    np.testing.assert_array_equal(masks["valid"], valid)


def test_empty_prediction_mask_gives_empty_regions(caplog):
    with caplog.at_level(logging.WARNING):
        masks, _ = masks_from_prediction_mask(np.zeros((64, 64), bool))
    assert not masks["face"].any() and masks["background"].all()
    assert "empty" in caplog.text
