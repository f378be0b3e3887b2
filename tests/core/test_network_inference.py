"""Inference: decoding and flip-TTA against an independent numpy implementation of the reference's channel rules,
the validity mask, reduced precision, and the GPU out-of-memory fallback."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

import core.network.inference as inference
from core.errors import ImageError, Pixel3DMMError
from core.network import (
    FLAME_AXIS_MIRROR_OFFSET, NetworkCfg, PixelNetwork, get_config, predict, run_network,
)


class StubNet(nn.Module):
    """A network whose raw output is a known function of the input; records the batch sizes it sees."""

    def __init__(self, kind):
        super().__init__()
        self.cfg = NetworkCfg(**{**get_config("tiny").to_dict(), "prediction_type": kind})
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        ramp = torch.linspace(-0.3, 0.4, x.shape[-1], dtype=x.dtype, device=x.device)
        if self.cfg.prediction_type == "uv_map":
            out = torch.stack((2.6 * r - 1.3 + ramp, 2.0 * g - 1.0, 0.5 * b), dim=1)  # 3rd: disentangled extra
        else:
            out = torch.stack((r - 0.5 + ramp, g - 0.3, b - 0.6), dim=1)
        return out * self.scale


def np_raw(kind, img):
    """numpy twin of StubNet.forward for one HWC image -> (C, H, W)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    ramp = np.linspace(-0.3, 0.4, img.shape[1], dtype=np.float32)[None, :]
    if kind == "uv_map":
        return np.stack((2.6 * r - 1.3 + ramp, 2.0 * g - 1.0))
    return np.stack((r - 0.5 + ramp, g - 0.3, b - 0.6))


def np_reference(kind, img, flip, offset, quantize):
    """The reference post-processing, written from pixel3dmm.md section 1.5."""
    raw = np_raw(kind, img).astype(np.float64)
    if flip:
        mirrored = np_raw(kind, img[:, ::-1])[:, :, ::-1].astype(np.float64)
        mirrored[0] = -mirrored[0] + (2 * offset if kind == "uv_map" else 0.0)
        raw = (raw + mirrored) / 2
    if kind == "uv_map":
        png = np.clip((raw + 1) / 2, 0, 1)
        if quantize:
            png = (png * 255).astype(np.uint8) / 255.0
        return png.transpose(1, 2, 0)
    o = raw / np.linalg.norm(raw, axis=0, keepdims=True)
    png = np.clip(np.stack([(o[0] + 1) / 2, 1 - (o[2] + 1) / 2, 1 - (o[1] + 1) / 2]), 0, 1)
    if quantize:
        png = (png * 255).astype(np.uint8) / 255.0
    n = (2 * png - 1).transpose(1, 2, 0)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


@pytest.fixture()
def image():
    img = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    img[10:20, 30:40] = [0.5, 0.3, 0.6]  # raw normals ~0 there at the left ramp end: degenerate pixels
    return img


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("offset", [0.0075, FLAME_AXIS_MIRROR_OFFSET])
def test_decoding_matches_reference_rules(image, flip, offset):
    uv_net, n_net = StubNet("uv_map"), StubNet("normals")
    pred = predict(uv_net, n_net, image, flip_tta=flip, uv_mirror_offset=offset)
    assert pred.uv.dtype == np.float32 and pred.uv.shape == (512, 512, 2)
    assert pred.normals.dtype == np.float32 and pred.normals.shape == (512, 512, 3)
    np.testing.assert_allclose(pred.uv, np_reference("uv_map", image, flip, offset, False), atol=2e-6)
    want_n = np_reference("normals", image, flip, offset, False)
    good = pred.mask
    np.testing.assert_allclose(pred.normals[good], want_n[good], atol=2e-5)
    assert uv_net.batches == [2 if flip else 1]  # the mirrored pass runs batched with the original


def test_8bit_quantisation_matches_the_png_round_trip(image):
    pred = predict(StubNet("uv_map"), StubNet("normals"), image, quantize_8bit=True)
    # float32 (ours) and float64 (numpy) rounding may put a value on either side of a quantisation step:
    # allow that on a negligible fraction of values, by at most one step.
    for got, want, step in ((pred.uv, np_reference("uv_map", image, True, 0.0075, True), 1 / 255),
                            (pred.normals[pred.mask],
                             np_reference("normals", image, True, 0.0075, True)[pred.mask], 2 / 255)):
        diff = np.abs(got - want)
        assert np.mean(diff > 2e-5) < 1e-4
        assert diff.max() < 1.5 * step
    assert len(np.unique(pred.uv[..., 1])) <= 256


def test_mask_rules_and_coverage(image):
    pred = predict(StubNet("uv_map"), StubNet("normals"), image, flip_tta=False)
    uv = np_reference("uv_map", image, False, 0, False)
    in_range = ((uv >= 0.0075) & (uv <= 0.9925)).all(-1)
    raw_n = np_raw("normals", image)
    nonzero = np.linalg.norm(raw_n, axis=0) > 0
    np.testing.assert_array_equal(pred.mask, in_range & nonzero)
    assert 0.2 < pred.mask.mean() < 0.95
    assert np.all(pred.normals[~pred.mask] == 0)
    np.testing.assert_allclose(np.linalg.norm(pred.normals[pred.mask], axis=-1), 1.0, atol=1e-5)
    chart = np.zeros((64, 128), bool)
    chart[:, :64] = True  # left half of the texture: u < 0.5
    covered = predict(StubNet("uv_map"), StubNet("normals"), image, flip_tta=False, coverage=chart)
    np.testing.assert_array_equal(covered.mask, pred.mask & (uv[..., 0] < 0.5))


def test_flip_tta_is_the_mean_of_manual_passes_on_a_real_network(image):
    net = PixelNetwork(get_config("tiny"))
    with torch.no_grad():
        net.token_2_patch_content.bias.normal_()
    one = run_network(net, image, flip_tta=False)
    mirrored = run_network(net, np.ascontiguousarray(image[:, ::-1]), flip_tta=False).flip(-1)
    mirrored[0] = 2 * 0.0075 - mirrored[0]
    torch.testing.assert_close(run_network(net, image), (one + mirrored) / 2, atol=2e-5, rtol=1e-5)


def test_reduced_precision_is_close_to_float32(image):
    net = PixelNetwork(get_config("tiny"))
    full = run_network(net, image, flip_tta=False)
    low = run_network(net, image, flip_tta=False, precision="bfloat16")
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    torch.testing.assert_close(low, full, atol=0.1, rtol=0)
    with pytest.raises(Pixel3DMMError, match="precision"):
        run_network(net, image, precision="int8")


class OutOfMemoryOnce(StubNet):
    def __init__(self, kind, error):
        super().__init__(kind)
        self.error = error

    def forward(self, x):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return super().forward(x)


def test_gpu_out_of_memory_falls_back_to_cpu(image, monkeypatch, caplog):
    released = []
    monkeypatch.setattr(inference, "is_gpu", lambda device: True)
    monkeypatch.setattr(inference, "release_memory", released.append)
    net = OutOfMemoryOnce("uv_map", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    with caplog.at_level(logging.WARNING, logger="core.network.inference"):
        got = run_network(net, image, precision="float16")
    assert "out of memory" in caplog.text
    assert released  # the GPU cache was released before the CPU retry
    torch.testing.assert_close(got, run_network(StubNet("uv_map"), image))


def test_other_errors_are_not_swallowed(image, monkeypatch):
    monkeypatch.setattr(inference, "is_gpu", lambda device: True)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_network(OutOfMemoryOnce("uv_map", RuntimeError("shape mismatch")), image)
    monkeypatch.setattr(inference, "is_gpu", lambda device: False)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_network(OutOfMemoryOnce("uv_map", torch.cuda.OutOfMemoryError("out of memory")), image)


def test_predict_releases_memory_and_checks_inputs(image, monkeypatch):
    released = []
    monkeypatch.setattr(inference, "release_memory", released.append)
    predict(StubNet("uv_map"), StubNet("normals"), image, flip_tta=False)
    assert released
    with pytest.raises(Pixel3DMMError, match="uv.ckpt"):
        predict(StubNet("normals"), StubNet("normals"), image)
    with pytest.raises(ImageError, match="512x512"):
        predict(StubNet("uv_map"), StubNet("normals"), image[:256])
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        predict(StubNet("uv_map"), StubNet("normals"), image * 255)


def test_a_batch_of_crops_predicts_what_single_crops_do(image):
    """predict_batch runs each network once on the whole batch (flip-TTA doubles it) and decodes each crop as
    predict does; checked against the numpy reference of the same stub networks."""
    from core.network import predict_batch

    uv_net, n_net = StubNet("uv_map"), StubNet("normals")
    images = [image, image[::-1].copy(), np.ascontiguousarray(image[:, ::-1])]
    batch = predict_batch(uv_net, n_net, images, flip_tta=True)
    assert uv_net.batches == [6] and n_net.batches == [6]
    for img, pred in zip(images, batch):
        single = predict(StubNet("uv_map"), StubNet("normals"), img, flip_tta=True)
        np.testing.assert_allclose(pred.uv, single.uv, atol=1e-6)
        np.testing.assert_array_equal(pred.mask, single.mask)
        ref = np_reference("uv_map", img, True, 0.0075, False)
        np.testing.assert_allclose(pred.uv[pred.mask], ref[pred.mask], atol=1e-5)
    with pytest.raises(ImageError):
        predict_batch(uv_net, n_net, image)
    with pytest.raises(Pixel3DMMError, match="slot got a network"):
        predict_batch(n_net, uv_net, images)
