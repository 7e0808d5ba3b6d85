"""Clips played backwards: the declared table, the data transform, the training augmentation, the
probe that asks a model which way a clip runs, and frame tokens that let it see the order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.data.synth.world import PREDICATES, PRESET_PREDICATES, TIME_REVERSED_PREDICATES
from psg4d.data.time_reversal import asymmetric_pairs, reversal_table, reverse_graph, reverse_sample
from psg4d.errors import ConfigError
from psg4d.infer.diagnostics import format_reports, reversal_probe
from psg4d.model.encoder import EncoderConfig, build_encoder
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import make_sample, tiny_config

HOI_PREDS = list(PRESET_PREDICATES["hoi"])


def test_world_table_declares_every_predicate_and_swaps_in_pairs():
    assert set(TIME_REVERSED_PREDICATES) == set(PREDICATES)
    for p, q in TIME_REVERSED_PREDICATES.items():
        assert q is None or q in PREDICATES
        if q is not None:
            assert TIME_REVERSED_PREDICATES[q] == p  # backwards twice is forwards
    assert asymmetric_pairs(TIME_REVERSED_PREDICATES, HOI_PREDS) == {
        "picking up": "putting down", "putting down": "picking up", "pushing": "pulling", "pulling": "pushing",
    }
    with pytest.raises(ValueError, match="looking at"):
        reversal_table("synthetic", ["on", "looking at"])
    with pytest.raises(ValueError, match="unknown time-reversal table"):
        reversal_table("nosuch", ["on"])


def _graph() -> SceneGraph4D:
    t, s = 6, 8
    masks = np.zeros((t, s, s), bool)
    for k in range(t):
        masks[k, k, :] = True  # the mug's row is its frame number
    objects = [ObjectTrack(1, "hand"), ObjectTrack(2, "mug", tube=MaskTube.from_dense(masks),
                                                     frame_categories=[f"c{k}" for k in range(t)])]
    relations = [
        Relation(1, 2, "picking up", [(0, 1), (4, 4)]),
        Relation(1, 2, "holding", [(0, 5)]),
        Relation(1, 2, "reaching toward", [(2, 3)]),
        Relation(1, 2, "pushing", [(5, 5)]),
    ]
    return SceneGraph4D("v", t, s, s, objects, relations)


def test_reverse_graph_swaps_exactly_the_declared_predicates_and_mirrors_spans():
    g = _graph()
    r = reverse_graph(g, TIME_REVERSED_PREDICATES)
    assert [(x.predicate, x.spans) for x in r.relations] == [
        ("putting down", [(1, 1), (4, 5)]),  # 6 frames: [a, b] -> [5 - b, 5 - a]
        ("holding", [(0, 5)]),
        ("pulling", [(0, 0)]),
    ]  # reaching toward has no reversed name: dropped
    tube = r.objects[1].tube.to_dense()
    assert [int(np.flatnonzero(tube[k].any(1))[0]) for k in range(6)] == [5, 4, 3, 2, 1, 0]
    assert r.objects[1].frame_categories == ["c5", "c4", "c3", "c2", "c1", "c0"]
    assert r.meta["time_reversed"] and g.relations[0].predicate == "picking up"  # the input is untouched
    r.validate()
    # twice backwards is the clip as recorded (bar the dropped relation)
    rr = reverse_graph(r, TIME_REVERSED_PREDICATES)
    assert [(x.predicate, x.spans) for x in rr.relations] == [(x.predicate, x.spans) for x in g.relations
                                                              if x.predicate != "reaching toward"]
    assert not rr.meta["time_reversed"]
    with pytest.raises(ValueError, match="looking at"):
        reverse_graph(SceneGraph4D("v", 6, 8, 8, g.objects, [Relation(1, 2, "looking at", [(0, 1)])]),
                      TIME_REVERSED_PREDICATES)


def test_reverse_sample_reverses_frames_depth_and_their_sources():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    depth = rng.uniform(1, 2, (6, 8, 8)).astype(np.float32)
    video = Video4D(rgb, depth, frame_indices=np.arange(10, 16), video_id="v")
    s = reverse_sample(Sample(video=video, graph=_graph()), TIME_REVERSED_PREDICATES)
    assert np.array_equal(s.video.rgb, rgb[::-1]) and np.array_equal(s.video.depth, depth[::-1])
    assert s.video.frame_indices.tolist() == [15, 14, 13, 12, 11, 10]
    assert s.video.rgb.flags["C_CONTIGUOUS"] and torch.from_numpy(s.video.rgb).shape == (6, 8, 8, 3)
    s.video.validate()


def test_training_batches_play_clips_backwards_only_in_training():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(predicate_vocab=HOI_PREDS, time_reversal=1.0))
    sample = make_sample(0)  # picking up, holding, next to: all in the synthetic world's table
    words = lambda b: model.tokenizer.decode(b["target_ids"][0][b["target_mask"][0].bool()].tolist())  # noqa: E731
    model.eval()
    forward = model.collate([sample])
    model.train()
    backward = model.collate([sample])
    assert torch.equal(backward["rgb"][0], forward["rgb"][0].flip(0))
    assert torch.equal(backward["object_masks"][0], forward["object_masks"][0].flip(1))
    assert "picking up" in words(forward) and "putting down" not in words(forward)
    assert "putting down" in words(backward) and "picking up" not in words(backward)
    # the spans are mirrored on the 4-frame timeline: picking up [0, 1] -> putting down [2, 3]
    assert "person [Obj] picking up water dispenser [Obj] 0 1" in words(forward)
    assert "person [Obj] putting down water dispenser [Obj] 2 3" in words(backward)
    # off by default; a predicate the table does not declare is refused when reversal is on
    assert PSG4DModel.from_config(tiny_config()).collator.reversal is None
    with pytest.raises(ConfigError, match="model.time_reversal.*looking at"):
        PSG4DModel.from_config(tiny_config(time_reversal=0.5))
    with pytest.raises(ConfigError, match="time_reversal_table"):
        tiny_config(time_reversal_table="nosuch").__post_init__()


def test_reversal_probe_counts_the_right_predicate_on_both_directions(monkeypatch):
    """A model that always prefers "putting down" to "picking up": wrong on the clip as recorded
    (a picking up), right on the clip played backwards (a putting down)."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(predicate_vocab=HOI_PREDS))

    def fake_scores(self, ctx, context_ids, conts, batch_size=32):
        text = [model.tokenizer.decode(c) for c in conts]
        return [t.count("putting down") - t.count("picking up") for t in text]

    monkeypatch.setattr(SceneGraphGenerator, "score_continuations", fake_scores)
    rep = reversal_probe(model, [make_sample(0), make_sample(1)])
    assert (rep.forward_accuracy, rep.forward_count) == (0.0, 2)
    assert (rep.reversed_accuracy, rep.reversed_count) == (1.0, 2)
    assert rep.per_predicate == {"putting down": 1.0}
    assert "100% of 2 relations in reversed clips, 0% of 2 in forward ones" in format_reports(None, None, rep)
    # data whose predicates the table does not declare cannot be probed
    odd = make_sample(0)
    odd.graph.relations = [Relation(0, 1, "looking at", [(0, 1)])]
    with pytest.raises(ValueError, match="does not say"):
        reversal_probe(model, [odd])


def test_frame_tokens_follow_the_merged_ones_in_time_order():
    torch.manual_seed(0)
    cfg = EncoderConfig(image_size=32, merge_grid=4, max_tokens=16, frame_grid=2)
    enc = build_encoder(cfg)
    rgb = torch.rand(1, 4, 3, 32, 32)
    out = enc(rgb)
    assert out.tokens.shape == (1, 16 + 4 * 4, cfg.dim)  # 16 merged + 4 frames x 2 x 2
    assert out.token_frames[0, 16:].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4 + [3.0] * 4
    # the frame tokens say when: the clip backwards is not a reordering of the same tokens
    back = enc(rgb.flip(1)).tokens[0, 16:].reshape(4, 4, -1)
    fwd = out.tokens[0, 16:].reshape(4, 4, -1)
    assert not torch.allclose(back.flip(0), fwd, atol=1e-4)
    assert build_encoder(EncoderConfig(image_size=32, merge_grid=4, max_tokens=16))(rgb).tokens.shape[1] == 16


def test_a_reverse_the_model_has_no_word_for_is_left_out():
    """A training world without "putting down": its picking up, played backwards, is dropped (the
    model could not write it), not written with a word outside the vocabulary."""
    vocab = [p for p in HOI_PREDS if p != "putting down"]
    table = reversal_table("synthetic", vocab, vocabulary=vocab)
    assert table["picking up"] is None and table["pushing"] == "pulling" and table["on"] == "on"
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(predicate_vocab=vocab, time_reversal=1.0))
    model.train()
    batch = model.collate([make_sample(0)])
    text = model.tokenizer.decode(batch["target_ids"][0][batch["target_mask"][0].bool()].tolist())
    assert "picking up" not in text and "putting" not in text and "holding" in text


def test_probe_report_with_nothing_probed_forward_still_prints():
    from psg4d.infer.diagnostics import ReversalReport

    text = format_reports(None, None, ReversalReport(reversed_accuracy=0.5, forward_accuracy=None,
                                                     reversed_count=2, forward_count=0))
    assert "50% of 2 relations in reversed clips, - of 0 in forward ones" in text
