"""Camera conventions: projection, clip space, intrinsics and the OpenCV pose conversion agree."""

from types import SimpleNamespace

import cv2
import numpy as np
import torch

from core.render import rasterize
from core.render.camera import (
    CAMERA_POSITION,
    DEFAULT_FOCAL,
    Camera,
    crop_to_photo_intrinsics,
    opencv_pose_to_world,
    world_to_camera,
)


def _points(seed=0, n=7):
    g = np.random.default_rng(seed)
    return torch.tensor(g.uniform([-0.1, -0.1, -0.1], [0.1, 0.1, 0.1], (1, n, 3)))


def test_project_matches_intrinsics_matrix():
    pts = world_to_camera(_points())
    fl, pp, size = 3.7, np.array([0.02, -0.05]), 256
    camera = Camera(torch.tensor([fl], dtype=pts.dtype), torch.tensor(pp)[None], size)
    xy, depth = camera.project(pts)
    k = camera.intrinsics()
    np.testing.assert_allclose(k, [[fl * size, 0, 128 + pp[0] * 128], [0, fl * size, 128 + pp[1] * 128], [0, 0, 1]])
    np.testing.assert_allclose(camera.intrinsics(512)[:2] / 2, k[:2])  # normalised: scales with the image
    cv = pts[0].numpy() * np.array([1.0, -1.0, -1.0])
    hom = cv @ k.T
    np.testing.assert_allclose(xy[0].numpy(), hom[:, :2] / hom[:, 2:], atol=1e-9)
    np.testing.assert_allclose(depth[0].numpy(), cv[:, 2])
    # The head centre projects to the image centre with pp = 0; +y world goes up (smaller row).
    c, _ = Camera.of(size=512, like=torch.zeros(())).project(world_to_camera(torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.05, 0.0]]])))
    np.testing.assert_allclose(c[0, 0].numpy(), [256.0, 256.0])
    assert c[0, 1, 1] < 256.0


def test_clip_space_matches_projection_and_rasterizer():
    pts = world_to_camera(_points(1))
    size = 64
    camera = Camera(torch.tensor([4.1], dtype=pts.dtype), torch.tensor([[0.03, 0.04]], dtype=pts.dtype), size)
    clip = camera.clip(pts)
    xy, _ = camera.project(pts)
    ndc = clip[..., :2] / clip[..., 3:]
    px = torch.stack([(ndc[..., 0] + 1) * size / 2, (1 - ndc[..., 1]) * size / 2], -1)
    torch.testing.assert_close(px, xy)
    # A small triangle around a projected point covers that point's pixel.
    centre = xy[0, 0]
    tri_pts = pts[:, :1] + torch.tensor([[[0.004, 0.0, 0.0], [-0.003, 0.004, 0.0], [-0.003, -0.004, 0.0]]], dtype=pts.dtype)
    rast = rasterize(camera.clip(tri_pts), torch.tensor([[0, 1, 2]]), (size, size))
    assert rast.triangle_ids()[0, int(centre[1]), int(centre[0])] == 0


def test_scaling_the_scene_about_the_camera_changes_no_pixel():
    """Why a single image cannot give the head's size: a head s times larger and s times farther away renders
    the same triangle at every pixel with the same barycentrics (the benchmark reports errors with and without
    scale for this reason)."""
    from core.flame import synthetic_flame

    data, _ = synthetic_flame("small", 0)
    faces = torch.as_tensor(data.faces)
    world = torch.as_tensor(data.v_template, dtype=torch.float64)[None]
    cam = torch.tensor(CAMERA_POSITION, dtype=torch.float64)
    camera = Camera.of(size=96)
    rasts = [
        rasterize(camera.clip(world_to_camera(cam + s * (world - cam))), faces, (96, 96)).image()
        for s in (1.0, 1.03)
    ]
    assert (rasts[0][..., 3] > 0).float().mean() > 0.05
    torch.testing.assert_close(rasts[1][..., 3], rasts[0][..., 3], rtol=0, atol=0)
    torch.testing.assert_close(rasts[1][..., :2], rasts[0][..., :2], rtol=0, atol=1e-9)
    # A move in depth alone (no scaling) does change the image.
    moved = rasterize(camera.clip(world_to_camera(world - torch.tensor([0.0, 0.0, 0.03], dtype=world.dtype))), faces, (96, 96)).image()
    assert not torch.equal(moved[..., 3], rasts[0][..., 3])


def test_photo_intrinsics_follow_crop_transform():
    k = Camera.of(DEFAULT_FOCAL, [0.1, -0.2], 512).intrinsics()
    tr = SimpleNamespace(x0=-30.0, y0=45.5, size=700.0, out_size=512)
    kp = crop_to_photo_intrinsics(k, tr)
    pts = _points(2).numpy()[0] * np.array([1, -1, -1]) + np.array([0, 0, 1.0])
    crop = pts @ k.T
    crop = crop[:, :2] / crop[:, 2:]
    photo = pts @ kp.T
    photo = photo[:, :2] / photo[:, 2:]
    np.testing.assert_allclose(photo, np.array([tr.x0, tr.y0]) + crop * tr.size / tr.out_size)


def test_opencv_pose_conversion_matches_cv2_projection():
    rvec = np.array([0.1, -0.3, 0.05])
    tvec = np.array([0.01, -0.02, 0.95])
    r_cv, _ = cv2.Rodrigues(rvec)
    r, t = opencv_pose_to_world(r_cv, tvec)
    v = _points(3).numpy()[0]
    camera = Camera.of(DEFAULT_FOCAL, [0.0, 0.0], 256)
    k = camera.intrinsics()
    ref, _ = cv2.projectPoints(v, rvec, tvec, k, None)
    world = torch.tensor(v @ r.T + t)[None]
    xy, _ = camera.project(world_to_camera(world))
    np.testing.assert_allclose(xy[0].numpy(), ref[:, 0], atol=1e-9)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
