"""Attributes read from the frames: what an object looks like, field by field, under its tube.

A category name is closed-vocabulary; what a thing looks like is not. The synthetic world describes
every category from a small shared vocabulary (:mod:`psg4d.data.synth.describe`: size, colour,
shape, pattern, pattern colour), so an apple that no training video showed is still a "small red
sphere": red from cans, sphere from limes and balls. :class:`AttributeHead` learns each field
*separately*, per cell, from the scene encoder's dense map and the frame's own colours, supervised
through the per-pixel category maps training already has (each category's fields from its
description, :func:`attribute_table`); colour fields read only the frame's colours and the
others only the encoder's map, so no field borrows another's cue. Reading a tube (:func:`read_descriptions`)
writes the description of the most likely value of each field, a combination training may never
have shown: the value the tube holds *more of than the cells around it* (:func:`contrast_scores`),
all frames together. A predicted tube spills over its object's edges, and on a table every spilled
cell is the table's: its colour, its size, its shape, its stripes. Summed under such a tube, a small
red apple reads as the table's "large tan pedestal" (on design world 1, 21 % of objects' colours read
right from their true masks widened by one cell, against 86 % by the contrast with the ring around
the tube; ``psg4d experiment colour_reading``, BENCHMARKS.md).

With ``model.attribute_form: geometry`` the head carries a :class:`~psg4d.model.form_geometry.FormReader`
and the size and shape words are measured from the tube's depth instead (``measured`` in
:func:`read_attributes`): the encoder's map was trained to tell categories apart, and under a novel
object it reads the nearest training category's form.

The chained predictor (:mod:`psg4d.infer.chain`) uses it for the **unknown object** outcome: a tube
whose read description is none training connected to a category is an object outside the training
vocabulary, and is named from that description by the LLM's language knowledge.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from psg4d.data.synth.describe import compose_description, description_fields
from psg4d.model.form_geometry import FormReader

IGNORE = -100


#: fields read from the frame's colours alone; the others (size, shape, pattern) from the scene
#: encoder's map alone, so neither side can learn that red things are cylinders
COLOUR_FIELDS = ("colour", "pattern colour")
#: cells around a tube (in each frame) whose readings the tube's are contrasted with
RING_CELLS = 1
#: the share of a value under the tube that still counts where no value stands out from the ring
#: (an object the colour of what is around it reads as the colour it holds most of)
CONTRAST_FLOOR = 0.01
#: how a field is read under a tube: against the ring around it, or its log-probabilities summed
READINGS = ("contrast", "sum")


class AttributeHead(nn.Module):
    """Per-cell logits of every attribute field, each field from the evidence that bears on it:
    the colour fields from the frame's colours in the cell (mean, min and max of ``rgb [N, 3, H, W]``
    over the cell's pixels), the form fields from the scene encoder's ``dense [N, D, h, w]``; two
    small 1x1 networks. A field cannot use another field's cue, so a combination training never
    showed (a red sphere when red came only on cylinders) reads as itself.

    ``form`` (optional): a :class:`~psg4d.model.form_geometry.FormReader` that reads the size and shape
    words from a tube's depth instead (``model.attribute_form: geometry``); it trains beside the head."""

    def __init__(self, *, dim: int, values: Mapping[str, Sequence[str]], hidden: int = 64,
                 form: FormReader | None = None):
        super().__init__()
        self.form = form
        self.fields = list(values)
        self.values = {f: list(v) for f, v in values.items()}
        self.colour_fields = [f for f in self.fields if f in COLOUR_FIELDS]
        self.form_fields = [f for f in self.fields if f not in COLOUR_FIELDS]
        self.colour_net = _net(9, hidden, sum(len(self.values[f]) for f in self.colour_fields))
        self.form_net = _net(dim, hidden, sum(len(self.values[f]) for f in self.form_fields))

    def forward(self, dense: torch.Tensor, rgb: torch.Tensor) -> list[torch.Tensor]:
        """-> per field (in :attr:`fields` order), logits ``[N, K_field, h, w]``."""
        size = dense.shape[-2:]
        rgb = rgb.to(dense.dtype)
        stats = torch.cat([F.adaptive_avg_pool2d(rgb, size), -F.adaptive_max_pool2d(-rgb, size),
                           F.adaptive_max_pool2d(rgb, size)], dim=1)  # [N, 9, h, w]
        out = dict(zip(self.colour_fields, self.colour_net(stats).split(
            [len(self.values[f]) for f in self.colour_fields], dim=1)))
        out.update(zip(self.form_fields, self.form_net(dense).split(
            [len(self.values[f]) for f in self.form_fields], dim=1)))
        return [out[f] for f in self.fields]


def _net(inp: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(inp, hidden, 1), nn.GELU(), nn.Conv2d(hidden, out, 1))


def attribute_table(values: Mapping[str, Sequence[str]], object_vocab: Sequence[str],
                    descriptions: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """``[V_obj + 1, F]`` value index of each field for each category (its first description that
    parses; :data:`IGNORE` for a category without one, e.g. a hand, and for the last row, unlabelled)."""
    table = torch.full((len(object_vocab) + 1, len(values)), IGNORE, dtype=torch.long)
    for c, name in enumerate(object_vocab):
        fields = next((f for d in descriptions.get(name, ()) if (f := description_fields(d)) is not None), None)
        if fields is not None:
            table[c] = torch.tensor([list(values[f]).index(fields[f]) for f in values])
    return table


def attribute_loss(logits: Sequence[torch.Tensor], semantic: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of each field's ``logits [N, K, h, w]`` against the fields of the categories
    ``semantic [N, S, S]`` (category index per pixel) shows in each cell, as area fractions.

    Categories are weighted by the inverse square root of their area in the batch (the table would
    drown a lime), and categories without fields carry no weight; the mean over fields."""
    h, w = logits[0].shape[-2:]
    n_cls = table.shape[0]
    onehot = F.one_hot(semantic.to(table.device), n_cls).permute(0, 3, 1, 2).float()  # [N, C, S, S]
    soft = F.adaptive_avg_pool2d(onehot, (h, w))  # [N, C, h, w]
    counts = soft.sum(dim=(0, 2, 3))  # [C]
    known = (table >= 0).all(dim=1).float()  # [C]
    weight = known * (counts.sum() / (counts + 1.0)).sqrt()  # [C]
    cat = soft * weight[None, :, None, None]  # [N, C, h, w]
    total = logits[0].new_zeros(())
    for f, lg in enumerate(logits):
        onehot_f = F.one_hot(table[:, f].clamp(min=0), lg.shape[1]).float() * known[:, None]  # [C, K]
        target = torch.einsum("nchw,ck->nkhw", cat, onehot_f)  # [N, K, h, w]
        mass = target.sum(dim=1)  # [N, h, w]
        if float(mass.sum()) <= 0:
            return sum(x.sum() for x in logits) * 0  # nothing with fields here: an exact zero, head kept in the graph
        ce = -(target * torch.log_softmax(lg.float(), dim=1)).sum(dim=1)  # [N, h, w], weighted by mass
        total = total + ce.sum() / mass.sum()
    return total / len(logits)


@torch.inference_mode()
def read_attributes(head: AttributeHead, dense: torch.Tensor, rgb: torch.Tensor, masks: torch.Tensor,
                    table: torch.Tensor | None = None, *, reading: str = "contrast",
                    measured: Mapping[str, torch.Tensor] | None = None,
                    combine: str = "replace") -> list[tuple[str, float] | None]:
    """``(description, margin)`` of each tube ``masks [N, T, h', w']`` (bool) of one clip
    (``dense [T, D, h, w]``, ``rgb [T, 3, H, W]``); None for an empty tube.

    The description is each field's most likely value under the tube, all frames together: against
    the ring around the tube (:func:`contrast_scores`), or with ``reading="sum"`` the log-probabilities
    summed under the tube (the reading before, which ``psg4d experiment colour_reading`` compares).
    The margin says how much better that reading explains the tube than the best *known* one: the
    read fields' log-probabilities per cell (as read: against the ring, or summed) minus those of the
    fields of the best row of ``table`` (:func:`attribute_table`; rows with a field unknown are not descriptions). It is 0
    when the reading is a known description, and large when no known one comes close: an object
    outside the training vocabulary. Without ``table`` every margin is 0.

    ``measured``: ``{field: [N, K_field]}`` log-probabilities of some fields read otherwise (the size and
    shape of :meth:`~psg4d.model.form_geometry.FormReader.field_scores`), which replace the head's reading
    of those fields (``combine="replace"``) or are added to it (``"add"``: both readings must agree); per
    cell of the tube, so they weigh as much as a field read here."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if combine not in ("replace", "add"):
        raise ValueError(f"combine must be 'replace' or 'add', got {combine!r}")
    if masks.shape[0] == 0:
        return []
    logits = head(dense, rgb)  # per field [T, K, h, w]
    h, w = dense.shape[-2:]
    weight = F.adaptive_avg_pool2d(masks.float().flatten(0, 1)[:, None], (h, w)).view(masks.shape[0], -1, h, w)
    mass = weight.sum(dim=(1, 2, 3))  # [N]
    scores = []  # per field [N, K]: log-probability of each value, summed over the tube's cells
    for f, lg in zip(head.fields, logits):
        by_measure = None if measured is None or f not in measured else measured[f].to(mass).clamp(min=-30.0) * mass[:, None]
        if by_measure is not None and combine == "replace":
            scores.append(by_measure)
            continue
        logp = torch.log_softmax(lg.float(), dim=1)  # [T, K, h, w]
        if reading == "contrast":
            score = contrast_scores(logp.exp(), weight.to(logp)) * mass[:, None]
        else:
            score = torch.einsum("nthw,tkhw->nk", weight.to(logp), logp)
        scores.append(score if by_measure is None else score + by_measure)
    best = sum(sc.max(dim=1).values for sc in scores)  # [N]
    margin = torch.zeros_like(best)
    if table is not None:
        rows = table[(table >= 0).all(dim=1)].to(best.device)  # [C, F] the known descriptions' fields
        if rows.shape[0]:
            known = sum(sc[:, rows[:, f]] for f, sc in enumerate(scores))  # [N, C]
            margin = (best - known.max(dim=1).values) / mass.clamp(min=1e-6)
    out: list[tuple[str, float] | None] = []
    for i in range(masks.shape[0]):
        if float(mass[i]) <= 0:
            out.append(None)
            continue
        fields = {f: head.values[f][int(sc[i].argmax())] for f, sc in zip(head.fields, scores)}
        out.append((compose_description(fields), round(float(margin[i]), 4)))
    return out


def contrast_scores(probs: torch.Tensor, weight: torch.Tensor, ring: int = RING_CELLS,
                    floor: float = CONTRAST_FLOOR) -> torch.Tensor:
    """Log-probability per cell of each value ``k`` of one field being the tube's -> ``[N, K]``, from
    the per-cell probabilities ``probs [T, K, h, w]`` and the tubes' cell weights ``weight [N, T, h, w]``
    (the share of each cell under the mask).

    ``inside_k`` is the mean probability of ``k`` under the tube (weighted, all frames), ``around_k``
    the mean over the ring: the cells within ``ring`` cells of the tube in the same frame and not
    under it (none where the tube fills its frames: then ``around`` is 0). The reading is
    ``q_k ∝ max(inside_k - around_k, 0) + floor * inside_k``: the value the tube holds more of than
    its surroundings, and where none stands out (an object of its surroundings' colour) the one it
    holds most of."""
    n, t, h, w = weight.shape
    under = weight > 0
    near = F.max_pool2d(under.float().flatten(0, 1)[:, None], 2 * ring + 1, stride=1, padding=ring)
    around = (near.view(n, t, h, w) > 0) & ~under  # [N, T, h, w]
    inside = torch.einsum("nthw,tkhw->nk", weight, probs) / weight.sum(dim=(1, 2, 3)).clamp(min=1e-6)[:, None]
    ring_mass = around.sum(dim=(1, 2, 3)).clamp(min=1).to(probs)  # [N]
    outside = torch.einsum("nthw,tkhw->nk", around.to(probs), probs) / ring_mass[:, None]
    q = (inside - outside).clamp(min=0) + floor * inside  # [N, K]
    return torch.log(q / q.sum(dim=1, keepdim=True).clamp(min=1e-12)).clamp(min=-30.0)


def read_descriptions(head: AttributeHead, dense: torch.Tensor, rgb: torch.Tensor,
                      masks: torch.Tensor) -> list[str | None]:
    """The descriptions of :func:`read_attributes` (None for an empty tube)."""
    return [None if r is None else r[0] for r in read_attributes(head, dense, rgb, masks)]
