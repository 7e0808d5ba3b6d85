"""The pipeline's per-frame panoptic segmenter: Mask2Former-style queries over RGB-D features.

* **Backbones.** Two small conv nets, one on RGB and one on inverse depth (``1/d``; missing,
  non-positive or non-finite depth reads 0, "unknown"), each with three stages at strides 2, 4, 8.
* **Fusion.** After every stage an SA-Gate-style gate (:class:`GatedFusion`): channel gates from
  both modalities' pooled features decide how much of each modality is added to the other; a
  spatial gate mixes the two recalibrated maps into the fused feature that the RGB branch carries
  on (the depth branch carries on with its own recalibrated map). ``use_depth=False`` drops the
  depth branch and the gates (the "without depth" ablation).
* **Pixel decoder.** FPN top-down over the fused stage outputs: three ``hidden``-wide maps for
  attention (strides 8, 4, 2) and a mask-feature map at full resolution. Objects can be a few
  pixels wide, so the mask features also get a full-resolution convolution of the input itself.
* **Transformer decoder.** Learned queries; each layer is masked cross-attention (to where the
  previous prediction's mask is above 0.5) -> self-attention -> FFN, cycling the scales coarse to
  fine. Heads give class logits (last class = "no object") and mask logits (query embedding dot
  mask features).

:meth:`QuerySegmenter.detect` turns outputs into non-overlapping :class:`FrameDetections`
(Mask2Former's panoptic inference); :func:`frame_targets` gives a gold frame's training targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psg4d.baseline.config import SegmenterConfig
from psg4d.baseline.types import FrameDetections
from psg4d.data.schema import SceneGraph4D, Video4D

__all__ = ["GatedFusion", "QuerySegmenter", "frame_targets", "inverse_depth"]

_MAX_INV_DEPTH = 20.0  # 1/d capped (d < 5 cm): a stray near-zero reading must not dominate a feature map
_RGB_MEAN, _RGB_STD = 0.5, 0.25  # rough centring of [0, 1] pixels; the GroupNorms do the rest


def inverse_depth(depth: Tensor) -> Tensor:
    """``1/d`` of metric depth (any shape); invalid (<= 0, NaN, inf) -> 0, capped at 20 per metre."""
    ok = torch.isfinite(depth) & (depth > 0)
    inv = 1.0 / torch.where(ok, depth, torch.ones_like(depth))
    return torch.where(ok, inv.clamp(max=_MAX_INV_DEPTH), torch.zeros_like(depth))


def _conv(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """conv -> GroupNorm -> GELU (GroupNorm, not BatchNorm: batches are a few frames)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.GroupNorm(math.gcd(8, out_ch), out_ch), nn.GELU())


class _Stage(nn.Module):
    """A strided conv block then a residual one: halves the resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = _conv(in_ch, out_ch, stride=2)
        self.refine = _conv(out_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.refine(x)


class GatedFusion(nn.Module):
    """SA-Gate-style cross-modal fusion of same-shaped RGB and depth maps ``[B, C, H, W]``.

    Channel gates (from both modalities' globally pooled features) weight how much of each
    modality is exchanged into the other, so a channel where depth is uninformative (flat,
    missing) contributes little; a per-pixel softmax gate over the two recalibrated maps makes the
    fused map. Returns ``(fused, depth_recalibrated)``.
    """

    def __init__(self, *, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hid = max(channels // reduction, 8)
        self.channel = nn.Sequential(nn.Linear(4 * channels, hid), nn.GELU(), nn.Linear(hid, 2 * channels))
        self.spatial = nn.Conv2d(2 * channels, 2, kernel_size=3, padding=1)

    def forward(self, rgb: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        desc = torch.cat([rgb.mean((2, 3)), depth.mean((2, 3)), rgb.amax((2, 3)), depth.amax((2, 3))], 1)  # [B, 4C]
        g_rgb, g_depth = self.channel(desc).sigmoid()[..., None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        rgb_rec = rgb + g_depth * depth  # depth evidence filtered into the RGB stream
        depth_rec = depth + g_rgb * rgb
        w = self.spatial(torch.cat([rgb_rec, depth_rec], 1)).softmax(dim=1)  # [B, 2, H, W]
        return w[:, :1] * rgb_rec + w[:, 1:] * depth_rec, depth_rec


class _PixelDecoder(nn.Module):
    """FPN top-down: attention maps at strides 8, 4, 2 and mask features at stride 1."""

    def __init__(self, *, widths: Sequence[int], hidden: int, in_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, hidden, 1) for w in widths)
        self.smooth = nn.ModuleList(_conv(hidden, hidden) for _ in widths)
        self.full_res = _conv(in_channels, hidden)  # edges of few-pixel objects that stride 2 blurs
        self.mask_proj = nn.Conv2d(hidden, hidden, 1)

    def forward(self, feats: list[Tensor], image: Tensor) -> tuple[list[Tensor], Tensor]:
        """``feats``: stage outputs at strides 2, 4, 8; ``image`` ``[B, in, S, S]``. Returns the maps
        coarse to fine (``[B, hidden, S/8, S/8]``, ``S/4``, ``S/2``) and mask features ``[B, hidden, S, S]``."""
        out, top = [], None
        for i in reversed(range(len(feats))):
            x = self.lateral[i](feats[i])
            if top is not None:
                x = x + F.interpolate(top, size=x.shape[-2:], mode="bilinear", align_corners=False)
            top = self.smooth[i](x)
            out.append(top)
        up = F.interpolate(top, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return out, self.mask_proj(F.gelu(up + self.full_res(image)))


def _sine_position(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """``[h*w, dim]`` 2-D sine encoding of cell centres in normalised [0, 1] coordinates, so that a
    place has (nearly) the same code at every scale. Frequencies run from half a cycle to 16 cycles
    across the frame (a fixed set: what tiny feature maps can resolve)."""
    n = max(dim // 4, 1)
    freqs = math.pi * 2.0 ** torch.linspace(0, 5, n, device=device)  # [n]
    ys = (torch.arange(h, device=device) + 0.5) / h
    xs = (torch.arange(w, device=device) + 0.5) / w
    ey = torch.cat([(ys[:, None] * freqs).sin(), (ys[:, None] * freqs).cos()], -1)  # [h, 2n]
    ex = torch.cat([(xs[:, None] * freqs).sin(), (xs[:, None] * freqs).cos()], -1)  # [w, 2n]
    pos = torch.cat([ey[:, None].expand(h, w, 2 * n), ex[None].expand(h, w, 2 * n)], -1).reshape(h * w, 4 * n)
    return F.pad(pos, (0, dim - 4 * n))  # zero channels when dim is not a multiple of 4


class _DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, post-norm (as Mask2Former's decoder)."""

    def __init__(self, *, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, q: Tensor, q_pos: Tensor, mem: Tensor, mem_pos: Tensor, blocked: Tensor) -> Tensor:
        """``q``, ``q_pos`` ``[B, Q, D]``; ``mem`` ``[B, L, D]``; ``mem_pos`` ``[1, L, D]``;
        ``blocked`` ``[B*heads, Q, L]`` bool (True: may not attend)."""
        x = self.cross(q + q_pos, mem + mem_pos, mem, attn_mask=blocked, need_weights=False)[0]
        q = self.norms[0](q + x)
        k = q + q_pos
        q = self.norms[1](q + self.self_attn(k, k, q, need_weights=False)[0])
        return self.norms[2](q + self.ffn(q))


class QuerySegmenter(nn.Module):
    """Mask2Former-style panoptic segmenter on RGB (+ depth). See the module docstring."""

    def __init__(self, *, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = len(config.class_names)
        if len(config.widths) != 3:
            raise ValueError(f"widths must name three stages (strides 2, 4, 8), got {config.widths}")
        d, widths = config.hidden, list(config.widths)
        self.rgb_stages = nn.ModuleList(_Stage(i, o) for i, o in zip([3, *widths[:-1]], widths))
        if config.use_depth:
            self.depth_stages = nn.ModuleList(_Stage(i, o) for i, o in zip([1, *widths[:-1]], widths))
            self.fusions = nn.ModuleList(GatedFusion(channels=w) for w in widths)
        self.pixel_decoder = _PixelDecoder(widths=widths, hidden=d, in_channels=4 if config.use_depth else 3)
        self.level_embed = nn.Embedding(len(widths), d)
        self.query_feat = nn.Embedding(config.num_queries, d)
        self.query_pos = nn.Embedding(config.num_queries, d)
        self.layers = nn.ModuleList(_DecoderLayer(dim=d, heads=config.heads, ffn=config.ffn)
                                    for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.class_head = nn.Linear(d, self.num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    # ------------------------------------------------------------------ forward
    def forward(self, rgb: Tensor, depth: Tensor | None = None) -> dict:
        """``rgb`` ``[B, 3, S, S]`` in [0, 1]; ``depth`` ``[B, 1, S, S]`` metres or None (unknown).

        Returns ``class_logits`` ``[B, Q, C+1]``, ``mask_logits`` ``[B, Q, S, S]``, ``embeds``
        ``[B, Q, hidden]`` (the normalised final query states) and ``aux``: the predictions
        before each decoder layer (``decoder_layers`` dicts of class and mask logits).
        """
        x = (rgb - _RGB_MEAN) / _RGB_STD  # [B, 3, S, S]
        image = x
        feats = []
        if self.config.use_depth:
            dep = torch.zeros_like(rgb[:, :1]) if depth is None else inverse_depth(depth.to(rgb.dtype))  # [B, 1, S, S]
            image = torch.cat([x, dep], 1)
            for stage, dstage, fuse in zip(self.rgb_stages, self.depth_stages, self.fusions):
                x, dep = fuse(stage(x), dstage(dep))
                feats.append(x)
        else:
            for stage in self.rgb_stages:
                x = stage(x)
                feats.append(x)
        levels, mask_feat = self.pixel_decoder(feats, image)  # coarse to fine; [B, D, S, S]

        b, heads = rgb.shape[0], self.config.heads
        mems, poss = [], []
        for i, f in enumerate(levels):
            mems.append(f.flatten(2).transpose(1, 2) + self.level_embed.weight[i])  # [B, h*w, D]
            poss.append(_sine_position(*f.shape[-2:], f.shape[1], f.device)[None].to(f.dtype))  # [1, h*w, D]
        q = self.query_feat.weight[None].expand(b, -1, -1)  # [B, Q, D]
        q_pos = self.query_pos.weight[None].expand(b, -1, -1)
        preds = []
        cls, masks, blocked = self._predict(q, mask_feat, levels[0].shape[-2:])
        preds.append({"class_logits": cls, "mask_logits": masks})
        for i, layer in enumerate(self.layers):
            lvl = i % len(levels)
            q = layer(q, q_pos, mems[lvl], poss[lvl], blocked.repeat_interleave(heads, dim=0))
            cls, masks, blocked = self._predict(q, mask_feat, levels[(i + 1) % len(levels)].shape[-2:])
            preds.append({"class_logits": cls, "mask_logits": masks})
        return {**preds[-1], "embeds": self.decoder_norm(q), "aux": preds[:-1]}

    def _predict(self, q: Tensor, mask_feat: Tensor, attn_size: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        """Class logits ``[B, Q, C+1]``, mask logits ``[B, Q, S, S]`` and the next layer's attention
        mask ``[B, Q, h*w]`` (True: blocked) at ``attn_size``."""
        x = self.decoder_norm(q)
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(x), mask_feat)  # [B, Q, S, S]
        with torch.no_grad():
            small = F.interpolate(masks.detach(), size=attn_size, mode="bilinear", align_corners=False)
            blocked = (small.sigmoid() < 0.5).flatten(2)  # [B, Q, h*w]
            # a query with an empty mask would attend to nothing (NaN): let it look everywhere
            blocked &= ~blocked.all(-1, keepdim=True)
        return self.class_head(x), masks, blocked

    # ------------------------------------------------------------------ input
    def preprocess(self, video: Video4D, frames: Sequence[int] | None = None) -> tuple[Tensor, Tensor | None]:
        """``rgb`` ``[T, 3, S, S]`` float in [0, 1] (bilinear, antialiased when shrinking) and ``depth``
        ``[T, 1, S, S]`` metres (nearest; non-finite -> 0), or None when the video has no depth; on the
        model's device."""
        idx = np.arange(video.num_frames) if frames is None else np.asarray(list(frames), dtype=np.int64)
        size = (self.config.image_size, self.config.image_size)
        device = next(self.parameters()).device
        rgb = torch.from_numpy(np.ascontiguousarray(video.rgb[idx])).to(device)
        rgb = rgb.permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
        if tuple(rgb.shape[-2:]) != size:
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False,
                                antialias=bool(rgb.shape[-2] > size[0] or rgb.shape[-1] > size[1])).clamp(0.0, 1.0)
        if video.depth is None:
            return rgb, None
        dep = np.nan_to_num(np.asarray(video.depth[idx], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        dep = torch.from_numpy(dep).to(device)[:, None]  # [T, 1, H, W]
        if tuple(dep.shape[-2:]) != size:
            # nearest-exact samples pixel centres, as the bilinear RGB resize does (plain "nearest" is off by half a pixel)
            dep = F.interpolate(dep, size=size, mode="nearest-exact")
        return rgb, dep

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, outputs: dict, *, out_size: tuple[int, int] | None = None) -> list[FrameDetections]:
        """Mask2Former's panoptic inference, one :class:`FrameDetections` per frame (best first).

        A query is kept when its best real-class probability exceeds ``score_threshold``. Each pixel
        goes to the kept query maximising ``score * mask prob`` among those whose mask prob there
        exceeds ``mask_threshold``. A query's segment is dropped when what it won is under
        ``min_area`` pixels (scaled to ``out_size``) or under ``overlap_threshold`` of its own
        thresholded mask; segments of one stuff class are merged (the first, best-scored, query's
        score, probabilities and embedding stand for the merged segment).
        """
        c = self.config
        cls_all, masks_all, emb_all = outputs["class_logits"], outputs["mask_logits"], outputs["embeds"]
        s_h, s_w = masks_all.shape[-2:]
        h, w = out_size if out_size is not None else (s_h, s_w)
        min_area = c.min_area * (h * w) / (s_h * s_w)
        stuff = {i for i, name in enumerate(c.class_names) if name in set(c.stuff_names)}
        dets = []
        for b in range(cls_all.shape[0]):
            probs = cls_all[b].float().softmax(-1)[:, : self.num_classes]  # [Q, C]
            scores, labels = probs.max(-1)  # [Q]
            keep = torch.nonzero(scores > c.score_threshold).flatten()
            keep = keep[scores[keep].argsort(descending=True, stable=True)]  # best first
            if keep.numel() == 0:
                dets.append(FrameDetections.empty(h, w, self.num_classes, emb_all.shape[-1]))
                continue
            logits = masks_all[b, keep].float()  # [K, S, S]
            if (h, w) != (s_h, s_w):
                logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            prob = logits.sigmoid()  # [K, h, w]
            own = prob > c.mask_threshold  # [K, h, w]
            weighted = torch.where(own, scores[keep, None, None] * prob, torch.full_like(prob, -1.0))
            owner = weighted.argmax(0)  # [h, w]; the first (best-scored) query wins exact ties
            assigned = own.any(0)  # [h, w]
            seg_masks, rows, by_stuff = [], [], {}
            for k in range(keep.numel()):
                won = (owner == k) & assigned
                area, own_area = int(won.sum()), int(own[k].sum())
                if own_area == 0 or area < max(min_area, 1) or area < c.overlap_threshold * own_area:
                    continue
                label = int(labels[keep[k]])
                if label in stuff and label in by_stuff:
                    seg_masks[by_stuff[label]] |= won
                    continue
                if label in stuff:
                    by_stuff[label] = len(seg_masks)
                seg_masks.append(won)
                rows.append(int(keep[k]))
            if not rows:
                dets.append(FrameDetections.empty(h, w, self.num_classes, emb_all.shape[-1]))
                continue
            idx = torch.tensor(rows, device=probs.device)
            dets.append(FrameDetections(masks=torch.stack(seg_masks).cpu().numpy(),
                                        labels=labels[idx].cpu().numpy().astype(np.int64),
                                        scores=scores[idx].cpu().numpy().astype(np.float32),
                                        class_probs=probs[idx].cpu().numpy().astype(np.float32),
                                        embeds=emb_all[b, idx].float().cpu().numpy()))
        return dets


def frame_targets(graph: SceneGraph4D, t: int, class_index: dict[str, int], size: int) -> dict[str, Tensor]:
    """Frame ``t``'s gold segments as ``{"labels": [G] long, "masks": [G, size, size] bool}``: objects
    present at ``t`` whose (majority) category is in ``class_index``, nearest-resized (pixel
    centres, as :meth:`QuerySegmenter.preprocess` resizes depth); those left empty are dropped."""
    labels, masks = [], []
    for obj in graph.objects:
        if obj.tube is None or t >= obj.tube.num_frames or obj.tube.rles[t] is None:
            continue
        label = class_index.get(obj.majority_category())
        if label is None:
            continue
        labels.append(label)
        masks.append(obj.tube.frame(t))
    if not masks:
        return {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, size, size, dtype=torch.bool)}
    m = torch.from_numpy(np.stack(masks))  # [G, H, W] bool
    if tuple(m.shape[-2:]) != (size, size):
        m = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0] > 0.5
    keep = m.flatten(1).any(-1)  # [G]
    return {"labels": torch.tensor(labels, dtype=torch.long)[keep], "masks": m[keep]}
