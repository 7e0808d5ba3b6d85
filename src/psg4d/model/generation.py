"""Inference with a :class:`~psg4d.model.psg4d_llm.PSG4DModel`: encode, generate, score, decode tubes.

:class:`SceneGraphGenerator` wraps a model in eval mode (under ``torch.inference_mode``: what it
returns is for inference, not for autograd):

* :meth:`~SceneGraphGenerator.encode_video` — the LLM prefix (``<bos>``, visual
  tokens, the prompt with the model's own tags) and the dense maps, once per video.
* :meth:`~SceneGraphGenerator.generate` — greedy decoding with the KV cache; the
  hidden state at every generated ``[Obj]`` is kept for the mask decoder.
* :meth:`~SceneGraphGenerator.score_many` / :meth:`~SceneGraphGenerator.score_continuations`
  — log-probabilities of many short continuations after a shared context. A
  context runs through the LLM once (not at all when generation already read it:
  its key/value cache, ``transformers``' ``DynamicCache``, is kept); shared heads
  and each candidate's own tokens are packed into one sequence over that cache
  (:mod:`psg4d.model.packing`).
  :meth:`~SceneGraphGenerator.score_continuations_uncached` recomputes the whole
  context for every candidate: the reference the cached path is tested against.
* :meth:`~SceneGraphGenerator.obj_hidden_after` — the ``[Obj]`` hidden state of
  ``"<phrase> [Obj]"`` after a context (cached the same way).
* :meth:`~SceneGraphGenerator.decode_masks` — one batched mask-decoder call for
  any number of ``[Obj]`` states; frames the presence head calls absent are empty.

Generation drops a triplet that repeats an earlier one exactly from its output,
but the LLM has read it: :attr:`Generation.context_ids` is every token the LLM
was fed, and :attr:`Generation.positions` maps each output token to its place
there, so later scoring conditions on exactly what the cache held.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from psg4d.data.schema import Video4D
from psg4d.model.batching import pad_rows, resample_indices, video_tensors
from psg4d.model.encoder import disparity_scale_of
from psg4d.model.packing import Pack, kv_rows, packed, shared_head_lengths
from psg4d.model.tokens import OBJ_TOKEN

if TYPE_CHECKING:
    from psg4d.model.psg4d_llm import PSG4DModel


@dataclass
class VideoContext:
    """An encoded video ready for decoding: the LLM prefix and the dense maps."""

    prefix_embeds: torch.Tensor  # [1, P, H_llm] bos + visual tokens + prompt
    dense: torch.Tensor  # [T, C, h, w] the scene encoder's per-frame maps
    mask_features: Any  # what the mask decoder reads (PSG4DModel.mask_features): SAM2's, or `dense`
    frame_indices: np.ndarray  # [T] source frame of each model frame
    num_frames: int  # T, the model timeline
    tags: list[str] | None = None  # the tag words in the prompt (model.tag_words)
    # where the depth features came from: "sensor", "estimated" (F_de from RGB) or "none"
    depth_source: str = "sensor"
    # Left by generate(): what it read, so teacher forcing in a context that starts with it does
    # not run those positions again.
    kv: GenerationCache | None = None


@dataclass
class GenerationCache:
    """The KV cache of ``prefix + ids`` and the next-token log-probabilities after each
    ``ids[:k]`` (``dists[k]``, ``[V]``) as generation computed them."""

    cache: Any
    ids: list[int]
    dists: list[torch.Tensor]
    offset: int = 0  # dists[0] follows ids[:offset] (a generation that started after some tokens)

    def serves(self, context_ids: Sequence[int]) -> bool:
        """Whether scoring after ``context_ids`` needs nothing but this cache."""
        k = len(context_ids)
        return self.offset <= k < self.offset + len(self.dists) and self.ids[:k] == list(context_ids)

    def dist(self, k: int) -> torch.Tensor:
        """Next-token log-probabilities ``[V]`` after ``ids[:k]`` (``serves`` that context first)."""
        return self.dists[k - self.offset]


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # the output (exact repeats of earlier triplets removed)
    obj_hidden: torch.Tensor  # [N_objtok, H_llm] last-layer hidden state at each output [Obj]
    step_logprobs: list[float]  # log-probability of each output token
    context: VideoContext
    context_ids: list[int]  # every token fed to the LLM after the prefix, repeats included
    positions: list[int]  # positions[i]: index of token_ids[i] in context_ids (len(context_ids) if never fed)

    def context_before(self, i: int) -> list[int]:
        """What the LLM had read (after the prefix) when it produced output token ``i``."""
        return self.context_ids[: self.positions[i]]

    def context_after(self, eos: int) -> list[int]:
        """The whole text as the LLM read it, plus an output token it never read (generation cut by
        its length limit) other than ``eos``: the context of anything appended to the text."""
        unread = [t for t, p in zip(self.token_ids, self.positions) if p >= len(self.context_ids) and t != eos]
        return self.context_ids + unread


def _cache_kwarg(llm: torch.nn.Module) -> str:
    """KV-cache argument/output name: ``cache`` in recent transformers, ``past_key_values`` before."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class SceneGraphGenerator:
    """Inference operations of one model (see the module docstring); ``cached=False``
    scores every candidate from scratch (the reference path)."""

    def __init__(self, model: "PSG4DModel", *, cached: bool = True, tokens_per_pass: int = 512):
        self.model = model.eval()
        self.cached = cached
        self.tokens_per_pass = tokens_per_pass
        self.prompt = model.prompt
        self.ids = model.prompt.ids
        self._cache_arg = _cache_kwarg(model.llm)
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

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode_video(self, video: Video4D, *, chain: bool = False) -> VideoContext:
        """``chain``: the prompt is the chain's first step (:mod:`psg4d.model.chain`) instead of
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
        after: Sequence[int] = (),
    ) -> Generation:
        """Greedy decoding with the KV cache; collects the hidden state at every generated ``[Obj]``.

        ``after``: tokens the LLM reads after the prefix before it writes (a chain's earlier turns
        and the next prompt); positions a previous generation on ``video`` cached are not run again.

        A small greedy LM easily loops on one triplet. A triplet whose tokens repeat an earlier
        one exactly is dropped from the output (tokens, log-probabilities and ``[Obj]`` states),
        and after ``max_repeats`` such repeats in a row decoding stops (None: never drop)."""
        ctx = video if isinstance(video, VideoContext) else self.encode_video(video)
        ids, dev = self.ids, self.device
        seen: set[tuple[int, ...]] = set()
        start, repeats = 0, 0  # first output token of the current triplet; repeats in a row
        passes = 0  # dropped repeats do not count towards max_new; this bounds the work anyway
        max_new = max_new_tokens or self.model.config.max_new_tokens
        embeds, past = ctx.prefix_embeds, None
        tokens: list[int] = []
        positions: list[int] = []
        fed: list[int] = list(after)
        if fed:
            p_len = ctx.prefix_embeds.shape[1]
            reuse = 0
            if ctx.kv is not None:
                shared = next((i for i, (a, b) in enumerate(zip(ctx.kv.ids, fed)) if a != b),
                              min(len(ctx.kv.ids), len(fed)))
                reuse = min(p_len + shared, p_len + len(fed) - 1)  # the last position runs: its logits
                past = kv_rows(ctx.kv.cache, length=reuse)
            embeds = torch.cat([ctx.prefix_embeds, self._embed_tokens(torch.tensor([fed], device=dev))], dim=1)
            embeds = embeds[:, reuse:]
        dists: list[torch.Tensor] = []  # dists[k]: next-token log-probs after fed[:k]
        logps: list[float] = []
        obj_hidden: list[torch.Tensor] = []
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
            nxt = int(torch.argmax(logp))
            tokens.append(nxt)
            positions.append(len(fed))
            logps.append(float(logp[nxt]))
            if max_repeats is not None and (nxt in self.prompt.sep_ids or nxt == ids.eos):
                triplet = tuple(tokens[start:-1])
                if triplet and triplet in seen:
                    n_obj = sum(1 for t in triplet if t == ids.obj)
                    cut = len(tokens) - 1 if nxt == ids.eos else len(tokens)  # keep <eos>
                    del tokens[start:cut], logps[start:cut], positions[start:cut]
                    if n_obj:
                        del obj_hidden[-n_obj:]
                    repeats += 1
                else:
                    seen.add(triplet)
                    repeats = 0
                start = len(tokens)
                if repeats >= max_repeats > 0:
                    break
            if nxt == ids.eos or (len(tokens) >= max_new and nxt != ids.obj):
                break
            fed.append(nxt)
            embeds = self._embed_tokens(torch.tensor([[nxt]], device=dev))
        hidden = torch.stack(obj_hidden) if obj_hidden else torch.zeros(0, self.model.hidden_size, device=dev)
        # past: prefix + every fed token
        ctx.kv = GenerationCache(cache=past, ids=list(fed), dists=dists, offset=len(after))
        return Generation(
            text=self.decode_grammar(tokens), token_ids=tokens, obj_hidden=hidden, step_logprobs=logps,
            context=ctx, context_ids=fed, positions=positions,
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
        tok = self.prompt.tokenizer
        texts = [tok.decode(s, skip_special_tokens=True).replace(OBJ_TOKEN, "[ Obj ]") for s in segs]
        return f" {OBJ_TOKEN} ".join(t.strip() for t in texts).strip()

    # ------------------------------------------------------ teacher forcing
    def _context_cache(self, ctx: VideoContext, context_ids: Sequence[int]):
        """Run ``prefix + context_ids`` -> (its KV cache, log-probs of the next token ``[V]``).
        Positions that generation already cached for the same tokens (``ctx.kv``) are reused."""
        ids = list(context_ids)
        total = ctx.prefix_embeds.shape[1] + len(ids)
        past, reuse = None, 0
        if ctx.kv is not None:
            kv_cache, kv_ids = ctx.kv.cache, ctx.kv.ids
            shared = next((i for i, (a, b) in enumerate(zip(kv_ids, ids)) if a != b), min(len(kv_ids), len(ids)))
            reuse = min(ctx.prefix_embeds.shape[1] + shared, total - 1)  # the last position runs: its logits
            if reuse > 0:
                past = kv_rows(kv_cache, length=reuse)
        embeds = ctx.prefix_embeds
        if ids:
            embeds = torch.cat([embeds, self._embed_tokens(torch.tensor([ids], device=self.device))], dim=1)
        out = self._llm(embeds[:, reuse:], torch.ones(1, total, dtype=torch.long, device=self.device), past=past,
                        use_cache=True)
        return getattr(out, self._cache_arg), self.log_probs(out.logits[0, -1])

    def _after_context(self, ctx: VideoContext, context_ids: Sequence[int], rows: Sequence[Sequence[int]],
                       batch_size: int, *, hidden: bool = False) -> Iterator[tuple[int, int, object]]:
        """Teacher-force ``rows`` after ``prefix + context_ids``, ``batch_size`` rows at a time
        (right-padded). Yields ``(start, end, out)`` per chunk, where ``out``'s sequence axis
        covers the rows' tokens only: the context runs once and its cache is shared."""
        cache, _ = self._context_cache(ctx, context_ids)
        base = ctx.prefix_embeds.shape[1] + len(context_ids)
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            ids, mask = pad_rows(chunk, self.ids.pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            past = kv_rows(cache, rows=torch.zeros(len(chunk), dtype=torch.long, device=self.device))
            am = torch.cat([torch.ones(len(chunk), base, dtype=torch.long, device=self.device), mask], dim=1)
            yield s, s + len(chunk), self._llm(self._embed_tokens(ids), am, past=past, hidden=hidden, use_cache=True)

    def _after_context_uncached(self, ctx: VideoContext, context_ids: Sequence[int], rows: Sequence[Sequence[int]],
                                batch_size: int, *, hidden: bool = False) -> Iterator[tuple[int, int, object]]:
        """As :meth:`_after_context`, but every row recomputes the prefix and the context; the
        output's sequence axis covers ``prefix + context + row``."""
        p_len = ctx.prefix_embeds.shape[1]
        for s in range(0, len(rows), batch_size):
            chunk = [list(context_ids) + list(r) for r in rows[s : s + batch_size]]
            ids, mask = pad_rows(chunk, self.ids.pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            embeds = torch.cat([ctx.prefix_embeds.expand(len(chunk), -1, -1), self._embed_tokens(ids)], dim=1)
            am = torch.cat([torch.ones(len(chunk), p_len, dtype=torch.long, device=self.device), mask], dim=1)
            yield s, s + len(chunk), self._llm(embeds, am, hidden=hidden)

    @torch.inference_mode()
    def score_continuations(
        self, ctx: VideoContext, context_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
        batch_size: int = 32,
    ) -> list[float]:
        """Sum of log-probabilities of each continuation after ``prefix + context_ids`` (teacher forced)."""
        return self.score_many(ctx, [(context_ids, continuations)], batch_size=batch_size)[0]

    @torch.inference_mode()
    def score_many(
        self, ctx: VideoContext, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *,
        batch_size: int = 32,
    ) -> list[list[float]]:
        """:meth:`score_continuations` of several ``(context_ids, continuations)`` requests.

        Cached: a request whose context generation read (a prefix of ``ctx.kv.ids``) runs on the
        generation's KV cache, with generation's own next-token distribution for its first token;
        another runs its context once (reusing what generation cached). Continuations are split
        into a head they share with others of the request (e.g. ``subject [Obj] predicate``, shared
        by every object) and a tail; each head and each tail runs once. Heads and tails of all
        requests on one cache are packed side by side into the sequence of one forward pass
        (``tokens_per_pass`` tokens at a time) with a 4D attention mask that lets each token see
        its context, its head and its own tail, at the positions it would have after the context:
        the same attention as running each candidate alone (``batch_size`` is the uncached path's
        candidates per pass)."""
        if not self.cached:
            return [self.score_continuations_uncached(ctx, c, conts, batch_size=batch_size) for c, conts in requests]
        conts = [[list(c) for c in cs] for _, cs in requests]
        if any(not c for cs in conts for c in cs):
            raise ValueError("every continuation needs at least one token")
        scores = [torch.zeros(len(cs), dtype=torch.float64) for cs in conts]
        p_len = ctx.prefix_embeds.shape[1]
        on_generation: list[tuple[int, int, torch.Tensor]] = []  # (request, context length, first-token logp)
        for r, (context_ids, _) in enumerate(requests):
            if not conts[r]:
                continue
            if ctx.kv is not None and ctx.kv.serves(context_ids):
                on_generation.append((r, p_len + len(context_ids), ctx.kv.dist(len(context_ids))))
            else:
                cache, first = self._context_cache(ctx, context_ids)
                n = p_len + len(context_ids)
                self._score_on(cache, n, [(r, n, first)], conts, scores)
        if on_generation:
            self._score_on(ctx.kv.cache, p_len + len(ctx.kv.ids), on_generation, conts, scores)
        return [s.tolist() for s in scores]

    def _score_on(self, cache: Any, cache_len: int, jobs: list[tuple[int, int, torch.Tensor]],
                  conts: list[list[list[int]]], scores: list[torch.Tensor]) -> None:
        """Add to ``scores[r]`` the log-probabilities of request ``r``'s continuations for each job
        ``(r, context length, first-token log-probs)``; all jobs read the first ``cache_len``
        positions of ``cache``, each only its context's."""
        segments = []  # (job, head, member indices)
        for j, (r, _, _) in enumerate(jobs):
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, k in enumerate(shared_head_lengths(conts[r])):
                groups.setdefault(tuple(conts[r][i][:k]), []).append(i)
            segments += [(j, head, members) for head, members in groups.items()]
        offsets = np.cumsum([0] + [len(c) for c in conts]).tolist()  # request -> first flat candidate index
        flat = torch.zeros(offsets[-1], dtype=torch.float64)
        firsts = torch.stack([first for _, _, first in jobs])  # [J, V]
        for batch in packed(segments, jobs, conts, self.tokens_per_pass):
            pack = Pack(batch, jobs, conts, offsets, cache_len)
            out = self.model.llm(
                inputs_embeds=self._embed_tokens(torch.tensor([pack.tokens], device=self.device)),
                attention_mask=pack.mask(self.model.llm.dtype, self.device),
                position_ids=torch.tensor([pack.positions], device=self.device),
                use_cache=True, **{self._cache_arg: kv_rows(cache, length=cache_len)},
            )
            logp = torch.cat([firsts.to(self.device), self.log_probs(out.logits[0])])  # [J + Q, V]
            rows = torch.tensor(pack.at, device=self.device) + len(jobs)  # job j's first-token row: j
            picked = logp[rows, torch.tensor(pack.targets, device=self.device)]
            flat.index_add_(0, torch.tensor(pack.owner), picked.double().cpu())
        for r, _, _ in jobs:
            scores[r] += flat[offsets[r] : offsets[r + 1]]

    @torch.inference_mode()
    def score_continuations_uncached(
        self, ctx: VideoContext, context_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
        batch_size: int = 32,
    ) -> list[float]:
        """The reference for :meth:`score_continuations`: each candidate recomputes the whole prefix."""
        conts = [list(c) for c in continuations]
        start = ctx.prefix_embeds.shape[1] + len(context_ids)  # position of the first continuation token
        scores: list[float] = []
        for a, b, out in self._after_context_uncached(ctx, context_ids, conts, batch_size):
            logp = self.log_probs(out.logits)
            for i, c in enumerate(conts[a:b]):
                pos = torch.arange(start - 1, start - 1 + len(c), device=self.device)
                scores.append(float(logp[i, pos, torch.tensor(c, device=self.device)].sum()))
        return scores

    @torch.inference_mode()
    def obj_hidden_after(
        self, ctx: VideoContext, context_ids: Sequence[int], phrases: Sequence[str], *, batch_size: int = 32
    ) -> torch.Tensor:
        """Last-layer hidden state at ``[Obj]`` after ``prefix + context_ids + "<phrase> [Obj]"``, per
        phrase: ``[N, H]``. Lets the predictor ask for the tube of an object the generation did not
        mention (e.g. a tagged category), exactly as a generated mention would prompt it."""
        rows = [self.prompt.text_ids(f"{p} {OBJ_TOKEN}") for p in phrases]
        offset = 0 if self.cached else ctx.prefix_embeds.shape[1] + len(context_ids)
        run = self._after_context if self.cached else self._after_context_uncached
        out: list[torch.Tensor] = []
        for a, b, res in run(ctx, context_ids, rows, batch_size, hidden=True):
            last = torch.tensor([offset + len(r) - 1 for r in rows[a:b]], device=self.device)
            out.append(res.hidden_states[-1][torch.arange(b - a, device=self.device), last])  # [n, H]
        return torch.cat(out) if out else torch.zeros(0, self.model.hidden_size, device=self.device)

    # ------------------------------------------------------------------ masks
    @torch.inference_mode()
    def decode_masks(self, ctx: VideoContext, obj_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obj_hidden [N, H]`` -> ``(mask_logits [N, T, h, w], iou_pred [N, T])`` in one decoder call;
        with a presence head, frames it scores absent (logit < 0) get an empty mask."""
        return self.model.decode_tubes(ctx.mask_features, obj_hidden)
