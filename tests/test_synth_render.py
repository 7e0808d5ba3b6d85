"""Ray casting: geometry, depth, occlusion, culling, shapes and dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psg4d.data.synth.camera import Camera
from psg4d.data.synth.generate import SynthConfig, simulate_scene
from psg4d.data.synth.render import Lighting, Primitive, intersect, render
from psg4d.data.synth.primitives import scene_primitives

LIGHT = Lighting(direction=(0.0, -0.5, 0.866), ambient=0.4, diffuse=0.6, tint=(1.0, 1.0, 1.0))
RED, BLUE, GRAY = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.1, 0.9]), np.array([0.5, 0.5, 0.5])


def _camera(T: int = 1, size: int = 32, pitch: float = 0.0, z: float = 1.0, fov: float = 60.0) -> Camera:
    return Camera(
        position=np.tile([0.0, 0.0, z], (T, 1)),
        yaw=np.zeros(T),
        pitch=np.full(T, pitch),
        fov_deg=fov,
        height=size,
        width=size,
    )


def _sphere(inst: int, center, r: float, color=RED, T: int = 1) -> Primitive:
    return Primitive(kind="sphere", instance=inst, color=color, color2=color, center=np.tile(center, (T, 1)), size=(r,))


def _floor(inst: int = 1) -> Primitive:
    return Primitive(
        kind="plane", instance=inst, color=GRAY, color2=GRAY, texture="checker", period=0.5,
        center=np.zeros(3), normal=np.array([0.0, 0.0, 1.0]),
    )  # fmt: skip


def test_intrinsics_and_centre_ray_depth():
    cam = _camera(size=32, fov=90.0)
    K = cam.intrinsics()
    assert K[0, 0] == pytest.approx(16.0) and K[0, 2] == 16 and K[1, 2] == 16
    # a sphere straight ahead: the centre pixel's depth is its near surface distance
    out = render([_sphere(5, [0.0, 3.0, 1.0], 0.5)], cam, LIGHT)
    assert out.rgb.shape == (1, 32, 32, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (1, 32, 32) and out.depth.dtype == np.float32
    assert out.ids.dtype == np.int32
    c = out.depth[0, 15:17, 15:17]
    assert np.all(np.abs(c - 2.5) < 0.02)  # pixel centres sit half a pixel off the axis
    assert out.ids[0, 16, 16] == 5 and out.ids[0, 0, 0] == 0 and out.depth[0, 0, 0] == 0


def test_depth_is_z_depth_of_a_plane():
    # looking straight down at the floor from 2 m: every pixel's z-depth is 2 (not the ray length)
    cam = _camera(size=16, pitch=-math.pi / 2, z=2.0)
    out = render([_floor()], cam, LIGHT)
    assert np.allclose(out.depth, 2.0, atol=1e-4)
    assert (out.ids == 1).all()


def test_nearest_hit_wins_each_pixel():
    cam = _camera(size=48)
    near = _sphere(7, [0.1, 2.0, 1.0], 0.3, RED)
    far = _sphere(8, [0.0, 4.0, 1.0], 0.8, BLUE)
    for order in ([near, far], [far, near]):
        out = render(order, cam, LIGHT)
        assert (out.ids == 7).sum() > 0 and (out.ids == 8).sum() > 0
        # where both could be hit, the nearer one is shown and the depth is its depth
        O, D = cam.rays()
        t_near = intersect(near, O, D, np.arange(1)).reshape(1, 48, 48)
        t_far = intersect(far, O, D, np.arange(1)).reshape(1, 48, 48)
        both = np.isfinite(t_near) & np.isfinite(t_far)
        assert both.any()
        assert (out.ids[both] == 7).all()
        assert np.allclose(out.depth[both], t_near[both], atol=1e-5)
        assert (out.ids[np.isfinite(t_far) & ~np.isfinite(t_near)] == 8).all()


@pytest.mark.parametrize("preset", ["hoi", "gta"])
def test_culling_matches_brute_force(preset):
    """Screen-rectangle culling changes nothing: ids and depth equal a per-pixel argmin over
    every primitive intersected with every ray."""
    scene, _ = simulate_scene(SynthConfig(preset=preset, frames=6, size=40), "train", 3)
    prims = scene_primitives(scene)
    out = render(prims, scene.camera, scene.lighting)
    O, D = scene.camera.rays()
    ts = np.stack([intersect(p, O, D, np.arange(6)) for p in prims])  # [K, F, P]
    k = ts.argmin(0)
    ref_t = ts.min(0)
    ref_ids = np.where(np.isfinite(ref_t), np.array([p.instance for p in prims])[k], 0).reshape(6, 40, 40)
    assert np.array_equal(out.ids, ref_ids)
    assert np.allclose(np.where(np.isfinite(ref_t), ref_t, 0).reshape(6, 40, 40), out.depth, atol=1e-5)


def test_box_cylinder_capsule_hits():
    cam = _camera(size=32)
    box = Primitive(kind="box", instance=3, color=RED, color2=BLUE, texture="stripes", period=0.1,
                    center=np.array([[0.0, 3.0, 1.0]]), size=(0.4, 0.4, 0.4), yaw=np.array([0.3]))  # fmt: skip
    cyl = Primitive(kind="cylinder", instance=4, color=RED, color2=BLUE, texture="checker", period=0.1,
                    center=np.array([[0.0, 3.0, 1.0]]), size=(0.4, 0.4))  # fmt: skip
    cap = Primitive(kind="capsule", instance=6, color=RED, color2=RED, a=np.array([[0.0, 3.0, 0.6]]),
                    b=np.array([[0.0, 3.0, 1.4]]), size=(0.4,))  # fmt: skip
    for p, front in ((box, None), (cyl, 2.6), (cap, 2.6)):
        out = render([p], cam, LIGHT)
        assert out.ids[0, 16, 16] == p.instance
        if front is not None:
            assert out.depth[0, 16, 16] == pytest.approx(front, abs=0.02)
    # textures: the striped box shows both of its colours
    out = render([box], cam, LIGHT)
    cols = out.rgb[0][out.ids[0] == 3]
    assert cols[:, 0].std() > 10 and cols[:, 2].std() > 10


def test_noise_and_frames_subset():
    scene, rng = simulate_scene(SynthConfig(preset="hoi", frames=5, size=32), "train", 0)
    prims = scene_primitives(scene)
    clean = render(prims, scene.camera, scene.lighting)
    noisy = render(prims, scene.camera, scene.lighting, rng=np.random.default_rng(0), rgb_noise=3.0, depth_noise=0.002)
    diff = noisy.rgb.astype(int) - clean.rgb.astype(int)
    assert 1.5 < diff.std() < 5
    assert np.array_equal(noisy.ids, clean.ids)
    one = render(prims, scene.camera, scene.lighting, frames=np.array([3]))
    assert np.array_equal(one.ids[0], clean.ids[3]) and np.allclose(one.depth[0], clean.depth[3])


def test_shadows_darken_the_floor_under_an_object():
    cam = Camera(position=np.array([[0.0, -2.0, 2.0]]), yaw=np.zeros(1), pitch=np.array([-math.pi / 4]),
                 fov_deg=60.0, height=48, width=48)  # fmt: skip
    overhead = Lighting(direction=(0.0, 0.0, 1.0), ambient=0.3, diffuse=0.7, tint=(1.0, 1.0, 1.0))
    floor = Primitive(kind="plane", instance=1, color=GRAY, color2=GRAY, center=np.zeros(3), normal=np.array([0.0, 0.0, 1.0]))
    ball = _sphere(5, [0.0, 0.0, 0.6], 0.2)
    under, aside = cam.project(np.array([[[0.0, 0.0, 0.0], [0.6, 0.0, 0.0]]]))[0, :, :2].astype(int)
    with_shadow = render([floor, ball], cam, overhead)
    without = render([floor, ball], cam, overhead, shadows=False)
    for out in (with_shadow, without):
        assert out.ids[0, under[1], under[0]] == 1 and out.ids[0, aside[1], aside[0]] == 1  # both see the floor
    lum = lambda out, px: int(out.rgb[0, px[1], px[0]].sum())  # noqa: E731
    assert lum(with_shadow, under) < 0.6 * lum(with_shadow, aside)
    assert lum(without, under) == lum(without, aside)
    assert lum(with_shadow, aside) == lum(without, aside)
