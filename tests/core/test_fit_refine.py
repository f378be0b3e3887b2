"""Levenberg-Marquardt refinement: the generic step, the fitter's least-squares residuals, and the stage."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.device import gpu_available, resolve_device
from core.fit import FitConfig, fit, render_maps
from core.fit import fitter as F
from core.fit.config import _camera_stage, _image_stage
from core.fit.init import PoseInit
from core.fit.objective import FitData, Objective, Params
from core.fit.refine import gauss_newton_curvature, lm_step
from core.flame import FlameModel, FlameParams, axis_angle_to_matrix, synthetic_flame
from core.render.camera import DEFAULT_FOCAL, Camera
from evaluation.metrics import rigid_align

PRED = 128


pytestmark = pytest.mark.usefixtures("one_thread")


def test_curvature_is_jacobian_gram_matrix():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 7, generator=g, dtype=torch.float64)
    x = torch.randn(7, generator=g, dtype=torch.float64)

    def residuals(y):
        return torch.cat([torch.sin(a @ y), y[:3] * y[3:6], (y ** 2).sum()[None]])

    jac = torch.autograd.functional.jacobian(residuals, x)
    got = gauss_newton_curvature(residuals, x, chunk=3)  # chunks of tangents must not change the result
    torch.testing.assert_close(got, jac.T @ jac)


def test_lm_step_solves_linear_least_squares_and_rejects_uphill_steps():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 5))
    b = rng.normal(size=30)
    at, bt = torch.tensor(a), torch.tensor(b)
    x0 = torch.zeros(5, dtype=torch.float64)

    def loss(y):
        return float(((at @ y - bt) ** 2).sum())

    grad = 2 * at.T @ (at @ x0 - bt)
    x, damping, value, ok = lm_step(x0, loss(x0), grad, at.T @ at, loss, damping=1e-6)
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    assert ok and damping < 1e-6
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    assert value == pytest.approx(float(((a @ expected - b) ** 2).sum()), rel=1e-9)
    # A loss that no step can lower: the point is kept and the damping grows.
    same, damping, value, ok = lm_step(x0, 0.0, grad, at.T @ at, lambda y: 1.0, damping=1e-3, tries=3)
    assert not ok and damping == pytest.approx(1e-3 * 4 ** 3) and value == 0.0 and torch.equal(same, x0)


@pytest.fixture(scope="module")
def problem():
    data, uvt = synthetic_flame("small", 0)
    flame = FlameModel(data, dtype=torch.float64).component_major()
    g = np.random.default_rng(0)
    params = FlameParams(
        shape=torch.tensor(g.normal(size=(1, flame.n_shape)) * 0.5),
        expression=torch.tensor(g.normal(size=(1, flame.n_expr)) * 0.3),
        jaw_pose=torch.tensor([[0.08, 0.0, 0.0]], dtype=torch.float64),
    )
    rot = axis_angle_to_matrix(torch.tensor([0.05, 0.25, 0.0], dtype=torch.float64)).numpy()
    t = np.array([0.005, -0.01, 0.03])
    maps = render_maps(flame, uvt, params, rot, t, Camera.of(size=PRED))
    pred = SimpleNamespace(uv=maps["uv"], normals=maps["normals"], mask=maps["mask"])
    crop = SimpleNamespace(masks={"skin": maps["mask"], "background": ~maps["mask"]}, landmarks=None)
    cfg = FitConfig(resolution=64, stages=(_camera_stage(30), _image_stage(60)))
    prob = FitData(pred, crop, flame, uvt, cfg)
    prob.match()
    # A start away from the truth: the pose a little off, other identity, expression, jaw and eyes.
    start = PoseInit(rot @ axis_angle_to_matrix(torch.tensor([0.0, 0.08, 0.0], dtype=torch.float64)).numpy(),
                     t + 0.004, "test", 0, 0)
    p = Params(flame, start, flame.v_template, flame.has_eyelids)
    with torch.no_grad():
        for name in ("shape", "expression", "jaw", "eyes"):
            for leaf in p.groups[name]:
                leaf.add_(torch.tensor(g.normal(size=tuple(leaf.shape)) * 0.05))
    return SimpleNamespace(prob=prob, p=p, stage=cfg.stages[1], data=(pred, crop, flame, uvt, maps["vertices"]))


def test_params_flat_round_trip(problem):
    p = problem.p
    names = ["shape", "eyes", "rotation"]
    x = p.flat(names)
    assert x.numel() == p.shape.numel() + 12 + 6
    view = p.with_flat(names, x + 1.0)
    torch.testing.assert_close(view.groups["eyes"][1], p.groups["eyes"][1] + 1.0)
    assert view.translation is p.translation  # groups not named are shared
    assert torch.equal(p.flat(names), x)  # the view leaves the leaves alone


@pytest.mark.parametrize("term", ["uv_corr", "uv_dense"])
def test_residuals_reproduce_quadratic_terms_and_their_gradient(problem, term):
    p = problem.p
    objective = Objective(problem.prob, dataclasses.replace(problem.stage, weights={term: problem.stage.weights[term]}))
    groups = list(problem.stage.lr)
    x = p.flat(groups).requires_grad_(True)
    view = p.with_flat(groups, x)
    lin = objective.linearise(p, stride=1)
    value = objective.losses(view)[term]
    sq = objective.residuals(view, lin).square().sum()
    assert value.item() > 0
    assert sq.item() == pytest.approx(value.item(), rel=1e-9)
    g_loss, = torch.autograd.grad(value, x)
    g_res, = torch.autograd.grad(sq, x)
    torch.testing.assert_close(g_res, g_loss, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("term", ["reg_shape", "reg_expression", "reg_jaw", "reg_mirror", "reg_eyes"])
def test_constant_curvature_is_the_exact_second_order_of_linear_priors(problem, term):
    """A linear prior's loss is exactly quadratic: L(x + d) - L(x) - g.d = d' C d for the constant curvature C that
    Levenberg-Marquardt forms once per stage (and the prior leaves the per-iteration residuals)."""
    p = problem.p
    objective = Objective(problem.prob, dataclasses.replace(problem.stage, weights={term: problem.stage.weights[term]}))
    groups = list(problem.stage.lr)
    x = p.flat(groups).requires_grad_(True)
    value = objective.losses(p.with_flat(groups, x))[term]
    g, = torch.autograd.grad(value, x)
    curvature = objective.constant_curvature(p, groups)
    assert objective.linearise(p, stride=1).parts == []
    d = torch.randn(x.numel(), dtype=x.dtype, generator=torch.Generator().manual_seed(3)) * 0.05
    with torch.no_grad():
        moved = objective.losses(p.with_flat(groups, x.detach() + d))[term]
    second = moved - value.detach() - g @ d
    assert second.item() > 0
    assert (d.double() @ curvature @ d.double()).item() == pytest.approx(second.item(), rel=1e-7)


def test_normal_residuals_are_the_reweighted_l1_term(problem):
    p = problem.p
    objective = Objective(problem.prob, dataclasses.replace(problem.stage, weights={"normal": problem.stage.weights["normal"]}))
    groups = list(problem.stage.lr)
    x = p.flat(groups).requires_grad_(True)
    view = p.with_flat(groups, x)
    l1 = objective.losses(view)["normal"]
    sq = objective.residuals(view, objective.linearise(p, stride=1)).square().sum()
    # |e| = e^2 / (2 |e|) + |e| / 2: the residuals carry half of the L1 term and its whole gradient
    # (up to pixels below the reweighting floor).
    assert sq.item() == pytest.approx(0.5 * l1.item(), rel=0.02)
    g_l1, = torch.autograd.grad(l1, x)
    g_sq, = torch.autograd.grad(sq, x)
    cos = torch.nn.functional.cosine_similarity(g_l1, g_sq, dim=0)
    assert cos.item() > 0.98


def test_subsampled_curvature_is_close_to_the_full_one(problem):
    p = problem.p
    w = {k: v for k, v in problem.stage.weights.items() if k in ("uv_dense", "normal")}
    objective = Objective(problem.prob, dataclasses.replace(problem.stage, weights=w))
    groups = ["shape", "expression"]
    x = p.flat(groups)

    def curvature(stride):
        lin = objective.linearise(p, stride=stride)
        return gauss_newton_curvature(lambda y: objective.residuals(p.with_flat(groups, y), lin), x)

    full, sub = curvature(1), curvature(4)
    # About 250 of 1000 covered pixels at 64 px: 12 % apart (an unweighted subsample would be 75 % off).
    assert (torch.linalg.matrix_norm(sub - full) / torch.linalg.matrix_norm(full)).item() < 0.2


def test_lm_stage_lowers_the_loss_and_the_error(problem):
    pred, crop, flame, uvt, verts = problem.data
    adam = FitConfig(resolution=64, stages=(_camera_stage(30), _image_stage(40)))
    lm = dataclasses.replace(adam.stages[1], name="refine", steps=3, method="lm")
    reports = []
    refined = fit(pred, crop, flame, uvt, dataclasses.replace(adam, stages=adam.stages + (lm,)), on_progress=reports.append)
    # Progress advances with time: an LM iteration counts as F._LM_STEP_COST Adam steps.
    assert [r.stage for r in reports] == ["camera"] * 30 + ["image"] * 40 + ["refine"] * 3
    assert reports[69].fraction == pytest.approx(70 / (70 + 3 * F._LM_STEP_COST)) and reports[-1].fraction == 1.0
    plain = fit(pred, crop, flame, uvt, adam)
    hist = refined.loss_history["refine/total"]
    assert len(hist) == 3 and all(b <= a for a, b in zip(hist, hist[1:]))
    def err(result):  # after a similarity alignment: one image does not fix the head's scale
        tr = rigid_align(result.vertices_posed, verts, with_scale=True)
        return np.linalg.norm(tr.apply(result.vertices_posed) - verts, axis=1).mean()

    ratio = hist[-1] / plain.loss_history["image/total"][-1]
    assert ratio < 0.8 and err(refined) < 0.5 * err(plain), (ratio, err(refined), err(plain))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA or MPS device")
def test_lm_stage_on_the_accelerator_matches_the_cpu(problem):
    pred, crop, flame, uvt, verts = problem.data
    cfg = FitConfig(resolution=64, stages=(_camera_stage(20), _image_stage(20)))
    cfg = dataclasses.replace(cfg, stages=cfg.stages + (dataclasses.replace(cfg.stages[1], name="refine", steps=2, method="lm"),))
    small = FlameModel(synthetic_flame("small", 0)[0])  # float32: MPS has no float64
    cpu = fit(pred, crop, small, uvt, cfg)
    dev = fit(pred, crop, small, uvt, cfg, device=resolve_device("gpu"))
    assert dev.info["device"] != "cpu" and len(dev.loss_history["refine/total"]) == 2
    assert np.abs(dev.vertices_posed - cpu.vertices_posed).max() < 1e-3  # float32 on two devices, same path


def test_lm_rejects_steps_that_turn_the_data_into_outliers(problem):
    # Every data term drops outliers and pixels off the head, so moving the head out of the picture (or up to the
    # camera, where every pixel is an outlier) lowers the loss; a Levenberg-Marquardt step must not do that.
    p, stage = problem.p, problem.stage
    prob = Objective(problem.prob, stage)
    groups = list(stage.lr)
    lm = F._LevenbergMarquardt(prob, p, stage, groups)
    start = prob.support(p)
    assert lm.min_support == pytest.approx(0.9 * start) and start > 100
    x = p.flat(groups)
    t0 = sum(t.numel() for g in groups[: groups.index("translation")] for t in p.groups[g])
    for offset in ([0.5, 0.0, 0.0], [0.0, 0.0, 0.85]):  # out of the picture; 15 cm from the camera
        away = x.clone()
        away[t0 : t0 + 3] += torch.tensor(offset, dtype=x.dtype)
        moved = p.with_flat(groups, away)
        assert prob.support(moved) < 0.5 * start
        assert sum(prob.losses(moved).values()).item() < sum(prob.losses(p).values()).item()
        assert lm._loss(away) == float("inf")
    assert lm._loss(x) == pytest.approx(sum(v.item() for v in prob.losses(p).values()))
