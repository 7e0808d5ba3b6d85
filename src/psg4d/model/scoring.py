"""Teacher-forced scoring after a video's context (mixed into
:class:`~psg4d.model.generation.SceneGraphGenerator`).

* :meth:`~TeacherForcedScoring.score_many` / :meth:`~TeacherForcedScoring.score_continuations` —
  log-probabilities of many short continuations after a shared context. A context runs through
  the LLM once (not at all when generation already read it: its key/value cache, ``transformers``'
  ``DynamicCache``, is kept); shared heads and each candidate's own tokens are packed into one
  sequence over that cache (:mod:`psg4d.model.packing`).
  :meth:`~TeacherForcedScoring.score_continuations_uncached` recomputes the whole context for every
  candidate: the reference the cached path is tested against.
* :meth:`~TeacherForcedScoring.score_texts` — whole texts whose ``[Obj]`` regions (region
  feedback) are decoded on the way, as generation would.
* :meth:`~TeacherForcedScoring.obj_hidden_after` — the ``[Obj]`` hidden state of
  ``"<phrase> [Obj]"`` after a context (cached the same way).

The host class provides ``model``, ``ids``, ``prompt``, ``cached``, ``tokens_per_pass``,
``device``, ``regions_on``, ``log_probs``, ``decode_regions`` and the LLM calls ``_llm``/``_embed``.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from psg4d.model.batching import pad_rows
from psg4d.model.contexts import VideoContext
from psg4d.model.packing import Pack, kv_rows, packed, shared_head_lengths
from psg4d.model.tokens import OBJ_TOKEN


class TeacherForcedScoring:
    """Scoring methods of :class:`~psg4d.model.generation.SceneGraphGenerator` (module docstring)."""

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
            embeds = torch.cat([embeds, self._embed(ctx, ids)], dim=1)
        out = self._llm(embeds[:, reuse:], torch.ones(1, total, dtype=torch.long, device=self.device), past=past,
                        use_cache=True)
        return getattr(out, self._cache_arg), self.log_probs(out.logits[0, -1])

    def _after_context(self, ctx: VideoContext, context_ids: Sequence[int], rows: Sequence[Sequence[int]],
                       batch_size: int, *, hidden: bool = False) -> Iterator[tuple[int, int, object]]:
        """Teacher-force ``rows`` after ``prefix + context_ids``, ``batch_size`` rows at a time
        (right-padded). Yields ``(start, end, out)`` per chunk, where ``out``'s sequence axis
        covers the rows' tokens only: the context runs once and its cache is shared."""
        cache, _ = self._context_cache(ctx, context_ids)
        yield from self._rows_on_cache(ctx, cache, ctx.prefix_embeds.shape[1] + len(context_ids), rows, batch_size,
                                       hidden=hidden)

    def _rows_on_cache(self, ctx: VideoContext, cache: Any, base: int, rows: Sequence[Sequence[int]],
                       batch_size: int, *, hidden: bool = False) -> Iterator[tuple[int, int, object]]:
        """:meth:`_after_context` on a context cache already run (``base`` positions)."""
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            ids, mask = pad_rows(chunk, self.ids.pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            past = kv_rows(cache, rows=torch.zeros(len(chunk), dtype=torch.long, device=self.device))
            am = torch.cat([torch.ones(len(chunk), base, dtype=torch.long, device=self.device), mask], dim=1)
            yield s, s + len(chunk), self._llm(self._embed(ctx, ids), am, past=past, hidden=hidden, use_cache=True)

    def _after_context_uncached(self, ctx: VideoContext, context_ids: Sequence[int], rows: Sequence[Sequence[int]],
                                batch_size: int, *, hidden: bool = False) -> Iterator[tuple[int, int, object]]:
        """As :meth:`_after_context`, but every row recomputes the prefix and the context; the
        output's sequence axis covers ``prefix + context + row``."""
        p_len = ctx.prefix_embeds.shape[1]
        for s in range(0, len(rows), batch_size):
            chunk = [list(context_ids) + list(r) for r in rows[s : s + batch_size]]
            ids, mask = pad_rows(chunk, self.ids.pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            embeds = torch.cat([ctx.prefix_embeds.expand(len(chunk), -1, -1), self._embed(ctx, ids)], dim=1)
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
        for _, cs in requests:
            self._check_regions(cs)
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
                self._score_on(ctx, cache, n, [(r, n, first)], conts, scores)
        if on_generation:
            self._score_on(ctx, ctx.kv.cache, p_len + len(ctx.kv.ids), on_generation, conts, scores)
        return [s.tolist() for s in scores]

    def _score_on(self, ctx: VideoContext, cache: Any, cache_len: int, jobs: list[tuple[int, int, torch.Tensor]],
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
            logp = firsts.to(self.device)  # [J, V]: all a one-token continuation needs
            if pack.tokens:
                out = self.model.llm(
                    inputs_embeds=self._embed(ctx, pack.tokens),
                    attention_mask=pack.mask(self.model.llm.dtype, self.device),
                    position_ids=torch.tensor([pack.positions], device=self.device),
                    use_cache=True, **{self._cache_arg: kv_rows(cache, length=cache_len)},
                )
                logp = torch.cat([logp, self.log_probs(out.logits[0])])  # [J + Q, V]
            rows = torch.tensor(pack.at, device=self.device) + len(jobs)  # job j's first-token row: j
            picked = logp[rows, torch.tensor(pack.targets, device=self.device)]
            flat.index_add_(0, torch.tensor(pack.owner), picked.double().cpu())
        for r, _, _ in jobs:
            scores[r] += flat[offsets[r] : offsets[r + 1]]

    def _check_regions(self, continuations: Sequence[Sequence[int]]) -> None:
        """With region feedback, an ``[Obj]`` followed by more text must be followed by its region."""
        if not self.regions_on:
            return
        obj = self.ids.obj
        for c in continuations:
            if any(t == obj and c[i + 1] >= 0 for i, t in enumerate(c[:-1])):
                raise ValueError(f"a continuation has an {OBJ_TOKEN} without its region (model.region): give the "
                                 "region id after it (SceneGraphGenerator.add_regions) or use score_texts")

    @torch.inference_mode()
    def score_texts(self, ctx: VideoContext, context_ids: Sequence[int], texts: Sequence[Sequence[int]], *,
                    batch_size: int = 32, max_passes: int | None = None) -> list[float]:
        """Sum of log-probabilities of each whole text after ``prefix + context_ids``. Without region
        feedback this is :meth:`score_continuations`. With it, the region after each inner ``[Obj]``
        of a text is the tube that ``[Obj]``'s hidden state decodes there, as generation feeds it.

        Computed as a fixed point, texts batched: a text runs with the regions of its current
        tubes (at first: empty); the pass decodes its ``[Obj]`` states, and at the first ``[Obj]``
        whose binary tube differs from the one its region was read from, every earlier region
        (and that tube) is known to be the one generation would feed. The text runs again from
        there with the new tubes, until a pass decodes exactly the tubes it read: its score is then
        the one of generation's feeding. Each pass fixes at least one more ``[Obj]``; only the tubes
        not yet fixed are decoded again. ``max_passes`` stops earlier (2: every region is the tube
        decoded with empty regions before it, one refinement; cheaper, not exact)."""
        if not self.regions_on:
            return self.score_continuations(ctx, context_ids, texts, batch_size=batch_size)
        texts = [list(t) for t in texts]
        obj = self.ids.obj
        n_inner = [sum(1 for t in x[:-1] if t == obj) for x in texts]  # [Obj]s followed by more text
        cache, first = self._context_cache(ctx, context_ids)
        base = ctx.prefix_embeds.shape[1] + len(context_ids)
        tubes: list[list[torch.Tensor | None]] = [[None] * n for n in n_inner]  # None: an empty tube
        fixed = [0] * len(texts)  # per text, how many leading tubes are known to be generation's
        scores = [0.0] * len(texts)
        active, passes = list(range(len(texts))), 0
        while active and (max_passes is None or passes < max_passes):
            passes += 1
            rows = []
            for t in active:
                empty = [k for k, m in enumerate(tubes[t]) if m is None]
                region = dict(zip(empty, self.add_regions(ctx, torch.zeros(len(empty), ctx.num_frames, 1, 1,
                                                                           dtype=torch.bool, device=self.device))))
                full = [k for k, m in enumerate(tubes[t]) if m is not None]
                if full:
                    region.update(zip(full, self.add_regions(ctx, torch.stack([tubes[t][k] for k in full]))))
                rows.append(self.model.with_regions(texts[t], [region[k] for k in range(n_inner[t])]))
            hidden, owners = [], []  # the [Obj] states not fixed yet, and (text, index) of each
            for a, b, out in self._rows_on_cache(ctx, cache, base, rows, batch_size, hidden=True):
                logp = self.log_probs(out.logits)  # [n, L, V]
                for i, row in enumerate(rows[a:b]):
                    t = active[a + i]
                    target = torch.tensor(row[1:], device=self.device)
                    steps = logp[i, torch.arange(len(row) - 1, device=self.device), target.clamp(min=0)]
                    scores[t] = float(first[row[0]]) + float(steps.masked_fill(target < 0, 0).sum())
                    pos = [k for k, tok in enumerate(row[:-1]) if tok == obj and row[k + 1] < 0][fixed[t]:]
                    hidden.append(out.hidden_states[-1][i, pos])
                    owners += [(t, fixed[t] + j) for j in range(len(pos))]
            if max_passes is not None and passes == max_passes:
                break  # no later pass would read what this one decodes
            decoded = self.model.decoded_masks(ctx.mask_features, torch.cat(hidden)) if owners else None
            changed: dict[int, int] = {}  # text -> first [Obj] whose tube moved
            for (t, k), m in zip(owners, decoded if decoded is not None else []):
                was = tubes[t][k]
                same = not bool(m.any()) if was is None else torch.equal(m, was)
                if not same and t not in changed:
                    changed[t] = k
                if t in changed:
                    tubes[t][k] = m if bool(m.any()) else None
            for t, k in changed.items():
                fixed[t] = k + 1
            active = sorted(changed)
        return scores

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
                target = torch.tensor(c, device=self.device)
                given = target < 0  # region positions are inputs, not predictions
                scores.append(float(logp[i, pos, target.clamp(min=0)].masked_fill(given, 0).sum()))
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
