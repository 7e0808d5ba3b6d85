"""Size and shape words measured from a tube's depth (psg4d.model.form_geometry): the size phrase's two
parts, the measurements of hand-built surfaces in metres, cutting a spilled tube back to its object,
the reader composing a phrase training never showed, and the attribute_fit objective and the reading
that use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from psg4d.data.synth.describe import _SIZE_PHRASES, attribute_values
from psg4d.model.form_geometry import (
    ABOVE_METRES, NUM_FEATURES, PER_FRAME, PROPORTIONS, FormReader, frame_geometry, grid_tubes, size_phrase,
    snap_to_depth, split_size, tube_geometry,
)

F_PX = 100.0  # focal length of the hand-built frames, pixels
K = torch.tensor([[F_PX, 0.0, 31.5], [0.0, F_PX, 31.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_every_size_phrase_splits_into_proportion_and_absolute_size_and_back():
    for phrase in _SIZE_PHRASES:
        prop, absolute = split_size(phrase)
        assert size_phrase(prop, absolute or "") == phrase
    assert split_size("small flat") == ("flat", "small")
    assert split_size("tall") == ("tall", None)  # beside tall a phrase says no absolute size
    assert split_size("") == ("", "")
    assert size_phrase("wide", "small") == "wide"
    with pytest.raises(ValueError, match="not a size phrase"):
        split_size("small red")


def _plane(depth_m: float = 1.0) -> torch.Tensor:
    return torch.full((1, 64, 64), depth_m)


def test_a_flat_rectangle_measures_its_metres_and_no_curvature():
    # a 20 x 10 pixel rectangle facing the camera 1 m away: 0.20 m x 0.10 m
    depth = _plane()
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[0, 0, 20:30, 10:30] = True
    f = frame_geometry(mask, depth, K)[0, 0]
    assert f.shape == (PER_FRAME,)
    cam = f[:3].exp() - 1e-3  # 5-95 % spreads along x, y, z
    # the 5-95 % spread of 20 evenly spaced pixels is 0.9 of its 19 pixel steps (+ rounding)
    assert cam[0] == pytest.approx(0.19 * 0.9, abs=0.011) and cam[1] == pytest.approx(0.09 * 0.9, abs=0.011)
    assert cam[2] == pytest.approx(0.0, abs=1e-3)
    pca = f[3:6].exp() - 1e-3
    assert pca[0] > pca[1] > pca[2] and pca[2] == pytest.approx(0.0, abs=1e-3)  # largest first
    assert f[6] == pytest.approx(0.0, abs=1e-3)  # flatness: no third spread
    assert f[7] == pytest.approx(1.0)  # a rectangle fills its bounding box
    assert f[8:10].abs().max() < 1e-3  # a plane has no curvature
    assert f[10] == pytest.approx(math.log(200)) and f[11] == pytest.approx(0.0, abs=1e-6)  # 200 px, 1 m


def test_a_sphere_curves_across_both_axes_and_a_cylinder_across_one():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    u, v = (xs - 31.5) / F_PX, (ys - 31.5) / F_PX  # rays at 1 m
    r, centre = 0.15, 1.0
    disc = (u ** 2 + v ** 2) < (r * 0.9) ** 2
    sphere = torch.where(disc, centre - (r ** 2 - u ** 2 - v ** 2).clamp(min=0).sqrt(), torch.tensor(centre))
    band = u.abs() < r * 0.9
    cylinder = torch.where(band, centre - (r ** 2 - u ** 2).clamp(min=0).sqrt(), torch.tensor(centre))
    f_sphere = frame_geometry(disc[None, None], sphere[None], K)[0, 0]
    keep = band & (v.abs() < r * 0.9)
    f_cyl = frame_geometry(keep[None, None], cylinder[None], K)[0, 0]
    assert f_sphere[8:10].min() > 0.05  # both principal curvatures
    assert f_cyl[8:10].max() > 0.05 and f_cyl[8:10].min() < 0.02  # one of them
    assert f_sphere[7] < 0.85 < f_cyl[7]  # a disc fills pi/4 of its box


def test_frames_with_too_few_pixels_are_left_out_and_summarised_over_the_rest():
    depth = _plane().expand(3, 64, 64)
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    masks[0, :2, 10:20, 10:20] = True
    masks[0, 2, 10, 10:12] = True  # 2 pixels: not measured
    g = tube_geometry(masks, depth, K)
    assert g.shape == (2, NUM_FEATURES)
    assert g[0, -1] == pytest.approx(2 / 3)  # the share of frames measured
    assert torch.all(g[1] == 0)  # an empty tube: nothing measured
    assert g[0, PER_FRAME + 10] == pytest.approx(math.log(100))  # the median pixel count of the measured frames


def test_training_and_reading_measure_a_tube_the_same_way():
    from psg4d.model.form_geometry import measure_tubes

    rows = torch.arange(64.0)[:, None].expand(64, 64)
    depth = (0.8 + 0.004 * rows).clone()
    depth[30:36, 30:36] -= 0.08
    true = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    true[0, 0, 30:36, 30:36] = True
    # a true tube cut to 8 cells of 8 pixels in training is the decoder's drawn tube at reading
    drawn = grid_tubes(true, 8)
    assert torch.equal(measure_tubes(true, depth[None], K, grid=8), measure_tubes(drawn, depth[None], K))
    assert torch.equal(measure_tubes(drawn, depth[None], K), tube_geometry(snap_to_depth(drawn, depth[None]), depth[None], K))
    assert torch.equal(measure_tubes(drawn, depth[None], K, above=0), tube_geometry(drawn, depth[None], K))  # 0: not snapped


def test_grid_tubes_draw_a_tube_as_the_decoders_cells_can():
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 0:3, 0:1] = True  # 3 of the 4 pixels... of two cells: (0, 0) holds 2 of 4, (1, 0) 1 of 4
    out = grid_tubes(masks, 4)[0, 0]
    assert out[0:2, 0:2].all() and not out[2:4].any() and out.sum() == 4


def test_a_spilled_tube_is_cut_back_to_what_stands_in_front_of_its_surface():
    # a tilted table (its depth grows with the row) and a 6 x 6 pixel box 8 cm in front of it
    rows = torch.arange(64.0)[:, None].expand(64, 64)
    inv = 1.0 / (0.8 + 0.004 * rows)  # a plane's inverse depth is affine in the pixel
    table = 1.0 / inv
    depth = table.clone()
    depth[30:36, 30:36] -= 0.08
    truth = torch.zeros(64, 64, dtype=torch.bool)
    truth[30:36, 30:36] = True
    spilled = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    spilled[0, 0, 28:40, 28:40] = True  # the decoder's cells: a 12 x 12 block around it
    snapped = snap_to_depth(spilled, depth[None])
    assert torch.equal(snapped[0, 0], truth)
    # a tube flat on its surface (nothing stands out) keeps its mask
    assert torch.equal(snap_to_depth(spilled, table[None]), spilled)
    # another object in the ring is left out of the surface's fit
    depth2 = depth.clone()
    depth2[26:28, 26:42] -= 0.2
    assert torch.equal(snap_to_depth(spilled, depth2[None])[0, 0], truth)
    assert ABOVE_METRES < 0.08


def test_the_reader_composes_a_size_phrase_training_never_showed():
    torch.manual_seed(0)
    values = attribute_values()
    reader = FormReader(shapes=values["shape"], hidden=0)
    # three kinds of object told apart by the first two measurements alone
    x = torch.zeros(60, NUM_FEATURES)
    kinds = torch.arange(60) % 3
    x[kinds == 0, 0] = 2.0  # small, no proportion: a "small" cylinder
    x[kinds == 1, 1] = 2.0  # flat, not small: a "flat" block
    x[kinds == 2, 2] = 2.0  # tall capsule
    x += 0.05 * torch.randn_like(x)
    sizes = [("small", "flat", "tall")[k] for k in kinds.tolist()]
    shapes = [("cylinder", "block", "capsule")[k] for k in kinds.tolist()]
    opt = torch.optim.Adam(reader.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = reader.train().loss(x, sizes, shapes)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1
    reader.eval()
    scores = reader.field_scores(x[:3], values)
    assert [values["size"][int(i)] for i in scores["size"].argmax(1)] == ["small", "flat", "tall"]
    assert [values["shape"][int(i)] for i in scores["shape"].argmax(1)] == ["cylinder", "block", "capsule"]
    # small from the first and flat from the second: "small flat" no object was
    both = x[:1].clone()
    both[0, 1] = 2.0
    logits = reader(both)
    got = reader.field_scores(both, values)["size"][0]
    logp = {k: torch.log_softmax(v, 1)[0] for k, v in logits.items()}
    small_flat = values["size"].index("small flat")
    assert float(got[small_flat]) == pytest.approx(float(logp["proportion"][PROPORTIONS.index("flat")]
                                                         + logp["absolute"][1]), abs=1e-5)
    tall = values["size"].index("tall")  # beside tall the absolute size is not said
    assert float(got[tall]) == pytest.approx(float(logp["proportion"][PROPORTIONS.index("tall")]), abs=1e-5)
    assert torch.isfinite(got).all()
    # unknown targets (a hand) teach nothing; none known: an exact zero
    assert float(reader.train().loss(x[:4], [None] * 4, [None] * 4)) == 0.0


def test_the_attribute_fit_objective_trains_the_form_reader_on_true_tubes():
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import chain_config, described_sample

    torch.manual_seed(0)
    cfg = chain_config(attribute_loss_weight=1.0, attribute_form="geometry")
    cfg.transfer.objective = "attributes"
    model = PSG4DModel.from_config(cfg).train()
    assert model.attribute_head.form is not None
    samples = [described_sample(0), described_sample(1)]
    for s in samples:
        s.video.intrinsics = np.array([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    batch = model.collator(samples)
    assert batch["intrinsics"][0] is not None and len(batch["object_categories"][0]) == batch["object_masks"][0].shape[0]
    out = model(**batch)
    assert set(out) == {"loss", "loss_attr", "loss_form"} and float(out["loss_form"]) > 0
    out["loss"].backward()
    form_grads = [p.grad for p in model.attribute_head.form.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in form_grads)
    # without intrinsics nothing is measured: the head alone
    for s in samples:
        s.video.intrinsics = None
    out = model(**model.collator(samples))
    assert set(out) == {"loss", "loss_attr"}


def test_reading_with_the_form_reader_takes_size_and_shape_from_the_measurement():
    from psg4d.model.attributes import AttributeHead, read_attributes

    torch.manual_seed(0)
    values = attribute_values()
    head = AttributeHead(dim=4, values=values, form=FormReader(shapes=values["shape"])).eval()
    dense, rgb = torch.randn(2, 4, 4, 4), torch.rand(2, 3, 16, 16)
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, :, 1:3, 1:3] = True
    n_size, n_shape = len(values["size"]), len(values["shape"])
    size = torch.full((1, n_size), -20.0)
    size[0, values["size"].index("small flat")] = 0.0
    shape = torch.full((1, n_shape), -20.0)
    shape[0, values["shape"].index("sphere")] = 0.0
    text, _ = read_attributes(head, dense, rgb, masks, measured={"size": size, "shape": shape})[0]
    words = text.split()
    assert words[:2] == ["small", "flat"] and "sphere" in words
    shape2 = torch.full((1, n_shape), -20.0)
    shape2[0, values["shape"].index("block")] = 0.0
    other, _ = read_attributes(head, dense, rgb, masks, measured={"size": size, "shape": shape2})[0]
    assert "block" in other.split() and "sphere" not in other.split()
    # the fields not measured are the head's, the same either way
    assert text.replace("sphere", "block") == other


def test_intrinsics_follow_the_frames_resize():
    from psg4d.data.schema import Video4D
    from psg4d.model.batching import frame_intrinsics

    video = Video4D(rgb=np.zeros((1, 128, 256, 3), np.uint8),
                    intrinsics=np.array([[200.0, 0, 127.5], [0, 100.0, 63.5], [0, 0, 1]]))
    k = frame_intrinsics(video, 64)
    assert k[0, 0] == pytest.approx(50.0) and k[1, 1] == pytest.approx(50.0)
    assert k[0, 2] == pytest.approx(31.5) and k[1, 2] == pytest.approx(31.5)  # the centre stays the centre
    assert frame_intrinsics(Video4D(rgb=np.zeros((1, 8, 8, 3), np.uint8)), 64) is None


def test_the_model_config_names_where_the_form_comes_from():
    from psg4d.errors import ConfigError
    from psg4d.model.config import ModelConfig

    assert ModelConfig().attribute_form == "map"  # the head's cells, as every checkpoint before read them
    with pytest.raises(ConfigError, match="attribute_form: 'guess' is not one of"):
        ModelConfig(attribute_form="guess")
