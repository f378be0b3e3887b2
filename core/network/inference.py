"""Run the UV and normal networks on a face crop and decode their raw outputs (reference conventions).

Pipeline for one network (``scripts/network_inference.py`` of the reference, here batched):

1. The crop (512, 512, 3) in [0, 1] becomes a (1, 3, 512, 512) tensor; the network normalises it with the
   backbone's ImageNet mean/std itself.
2. Flip test-time augmentation: the crop and its horizontal mirror run as ONE batch of two. The mirrored pass is
   flipped back along x and, on the RAW outputs, UV channel 0 becomes ``-x + 2 * uv_mirror_offset`` (the
   reference uses 0.0075) and normal channel 0 becomes ``-x``; the other channels are unchanged. The two raw
   passes are averaged BEFORE decoding, exactly as the reference averages them before writing its PNGs.
3. Decoding: ``uv = clamp((x + 1) / 2, 0, 1)`` per channel, channel 0 = u and channel 1 = 1 - v; normals are
   L2-normalised, ``o = x / |x|``, and mapped to the FLAME head frame as ``n = (o_x, -o_z, -o_y)`` (the
   reference writes ``[(o_x+1)/2, (1-o_z)/2, (1-o_y)/2]`` and its tracker reads ``2 * png - 1``).
4. Optional 8-bit quantisation reproduces the reference's PNG round trip (``uint8`` truncation of the [0, 1]
   images, then ``png / 255``); quantised normals are re-normalised to unit length.

On the mirror offset: in network units the reference mirrors UV about x = 0.0075, i.e. u = 0.50375, while FLAME's
UV mirror axis measured from its mirror index lies at u ~ 0.4964 (x ~ -0.0072, :data:`FLAME_AXIS_MIRROR_OFFSET`).
The default keeps reference parity; passing ``uv_mirror_offset=FLAME_AXIS_MIRROR_OFFSET`` moves the averaged u by
about -0.0073 wherever neither pass is clamped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..device import is_gpu, is_out_of_memory, release_memory, resolve_device
from ..errors import ImageError, Pixel3DMMError
from .config import IMAGE_SIZE
from .model import PixelNetwork

logger = logging.getLogger(__name__)

#: Mirror offset of the reference's flip TTA, in network units (x in [-1, 1]).
UV_MIRROR_OFFSET = 0.0075
#: FLAME's measured UV mirror axis (u ~ 0.4964) in network units, ``2 * u - 1``.
FLAME_AXIS_MIRROR_OFFSET = -0.0072
#: Range of FLAME's per-vertex texture coordinates (``flame_uv_coords.npy``); UV outside it lands on no vertex.
UV_VALID_RANGE = (0.0075, 0.9925)
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Prediction:
    """Decoded network outputs for one 512 x 512 crop.

    Attributes
    ----------
    uv : np.ndarray
        (H, W, 2) float32, ``(u, 1 - v)`` of the FLAME texture coordinates, in [0, 1].
    normals : np.ndarray
        (H, W, 3) float32 unit normals in the FLAME canonical head frame (zero where ``mask`` is False because
        the raw output was not finite or zero).
    mask : np.ndarray
        (H, W) bool: raw outputs finite and non-degenerate, both UV channels inside :data:`UV_VALID_RANGE` and,
        when a ``coverage`` chart was given to :func:`predict`, the UV landing on the chart.
    """

    uv: np.ndarray
    normals: np.ndarray
    mask: np.ndarray


def _to_batch(image: np.ndarray) -> torch.Tensor:
    if not isinstance(image, np.ndarray) or image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        shape = getattr(image, "shape", None)
        raise ImageError(f"The network needs a {IMAGE_SIZE}x{IMAGE_SIZE} RGB face crop, got shape {shape}; crop the "
                         "photo with the preprocessing stage first.")
    if (not np.issubdtype(image.dtype, np.floating) or not np.isfinite(image).all() or image.min() < 0
            or image.max() > 1):
        raise ImageError("The face crop must be a float image with values in [0, 1]; convert the photo first.")
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def unflip_mirrored(raw: torch.Tensor, kind: str, uv_mirror_offset: float) -> torch.Tensor:
    """Map the raw output of the mirrored pass back to the original image frame.

    Parameters
    ----------
    raw : torch.Tensor
        (B, P, H, W) raw output for horizontally flipped inputs.
    kind : {"uv_map", "normals"}
        Which channel rule applies to channel 0.
    uv_mirror_offset : float
        UV mirror axis in network units (the reference's 0.0075).
    """
    out = raw.flip(-1).clone()
    if kind == "uv_map":
        out[:, 0] = 2.0 * uv_mirror_offset - out[:, 0]
    else:
        out[:, 0] = -out[:, 0]
    return out


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise Pixel3DMMError(f"Unknown precision '{precision}'; choose float32, float16 or bfloat16.")
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def _forward(net: PixelNetwork, batch: torch.Tensor, flip_tta: bool, uv_mirror_offset: float, precision: str
             ) -> torch.Tensor:
    device = next(net.parameters()).device
    channels = net.cfg.output_channels
    x = batch.to(device)
    if flip_tta:
        x = torch.cat((x, x.flip(-1)))
    with torch.inference_mode(), _autocast(device, precision):
        raw = net(x)[:, :channels].float()
    if not flip_tta:
        return raw
    n = batch.shape[0]
    return 0.5 * (raw[:n] + unflip_mirrored(raw[n:], net.cfg.prediction_type, uv_mirror_offset))


def run_network(net: PixelNetwork, image: np.ndarray, *, flip_tta: bool = True,
                uv_mirror_offset: float = UV_MIRROR_OFFSET, precision: str = "float32") -> torch.Tensor:
    """Raw (TTA-averaged, undecoded) prediction of one network, with GPU out-of-memory fallback to the CPU.

    Parameters
    ----------
    net : PixelNetwork
        A loaded network; it runs on the device of its parameters. After a GPU out-of-memory error it is moved
        to the CPU (with a warning) and stays there.
    image : np.ndarray
        (512, 512, 3) float crop in [0, 1], row 0 at the top, or (B, 512, 512, 3) crops run as one batch.
    flip_tta, uv_mirror_offset, precision
        See :func:`predict`.

    Returns
    -------
    torch.Tensor
        (P, 512, 512) float32 on the network's device, ``P = net.cfg.output_channels``; (B, P, 512, 512) for a
        batch.
    """
    single = getattr(image, "ndim", 0) != 4
    batch = _to_batch(image) if single else torch.cat([_to_batch(i) for i in image])
    device = next(net.parameters()).device
    try:
        out = _forward(net, batch, flip_tta, uv_mirror_offset, precision)
        return out[0] if single else out
    except (RuntimeError, MemoryError) as exc:
        if not (is_gpu(device) and is_out_of_memory(exc)):
            raise
        logger.warning("the GPU ran out of memory in the %s network; running it on the CPU instead",
                       net.cfg.prediction_type)
    release_memory(device)
    net.to(resolve_device("cpu"))
    out = _forward(net, batch, flip_tta, uv_mirror_offset, "float32")
    return out[0] if single else out


def decode_uv(raw: torch.Tensor, quantize_8bit: bool = False) -> torch.Tensor:
    """Raw UV (2, H, W) in network units -> (H, W, 2) ``(u, 1 - v)`` in [0, 1]."""
    uv = ((raw + 1.0) / 2.0).clamp(0.0, 1.0)
    if quantize_8bit:
        uv = torch.floor(uv * 255.0) / 255.0
    return uv.permute(1, 2, 0)


def decode_normals(raw: torch.Tensor, quantize_8bit: bool = False) -> torch.Tensor:
    """Raw normals (3, H, W) -> (H, W, 3) unit normals ``(o_x, -o_z, -o_y)`` in the FLAME frame (NaN if |x| = 0)."""
    o = raw / torch.linalg.vector_norm(raw, dim=0, keepdim=True)
    n = torch.stack((o[0], -o[2], -o[1]), dim=-1)
    if quantize_8bit:
        png = torch.floor(((n + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) / 255.0
        n = 2.0 * png - 1.0
        n = n / torch.linalg.vector_norm(n, dim=-1, keepdim=True)
    return n


def valid_mask(raw_uv: torch.Tensor, raw_normals: torch.Tensor, uv: torch.Tensor, normals: torch.Tensor,
               coverage: np.ndarray | None = None) -> np.ndarray:
    """Usable pixels (H, W) bool; see :class:`Prediction` for the rule.

    ``coverage`` is an optional (Hc, Wc) bool image of the FLAME UV chart in texture-image layout: column
    ``floor(u * Wc)``, row ``floor((1 - v) * Hc)`` (row 0 at the top, i.e. v = 1).
    """
    lo, hi = UV_VALID_RANGE
    mask = torch.isfinite(raw_uv).all(0) & torch.isfinite(raw_normals).all(0)
    mask &= torch.isfinite(normals).all(-1)
    mask &= ((uv >= lo) & (uv <= hi)).all(-1)
    mask_np = mask.cpu().numpy()
    if coverage is not None:
        chart = np.asarray(coverage, dtype=bool)
        if chart.ndim != 2:
            raise Pixel3DMMError("The UV coverage chart must be a 2-D mask image; pass the UV template's chart.")
        uv_np = uv.cpu().numpy()
        hc, wc = chart.shape
        cols = np.clip((uv_np[..., 0] * wc).astype(np.int64), 0, wc - 1)
        rows = np.clip((uv_np[..., 1] * hc).astype(np.int64), 0, hc - 1)
        mask_np &= chart[rows, cols]
    return mask_np


def _check_slots(uv_net: PixelNetwork, normal_net: PixelNetwork) -> None:
    for net, kind in ((uv_net, "uv_map"), (normal_net, "normals")):
        if net.cfg.prediction_type != kind:
            raise Pixel3DMMError(f"The {kind} slot got a network that predicts {net.cfg.prediction_type}; check which "
                                 "checkpoint is set as uv.ckpt and which as normals.ckpt.")


def predict(uv_net: PixelNetwork, normal_net: PixelNetwork, image: np.ndarray, *, flip_tta: bool = True,
            uv_mirror_offset: float = UV_MIRROR_OFFSET, precision: str = "float32", quantize_8bit: bool = False,
            coverage: np.ndarray | None = None, on_progress: Callable[[float], None] | None = None) -> Prediction:
    """Predict FLAME UV and normal maps for one face crop.

    Parameters
    ----------
    uv_net, normal_net : PixelNetwork
        Networks from :func:`load_network` whose ``cfg.prediction_type`` is ``"uv_map"`` and ``"normals"``.
    image : np.ndarray
        (512, 512, 3) float crop in [0, 1], row 0 at the top.
    flip_tta : bool
        Average with the mirrored pass (reference behaviour), run batched with the original.
    uv_mirror_offset : float
        UV mirror axis of the flip TTA in network units: 0.0075 (reference parity, default) or
        :data:`FLAME_AXIS_MIRROR_OFFSET` (FLAME's measured axis).
    precision : {"float32", "float16", "bfloat16"}
        Autocast precision for the network forward (meant for GPUs); decoding is always float32.
    quantize_8bit : bool
        Reproduce the reference's 8-bit PNG round trip.
    coverage : np.ndarray, optional
        (Hc, Wc) bool chart of the FLAME UV layout; see :func:`valid_mask`.
    on_progress : callable, optional
        Called with the fraction done (0.0, then 0.5 between the networks) on the calling thread.

    Returns
    -------
    Prediction
    """
    _check_slots(uv_net, normal_net)
    devices = {next(net.parameters()).device for net in (uv_net, normal_net)}
    try:
        if on_progress is not None:
            on_progress(0.0)
        raw_uv = run_network(uv_net, image, flip_tta=flip_tta, uv_mirror_offset=uv_mirror_offset,
                             precision=precision).cpu()
        if on_progress is not None:
            on_progress(0.5)
        raw_n = run_network(normal_net, image, flip_tta=flip_tta, uv_mirror_offset=uv_mirror_offset,
                            precision=precision).cpu()
    finally:
        for device in devices:
            release_memory(device)
    return _decoded(raw_uv, raw_n, quantize_8bit, coverage)


def predict_batch(uv_net: PixelNetwork, normal_net: PixelNetwork, images, *, flip_tta: bool = True,
                  uv_mirror_offset: float = UV_MIRROR_OFFSET, precision: str = "float32",
                  coverage: np.ndarray | None = None) -> list[Prediction]:
    """:func:`predict` for several crops at once ((B, 512, 512, 3) or a list of (512, 512, 3)), each network run as
    one batch (the caller bounds B by memory: about 1 GB per crop with flip-TTA for the published networks on the
    CPU); the predictions in order, equal to :func:`predict`'s one by one up to the backend's batched arithmetic."""
    images = np.stack([np.asarray(i) for i in images]) if isinstance(images, (list, tuple)) else np.asarray(images)
    if images.ndim != 4:
        raise ImageError(f"predict_batch needs a batch of {IMAGE_SIZE}x{IMAGE_SIZE} RGB crops, got shape {images.shape}.")
    _check_slots(uv_net, normal_net)
    devices = {next(net.parameters()).device for net in (uv_net, normal_net)}
    try:
        raw_uv = run_network(uv_net, images, flip_tta=flip_tta, uv_mirror_offset=uv_mirror_offset,
                             precision=precision).cpu()
        raw_n = run_network(normal_net, images, flip_tta=flip_tta, uv_mirror_offset=uv_mirror_offset,
                            precision=precision).cpu()
    finally:
        for device in devices:
            release_memory(device)
    return [_decoded(u, n, False, coverage) for u, n in zip(raw_uv, raw_n)]


def _decoded(raw_uv: torch.Tensor, raw_n: torch.Tensor, quantize_8bit: bool, coverage) -> Prediction:
    uv = decode_uv(raw_uv, quantize_8bit)
    normals = decode_normals(raw_n, quantize_8bit)
    mask = valid_mask(raw_uv, raw_n, uv, normals, coverage)
    normals = torch.nan_to_num(normals, nan=0.0, posinf=0.0, neginf=0.0)
    normals[torch.from_numpy(~mask)] = 0.0
    return Prediction(uv=uv.numpy().astype(np.float32), normals=normals.numpy().astype(np.float32), mask=mask)
