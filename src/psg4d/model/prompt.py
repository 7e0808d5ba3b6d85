"""The text around the scene graph: the prompt before it and the target ids of it.

One :class:`Prompt` per tokenizer turns words into ids the same way for training
(the collator's targets, the model's prefix) and inference (generation, scoring)::

    <bos> [Video] (objects : t1 , t2)? scene graph :  subj [Obj] pred obj [Obj] 0 3 ; ... <eos>
    '---------------- prefix_ids(tags) ---------------' '------------ target_ids(text) -------------'

The prefix holds ONE ``[Video]`` placeholder; the model expands it to as many
positions as the encoder produced visual tokens. With ``model.tag_words`` the
object tags are written as words (Oscar style) in ``object_vocab`` order, so
their order carries no information of its own.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from psg4d.model.chain_text import STEPS, ChainTemplates
from psg4d.model.tokens import PROMPT_TEXT, TAG_PROMPT_TEXT, TAG_SEP, TRIPLET_SEP, SpecialTokenIds, special_token_ids


class Prompt:
    """Word <-> id conventions of one tokenizer (keyword-only; see the module docstring)."""

    def __init__(self, *, tokenizer: Any, object_vocab: Sequence[str], tag_word_noise: float = 0.0):
        self.tokenizer = tokenizer
        self.ids: SpecialTokenIds = special_token_ids(tokenizer)
        self.object_vocab = list(object_vocab)
        self.tag_word_noise = tag_word_noise
        self._order = {c: i for i, c in enumerate(self.object_vocab)}
        self._prompt_ids = self.text_ids(PROMPT_TEXT)
        self.chain_templates = ChainTemplates.load()
        self._tag_prompt_ids = self.text_ids(TAG_PROMPT_TEXT)
        self._tag_sep_ids = self.text_ids(TAG_SEP)
        # A triplet separator may be spelled with or without a leading space; both count.
        spellings = (self.text_ids(TRIPLET_SEP), tokenizer.encode(TRIPLET_SEP, add_special_tokens=False))
        self.sep_ids: frozenset[int] = frozenset(ids[0] for ids in spellings if len(ids) == 1)

    def text_ids(self, text: str) -> list[int]:
        """Ids of ``text`` as it appears after other words (leading space)."""
        return self.tokenizer.encode(" " + text, add_special_tokens=False)

    def target_ids(self, text: str) -> list[int]:
        """Ids of a scene-graph text followed by ``<eos>``: what the LLM learns to write."""
        return self.text_ids(text) + [self.ids.eos]

    def prefix_ids(self, tags: Sequence[str] | None = None, *, instruction: str | None = None) -> list[int]:
        """``<bos>? [Video] (objects : t1 , t2 ...)? scene graph :`` (tags None: no tag words;
        ``instruction``: other words in place of ``scene graph :``, e.g. a chain's first prompt)."""
        bos = [] if self.ids.bos is None else [self.ids.bos]
        tag_ids: list[int] = []
        if tags is not None:
            tag_ids = list(self._tag_prompt_ids)
            for k, tag in enumerate(sorted(set(tags), key=lambda c: (self._order.get(c, len(self._order)), c))):
                tag_ids += (list(self._tag_sep_ids) if k else []) + self.text_ids(tag)
        instruction_ids = list(self._prompt_ids) if instruction is None else self.text_ids(instruction)
        return bos + [self.ids.video] + tag_ids + instruction_ids

    def chain_prefix_ids(self, tags: Sequence[str] | None, num_frames: int) -> list[int]:
        """The prefix of a chained sample: its first prompt (describe) in place of ``scene graph :``."""
        return self.prefix_ids(tags, instruction=self.chain_templates.render("describe", num_frames=num_frames))

    def chain_target_ids(self, answers: dict[str, str], num_frames: int) -> tuple[list[int], list[int]]:
        """The chained answers as ``(ids, loss_mask)``: each answer and its ``<eos>`` are targets
        (1), the prompts of the steps after the first are context (0)."""
        ids: list[int] = []
        mask: list[int] = []
        for k, step in enumerate(STEPS):
            if k:
                prompt = self.text_ids(self.chain_templates.render(step, num_frames=num_frames))
                ids += prompt
                mask += [0] * len(prompt)
            answer = (self.text_ids(answers[step]) if answers[step] else []) + [self.ids.eos]
            ids += answer
            mask += [1] * len(answer)
        return ids, mask

    def training_tags(self, predicted: Sequence[str]) -> list[str]:
        """The model's own predicted tags with each dropped with probability ``tag_word_noise``
        (torch RNG, so resumable). Nothing is added: a training prompt holds only what
        inference could have written."""
        p = self.tag_word_noise
        tags = [c for c in dict.fromkeys(predicted) if c in self._order]
        if p <= 0:
            return tags
        return [c for c in tags if float(torch.rand(())) >= p]

    def banned_ids(self) -> list[int]:
        """Ids generation must never produce: the placeholder, padding and a second ``<bos>``."""
        banned = {self.ids.video, self.ids.pad} - {self.ids.eos}
        if self.ids.bos is not None and self.ids.bos != self.ids.eos:
            banned.add(self.ids.bos)
        return sorted(banned)
