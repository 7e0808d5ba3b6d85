"""Diagnostics of a trained 4D-LLM that R@K alone cannot give.

R@K is zero until categories, predicates *and* both mask tubes are right at
once, so a run that fails says little about which part failed. Two measures
separate them:

* :func:`grounding` — does the LLM read the video? For ``n`` videos, the
  log-probability of each video's ground-truth graph text is computed given
  every one of the ``n`` videos (teacher forced, ``[n, n]`` table). ``gap`` is
  the mean, per text token, of (own video) minus (mean of the other videos).
  A model that ignores its visual tokens has identical columns and a gap of 0
  however low its text loss; ``top1`` is the fraction of texts most probable
  under their own video (chance: ``1 / n``).
* :func:`teacher_forced_masks` — given the ground-truth text, how good are the
  tubes the ``[Obj]`` hidden states decode? Per ``[Obj]`` occurrence, the
  fraction of frames where the object is present whose mask IoU is ``>= 0.5``
  (the per-frame test of both evaluation protocols), pooled over occurrences,
  also per category. This is the mask quality the LLM's text would get if it
  were perfect.
* :func:`reversal_probe` — does it read the order of the frames? (see there)

With region feedback (``model.region``) a ground-truth text's regions are the tubes its own
``[Obj]`` states decode on the video being scored, as at inference (no gold tube enters).

``psg4d diagnose --ckpt CKPT --data DIR --split S`` prints all three;
the training validator logs ``val_grounding_gap`` and ``val_tf_mask_hit``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from psg4d.data.masks import mask_iou
from psg4d.data.schema import Sample
from psg4d.errors import ConfigError, DataError
from psg4d.data.time_reversal import asymmetric_pairs, reversal_table, reverse_sample
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.mask_decoder import upsample_to
from psg4d.model.psg4d_llm import PSG4DModel

log = logging.getLogger(__name__)


@dataclass
class GroundingReport:
    logprob: np.ndarray  # [n_text, n_video]: log p(text i | video j), summed over tokens
    num_tokens: np.ndarray  # [n_text]
    gap: float  # nats per token, own video minus the mean of the others
    top1: float  # fraction of texts most probable under their own video


@dataclass
class MaskReport:
    hit: float  # pooled over [Obj] occurrences: frames with IoU >= 0.5 / frames with the object
    per_category: dict[str, float] = field(default_factory=dict)
    occurrences: int = 0


@dataclass
class ReversalReport:
    reversed_accuracy: float | None  # right predicate more probable, on the reversed clips (None: none probed)
    forward_accuracy: float | None  # the same test on the clips as recorded
    reversed_count: int  # relations probed on the reversed clips
    forward_count: int
    per_predicate: dict[str, float] = field(default_factory=dict)  # reversed clips, by right predicate


def _target_ids(model: PSG4DModel, sample: Sample) -> list[int]:
    batch = model.collate([sample])
    return batch["target_ids"][0][batch["target_mask"][0].bool()].tolist()  # the graph text and <eos>


@torch.no_grad()
def grounding(model: PSG4DModel, samples: Sequence[Sample], *, region_passes: int | None = 2) -> GroundingReport:
    """The ``[n, n]`` text-given-video table of the module docstring (``n >= 2``). With region
    feedback a text's regions are decoded on each video (:meth:`SceneGraphGenerator.score_texts`),
    in ``region_passes`` passes (2: the tubes decoded with empty regions, refined once; None: exactly
    generation's feeding, about 3x the mask-decoder calls, which dominate)."""
    if len(samples) < 2:
        raise ValueError("grounding needs at least 2 videos")
    model.eval()
    generator = SceneGraphGenerator(model)
    texts = [_target_ids(model, s) for s in samples]
    table = np.zeros((len(samples), len(samples)))
    for j, s in enumerate(samples):
        ctx = generator.encode_video(s.video)
        table[:, j] = generator.score_texts(ctx, [], texts, max_passes=region_passes)
    n_tok = np.array([len(t) for t in texts], dtype=float)
    own = np.diag(table)
    others = (table.sum(1) - own) / (len(samples) - 1)
    return GroundingReport(
        logprob=table,
        num_tokens=n_tok,
        gap=float(np.mean((own - others) / n_tok)),
        top1=float(np.mean(table.argmax(1) == np.arange(len(samples)))),
    )


@torch.no_grad()
def teacher_forced_masks(model: PSG4DModel, samples: Sequence[Sample], *, threshold: float = 0.5) -> MaskReport:
    """Tube quality from the ``[Obj]`` hidden states of the ground-truth text (module docstring),
    in eval mode: the prompt holds the model's own tags, as at inference."""
    model.eval()
    hits: dict[str, list[float]] = defaultdict(list)
    dev = model.device
    for s in samples:
        batch = model.collate([s])
        tf = model.teacher_forced(
            target_ids=batch["target_ids"].to(dev), target_mask=batch["target_mask"].to(dev),
            rgb=batch["rgb"].to(dev), depth=None if batch["depth"] is None else batch["depth"].to(dev),
            disparity_scale=batch["disparity_scale"].to(dev),
        )
        pos = torch.nonzero(tf.ids[0] == model.ids.obj).flatten()
        if pos.numel() == 0:
            continue
        features = model.mask_features(batch["rgb"][0].to(dev), tf.enc.dense[0])
        logits, _ = model.decode_tubes(features, tf.hidden[0, pos])  # [N, T, h, w]
        target = batch["mask_targets"][0]  # [N, T, S, S]
        pred = upsample_to(logits, tuple(target.shape[-2:])).cpu() > 0
        present = target.flatten(2).any(-1)  # [N, T]
        good = (mask_iou(pred, target) >= threshold) & present
        cats = {o.object_id: o.category for o in s.graph.objects}
        for k, oid in enumerate(batch["obj_ids"][0]):
            if bool(batch["mask_valid"][0][k]) and int(present[k].sum()) > 0:
                hits[cats[oid]].append(float(good[k].sum() / present[k].sum()))
    pooled = [h for hs in hits.values() for h in hs]
    return MaskReport(
        hit=float(np.mean(pooled)) if pooled else 0.0,
        per_category={c: float(np.mean(h)) for c, h in sorted(hits.items())},
        occurrences=len(pooled),
    )


def _probe_clip(model: PSG4DModel, generator: SceneGraphGenerator, sample: Sample,
                partner: dict[str, str]) -> list[tuple[str, bool]]:
    """(right predicate, scored above its partner?) for each probed relation of one clip."""
    keys = {(r.subject_id, r.predicate, r.object_id) for r in sample.graph.relations}
    texts, probed = [_target_ids(model, sample)], []
    for k, r in enumerate(sample.graph.relations):
        swap = partner.get(r.predicate)
        if swap is None or (r.subject_id, swap, r.object_id) in keys:
            continue  # no partner, or the swapped triplet is itself true
        relations = list(sample.graph.relations)
        relations[k] = replace(r, predicate=swap)
        wrong = Sample(video=sample.video, graph=replace(sample.graph, relations=relations), lifted=sample.lifted)
        texts.append(_target_ids(model, wrong))
        probed.append(r.predicate)
    if not probed:
        return []
    scores = generator.score_texts(generator.encode_video(sample.video), [], texts)
    return [(p, scores[0] > scores[k + 1]) for k, p in enumerate(probed)]


@torch.no_grad()
def reversal_probe(model: PSG4DModel, samples: Sequence[Sample], *, table: str | None = None) -> ReversalReport:
    """The forward / reversed predicate test of the module docstring. ``table``: a
    :data:`~psg4d.data.time_reversal.REVERSAL_TABLES` name (default the model's
    ``time_reversal_table``); ValueError if it does not cover the samples' predicates."""
    model.eval()
    predicates = sorted({r.predicate for s in samples for r in s.graph.relations})
    vocab = list(model.config.predicate_vocab or predicates)
    rev_table = reversal_table(table or model.config.time_reversal_table, predicates, vocabulary=vocab)
    partner = asymmetric_pairs(rev_table, vocab)
    generator = SceneGraphGenerator(model)
    forward: list[bool] = []
    backward: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        forward += [ok for _, ok in _probe_clip(model, generator, s, partner)]
        for p, ok in _probe_clip(model, generator, reverse_sample(s, rev_table), partner):
            backward[p].append(ok)
    pooled = [ok for oks in backward.values() for ok in oks]
    return ReversalReport(
        reversed_accuracy=float(np.mean(pooled)) if pooled else None,
        forward_accuracy=float(np.mean(forward)) if forward else None,
        reversed_count=len(pooled),
        forward_count=len(forward),
        per_predicate={p: float(np.mean(oks)) for p, oks in sorted(backward.items())},
    )


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def format_reports(g: GroundingReport | None, m: MaskReport | None, r: ReversalReport | None = None) -> str:
    lines = []
    if g is not None:
        lines.append(
            f"grounding over {len(g.num_tokens)} videos: gap {g.gap:+.3f} nats/token "
            f"(0: the video is ignored), own video most probable for {g.top1:.0%} of texts "
            f"(chance {1 / len(g.num_tokens):.0%})"
        )
    if r is not None and r.reversed_accuracy is None:
        lines.append("reversal probe: these videos hold no relation with a time-reversed partner predicate")
    elif r is not None:
        lines.append(
            f"reversal probe: right time-asymmetric predicate on {r.reversed_accuracy:.0%} of {r.reversed_count} "
            f"relations in reversed clips, {_share(r.forward_accuracy)} of {r.forward_count} in forward ones "
            "(chance 50%)"
        )
        for p, a in r.per_predicate.items():
            lines.append(f"  reversed, {p:20s} {a:6.1%}")
    if m is not None:
        lines.append(f"teacher-forced masks: {m.hit:.1%} of object frames reach IoU >= 0.5 ({m.occurrences} [Obj])")
        for c, h in sorted(m.per_category.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {c:24s} {h:6.1%}")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class DiagnoseRequest:
    """One ``psg4d diagnose`` call: a 4D-LLM checkpoint, ``limit`` videos of ``split`` of the dataset
    at ``data``; ``json_out``: also write the numbers there."""

    ckpt: Path
    data: Path
    split: str = "val"
    limit: int = 8
    json_out: Path | None = None


def run_diagnose(req: DiagnoseRequest) -> str:
    """All three diagnostics on the request's videos, as the text the command prints (and the
    JSON file when asked); bad flags, folders and checkpoints are one-line errors before any work."""
    from psg4d.data.readers import open_dataset
    from psg4d.families import LLM_KIND, require_family
    from psg4d.utils.io import atomic_write_json, check_output_file

    if req.limit < 2:
        raise ConfigError(f"--limit must be at least 2 (got {req.limit}): the grounding table compares videos")
    if req.json_out is not None:
        check_output_file(req.json_out)
    require_family(req.ckpt, LLM_KIND, "psg4d diagnose (it reads the LLM's text probabilities)")
    reader = open_dataset(req.data)
    if req.split not in reader.splits:
        raise DataError(req.data, f"no split {req.split!r}; the dataset has {', '.join(reader.splits)}")
    samples = [reader.read(v) for v in reader.video_ids(req.split)[: req.limit]]
    if len(samples) < 2:
        raise DataError(req.data, f"split {req.split!r} has {len(samples)} video(s); the grounding table needs 2")
    model = PSG4DModel.from_pretrained(req.ckpt)
    g = grounding(model, samples)
    try:
        r, skipped = reversal_probe(model, samples), None
    except ValueError as e:  # the data's predicates have no declared time reversal
        r, skipped = None, str(e)
    m = teacher_forced_masks(model, samples)
    if req.json_out is not None:
        atomic_write_json(req.json_out, {
            "grounding_gap": g.gap, "grounding_top1": g.top1, "logprob": g.logprob.tolist(),
            "tf_mask_hit": m.hit, "tf_mask_hit_per_category": m.per_category,
            "reversal": None if r is None else asdict(r), "reversal_skipped": skipped,
        }, indent=2)
    return format_reports(g, m, r) + (f"\nreversal probe skipped: {skipped}" if skipped else "")
