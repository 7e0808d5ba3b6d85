"""Diagnostics: the grounding table and teacher-forced mask quality, on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from psg4d.infer.diagnostics import format_reports, grounding, teacher_forced_masks
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import make_sample, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PSG4DModel.from_config(tiny_config())


def test_grounding_gap_and_top1_hand_computed(model, monkeypatch):
    samples = [make_sample(0), make_sample(1), make_sample(2)]
    n_tok = [int(model.collate([s])["target_mask"][0].sum()) for s in samples]
    # log p(text i | video j): text 0 prefers its own video, texts 1 and 2 prefer video 0
    table = np.array([[-10.0, -16.0, -13.0], [-5.0, -8.0, -6.0], [-2.0, -3.0, -4.0]])
    calls = iter(range(3))

    def fake_scores(ctx, context_ids, conts, batch_size=32):
        j = next(calls)
        assert context_ids == [] and [len(c) for c in conts] == n_tok
        return list(table[:, j])

    monkeypatch.setattr(SceneGraphGenerator, "score_continuations", lambda self, *a, **k: fake_scores(*a, **k))
    rep = grounding(model, samples)
    assert np.array_equal(rep.logprob, table)
    own_minus_others = [(-10 + 14.5) / n_tok[0], (-8 + 5.5) / n_tok[1], (-4 + 2.5) / n_tok[2]]
    assert rep.gap == pytest.approx(np.mean(own_minus_others))
    assert rep.top1 == pytest.approx(1 / 3)
    assert "chance 33%" in format_reports(rep, None)


def test_grounding_is_zero_when_visual_tokens_carry_nothing(model):
    """Same visual tokens for every video (projector output constant): identical columns, gap 0."""
    saved = {k: v.clone() for k, v in model.projector.state_dict().items()}
    tag_head, model.tag_head = model.tag_head, None
    try:
        with torch.no_grad():
            for p in model.projector.parameters():
                p.zero_()
        rep = grounding(model, [make_sample(0), make_sample(1), make_sample(3)])
        assert np.allclose(rep.logprob, rep.logprob[:, :1], atol=1e-4)
        assert abs(rep.gap) < 1e-5
    finally:
        model.projector.load_state_dict(saved)
        model.tag_head = tag_head
    # with the real projector the videos differ, so the columns do too
    rep = grounding(model, [make_sample(0), make_sample(1)])
    assert not np.allclose(rep.logprob[:, 0], rep.logprob[:, 1])


class _OracleDecoder(nn.Module):
    """Returns the GT tubes (as +-10 logits at 4x the dense size) for the prompts in order."""

    def __init__(self, targets: torch.Tensor, *, flip_first: bool = False):
        super().__init__()
        self.targets, self.flip_first = targets, flip_first

    def decode(self, dense, prompts):
        from psg4d.model.mask_decoder import TubeDecoderOutput

        h, w = dense.shape[-2:]
        t = torch.nn.functional.interpolate(self.targets.float(), size=(4 * h, 4 * w), mode="nearest")
        logits = torch.where(t > 0.5, 10.0, -10.0)
        if self.flip_first:
            logits[0] = -logits[0]
        assert prompts.shape[0] == logits.shape[0]
        return TubeDecoderOutput(logits, torch.zeros(logits.shape[:2]), torch.full(logits.shape[:2], 10.0))

    def gate_absent(self, out):
        return out.mask_logits


def test_teacher_forced_masks_scores_the_decoded_tubes(model):
    sample = make_sample(0)
    batch = model.collate([sample])
    targets = batch["mask_targets"][0]  # [N, T, S, S]
    decoder = model.mask_decoder
    try:
        model.mask_decoder = _OracleDecoder(targets)
        rep = teacher_forced_masks(model, [sample])
        assert rep.hit == 1.0 and rep.occurrences == targets.shape[0]
        assert set(rep.per_category) == {o.category for o in sample.graph.objects}
        model.mask_decoder = _OracleDecoder(targets, flip_first=True)  # first [Obj]: inverted mask, IoU 0
        rep = teacher_forced_masks(model, [sample])
        assert rep.hit == pytest.approx((targets.shape[0] - 1) / targets.shape[0])
        first = {o.object_id: o.category for o in sample.graph.objects}[batch["obj_ids"][0][0]]
        assert rep.per_category[first] < 1.0
    finally:
        model.mask_decoder = decoder


def test_diagnose_command(tmp_path, model, capsys):
    import json

    from psg4d.cli import main
    from psg4d.data.synth import SynthConfig, generate

    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    generate(SynthConfig(videos=6, images=0, frames=4, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    data = tmp_path / "ds" / "4d"
    assert main(["diagnose", "--ckpt", str(ckpt), "--data", str(data), "--split", "train",
                 "--limit", "2", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "grounding over 2 videos" in out and "teacher-forced masks" in out
    # the model's vocabulary pairs no predicate with its reverse: nothing to probe, and it says so
    assert "reversal probe: these videos hold no relation with a time-reversed partner" in out
    numbers = json.loads((tmp_path / "d.json").read_text())
    assert np.array(numbers["logprob"]).shape == (2, 2) and 0.0 <= numbers["tf_mask_hit"] <= 1.0
    assert numbers["reversal"]["reversed_accuracy"] is None and numbers["reversal_skipped"] is None
    for args, words in (
        (["--data", str(tmp_path / "missing")], "missing"),
        (["--data", str(data), "--limit", "1"], "--limit"),
        (["--data", str(data), "--split", "nope"], "nope"),
    ):
        assert main(["diagnose", "--ckpt", str(ckpt), *args]) == 2
        err = capsys.readouterr().err
        assert words in err, err
