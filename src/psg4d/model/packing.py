"""Many teacher-forced continuations in few forward passes, sharing one context's KV cache.

Scoring ranked candidates means running thousands of short continuations
(``subject [Obj] predicate object [Obj]``) after one long context (the video's
tokens and the generated text). :func:`shared_head_lengths` splits each
continuation into a head it shares with others and a tail; :class:`Pack` lays
heads and tails side by side in ONE sequence, with the positions each token would
have after its context and a 4D attention mask that lets it see only its context,
its head and its own tail: the attention of running every candidate alone, but
each shared token runs once and the context's keys and values are not copied per
candidate. :func:`kv_rows` copies the rows/positions of a ``transformers`` cache
that another batch needs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def kv_rows(cache: Any, *, rows: torch.Tensor | None = None, length: int | None = None) -> Any:
    """A new cache of the same class holding ``cache``'s batch rows ``rows`` (repeats allowed;
    None: all) and its first ``length`` positions (None: all). The source is not modified, so one
    context cache serves many batches; indexing copies once, a plain crop is a view."""
    out = type(cache)()
    for layer, (keys, values, *_) in enumerate(cache):  # [B, heads, L, d] each
        if length is not None:
            keys, values = keys[:, :, :length], values[:, :, :length]
        if rows is not None:
            keys, values = keys[rows], values[rows]
        out.update(keys, values, layer)
    return out


def packed(segments: list[tuple[int, tuple[int, ...], list[int]]], jobs: list, conts: list[list[list[int]]],
            budget: int):
    """Yield lists of segments ``(job, head, member indices)`` whose tokens (the head once, each
    tail but its last token) fill at most ``budget`` positions; a larger segment goes alone."""
    batch: list[tuple[int, tuple[int, ...], list[int]]] = []
    used = 0
    for seg in segments:
        j, head, members = seg
        r = jobs[j][0]
        size = len(head) + sum(len(conts[r][i]) - len(head) - 1 for i in members)
        if batch and used + size > budget:
            yield batch
            batch, used = [], 0
        batch.append(seg)
        used += size
    if batch:
        yield batch


class Pack:
    """Heads and tails side by side in one sequence (see :meth:`SceneGraphGenerator.score_many`).

    For every query token: ``tokens``, ``positions`` (its position after its context), the
    cache positions it may attend to (``[0, ctx)``) and the in-sequence ones: ``[seg,
    head_end)`` (its head) and ``[own, itself]`` (its own head or tail so far). For every scored
    token of every candidate: ``at`` (the query whose logits predict it; ``j - J`` for job j's
    first-token log-probs), ``targets`` and ``owner`` (the flat candidate index); region ids
    (negative) are queries but never scored."""

    def __init__(self, segments, jobs, conts: list[list[list[int]]], offsets: list[int], cache_len: int):
        self.cache_len = cache_len
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.ctx: list[int] = []
        self.seg: list[int] = []
        self.head_end: list[int] = []
        self.own: list[int] = []
        self.at: list[int] = []
        self.targets: list[int] = []
        self.owner: list[int] = []
        n_jobs = len(jobs)
        for j, head, members in segments:
            r, ctx_len, _ = jobs[j]
            start, k = len(self.tokens), len(head)
            for t, tok in enumerate(head):
                self._query(tok, ctx_len + t, ctx_len, start, start + k, start)
            first = j - n_jobs  # the job's own first-token distribution
            last = start + k - 1 if k else first  # predicts each tail's first token
            for i in members:
                owner = offsets[r] + i
                for t in range(k):  # the shared head's tokens count for every candidate that has it
                    self._score(start + t - 1 if t else first, head[t], owner)
                tail = conts[r][i][k:]
                self._score(last, tail[0], owner)
                own = len(self.tokens)
                for t, tok in enumerate(tail[:-1]):
                    self._query(tok, ctx_len + k + t, ctx_len, start, start + k, own)
                    self._score(own + t, tail[t + 1], owner)

    def _query(self, token: int, position: int, ctx: int, seg: int, head_end: int, own: int) -> None:
        self.tokens.append(token)
        self.positions.append(position)
        self.ctx.append(ctx)
        self.seg.append(seg)
        self.head_end.append(head_end)
        self.own.append(own)

    def _score(self, at: int, target: int, owner: int) -> None:
        if target < 0:
            return  # a region position (psg4d.model.region) is given, not predicted
        self.at.append(at)
        self.targets.append(target)
        self.owner.append(owner)

    def mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive ``[1, 1, Q, cache_len + Q]`` mask (0: attend; the dtype's minimum: not)."""
        n = len(self.tokens)
        q = torch.arange(n, device=device)[:, None]  # [Q, 1]
        k = torch.arange(n, device=device)[None, :]  # [1, Q]
        ctx, seg, head_end, own = (torch.tensor(v, device=device)[:, None]
                                   for v in (self.ctx, self.seg, self.head_end, self.own))
        in_seq = ((k >= seg) & (k < head_end) & (k <= q)) | ((k >= own) & (k <= q))  # [Q, Q]
        in_cache = torch.arange(self.cache_len, device=device)[None, :] < ctx  # [Q, cache_len]
        allowed = torch.cat([in_cache, in_seq], dim=1)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def shared_head_lengths(conts: Sequence[Sequence[int]]) -> list[int]:
    """Per continuation, the length of the longest prefix it shares with any other continuation
    (at most its length - 1, so a tail remains). In sorted order a sequence's longest common
    prefix with the others is the one with a neighbour: ``O(n log n)``, not ``O(n^2)``."""
    order = sorted(range(len(conts)), key=lambda i: conts[i])

    def lcp(a: Sequence[int], b: Sequence[int]) -> int:
        return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    out = [0] * len(conts)
    for r, i in enumerate(order):
        best = 0
        if r > 0:
            best = lcp(conts[i], conts[order[r - 1]])
        if r + 1 < len(order):
            best = max(best, lcp(conts[i], conts[order[r + 1]]))
        out[i] = min(best, len(conts[i]) - 1)
    return out
