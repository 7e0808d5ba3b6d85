"""Inference with a :class:`~psg4d.model.psg4d_llm.PSG4DModel`: encode, generate, score, decode tubes.

:class:`SceneGraphGenerator` wraps a model in eval mode (under ``torch.inference_mode``: what it
returns is for inference, not for autograd):

* :meth:`~SceneGraphGenerator.encode_video` — the LLM prefix (``<bos>``, visual
  tokens, the prompt with the model's own tags) and the dense maps, once per video.
* :meth:`~SceneGraphGenerator.generate` — greedy decoding with the KV cache; the
  hidden state at every generated ``[Obj]`` is kept for the mask decoder.
* scoring (:mod:`psg4d.model.scoring`, mixed in): :meth:`~SceneGraphGenerator.score_many`,
  :meth:`~SceneGraphGenerator.score_continuations`, :meth:`~SceneGraphGenerator.score_texts` and
  :meth:`~SceneGraphGenerator.obj_hidden_after`, on the KV cache generation leaves.
* :meth:`~SceneGraphGenerator.decode_masks` — one batched mask-decoder call for
  any number of ``[Obj]`` states; frames the presence head calls absent are empty.

With region feedback (``model.region``, :mod:`psg4d.model.region`), generation decodes each
``[Obj]`` it writes at once and feeds the tube's region embedding as the next input; the regions
of a video live in :attr:`VideoContext.regions` and appear in id sequences as region ids
``-(1 + k)``, which scoring embeds from that table and never scores.
:meth:`~SceneGraphGenerator.score_texts` scores whole texts whose ``[Obj]`` regions are not known
yet, decoding each as generation would.

Generation drops a triplet that repeats an earlier one exactly from its output,
but the LLM has read it: :attr:`Generation.context_ids` is every token the LLM
was fed, and :attr:`Generation.positions` maps each output token to its place
there, so later scoring conditions on exactly what the cache held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.data.schema import Video4D
from psg4d.model.attributes import read_attributes
from psg4d.model.batching import frame_intrinsics, resample_indices, video_tensors
from psg4d.model.contexts import Generation, GenerationCache, VideoContext, cache_kwarg
from psg4d.model.encoder import disparity_scale_of
from psg4d.model.form_geometry import measure_tubes
from psg4d.model.packing import kv_rows
from psg4d.model.region import region_id
from psg4d.model.scoring import TeacherForcedScoring
from psg4d.model.tokens import OBJ_TOKEN

if TYPE_CHECKING:
    from psg4d.model.psg4d_llm import PSG4DModel

__all__ = ["Generation", "GenerationCache", "SceneGraphGenerator", "VideoContext"]


class SceneGraphGenerator(TeacherForcedScoring):
    """Inference operations of one model (see the module docstring); ``cached=False``
    scores every candidate from scratch (the reference path)."""

    def __init__(self, model: "PSG4DModel", *, cached: bool = True, tokens_per_pass: int = 512):
        self.model = model.eval()
        self.cached = cached
        self.tokens_per_pass = tokens_per_pass
        self.prompt = model.prompt
        self.ids = model.prompt.ids
        self._cache_arg = cache_kwarg(model.llm)
        self._embed_tokens = model.llm.get_input_embeddings()
        self._banned = torch.tensor(self.prompt.banned_ids(), dtype=torch.long)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities ``[..., V]`` over the tokens generation may produce: greedy
        step scores and teacher-forced candidate scores are log-probabilities of one distribution."""
        banned = self._banned.to(logits.device)
        return torch.log_softmax(logits.float().index_fill(-1, banned, float("-inf")), dim=-1)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def regions_on(self) -> bool:
        return self.model.region_encoder is not None

    def _embed(self, ctx: VideoContext, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``ids`` (a list: ``[1, L, H]``; a tensor: its shape + ``[H]``);
        region ids take ``ctx.regions``."""
        t = ids if isinstance(ids, torch.Tensor) else torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        table = torch.stack(ctx.regions) if ctx.regions else None
        return self.model.embed_ids(t.to(self.device), table)

    def add_regions(self, ctx: VideoContext, masks: torch.Tensor) -> list[int]:
        """Region embeddings of the tubes ``masks [N, T, h, w]`` (bool) on ``ctx``'s video, appended to
        ``ctx.regions``: their region ids."""
        if masks.shape[0] == 0:
            return []
        emb = self.model.region_embeddings(ctx.dense, masks)  # [N, H]
        first = len(ctx.regions)
        ctx.regions.extend(emb.unbind(0))
        return [region_id(first + k) for k in range(masks.shape[0])]

    def decode_regions(self, ctx: VideoContext, obj_hidden: torch.Tensor) -> list[int]:
        """The region ids of the tubes ``obj_hidden [N, H]`` decode (:meth:`add_regions`)."""
        return self.add_regions(ctx, self.model.decoded_masks(ctx.mask_features, obj_hidden))

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode_video(self, video: Video4D, *, chain: bool = False) -> VideoContext:
        """``chain``: the prompt is the chain's first step (:mod:`psg4d.model.chain_text`) instead of
        the direct grammar's."""
        model = self.model
        video.validate(video.video_id or "video")
        idx = resample_indices(video.num_frames, min(video.num_frames, model.config.max_frames))
        rgb, depth = video_tensors(video, idx, model.config.image_size)
        dev = self.device
        scale = None if depth is None else torch.tensor([disparity_scale_of(video, model.config.encoder)], device=dev)
        feats, enc, visual, tag_logits = model.encode_scene(
            rgb[None].to(dev), None if depth is None else depth[None].to(dev), scale)
        tags = model.inference_tags(enc.dense[0], None if tag_logits is None else tag_logits[0])
        prefix = self.prompt.chain_prefix_ids(tags, len(idx)) if chain else self.prompt.prefix_ids(tags)
        ids = model.expand_placeholder(prefix, visual.shape[1])
        return VideoContext(
            prefix_embeds=model.embed(torch.tensor([ids], device=dev), visual),
            dense=enc.dense[0],
            mask_features=model.mask_features(rgb.to(dev), enc.dense[0]),
            frame_indices=np.asarray(video.frame_indices)[idx],
            num_frames=len(idx),
            tags=tags,
            depth_source=feats.depth_source,
        )

    def _llm(self, embeds: torch.Tensor, attention: torch.Tensor, *, past=None, hidden: bool = False,
             use_cache: bool = False):
        return self.model.llm(inputs_embeds=embeds, attention_mask=attention, use_cache=use_cache,
                              output_hidden_states=hidden, **{self._cache_arg: past})

    # ---------------------------------------------------------------- generate
    @torch.inference_mode()
    def generate(
        self, video: Video4D | VideoContext, *, max_new_tokens: int | None = None, max_repeats: int | None = 3,
        after: Sequence[int] = (), logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> Generation:
        """Greedy decoding with the KV cache; collects the hidden state at every generated ``[Obj]``.

        ``after``: tokens the LLM reads after the prefix before it writes (a chain's earlier turns
        and the next prompt); positions a previous generation on ``video`` cached are not run again.

        A small greedy LM easily loops on one triplet. A triplet whose tokens repeat an earlier
        one exactly is dropped from the output (tokens, log-probabilities and ``[Obj]`` states),
        and after ``max_repeats`` such repeats in a row decoding stops (None: never drop).

        ``logits_processor`` (a ``transformers`` ``LogitsProcessor``, e.g. a grammar's
        :class:`~psg4d.model.constrained.GrammarLogitsProcessor`) restricts which token is chosen,
        given the tokens written so far; the step log-probabilities stay the model's own, so they
        compare with teacher-forced scores."""
        ctx = video if isinstance(video, VideoContext) else self.encode_video(video)
        ids, dev = self.ids, self.device
        seen: set[tuple[int, ...]] = set()
        start, repeats = 0, 0  # first output token of the current triplet; repeats in a row
        passes = 0  # dropped repeats do not count towards max_new; this bounds the work anyway
        max_new = max_new_tokens or self.model.config.max_new_tokens
        tokens: list[int] = []
        positions: list[int] = []
        fed: list[int] = list(after)
        embeds, past = self._start_after(ctx, fed)
        dists: list[torch.Tensor] = []  # dists[k]: next-token log-probs after fed[:k]
        logps: list[float] = []
        obj_hidden: list[torch.Tensor] = []
        obj_regions: list[int] = []
        while True:
            want_hidden = bool(fed) and fed[-1] == ids.obj
            # one unpadded sequence: no attention mask to build (causal by position)
            out = self.model.llm(inputs_embeds=embeds, use_cache=True, output_hidden_states=want_hidden,
                                 **{self._cache_arg: past})
            past = getattr(out, self._cache_arg)
            if want_hidden and tokens and tokens[-1] == ids.obj:
                obj_hidden.append(out.hidden_states[-1][0, -1])  # the hidden state *at* the [Obj] input
            passes += 1
            if len(tokens) >= max_new or passes > 2 * max_new:
                break  # this last pass only supplied the final [Obj]'s hidden state
            logp = self.log_probs(out.logits[0, -1])
            dists.append(logp)
            if want_hidden and self.regions_on:
                # the region of the object just written is the next input, not a sampled token
                rid = self.decode_regions(ctx, out.hidden_states[-1][0, -1][None])[0]
                if tokens and tokens[-1] == ids.obj:
                    obj_regions.append(rid)
                fed.append(rid)
                embeds = self._embed(ctx, [rid])
                continue
            choose = logp if logits_processor is None else logits_processor(
                torch.tensor([tokens], dtype=torch.long), logp[None])[0]
            nxt = int(torch.argmax(choose))
            tokens.append(nxt)
            positions.append(len(fed))
            logps.append(float(logp[nxt]))
            if max_repeats is not None and (nxt in self.prompt.sep_ids or nxt == ids.eos):
                repeated = self._drop_repeat(seen, start, tokens, logps, positions, obj_hidden, obj_regions)
                repeats = repeats + 1 if repeated else 0
                start = len(tokens)
                if repeats >= max_repeats > 0:
                    break
            if nxt == ids.eos or (len(tokens) >= max_new and nxt != ids.obj):
                break
            fed.append(nxt)
            embeds = self._embed(ctx, [nxt])
        hidden = torch.stack(obj_hidden) if obj_hidden else torch.zeros(0, self.model.hidden_size, device=dev)
        # past: prefix + every fed token
        ctx.kv = GenerationCache(cache=past, ids=list(fed), dists=dists, offset=len(after))
        return Generation(
            text=self.decode_grammar(tokens), token_ids=tokens, obj_hidden=hidden, step_logprobs=logps,
            context=ctx, context_ids=fed, positions=positions, obj_regions=obj_regions,
        )

    def _start_after(self, ctx: VideoContext, fed: list[int]):
        """``(embeds, past)`` to start decoding after the prefix and ``fed``: positions the KV cache
        of an earlier generation on ``ctx`` holds are not run again (the last one always runs: its
        logits are the first step's)."""
        if not fed:
            return ctx.prefix_embeds, None
        p_len = ctx.prefix_embeds.shape[1]
        reuse, past = 0, None
        if ctx.kv is not None:
            shared = next((i for i, (a, b) in enumerate(zip(ctx.kv.ids, fed)) if a != b),
                          min(len(ctx.kv.ids), len(fed)))
            reuse = min(p_len + shared, p_len + len(fed) - 1)
            past = kv_rows(ctx.kv.cache, length=reuse)
        embeds = torch.cat([ctx.prefix_embeds, self._embed(ctx, fed)], dim=1)
        return embeds[:, reuse:], past

    def _drop_repeat(self, seen: set[tuple[int, ...]], start: int, tokens: list[int], logps: list[float],
                     positions: list[int], obj_hidden: list[torch.Tensor], obj_regions: list[int]) -> bool:
        """At the end of a triplet (``tokens[start:]``, its separator or ``<eos>`` last): drop it from
        the output, with its ``[Obj]`` states, when it repeats an earlier one exactly (the ``<eos>``
        stays); True when it did."""
        triplet = tuple(tokens[start:-1])
        if not triplet or triplet not in seen:
            seen.add(triplet)
            return False
        n_obj = sum(1 for t in triplet if t == self.ids.obj)
        cut = len(tokens) - 1 if tokens[-1] == self.ids.eos else len(tokens)  # keep <eos>
        del tokens[start:cut], logps[start:cut], positions[start:cut]
        if n_obj:
            del obj_hidden[-n_obj:]
            del obj_regions[-n_obj:]
        return True

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
        tok = self.prompt.tokenizer
        texts = [tok.decode(s, skip_special_tokens=True).replace(OBJ_TOKEN, "[ Obj ]") for s in segs]
        return f" {OBJ_TOKEN} ".join(t.strip() for t in texts).strip()

    # ------------------------------------------------------------------ masks
    @torch.inference_mode()
    def read_attributes(self, ctx: VideoContext, video: Video4D, obj_hidden: torch.Tensor) -> list[tuple[str, float] | None]:
        """What the tube of each ``[Obj]`` state ``obj_hidden [N, H]`` looks like, read from ``video``'s
        frames by the attribute head, and how far that reading is from every training category's
        (:func:`psg4d.model.attributes.read_attributes`): ``(description, margin)``, None for an
        empty tube; all None without a head."""
        head = self.model.attribute_head
        if head is None or obj_hidden.shape[0] == 0:
            return [None] * obj_hidden.shape[0]
        size = self.model.config.image_size
        idx = resample_indices(video.num_frames, ctx.num_frames)
        rgb, depth = video_tensors(video, idx, size)
        logits, _ = self.decode_masks(ctx, obj_hidden)  # [N, T, h, w]
        masks = logits > 0
        measured = None
        intrinsics = frame_intrinsics(video, size)
        if head.form is not None and depth is not None and intrinsics is not None:
            # the size and shape words measured on the tube at the frames' resolution
            tubes = F.interpolate(masks.float().cpu(), size=(size, size), mode="nearest") > 0  # [N, T, S, S]
            geometry = measure_tubes(tubes, depth[:, 0], intrinsics)
            measured = head.form.field_scores(geometry.to(self.device), head.values)
        return read_attributes(head, ctx.dense, rgb.to(self.device), masks, self.model._attribute_table,
                               measured=measured,
                               combine="add" if self.model.config.attribute_form == "both" else "replace")

    @torch.inference_mode()
    def decode_masks(self, ctx: VideoContext, obj_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obj_hidden [N, H]`` -> ``(mask_logits [N, T, h, w], iou_pred [N, T])`` in one decoder call;
        with a presence head, frames it scores absent (logit < 0) get an empty mask."""
        return self.model.decode_tubes(ctx.mask_features, obj_hidden)
