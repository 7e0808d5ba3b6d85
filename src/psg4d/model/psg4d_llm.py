"""PSG4DModel: the 4D-LLM (scene encoder -> projector -> LLM -> [Obj] -> mask-tube decoder).

Training (teacher forcing), per sample::

    <bos> [Video]*N_vis  prompt  subj [Obj] pred obj [Obj] 0 3 ; ...  <eos>
          ^ visual tokens          ^ hidden state -> obj_proj -> TubeDecoder prompt

* The collator writes ONE ``[Video]`` placeholder; :meth:`PSG4DModel.forward`
  expands it to as many positions as the encoder produced tokens and scatters the
  projected visual tokens into ``inputs_embeds`` at the positions whose id is the
  placeholder id (LLaVA style), so any frame count up to ``max_frames`` works.
* Text loss: next-token cross-entropy on the scene-graph tokens and ``<eos>``
  only (bos, visual and prompt positions are labelled -100).
* Mask loss: the last-layer hidden state at every position whose id is the
  ``[Obj]`` id (looked up; never a fixed offset) is projected to a mask prompt;
  the decoder's tube for it is compared with the GT tube of the object that
  ``[Obj]`` occurrence refers to (``GrammarText.obj_ids``).

Frame timeline: a batch is resampled to ``T = min(max frames in batch,
max_frames)`` frames by nearest uniform indices; relation spans are remapped to
that timeline (a span that falls between sampled frames snaps to the nearest
one) and the model's span numbers always refer to it. ``frame_indices`` maps it
back to source frames.

Checkpoints (:meth:`save_pretrained`): ``config.json`` (``format: psg4d-model``
and the ``ModelConfig``), ``model.safetensors`` and ``tokenizer/``. When the LLM
is LoRA-wrapped, its frozen base weights are not stored (they are reloaded from
the LLM source), only the adapters and the new tokens' rows.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from psg4d.config import from_dict, to_dict
from psg4d.data.schema import Relation, Sample, SceneGraph4D, Video4D, merge_spans
from psg4d.errors import CheckpointError, ConfigError, DataError
from psg4d.model.config import ModelConfig
from psg4d.model.encoder import build_encoder
from psg4d.model.grammar import format_scene_graph
from psg4d.model.llm import RANDOM_INIT_SOURCES, build_llm, load_tokenizer
from psg4d.model.losses import mask_losses
from psg4d.model.mask_decoder import build_mask_decoder
from psg4d.model.projector import build_projector
from psg4d.model.tokens import OBJ_TOKEN, PROMPT_TEXT, TAG_PROMPT_TEXT, TAG_SEP, TRIPLET_SEP, special_token_ids
from psg4d.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "psg4d-model"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
# Parameter-name fragments of peft's trainable parts; everything else under a
# peft-wrapped LLM is the frozen base and is reloaded from the LLM source.
_ADAPTER_MARKERS = ("lora_", "trainable_tokens", "modules_to_save")


# --------------------------------------------------------------------------- frames


def resample_indices(num_frames: int, target: int) -> np.ndarray:
    """``target`` frame indices spread uniformly over ``[0, num_frames)`` (nearest)."""
    if num_frames == target:
        return np.arange(num_frames)
    return np.rint(np.linspace(0, num_frames - 1, target)).astype(np.int64)


def remap_spans(spans: Sequence[tuple[int, int]], idx: np.ndarray) -> list[tuple[int, int]]:
    """Source-frame spans -> spans over the resampled timeline ``idx`` (source index per new frame)."""
    out = []
    for a, b in spans:
        hit = np.nonzero((idx >= a) & (idx <= b))[0]
        if hit.size == 0:  # the span fell between two sampled frames
            j = int(np.argmin(np.abs(idx - (a + b) / 2)))
            out.append((j, j))
        else:
            out.extend((int(j), int(j)) for j in hit)
    return merge_spans(out)


def video_tensors(video: Video4D, idx: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frames ``idx`` of ``video`` -> rgb ``[T, 3, S, S]`` in [0, 1], depth ``[T, 1, S, S]`` metres or None."""
    rgb = torch.from_numpy(np.ascontiguousarray(video.rgb[idx])).permute(0, 3, 1, 2).float() / 255.0
    if rgb.shape[-2:] != (size, size):
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    depth = None
    if video.depth is not None:
        depth = torch.from_numpy(np.ascontiguousarray(video.depth[idx], dtype=np.float32)).unsqueeze(1)
        if depth.shape[-2:] != (size, size):
            # nearest: averaging would blend metric depths across object edges (and invalid zeros)
            depth = F.interpolate(depth, size=(size, size), mode="nearest")
    return rgb, depth


def tube_target(graph: SceneGraph4D, object_id: int, idx: np.ndarray, size: int) -> torch.Tensor | None:
    """GT tube of ``object_id`` on frames ``idx`` -> bool ``[T, S, S]`` (None if it has no tube)."""
    obj = graph.object_by_id()[object_id]
    if obj.tube is None:
        return None
    masks = np.stack([obj.tube.frame(int(t)) for t in idx])  # [T, H, W] bool
    m = torch.from_numpy(masks).float().unsqueeze(1)
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="area" if m.shape[-1] >= size else "nearest")
    return m[:, 0] >= 0.5


def semantic_target(graph: SceneGraph4D, idx: np.ndarray, size: int, vocab_index: dict[str, int]) -> torch.Tensor:
    """Category index per pixel on frames ``idx`` -> long ``[T, S, S]``; ``len(vocab_index)``
    where no object of the vocabulary is (unlabelled, or a category outside the vocabulary)."""
    none = len(vocab_index)
    out = torch.full((len(idx), size, size), none, dtype=torch.long)
    for obj in graph.objects:
        c = vocab_index.get(obj.category)
        if c is None or obj.tube is None:
            continue
        m = torch.from_numpy(np.stack([obj.tube.frame(int(t)) for t in idx])).float().unsqueeze(1)  # [T, 1, H, W]
        if m.shape[-2:] != (size, size):
            m = F.interpolate(m, size=(size, size), mode="nearest")
        out[m[:, 0] >= 0.5] = c
    return out


def sample_prompts(keep: torch.Tensor, obj_ids: Sequence[int] | None, k: int) -> torch.Tensor:
    """A random ``k`` of the valid ``[Obj]`` occurrences (``keep [N]`` bool), every distinct object
    before any second mention of one (torch RNG: resumable).

    An object is mentioned once per triplet, so a uniform draw mostly picks the table and the
    hand, which are in most triplets, and rarely the small objects whose masks are hard."""
    chosen = torch.nonzero(keep).flatten()
    chosen = chosen[torch.randperm(chosen.numel()).to(chosen.device)]
    if obj_ids is not None:
        seen: set[int] = set()
        first = []
        for i in chosen.tolist():
            first.append(obj_ids[i] not in seen)
            seen.add(obj_ids[i])
        # stable: first mentions (in random order) ahead of repeats
        order = torch.argsort(torch.tensor([0 if f else 1 for f in first]), stable=True)
        chosen = chosen[order.to(chosen.device)]
    out = torch.zeros_like(keep)
    out[chosen[:k]] = True
    return out


# --------------------------------------------------------------------------- outputs


@dataclass
class VideoContext:
    """An encoded video ready for decoding: the LLM prefix and the dense maps."""

    prefix_embeds: torch.Tensor  # [1, P, H_llm] bos + visual tokens + prompt
    dense: torch.Tensor  # [T, C, h, w] per-frame maps for the mask decoder
    frame_indices: np.ndarray  # [T] source frame of each model frame
    num_frames: int  # T, the model timeline
    tags: list[str] | None = None  # the tag words in the prompt (model.tag_words)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    obj_hidden: torch.Tensor  # [N_objtok, H_llm] last-layer hidden state at each [Obj]
    step_logprobs: list[float]  # log-probability of each generated token
    context: VideoContext


class PSG4DModel(nn.Module):
    """See the module docstring. Build with :meth:`from_config` or :meth:`from_pretrained`."""

    def __init__(
        self,
        *,
        config: ModelConfig,
        encoder: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        obj_proj: nn.Module,
        mask_decoder: nn.Module,
        tokenizer: Any,
        tag_head: nn.Module | None = None,
        seg_head: nn.Module | None = None,
        obj_cls_head: nn.Module | None = None,
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.obj_proj = obj_proj
        self.mask_decoder = mask_decoder
        self.tag_head = tag_head  # visual tokens -> object-category logits (auxiliary loss); optional
        self.seg_head = seg_head  # dense maps -> per-cell category logits (auxiliary loss); optional
        self.obj_cls_head = obj_cls_head  # [Obj] hidden state -> category logits (auxiliary loss); optional
        self.tokenizer = tokenizer
        self.ids = special_token_ids(tokenizer)
        rows = self.llm.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise CheckpointError(f"LLM has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens")
        self._prompt_ids = tokenizer.encode(" " + PROMPT_TEXT, add_special_tokens=False)
        self._tag_prompt_ids = tokenizer.encode(" " + TAG_PROMPT_TEXT, add_special_tokens=False)
        self._tag_sep_ids = tokenizer.encode(" " + TAG_SEP, add_special_tokens=False)
        cat_ids = [tokenizer.encode(" " + c, add_special_tokens=False) for c in config.object_vocab]
        width = max((len(c) for c in cat_ids), default=1)
        # [V_obj, W] word ids of each category name (-1 pads), for the tag tokens
        self.register_buffer(
            "_category_ids",
            torch.tensor([c + [-1] * (width - len(c)) for c in cat_ids] or [[-1]], dtype=torch.long),
            persistent=False,
        )
        # KV-cache argument/output name: ``cache`` in recent transformers, ``past_key_values`` before
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # ------------------------------------------------------------------ build
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "PSG4DModel":
        encoder = build_encoder(cfg.resolved_encoder())
        llm, tokenizer = build_llm(cfg.llm, vocab_words=cfg.vocab_words(), max_frames=cfg.max_frames)
        hidden = llm.get_input_embeddings().weight.shape[1]
        return cls(
            config=cfg,
            encoder=encoder,
            projector=build_projector(cfg.projector.name, cfg.encoder.dim, hidden),
            llm=llm,
            obj_proj=nn.Linear(hidden, cfg.mask_decoder.transformer_dim),
            mask_decoder=build_mask_decoder(cfg.mask_decoder),
            tokenizer=tokenizer,
            tag_head=nn.Linear(hidden, len(cfg.object_vocab)) if cfg.tag_loss_weight > 0 and cfg.object_vocab else None,
            # one class per category plus "unlabelled" (pixels no object covers)
            seg_head=nn.Conv2d(cfg.encoder.dim, len(cfg.object_vocab) + 1, 1)
            if cfg.seg_loss_weight > 0 and cfg.object_vocab else None,
            obj_cls_head=nn.Linear(hidden, len(cfg.object_vocab))
            if cfg.obj_cls_loss_weight > 0 and cfg.object_vocab else None,
        )

    @property
    def device(self) -> torch.device:
        return self.obj_proj.weight.device

    @property
    def hidden_size(self) -> int:
        return int(self.llm.get_input_embeddings().weight.shape[1])

    # ---------------------------------------------------------------- collate
    def prefix_ids(self, tags: Sequence[str] | None = None) -> list[int]:
        """``<bos>? [Video] (objects : t1 , t2 ...)? prompt`` ids (one placeholder; expanded in forward).

        ``tags`` (``model.tag_words``; None: without the tag words) are written in
        ``object_vocab`` order so their order carries no information of its own."""
        bos = [] if self.ids.bos is None else [self.ids.bos]
        tag_ids: list[int] = []
        if tags is not None:
            order = {c: i for i, c in enumerate(self.config.object_vocab)}
            tag_ids = list(self._tag_prompt_ids)
            for k, tag in enumerate(sorted(set(tags), key=lambda c: (order.get(c, len(order)), c))):
                tag_ids += (list(self._tag_sep_ids) if k else []) + self.text_ids(tag)
        return bos + [self.ids.video] + tag_ids + list(self._prompt_ids)

    def training_tags(self, categories: Sequence[str]) -> list[str]:
        """Ground-truth categories with ``tag_word_noise`` (torch RNG, so resumable): each dropped
        with that probability, and one absent vocabulary category added with it."""
        p = self.config.tag_word_noise
        vocab = set(self.config.object_vocab)
        present = [c for c in dict.fromkeys(categories) if c in vocab]
        if p <= 0:
            return present
        kept = [c for c in present if float(torch.rand(())) >= p]
        absent = [c for c in self.config.object_vocab if c not in present]
        if absent and float(torch.rand(())) < p:
            kept.append(absent[int(torch.randint(len(absent), ()))])
        return kept

    def segmentation_tags(self, dense: torch.Tensor) -> list[str]:
        """``dense [T, D, h, w]`` -> the categories that are the segmentation head's per-cell argmax
        over at least ``tag_min_area`` of the frame (mean over frames), in vocabulary order."""
        winner = self.seg_head(dense).argmax(1)  # [T, h, w]; the last class is "unlabelled"
        area = F.one_hot(winner, self.seg_head.out_channels).float().mean(dim=(0, 1, 2))  # [C]
        return [c for c, a in zip(self.config.object_vocab, area.tolist()) if a >= self.config.tag_min_area]

    def predicted_tags(self, tag_logits: torch.Tensor) -> list[str]:
        """``tag_logits [V_obj]`` -> the categories with probability >= ``tag_threshold``."""
        probs = torch.sigmoid(tag_logits.float())
        return [c for c, p in zip(self.config.object_vocab, probs.tolist()) if p >= self.config.tag_threshold]

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text, add_special_tokens=False) + [self.ids.eos]

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        """Samples -> batch (see the module docstring for the layout)."""
        if not samples:
            raise DataError(None, "cannot collate an empty list of samples")
        cfg = self.config
        for s in samples:
            s.video.validate(s.video.video_id or s.graph.video_id)
            if s.graph.num_frames != s.video.num_frames:
                raise DataError(
                    s.graph.video_id,
                    f"scene graph has {s.graph.num_frames} frames but the video has {s.video.num_frames}",
                    field="num_frames",
                )
        t = min(max(s.video.num_frames for s in samples), cfg.max_frames)
        use_depth = all(s.video.depth is not None for s in samples)
        if not use_depth and any(s.video.depth is not None for s in samples):
            log.debug("mixed RGB-D and RGB-only samples in one batch: using RGB only")
        predicates = cfg.predicate_vocab or None
        vocab_index = {c: i for i, c in enumerate(cfg.object_vocab)}
        tags = torch.zeros(len(samples), len(cfg.object_vocab))  # [B, V_obj] multi-hot categories present
        rgbs, depths, seqs, labels, targets, valid, obj_ids, frame_idx, semantic = [], [], [], [], [], [], [], [], []
        obj_cats = []
        for b, s in enumerate(samples):
            for o in s.graph.objects:
                if o.category in vocab_index:
                    tags[b, vocab_index[o.category]] = 1.0
            idx = resample_indices(s.video.num_frames, t)
            rgb, depth = video_tensors(s.video, idx, cfg.image_size)
            rgbs.append(rgb)
            depths.append(depth)
            graph = self._resampled_graph(s.graph, idx)
            gt = format_scene_graph(graph, predicates=predicates)
            tag_words = None
            if cfg.tag_words:
                tag_words = self.training_tags([o.category for o in s.graph.objects]) if self.training else [
                    o.category for o in s.graph.objects if o.category in vocab_index]
            prefix, target = self.prefix_ids(tag_words), self.target_ids(gt.text)
            n_obj = sum(1 for i in target if i == self.ids.obj)
            if n_obj != len(gt.obj_ids):
                raise DataError(
                    s.graph.video_id, f"tokenized text has {n_obj} {OBJ_TOKEN} tokens, expected {len(gt.obj_ids)}"
                )
            seqs.append(prefix + target)
            labels.append([-100] * len(prefix) + target)
            tubes: dict[int, torch.Tensor | None] = {}
            per_obj = []
            for oid in gt.obj_ids:
                if oid not in tubes:
                    tubes[oid] = tube_target(s.graph, oid, idx, cfg.image_size)
                per_obj.append(tubes[oid])
            empty = torch.zeros(t, cfg.image_size, cfg.image_size, dtype=torch.bool)
            targets.append(torch.stack([m if m is not None else empty for m in per_obj]) if per_obj
                           else torch.zeros(0, t, cfg.image_size, cfg.image_size, dtype=torch.bool))
            valid.append(torch.tensor([m is not None for m in per_obj], dtype=torch.bool))
            obj_ids.append(list(gt.obj_ids))
            cats = {o.object_id: o.category for o in s.graph.objects}
            obj_cats.append(torch.tensor([vocab_index.get(cats[i], -100) for i in gt.obj_ids], dtype=torch.long))
            frame_idx.append(torch.from_numpy(idx))
            if self.seg_head is not None:
                semantic.append(semantic_target(s.graph, idx, cfg.image_size, vocab_index))
        length = max(len(x) for x in seqs)
        input_ids = torch.full((len(seqs), length), self.ids.pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), length), dtype=torch.long)
        label_t = torch.full((len(seqs), length), -100, dtype=torch.long)
        for i, (x, y) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(x)] = torch.tensor(x)
            attention[i, : len(x)] = 1
            label_t[i, : len(y)] = torch.tensor(y)
        return {
            "input_ids": input_ids,  # [B, L]
            "attention_mask": attention,  # [B, L]
            "labels": label_t,  # [B, L]
            "rgb": torch.stack(rgbs),  # [B, T, 3, S, S]
            "depth": torch.stack(depths) if use_depth else None,  # [B, T, 1, S, S]
            "mask_targets": targets,  # B x [N_obj, T, S, S] bool
            "mask_valid": valid,  # B x [N_obj] bool
            "obj_ids": obj_ids,
            "frame_indices": frame_idx,  # B x [T]
            "tags": tags,  # [B, V_obj]
            "semantic": torch.stack(semantic) if semantic else None,  # [B, T, S, S] category index, V_obj: none
            "obj_categories": obj_cats,  # B x [N_obj] object_vocab index of each [Obj] (-100: not in it)
        }

    def _resampled_graph(self, graph: SceneGraph4D, idx: np.ndarray) -> SceneGraph4D:
        rels = [
            Relation(r.subject_id, r.object_id, r.predicate, remap_spans(r.spans, idx)) for r in graph.relations
        ]
        return SceneGraph4D(
            video_id=graph.video_id, num_frames=len(idx), height=graph.height, width=graph.width,
            objects=graph.objects, relations=rels,
        )

    # ---------------------------------------------------------------- forward
    def _embed(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L']`` (placeholder already expanded), ``visual [B, N_vis, H]`` -> ``[B, L', H]``."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        where = input_ids == self.ids.video  # [B, L']
        if int(where.sum()) != visual.shape[0] * visual.shape[1]:
            raise ValueError(
                f"{int(where.sum())} placeholder positions (id {self.ids.video}) for "
                f"{visual.shape[0] * visual.shape[1]} visual tokens"
            )
        return embeds.masked_scatter(where.unsqueeze(-1), visual.to(embeds.dtype))

    @staticmethod
    def _expand(x: torch.Tensor, where: torch.Tensor, n_vis: int, fill: int | None) -> torch.Tensor:
        """Repeat each row's single placeholder position (``where [B, L]``) ``n_vis`` times;
        ``fill`` replaces the value there (None keeps it)."""
        rows = []
        for i in range(x.shape[0]):
            pos = torch.nonzero(where[i]).flatten()
            if pos.numel() != 1:
                raise ValueError(f"row {i} has {pos.numel()} video placeholders, expected 1")
            p = int(pos)
            mid = x[i, p : p + 1].expand(n_vis) if fill is None else x.new_full((n_vis,), fill)
            rows.append(torch.cat([x[i, :p], mid, x[i, p + 1 :]]))
        return torch.stack(rows)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor | None):
        """-> (encoder output, LLM input tokens ``[B, N_vis (+K tags), H_llm]``, tag logits ``[B, V_obj]`` | None)."""
        enc = self.encoder(rgb, depth)
        visual = self.projector(enc.tokens)  # [B, N_vis, H_llm]
        tag_logits = None
        if self.tag_head is not None:
            tag_logits = self.tag_head(visual).amax(dim=1).float()  # [B, V_obj]: any token may carry a category
            if self.config.tag_tokens > 0:
                visual = torch.cat([visual, self._tag_tokens(tag_logits).to(visual.dtype)], dim=1)
        return enc, visual, tag_logits

    def _tag_tokens(self, tag_logits: torch.Tensor) -> torch.Tensor:
        """Top-K tags ``[B, K, H_llm]``: probability x mean input embedding of the category's words."""
        emb = self.llm.get_input_embeddings()
        ids = self._category_ids.to(tag_logits.device)  # [V_obj, W] padded with -1
        valid = ids >= 0
        words = emb(ids.clamp(min=0)) * valid.unsqueeze(-1)  # [V_obj, W, H]
        names = words.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # [V_obj, H]
        probs = torch.sigmoid(tag_logits)  # [B, V_obj]
        top = probs.topk(min(self.config.tag_tokens, probs.shape[1]), dim=1)
        return top.values.unsqueeze(-1) * names[top.indices]  # [B, K, H]

    def forward(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        rgb: torch.Tensor,
        depth: torch.Tensor | None = None,
        mask_targets: list[torch.Tensor] | None = None,
        mask_valid: list[torch.Tensor] | None = None,
        tags: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        obj_ids: list[list[int]] | None = None,
        obj_categories: list[torch.Tensor] | None = None,
        **meta: Any,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        enc, visual, tag_logits = self.encode(rgb, depth)
        n_vis = visual.shape[1]
        where = input_ids == self.ids.video  # [B, L], one placeholder per row
        ids = self._expand(input_ids, where, n_vis, None)  # [B, L']
        am = self._expand(attention_mask, where, n_vis, 1)
        lab = self._expand(labels, where, n_vis, -100)
        inp = ids
        if self.training and cfg.input_token_dropout > 0:
            unk = self.tokenizer.unk_token_id
            if unk is None:
                raise ConfigError("model.input_token_dropout needs a tokenizer with an unknown token")
            drop = (torch.rand(ids.shape, device=ids.device) < cfg.input_token_dropout) & (lab != -100)
            drop &= ids != self.ids.obj  # [Obj] positions carry the mask prompts
            inp = ids.masked_fill(drop, unk)
        out = self.llm(inputs_embeds=self._embed(inp, visual), attention_mask=am, output_hidden_states=True)
        logits = out.logits[:, :-1].float()  # [B, L'-1, V]
        loss_text = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
        hidden = out.hidden_states[-1]  # [B, L', H]

        parts: dict[str, list[torch.Tensor]] = {"focal": [], "dice": [], "iou": [], "total": []}
        weights = []
        for b in range(ids.shape[0]):
            pos = torch.nonzero(ids[b] == self.ids.obj).flatten()  # [N_b]
            if mask_targets is None or pos.numel() == 0:
                continue
            target = mask_targets[b]
            if target.shape[0] != pos.numel():
                raise ValueError(f"sample {b}: {pos.numel()} {OBJ_TOKEN} tokens but {target.shape[0]} mask targets")
            keep = mask_valid[b] if mask_valid is not None else torch.ones(pos.numel(), dtype=torch.bool)
            keep = keep.to(pos.device)
            if self.training and 0 < cfg.max_mask_prompts < int(keep.sum()):
                keep = sample_prompts(keep, obj_ids[b] if obj_ids is not None else None, cfg.max_mask_prompts)
            if not bool(keep.any()):
                continue
            prompts = self.obj_proj(hidden[b, pos[keep]])  # [N, D_prompt]
            mask_logits, iou_pred = self.mask_decoder(enc.dense[b], prompts)  # [N, T, h, w], [N, T]
            losses = mask_losses(mask_logits, iou_pred, target[keep.to(target.device)], cfg=cfg.loss)
            for k in parts:
                parts[k].append(losses[k])
            weights.append(float(keep.sum()))
        if weights:
            w = torch.tensor(weights, device=hidden.device)
            mask = {k: (torch.stack(v) * w).sum() / w.sum() for k, v in parts.items()}
        else:
            # keep every submodule in the graph (DDP) with an exact zero
            zero = enc.dense.sum() * 0 + sum(p.sum() * 0 for p in self.obj_proj.parameters())
            mask = {k: zero for k in parts}
        loss = cfg.text_loss_weight * loss_text + cfg.mask_loss_weight * mask["total"]
        extra: dict[str, torch.Tensor] = {}
        if tag_logits is not None and tags is not None:
            extra["loss_tag"] = F.binary_cross_entropy_with_logits(tag_logits, tags.to(tag_logits))
            loss = loss + cfg.tag_loss_weight * extra["loss_tag"]
        if self.obj_cls_head is not None and obj_categories is not None:
            pos = ids == self.ids.obj  # [B, L'] in order, matching obj_categories
            target = torch.cat([c.to(hidden.device) for c in obj_categories])  # [N_all]
            logits_obj = self.obj_cls_head(hidden[pos]).float()  # [N_all, V_obj]
            if target.numel() != logits_obj.shape[0]:
                raise ValueError(f"{logits_obj.shape[0]} {OBJ_TOKEN} tokens but {target.numel()} object categories")
            if bool((target >= 0).any()):
                extra["loss_obj_cls"] = F.cross_entropy(logits_obj, target, ignore_index=-100)
            else:  # keep the head in the graph (DDP) with an exact zero
                extra["loss_obj_cls"] = logits_obj.sum() * 0
            loss = loss + cfg.obj_cls_loss_weight * extra["loss_obj_cls"]
        if self.seg_head is not None and semantic is not None:
            extra["loss_seg"] = self.segmentation_loss(enc.dense, semantic)
            loss = loss + cfg.seg_loss_weight * extra["loss_seg"]
        return {
            "loss": loss,
            "loss_text": loss_text,
            "loss_mask": mask["total"],
            "loss_focal": mask["focal"],
            "loss_dice": mask["dice"],
            "loss_iou": mask["iou"],
            **extra,
        }

    def teacher_forced_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Collated ``input_ids [B, L]`` (one placeholder each) + ``visual [B, N_vis, H]`` ->
        (expanded ids ``[B, L']``, last-layer hidden states ``[B, L', H]``), no dropout."""
        where = input_ids == self.ids.video
        ids = self._expand(input_ids, where, visual.shape[1], None)
        am = self._expand(attention_mask, where, visual.shape[1], 1)
        out = self.llm(inputs_embeds=self._embed(ids, visual), attention_mask=am, output_hidden_states=True)
        return ids, out.hidden_states[-1]

    def segmentation_loss(self, dense: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """Class-balanced soft cross-entropy of ``seg_head(dense [B, T, D, h, w])`` against
        ``semantic [B, T, S, S]`` (category index per pixel) pooled to ``h x w`` area fractions."""
        b, t, d, h, w = dense.shape
        n_cls = self.seg_head.out_channels
        logits = self.seg_head(dense.reshape(b * t, d, h, w)).float()  # [B*T, C, h, w]
        onehot = F.one_hot(semantic.reshape(b * t, *semantic.shape[-2:]).to(dense.device), n_cls)
        soft = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), (h, w))  # [B*T, C, h, w]
        # Inverse-sqrt class frequency (batch counts), normalised to mean weight 1 per cell:
        # the table and walls would otherwise drown objects of a few pixels.
        counts = soft.sum(dim=(0, 2, 3))  # [C]
        weight = (counts.sum() / (counts + 1.0)).sqrt()
        weight = weight * counts.sum() / (weight * counts).sum().clamp(min=1e-6)
        return F.cross_entropy(logits, soft, weight=weight)

    # -------------------------------------------------------------- inference
    def model_frames(self, video: Video4D) -> np.ndarray:
        return resample_indices(video.num_frames, min(video.num_frames, self.config.max_frames))

    @torch.no_grad()
    def encode_video(self, video: Video4D) -> VideoContext:
        video.validate(video.video_id or "video")
        idx = self.model_frames(video)
        rgb, depth = video_tensors(video, idx, self.config.image_size)
        dev = self.device
        enc, visual, tag_logits = self.encode(rgb[None].to(dev), None if depth is None else depth[None].to(dev))
        tags = None
        if self.config.tag_words and self.config.tag_source == "segmentation" and self.seg_head is not None:
            tags = self.segmentation_tags(enc.dense[0])
        elif self.config.tag_words and tag_logits is not None:
            tags = self.predicted_tags(tag_logits[0])
        prefix = torch.tensor([self.prefix_ids(tags)], device=dev)
        ids = self._expand(prefix, prefix == self.ids.video, visual.shape[1], None)
        return VideoContext(
            prefix_embeds=self._embed(ids, visual),
            dense=enc.dense[0],
            frame_indices=np.asarray(video.frame_indices)[idx],
            num_frames=len(idx),
            tags=tags,
        )

    def _banned(self) -> list[int]:
        banned = {self.ids.video, self.ids.pad} - {self.ids.eos}
        if self.ids.bos is not None and self.ids.bos != self.ids.eos:
            banned.add(self.ids.bos)
        return sorted(banned)

    @torch.no_grad()
    def generate(
        self, video: Video4D | VideoContext, *, max_new_tokens: int | None = None, max_repeats: int | None = 3
    ) -> Generation:
        """Greedy decoding with the KV cache; collects the hidden state at every generated ``[Obj]``.

        A small greedy LM easily loops on one triplet. A triplet whose tokens repeat an earlier
        one exactly is dropped from the output (tokens, log-probabilities and ``[Obj]`` states),
        and after ``max_repeats`` such repeats in a row decoding stops (None: never drop)."""
        ctx = video if isinstance(video, VideoContext) else self.encode_video(video)
        sep_ids = {ids[0] for ids in (self.text_ids(TRIPLET_SEP), self.tokenizer.encode(TRIPLET_SEP,
                   add_special_tokens=False)) if len(ids) == 1}
        seen: set[tuple[int, ...]] = set()
        start, repeats = 0, 0  # first token of the current triplet; repeats in a row
        passes = 0  # dropped repeats do not count towards max_new; this bounds the work anyway
        max_new = max_new_tokens or self.config.max_new_tokens
        banned = torch.tensor(self._banned(), device=self.device, dtype=torch.long)
        embeds, past = ctx.prefix_embeds, None
        length = embeds.shape[1]
        tokens: list[int] = []
        logps: list[float] = []
        obj_hidden: list[torch.Tensor] = []
        emb_layer = self.llm.get_input_embeddings()
        while True:
            am = torch.ones(1, length, dtype=torch.long, device=self.device)
            out = self.llm(inputs_embeds=embeds, attention_mask=am, use_cache=True, output_hidden_states=True,
                           **{self._cache_arg: past})
            past = getattr(out, self._cache_arg)
            if tokens and tokens[-1] == self.ids.obj:
                obj_hidden.append(out.hidden_states[-1][0, -1])  # the hidden state *at* the [Obj] input
            passes += 1
            if len(tokens) >= max_new or passes > 2 * max_new:
                break  # this last pass only supplied the final [Obj]'s hidden state
            logits = out.logits[0, -1].float()
            logits[banned] = float("-inf")
            logp = torch.log_softmax(logits, dim=-1)
            nxt = int(torch.argmax(logp))
            tokens.append(nxt)
            logps.append(float(logp[nxt]))
            if max_repeats is not None and (nxt in sep_ids or nxt == self.ids.eos):
                triplet = tuple(tokens[start:-1])
                if triplet and triplet in seen:
                    n_obj = sum(1 for t in triplet if t == self.ids.obj)
                    cut = len(tokens) - 1 if nxt == self.ids.eos else len(tokens)  # keep <eos>
                    del tokens[start:cut], logps[start:cut]
                    if n_obj:
                        del obj_hidden[-n_obj:]
                    repeats += 1
                else:
                    seen.add(triplet)
                    repeats = 0
                start = len(tokens)
                if repeats >= max_repeats > 0:
                    break
            if nxt == self.ids.eos or (len(tokens) >= max_new and nxt != self.ids.obj):
                break
            embeds = emb_layer(torch.tensor([[nxt]], device=self.device))
            length += 1
        hidden = torch.stack(obj_hidden) if obj_hidden else torch.zeros(0, self.hidden_size, device=self.device)
        return Generation(
            text=self.decode_grammar(tokens), token_ids=tokens, obj_hidden=hidden, step_logprobs=logps, context=ctx
        )

    def decode_grammar(self, token_ids: Sequence[int]) -> str:
        """Token ids -> grammar text whose ``[Obj]`` occurrences are exactly the ``[Obj]`` tokens.

        Segments between ``[Obj]`` tokens are decoded separately and any literal
        "[Obj]" spelled out of ordinary pieces is broken up, so the parser's
        ``[Obj]`` indices line up with the token positions.
        """
        segs: list[list[int]] = [[]]
        for t in token_ids:
            if t == self.ids.obj:
                segs.append([])
            elif t != self.ids.eos:
                segs[-1].append(t)
        texts = [self.tokenizer.decode(s, skip_special_tokens=True).replace(OBJ_TOKEN, "[ Obj ]") for s in segs]
        return f" {OBJ_TOKEN} ".join(t.strip() for t in texts).strip()

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text, add_special_tokens=False)

    @torch.no_grad()
    def _after_prefix(self, ctx: VideoContext, rows: Sequence[Sequence[int]], batch_size: int, *,
                      hidden: bool = False):
        """Teacher-force ``prefix + row`` for each row, ``batch_size`` rows at a time (right-padded).
        Yields ``(start, end, out)`` per chunk: the rows' index range and the LLM output."""
        emb_layer = self.llm.get_input_embeddings()
        p_len = ctx.prefix_embeds.shape[1]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            longest = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), longest), self.ids.pad, dtype=torch.long, device=self.device)
            am = torch.zeros(len(chunk), p_len + longest, dtype=torch.long, device=self.device)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long, device=self.device)
                am[i, : p_len + len(r)] = 1
            embeds = torch.cat([ctx.prefix_embeds.expand(len(chunk), -1, -1), emb_layer(ids)], dim=1)  # [n, P+L, H]
            yield s, s + len(chunk), self.llm(inputs_embeds=embeds, attention_mask=am, output_hidden_states=hidden)

    @torch.no_grad()
    def score_continuations(
        self, ctx: VideoContext, context_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
        batch_size: int = 32,
    ) -> list[float]:
        """Sum of log-probabilities of each continuation after ``prefix + context_ids`` (teacher forced)."""
        ctx_ids = list(context_ids)
        conts = [list(c) for c in continuations]
        start = ctx.prefix_embeds.shape[1] + len(ctx_ids)  # position of the first continuation token
        scores: list[float] = []
        for a, b, out in self._after_prefix(ctx, [ctx_ids + c for c in conts], batch_size):
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            for i, c in enumerate(conts[a:b]):
                pos = torch.arange(start - 1, start - 1 + len(c), device=self.device)
                scores.append(float(logp[i, pos, torch.tensor(c, device=self.device)].sum()))
        return scores

    @torch.no_grad()
    def obj_hidden_after(
        self, ctx: VideoContext, context_ids: Sequence[int], phrases: Sequence[str], *, batch_size: int = 32
    ) -> torch.Tensor:
        """Last-layer hidden state at ``[Obj]`` after ``prefix + context_ids + "<phrase> [Obj]"``, per
        phrase: ``[N, H]``. Lets the predictor ask for the tube of an object the generation did not
        mention (e.g. a tagged category), exactly as a generated mention would prompt it."""
        rows = [list(context_ids) + self.text_ids(f"{p} {OBJ_TOKEN}") for p in phrases]
        p_len = ctx.prefix_embeds.shape[1]
        out: list[torch.Tensor] = []
        for a, b, res in self._after_prefix(ctx, rows, batch_size, hidden=True):
            last = torch.tensor([p_len + len(r) - 1 for r in rows[a:b]], device=self.device)
            out.append(res.hidden_states[-1][torch.arange(b - a, device=self.device), last])  # [n, H]
        return torch.cat(out) if out else torch.zeros(0, self.hidden_size, device=self.device)

    @torch.no_grad()
    def decode_masks(self, ctx: VideoContext, obj_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obj_hidden [N, H]`` -> ``(mask_logits [N, T, h, w], iou_pred [N, T])``."""
        return self.mask_decoder(ctx.dense, self.obj_proj(obj_hidden.to(self.obj_proj.weight.dtype)))

    # ------------------------------------------------------------ checkpoints
    def _stored_state(self) -> dict[str, torch.Tensor]:
        """State dict to write, without tied duplicates and without the frozen base weights of a
        LoRA-wrapped *pretrained* LLM (they are reloaded from its source; a random ``tiny`` base,
        or base weights someone unfroze, are stored)."""
        skip_frozen_base = hasattr(self.llm, "peft_config") and self.config.llm.name not in RANDOM_INIT_SOURCES
        # remove_duplicate=False: a tied lm_head is a second name for the frozen embedding matrix
        params = self.llm.named_parameters(remove_duplicate=False)
        frozen = {f"llm.{n}" for n, p in params if not p.requires_grad}
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for k, v in self.state_dict().items():
            if skip_frozen_base and k in frozen and not any(m in k for m in _ADAPTER_MARKERS):
                continue
            ptr = v.data_ptr()
            if ptr in seen and v.numel() > 0:
                continue  # tied weight (e.g. lm_head = embed_tokens): restored by tying
            seen.add(ptr)
            out[k] = v.detach().contiguous().cpu()
        return out

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            save_file(self._stored_state(), str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
            self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
            atomic_write_json(
                tmp / CONFIG_FILE,
                {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": to_dict(self.config)},
                indent=2,
            )

    @staticmethod
    def read_config(path: str | Path) -> ModelConfig:
        """The ``ModelConfig`` of checkpoint folder ``path`` (CheckpointError if it is not one)."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint folder not found")
        cfg_file = path / CONFIG_FILE
        if not cfg_file.exists():
            raise CheckpointError(f"{cfg_file}: missing; {path} is not a psg4d checkpoint")
        try:
            meta = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_file}: malformed JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{cfg_file}: not a psg4d checkpoint (expected \"format\": \"{CHECKPOINT_FORMAT}\")")
        if meta.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{cfg_file}: checkpoint version {meta.get('version')} != {CHECKPOINT_VERSION}")
        try:
            return from_dict(ModelConfig, meta.get("model") or {}, where=str(cfg_file))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PSG4DModel":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        cfg = cls.read_config(path)
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            raise CheckpointError(f"{weights}: missing from the checkpoint")
        tok_dir = path / TOKENIZER_DIR
        if not (tok_dir / "tokenizer.json").exists():
            raise CheckpointError(f"{tok_dir / 'tokenizer.json'}: missing from the checkpoint")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{weights}: unreadable or corrupted ({e})") from None
        model = cls.from_config(cfg)
        saved_tok = load_tokenizer(tok_dir)
        if saved_tok.get_vocab() != model.tokenizer.get_vocab():
            raise CheckpointError(f"{tok_dir}: tokenizer vocabulary differs from the one the config builds")
        expected = set(model._stored_state())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        if missing or unexpected:
            raise CheckpointError(f"{weights}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{weights}: tensors do not fit the configured model: {e}") from None
        model.eval()
        return model
