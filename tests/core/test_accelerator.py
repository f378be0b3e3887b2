"""The core on CUDA or MPS against the same computation on the CPU (skipped where neither is present).

CI has no GPU; these run where one is: ``python -m pytest -m gpu`` (``bench/device_check.sh`` runs them with the
GPU benchmarks in one call).
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.fit import FitConfig, fit, render_maps
from core.fit.config import _camera_stage, _image_stage
from core.fit.maps import corner_uv_tensor, vertex_normals
from core.flame import FlameModel, FlameParams, axis_angle_to_matrix, synthetic_flame
from core.network import PixelNetwork, get_config
from core.render import antialias, interpolate, rasterize
from core.render.camera import Camera, world_to_camera


def _accelerators() -> list[str]:
    found = ["cuda"] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _accelerators(), reason="needs a CUDA or MPS device"),
]
devices = pytest.mark.parametrize("device", _accelerators())


def _render_with_gradient(flame, uvt, device):
    """The benchmark's image set (UV, normals, antialiased mask at 256^2, front faces) and d(sum)/d(vertices)."""
    flame = flame.to(device)
    v = (flame.v_template[None] @ axis_angle_to_matrix(torch.tensor([0.1, 0.4, 0.0], device=device)).T).clone()
    v.requires_grad_(True)
    faces = flame.faces
    clip = Camera.of(size=256, like=v).clip(world_to_camera(v))
    rast = rasterize(clip, faces, (256, 256), cull_back=True)
    uv_tri = torch.arange(faces.shape[0] * 3, device=device).view(-1, 3)
    uv = interpolate(corner_uv_tensor(uvt, v), rast, uv_tri)
    normals = interpolate(vertex_normals(v, faces), rast, faces)
    mask = antialias(rast.coverage(v.dtype)[..., None], rast, clip, faces)
    (uv.sum() + normals.sum() + mask.sum()).backward()
    return rast.image().detach().cpu(), uv.detach().cpu(), v.grad.cpu()


@devices
def test_rasterizer_matches_the_cpu(device):
    data, uvt = synthetic_flame("full", 0)
    flame = FlameModel(data)
    rast_c, uv_c, grad_c = _render_with_gradient(flame, uvt, "cpu")
    rast_d, uv_d, grad_d = _render_with_gradient(flame, uvt, device)
    ids_c, ids_d = rast_c[..., 3], rast_d[..., 3]
    covered = ids_c > 0
    assert covered.sum() > 20000
    # Float rounding may hand a pixel centre on an edge to the other triangle; nothing more.
    assert (ids_c != ids_d).float().mean() < 1e-3
    same = (ids_c == ids_d) & covered
    assert (rast_c[..., :2] - rast_d[..., :2])[same].abs().max() < 1e-4
    assert (uv_c - uv_d)[same].abs().max() < 1e-4
    assert (grad_c - grad_d).norm() < 0.05 * grad_c.norm()


def _fit_problem():
    data, uvt = synthetic_flame("small", 0)
    flame = FlameModel(data)  # float32: MPS has no float64
    g = np.random.default_rng(1)
    params = FlameParams(
        shape=torch.tensor(g.normal(size=(1, flame.n_shape)) * 0.5, dtype=torch.float32),
        expression=torch.tensor(g.normal(size=(1, flame.n_expr)) * 0.3, dtype=torch.float32),
    )
    rot = axis_angle_to_matrix(torch.tensor([0.05, 0.3, 0.0])).numpy()
    maps = render_maps(flame, uvt, params, rot, np.array([0.005, -0.01, 0.03]), Camera.of(size=128))
    pred = SimpleNamespace(uv=maps["uv"], normals=maps["normals"], mask=maps["mask"])
    cfg = FitConfig(resolution=64, stages=(_camera_stage(20), _image_stage(40))).with_refinement(2)
    return pred, flame, uvt, cfg


@devices
def test_fit_is_deterministic_and_warns_of_no_nondeterministic_kernel(device):
    pred, flame, uvt, cfg = _fit_problem()
    cpu = fit(pred, None, flame, uvt, cfg, device=torch.device("cpu"), seed=3)  # (fit moves flame in place)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = fit(pred, None, flame, uvt, cfg, device=torch.device(device), seed=3)
    assert a.info["device"].startswith(device) and len(a.loss_history["refine/total"]) == 2
    b = fit(pred, None, flame, uvt, cfg, device=torch.device(device), seed=3)
    np.testing.assert_array_equal(a.vertices_posed, b.vertices_posed)
    assert a.loss_history == b.loss_history
    if device == "cuda":
        assert not [str(w.message) for w in caught if "deterministic" in str(w.message)]
    assert cpu.info["device"] == "cpu"
    assert np.abs(a.vertices_posed - cpu.vertices_posed).max() < 1e-3  # float32 on two devices, same path


@devices
def test_network_matches_the_cpu(device):
    torch.manual_seed(0)
    net = PixelNetwork(get_config("tiny")).eval()
    image = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        ref = net(image)
        out = net.to(device)(image.to(device)).cpu()
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max()  # cuDNN may convolve in TF32
