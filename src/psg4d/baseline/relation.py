"""The relation model over tubes (PSG4DFormer's relation stage).

Each tube becomes one token per frame (its segment embedding, box/depth geometry, class
probabilities, temporal position and a validity flag). A spatial transformer mixes the tubes of
each frame; a pair-proposal head scores every ordered pair (subject, object); the selected pairs
get per-frame pair features that a temporal transformer runs over, and two heads read out a
video-level predicate score and a per-frame span score for every predicate.

Training: ``pairs = training_pairs(targets, pair_logits, max_pairs, rng)`` (gold pairs first,
then hard negatives), ``outputs = model(..., pairs=pairs)``, ``model.loss(outputs, targets)``.
Inference: :meth:`RelationModel.predict` ranks (subject, object, predicate) triplets with spans.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psg4d.baseline.config import RelationConfig
from psg4d.baseline.targets import RelationTargets
from psg4d.baseline.types import GEOMETRY_DIM, TrackedTubes
from psg4d.data.schema import Span, merge_spans, spans_from_mask
from psg4d.errors import ConfigError

log = logging.getLogger(__name__)

PAIR_GEOMETRY_DIM = 7  # centre offset x, y; log width, height ratio; box IoU; depth difference; both valid
DIAGONAL_LOGIT = -1e4  # pair_logits[i, i]: finite so that sums and sorts stay NaN-free
PAIR_POS_WEIGHT_MAX = 50.0  # cap of the pair loss's positive weight (see RelationModel.loss)
Triplet = tuple[int, int, str, float, list[Span]]


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def _encoder(config: RelationConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.hidden, config.heads, dim_feedforward=2 * config.hidden,
                                       dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True)
    # nested tensors only pay off on long padded batches; disabling them also silences the
    # norm_first warning and keeps train and eval on the same code path
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(config.hidden), enable_nested_tensor=False)


def _safe_padding(pad: Tensor) -> Tensor:
    """``[B, S]`` key padding mask with fully padded rows unmasked: a row with no key at all
    would softmax over nothing (NaN); its outputs are ignored downstream anyway."""
    return pad & ~pad.all(dim=1, keepdim=True)


def _masked_pool(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and max of ``x`` ``[B, T, H]`` over frames where ``mask`` ``[B, T]``; zeros for empty rows."""
    m = mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
    mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B, H]
    mx = x.masked_fill(~mask.unsqueeze(-1), -1e4).max(dim=1).values if x.shape[1] else torch.zeros_like(mean)
    mx = torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))  # [B, H]
    return mean, mx


def pair_geometry(geometry: Tensor, valid: Tensor, pairs: Tensor) -> Tensor:
    """``[P, T, PAIR_GEOMETRY_DIM]`` relative geometry of each pair per frame (zeros unless both valid).

    ``geometry`` ``[N, T, G]`` (x0, y0, x1, y1, area, depth; see ``TrackedTubes``), ``valid``
    ``[N, T]``, ``pairs`` ``[P, 2]``.
    """
    gs, go = geometry[pairs[:, 0]], geometry[pairs[:, 1]]  # [P, T, G]
    both = valid[pairs[:, 0]] & valid[pairs[:, 1]]  # [P, T]
    # clamped: zeros (invalid frames) and any malformed box must not reach the log below
    ws, hs = (gs[..., 2] - gs[..., 0]).clamp(min=0), (gs[..., 3] - gs[..., 1]).clamp(min=0)
    wo, ho = (go[..., 2] - go[..., 0]).clamp(min=0), (go[..., 3] - go[..., 1]).clamp(min=0)
    dx = (go[..., 0] + go[..., 2] - gs[..., 0] - gs[..., 2]) / 2
    dy = (go[..., 1] + go[..., 3] - gs[..., 1] - gs[..., 3]) / 2
    eps = 1e-2  # a box is at least a pixel; this keeps the log ratios bounded on tiny boxes
    lw = torch.log((wo + eps) / (ws + eps))
    lh = torch.log((ho + eps) / (hs + eps))
    iw = (torch.minimum(gs[..., 2], go[..., 2]) - torch.maximum(gs[..., 0], go[..., 0])).clamp(min=0)
    ih = (torch.minimum(gs[..., 3], go[..., 3]) - torch.maximum(gs[..., 1], go[..., 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (ws * hs + wo * ho - inter).clamp(min=1e-6)
    has_depth = (gs[..., 5] > 0) & (go[..., 5] > 0)  # depth 0 means "no depth", not "at the camera"
    dd = torch.where(has_depth, go[..., 5] - gs[..., 5], torch.zeros_like(dx))
    out = torch.stack([dx, dy, lw, lh, iou, dd, torch.ones_like(dx)], dim=-1)  # [P, T, 7]
    return out * both.unsqueeze(-1).to(out.dtype)


class RelationModel(nn.Module):
    """Tubes -> pair logits, predicate logits and per-frame span logits (see the module doc)."""

    def __init__(self, *, config: RelationConfig) -> None:
        super().__init__()
        if not config.predicate_names:
            raise ConfigError("relation model: predicate_names is empty (fill it from the training data)")
        if config.num_classes < 1:
            raise ConfigError(f"relation model: num_classes must be positive, got {config.num_classes}")
        if config.hidden % config.heads:
            raise ConfigError(f"relation model: hidden {config.hidden} is not divisible by heads {config.heads}")
        self.config = config
        h, r = config.hidden, len(config.predicate_names)
        self.feat_proj = nn.Linear(config.feat_dim, h)
        self.geom_proj = nn.Linear(GEOMETRY_DIM, h)
        self.class_proj = nn.Linear(config.num_classes, h)
        self.time_embed = nn.Embedding(config.max_frames, h)
        self.valid_embed = nn.Embedding(2, h)
        self.token_norm = nn.LayerNorm(h)
        self.spatial = _encoder(config, config.spatial_layers)
        # pair proposal: additive scorer w . GELU(s_i + o_j), richer than a plain bilinear form
        # and still only [N, N, H] memory
        self.subj_proj = _mlp(h, h, h, config.dropout)
        self.obj_proj = _mlp(h, h, h, config.dropout)
        self.pair_score = nn.Sequential(nn.GELU(), nn.Linear(h, 1))
        self.pair_feat = _mlp(2 * h + PAIR_GEOMETRY_DIM, h, h, config.dropout)
        if config.use_temporal:
            self.temporal: nn.Module = _encoder(config, config.temporal_layers)
        else:
            self.temporal = nn.Sequential(nn.LayerNorm(h), _mlp(h, 2 * h, h, config.dropout))
        self.span_head = nn.Linear(h, r)
        self.predicate_head = _mlp(2 * h, h, r, config.dropout)

    @property
    def num_predicates(self) -> int:
        return len(self.config.predicate_names)

    # ------------------------------------------------------------------ forward

    def _tube_tokens(self, feats: Tensor, geometry: Tensor, class_probs: Tensor, valid: Tensor) -> Tensor:
        """``[N, T, H]`` tokens after the spatial transformer."""
        n, t = valid.shape
        if t > self.config.max_frames:
            raise ValueError(f"{t} frames exceed the relation model's max_frames={self.config.max_frames}")
        pos = self.time_embed(torch.arange(t, device=feats.device))  # [T, H]
        x = (self.feat_proj(feats) + self.geom_proj(geometry) + self.class_proj(class_probs)[:, None]
             + pos[None] + self.valid_embed(valid.long()))  # [N, T, H]
        x = self.token_norm(x)
        # batch = frames, sequence = tubes: each frame's tubes attend to each other
        x = self.spatial(x.transpose(0, 1), src_key_padding_mask=_safe_padding(~valid.T))  # [T, N, H]
        return x.transpose(0, 1)  # [N, T, H]

    def _pair_logits(self, tokens: Tensor, valid: Tensor) -> Tensor:
        n = tokens.shape[0]
        pooled, _ = _masked_pool(tokens, valid)  # [N, H]
        s, o = self.subj_proj(pooled), self.obj_proj(pooled)  # [N, H]
        logits = self.pair_score(s[:, None] + o[None, :]).squeeze(-1)  # [N, N]
        eye = torch.eye(n, dtype=torch.bool, device=tokens.device)
        return logits.masked_fill(eye, DIAGONAL_LOGIT)

    def propose_pairs(self, pair_logits: Tensor, max_pairs: int) -> Tensor:
        """``[P, 2]`` the top ``max_pairs`` ordered pairs i != j by ``pair_logits`` ``[N, N]``.

        A stable sort breaks ties by row-major index, so proposals are deterministic.
        """
        n = pair_logits.shape[0]
        off = ~torch.eye(n, dtype=torch.bool, device=pair_logits.device)
        idx = torch.nonzero(off)  # [N(N-1), 2], row-major
        scores = pair_logits[off]  # [N(N-1)]
        order = torch.sort(scores, descending=True, stable=True).indices[:max_pairs]
        return idx[order]

    def forward(self, feats: Tensor, geometry: Tensor, class_probs: Tensor, valid: Tensor,
                pairs: Tensor | None = None) -> dict[str, Tensor]:
        """``feats`` ``[N, T, D]``, ``geometry`` ``[N, T, G]``, ``class_probs`` ``[N, C]``, ``valid``
        ``[N, T]`` bool, ``pairs`` ``[P, 2]`` (None: the top ``max_pairs`` proposals).

        Returns ``pair_logits`` ``[N, N]``, ``pairs`` ``[P, 2]``, ``predicate_logits`` ``[P, R]``,
        ``span_logits`` ``[P, T, R]``.
        """
        n, t = valid.shape
        dtype = self.feat_proj.weight.dtype
        device = self.feat_proj.weight.device
        feats, geometry = feats.to(device, dtype), geometry.to(device, dtype)
        class_probs, valid = class_probs.to(device, dtype), valid.to(device, torch.bool)
        r = self.num_predicates
        if n == 0:
            zero = self.span_head.bias.sum() * 0  # keeps loss.backward() valid on an empty video
            return {"pair_logits": zero.expand(0, 0).clone(), "pairs": torch.zeros(0, 2, dtype=torch.long, device=device),
                    "predicate_logits": zero.expand(0, r).clone(), "span_logits": zero.expand(0, t, r).clone()}
        tokens = self._tube_tokens(feats, geometry, class_probs, valid)  # [N, T, H]
        pair_logits = self._pair_logits(tokens, valid)  # [N, N]
        if pairs is None:
            pairs = self.propose_pairs(pair_logits.detach(), self.config.max_pairs)
        pairs = pairs.to(device, torch.long).reshape(-1, 2)  # [P, 2]
        both = valid[pairs[:, 0]] & valid[pairs[:, 1]]  # [P, T]
        z = torch.cat([tokens[pairs[:, 0]], tokens[pairs[:, 1]], pair_geometry(geometry, valid, pairs)], -1)
        z = self.pair_feat(z)  # [P, T, H]
        if self.config.use_temporal:
            if z.shape[0]:  # the encoder rejects an empty batch on some kernels
                z = self.temporal(z, src_key_padding_mask=_safe_padding(~both))
        else:
            z = z + self.temporal(z)
        span_logits = self.span_head(z)  # [P, T, R]
        mean, mx = _masked_pool(z, both)  # [P, H] each
        predicate_logits = self.predicate_head(torch.cat([mean, mx], -1))  # [P, R]
        return {"pair_logits": pair_logits, "pairs": pairs, "predicate_logits": predicate_logits,
                "span_logits": span_logits}

    # ------------------------------------------------------------------ loss

    def loss(self, outputs: dict[str, Tensor], targets: RelationTargets) -> dict[str, Tensor]:
        """``loss`` = ``loss_pair`` + ``loss_predicate`` + ``loss_span`` (each a scalar, 0 when empty)."""
        pair_logits, pairs = outputs["pair_logits"], outputs["pairs"]
        device = pair_logits.device
        n = pair_logits.shape[0]
        if targets.num_tubes != n:
            raise ValueError(f"targets are for {targets.num_tubes} tubes, outputs for {n}")
        zero = outputs["predicate_logits"].sum() * 0 + pair_logits.sum() * 0

        # pair: BCE over every ordered i != j. Positives are a handful among N(N-1) pairs, so an
        # unweighted loss learns "no relation" everywhere and the positives' scores barely move;
        # pos_weight = negatives / positives balances the two classes per video (the proposal
        # head only has to rank, so calibration does not matter). Capped: one positive among
        # thousands of pairs would otherwise give very noisy steps. Focal loss would also work,
        # but needs two more hyperparameters for the same effect here.
        off = ~torch.eye(n, dtype=torch.bool, device=device)
        gold_pair = torch.as_tensor(targets.pair, dtype=pair_logits.dtype, device=device)[off]  # [N(N-1)]
        if gold_pair.numel():
            pos = gold_pair.sum()
            pos_weight = ((gold_pair.numel() - pos) / pos.clamp(min=1)).clamp(1.0, PAIR_POS_WEIGHT_MAX)
            loss_pair = F.binary_cross_entropy_with_logits(pair_logits[off], gold_pair, pos_weight=pos_weight)
        else:
            loss_pair = zero

        # predicate: every forwarded pair; a pair that is not a gold pair has no predicate
        row = {(int(i), int(j)): q for q, (i, j) in enumerate(targets.pairs.tolist())}
        fwd = [row.get((int(i), int(j)), -1) for i, j in pairs.tolist()]
        p, r = outputs["predicate_logits"].shape
        labels = outputs["predicate_logits"].new_zeros(p, r)  # [P, R]
        sel = [k for k, q in enumerate(fwd) if q >= 0]
        gold_rows = [fwd[k] for k in sel]
        if sel:
            labels[sel] = torch.as_tensor(targets.predicates[gold_rows], dtype=labels.dtype, device=device)
        loss_predicate = (F.binary_cross_entropy_with_logits(outputs["predicate_logits"], labels)
                          if p else zero)

        # span: gold pairs only, the gold predicates' columns only, frames matched for both tubes
        if sel:
            logits = outputs["span_logits"][sel]  # [S, T, R]
            gold = torch.as_tensor(targets.spans[gold_rows], dtype=logits.dtype, device=device)  # [S, T, R]
            frame_ok = torch.as_tensor(targets.span_mask[gold_rows], device=device)  # [S, T]
            col_ok = torch.as_tensor(targets.predicates[gold_rows] > 0, device=device)  # [S, R]
            m = frame_ok[:, :, None] & col_ok[:, None, :]  # [S, T, R]
            loss_span = F.binary_cross_entropy_with_logits(logits[m], gold[m]) if m.any() else zero
        else:
            loss_span = zero
        return {"loss": loss_pair + loss_predicate + loss_span, "loss_pair": loss_pair,
                "loss_predicate": loss_predicate, "loss_span": loss_span}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, tubes: TrackedTubes) -> list[Triplet]:
        """Ranked ``(subject tube, object tube, predicate, score, inclusive spans)`` triplets.

        score = sigmoid(pair) * sigmoid(predicate); at most ``top_k``, best first (ties by pair
        proposal order, then predicate index); each (pair, predicate) once. Spans are runs of
        frames where both tubes are valid and sigmoid(span) > ``span_threshold``; if none, the run
        around the best frame above half the threshold; failing that, all frames where both are
        valid. Pairs never valid in the same frame cannot have a span and are left out.
        """
        cfg = self.config
        if len(tubes) < 2:
            return []
        was_training = self.training
        self.eval()
        try:
            out = self(torch.from_numpy(np.asarray(tubes.feats, np.float32)),
                       torch.from_numpy(np.asarray(tubes.geometry, np.float32)),
                       torch.from_numpy(np.asarray(tubes.class_probs, np.float32)),
                       torch.from_numpy(np.asarray(tubes.valid, bool)))
        finally:
            self.train(was_training)
        pairs = out["pairs"].cpu().numpy()  # [P, 2]
        if not len(pairs):
            return []
        pair_p = torch.sigmoid(out["pair_logits"][out["pairs"][:, 0], out["pairs"][:, 1]]).cpu().numpy()  # [P]
        score = pair_p[:, None] * torch.sigmoid(out["predicate_logits"]).cpu().numpy()  # [P, R]
        span_p = torch.sigmoid(out["span_logits"]).cpu().numpy()  # [P, T, R]
        valid = np.asarray(tubes.valid, bool)
        both = valid[pairs[:, 0]] & valid[pairs[:, 1]]  # [P, T]

        p_idx, r_idx = np.meshgrid(np.arange(len(pairs)), np.arange(score.shape[1]), indexing="ij")
        p_idx, r_idx, flat = p_idx.ravel(), r_idx.ravel(), score.ravel()
        order = np.lexsort((r_idx, p_idx, -flat))  # score desc, then pair order, then predicate index
        triplets: list[Triplet] = []
        for k in order:
            if len(triplets) >= cfg.top_k:
                break
            p, r = int(p_idx[k]), int(r_idx[k])
            if not both[p].any():
                continue
            spans = _spans(span_p[p, :, r], both[p], cfg.span_threshold)
            triplets.append((int(pairs[p, 0]), int(pairs[p, 1]), cfg.predicate_names[r], float(flat[k]), spans))
        return triplets


def _spans(prob: np.ndarray, both: np.ndarray, threshold: float) -> list[Span]:
    """Inclusive spans of one (pair, predicate) from per-frame probabilities ``[T]`` (see ``predict``)."""
    spans = spans_from_mask((prob > threshold) & both)
    if spans:
        return merge_spans(spans)
    weak = (prob > 0.5 * threshold) & both
    if weak.any():
        best = int(np.argmax(np.where(weak, prob, -np.inf)))  # first best frame on ties
        return [next((a, b) for a, b in spans_from_mask(weak) if a <= best <= b)]
    return spans_from_mask(both)


def training_pairs(targets: RelationTargets, pair_logits: Tensor | None, max_pairs: int,
                   rng: np.random.Generator) -> Tensor:
    """``[P, 2]`` pairs to forward in training: every gold pair first (even beyond ``max_pairs``:
    they are few and the predicate and span heads learn only from them), then negatives i != j up
    to ``max_pairs`` in all — the highest scored by ``pair_logits`` ``[N, N]`` (hard negatives) or,
    without logits, a random draw from ``rng``."""
    n = targets.num_tubes
    positives = np.asarray(targets.pairs, np.int64).reshape(-1, 2)
    is_neg = (np.asarray(targets.pair) <= 0) & ~np.eye(n, dtype=bool)  # [N, N]
    neg = np.argwhere(is_neg)  # [M, 2] row-major
    room = max(0, max_pairs - len(positives))
    if room and len(neg):
        if pair_logits is not None:
            scores = pair_logits.detach().float().cpu().numpy()[neg[:, 0], neg[:, 1]]
            neg = neg[np.argsort(-scores, kind="stable")]
        else:
            neg = neg[rng.permutation(len(neg))]
        chosen = neg[:room]
    else:
        chosen = np.zeros((0, 2), np.int64)
    return torch.from_numpy(np.concatenate([positives, chosen]).astype(np.int64))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
