"""Naming an object from its description with the language model's own knowledge.

The chain's describe step puts an object's appearance into words before it names it. When the
description is one that training never connected to a category (an object of a kind no training
data showed), the trained model can only answer with a name it was trained on. This step asks the
LLM itself instead, from text alone and with its fine-tuning adapters switched off (what it knew
before it saw any video), few-shot with the descriptions training did connect to names::

    Object: small white cylinder. Name: mug.
    Object: tall green cylinder. Name: bottle.
    Object: small red sphere. Name:            -> " apple."

* with a target vocabulary (``vocabulary``): every name of the **whole** vocabulary is scored as
  the continuation ``" <name>."`` and the best one wins, so chance is ``1 / len(vocabulary)``
  (:attr:`LanguageCategoriser.chance`; a namer offered only the names training never used would
  be told the answer's set). By default scores are calibrated against the same name after a
  neutral description (``Object: object.``): the log-probability the description *adds* to the
  name, so frequent short words do not win by being frequent (``calibrate=False``: raw);
* without one: a short greedy answer up to the first ``.`` (free text, mapped to a dataset's
  vocabulary at evaluation by :mod:`psg4d.eval.labelmap`).

A randomly initialised LLM (the ``tiny`` preset) has no such knowledge: its answers are at chance,
and the experiment reports them as that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from psg4d.model.contexts import cache_kwarg

NEUTRAL_DESCRIPTION = "object"
_MAX_NAME_TOKENS = 6


@dataclass
class Naming:
    name: str
    score: float | None  # calibrated log-probability (vocabulary mode), None for free text
    how: str  # "vocabulary" or "free"


class LanguageCategoriser:
    """Names described objects with the LLM alone (keyword-only; see the module docstring)."""

    def __init__(self, *, llm: Any, tokenizer: Any, examples: dict[str, list[str]],
                 vocabulary: Sequence[str] | None = None, max_examples: int = 12, calibrate: bool = True):
        self.llm = llm
        self.tokenizer = tokenizer
        shots = [(d, c) for c, ds in examples.items() for d in ds[:1] if d and d.lower() != c.lower()]
        self.shots = shots[:max_examples]
        self.candidates = list(dict.fromkeys(vocabulary or []))
        self.free = vocabulary is None
        self.calibrate = calibrate  # False: raw log-probabilities, no neutral description subtracted
        self._neutral: dict[str, float] | None = None

    @property
    def chance(self) -> float | None:
        """The accuracy of a random pick among the candidates (None in free-text mode)."""
        return None if self.free or not self.candidates else 1.0 / len(self.candidates)

    def _prompt(self, description: str) -> str:
        lines = [f"Object: {d}. Name: {c}." for d, c in self.shots]
        return "\n".join(lines + [f"Object: {description}. Name:"])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @contextlib.contextmanager
    def _base_model(self):
        """The LLM without its fine-tuning adapters (peft), if it has any."""
        disable = getattr(self.llm, "disable_adapter", None)
        with (disable() if callable(disable) else contextlib.nullcontext()):
            yield self.llm

    @torch.inference_mode()
    def _scores(self, description: str) -> list[float]:
        """Sum of log-probabilities of each candidate continuation ``" <name>."`` after the prompt.

        The prompt is read once (its KV cache, repeated for every candidate); the candidates are
        then read together, right-padded, each from the prompt's last token: the long shared
        prompt is not recomputed once per vocabulary name."""
        prompt = self._ids(self._prompt(description))
        tails = [self._ids(f" {c}.") for c in self.candidates]
        dev = next(self.llm.parameters()).device
        head, rows = prompt[:-1], [prompt[-1:] + t for t in tails]  # each row predicts its tail's tokens
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=dev)  # [C, W]
        mask = torch.tensor([[1] * (len(head) + len(r)) + [0] * (width - len(r)) for r in rows], device=dev)
        name = cache_kwarg(self.llm)  # "cache" or, in older transformers, "past_key_values"
        with self._base_model() as llm:
            cache = None
            if head:
                cache = getattr(llm(input_ids=torch.tensor([head], device=dev), use_cache=True), name)
                cache.batch_repeat_interleave(len(rows))
            logits = llm(input_ids=ids, attention_mask=mask, use_cache=cache is not None, **{name: cache}).logits
        logp = torch.log_softmax(logits[:, -width:].float(), dim=-1)  # [C, W, V]
        return [float(logp[i, torch.arange(len(t), device=dev), torch.tensor(t, device=dev)].sum())
                for i, t in enumerate(tails)]

    @torch.inference_mode()
    def _free(self, description: str) -> str:
        ids = self._ids(self._prompt(description))
        dev = next(self.llm.parameters()).device
        out: list[int] = []
        with self._base_model() as llm:
            for _ in range(_MAX_NAME_TOKENS):
                logits = llm(input_ids=torch.tensor([ids + out], device=dev), logits_to_keep=1).logits[0, -1]
                nxt = int(torch.argmax(logits))
                if nxt == self.tokenizer.eos_token_id:
                    break
                out.append(nxt)
                if any(c in self.tokenizer.decode(out) for c in ".\n"):
                    break
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return " ".join(text.split("\n")[0].split(".")[0].split())

    def __call__(self, description: str) -> Naming:
        if self.free or not self.candidates:
            return Naming(self._free(description), None, "free")
        scores = self._scores(description)
        if self.calibrate:
            if self._neutral is None:
                self._neutral = dict(zip(self.candidates, self._scores(NEUTRAL_DESCRIPTION)))
            scores = [s - self._neutral[c] for c, s in zip(self.candidates, scores)]
        best = max(range(len(scores)), key=scores.__getitem__)
        return Naming(self.candidates[best], scores[best], "vocabulary")
