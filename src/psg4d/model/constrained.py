"""Grammar-constrained decoding at the token level, for any tokenizer.

:class:`GrammarLogitsProcessor` is a ``transformers`` :class:`~transformers.LogitsProcessor`: given
the tokens written so far it sets every token the turn's :class:`~psg4d.model.chain_grammar.WordGrammar`
cannot continue with to ``-inf``, and ``<eos>`` unless the answer is complete. Tokenizers split
words differently (the tiny word-level one writes ``" small"`` whole, SmolLM2's BPE ``" sm"
"all"``), so the processor reads each token as what it adds to the text:

* :class:`TokenAlphabet` (built once per tokenizer) keeps the tokens that add exactly one *unit*,
  with or without a leading space: a run of letters, a run of digits, ``:`` or ``;``, plus
  ``[Obj]``; tokens that add anything else (two words, newlines, other punctuation) are never
  allowed, and nothing the grammars accept needs them (single characters spell every word);
* the processor keeps the grammar state, the word being spelled, and whether a space came last;
  a word is complete at the next space, ``:``, ``;`` or ``[Obj]``, and only then is it given to
  the grammar. Letters never touch digits without a space, and spaces never repeat, so every
  allowed token moves the answer forward by at least one character: a turn ends within
  :meth:`~psg4d.model.chain_grammar.WordGrammar.max_chars` tokens.

Which tokens a state allows is computed from a few precomputed id sets (letter tokens by length,
literal words by their spellings), not by trying every token, and cached per state.
"""

from __future__ import annotations

import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from transformers import LogitsProcessor

from psg4d.model.chain_grammar import MAX_WORD_CHARS, OBJ_WORD, WordGrammar
from psg4d.model.chain_text import NAME_SEP
from psg4d.model.tokens import TRIPLET_SEP

_PUNCT = frozenset({NAME_SEP, TRIPLET_SEP, OBJ_WORD})
_LETTERS = frozenset(string.ascii_letters + "'-")


def _kind(text: str) -> str | None:
    if text in _PUNCT:
        return "punct"
    if text.isdigit() and text.isascii():
        return "digits"
    if text and all(c in _LETTERS for c in text):
        return "letters"
    return None


@dataclass(frozen=True)
class Unit:
    space: bool  # a leading space
    kind: str  # "letters", "digits", "punct" or "space" (a space alone)
    text: str
    starts: bool = True  # decoded alone it reads as its text (a "##" piece does not): may open a segment


class TokenAlphabet:
    """The single-unit tokens of a tokenizer (see the module docstring), indexed for lookups."""

    def __init__(self, tokenizer, *, obj_id: int, eos_id: int, banned: Sequence[int] = ()):
        self.vocab_size = len(tokenizer)
        self.eos = eos_id
        self.units: dict[int, Unit] = {obj_id: Unit(False, "punct", OBJ_WORD)}
        anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
        base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
        skip = set(banned) | {eos_id, obj_id} | set(getattr(tokenizer, "all_special_ids", []))
        for tid in range(self.vocab_size):
            if tid in skip:
                continue
            surface = tokenizer.decode(anchor + [tid], clean_up_tokenization_spaces=False)
            if not surface.startswith(base):
                continue
            added = surface[len(base):]
            space = added.startswith(" ")
            text = added[1:] if space else added
            kind = "space" if space and not text else _kind(text)
            if kind is not None:
                alone = tokenizer.decode([tid], clean_up_tokenization_spaces=False).strip()
                self.units[tid] = Unit(space, kind, text, starts=alone == text)
        # exact spellings -> ids (literal words, punctuation, a space alone)
        self.by_text: dict[tuple[bool, str], list[int]] = defaultdict(list)
        for tid, u in self.units.items():
            self.by_text[(u.space, u.text.lower() if u.kind == "letters" else u.text)].append(tid)
        # free words in bulk, as [V] masks: letter tokens without a space of at most m characters
        # that continue a word (letters_upto[m]); those that start one (a letter first), alone
        # (word_starts) and where a segment opens (opening_letters); letter tokens after a space
        size = torch.zeros(self.vocab_size, dtype=torch.long)
        no_space = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.word_starts = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.opening_letters = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.spaced_letters = torch.zeros(self.vocab_size, dtype=torch.bool)
        for tid, u in self.units.items():
            if u.kind != "letters" or len(u.text) > MAX_WORD_CHARS:
                continue
            first = u.text[0].isalpha()
            if u.space:
                self.spaced_letters[tid] = first
                continue
            size[tid], no_space[tid] = len(u.text), True
            self.word_starts[tid] = first
            self.opening_letters[tid] = first and u.starts
        self.letters_upto = [no_space & (size <= m) for m in range(MAX_WORD_CHARS + 1)]


_CACHE: dict[int, TokenAlphabet] = {}


def token_alphabet(tokenizer, *, obj_id: int, eos_id: int, banned: Sequence[int] = ()) -> TokenAlphabet:
    """The tokenizer's :class:`TokenAlphabet`, built once per tokenizer object."""
    key = id(tokenizer)
    if key not in _CACHE or _CACHE[key].vocab_size != len(tokenizer):
        _CACHE[key] = token_alphabet_uncached(tokenizer, obj_id=obj_id, eos_id=eos_id, banned=banned)
    return _CACHE[key]


def token_alphabet_uncached(tokenizer, *, obj_id: int, eos_id: int, banned: Sequence[int] = ()) -> TokenAlphabet:
    return TokenAlphabet(tokenizer, obj_id=obj_id, eos_id=eos_id, banned=banned)


@dataclass(frozen=True)
class _State:
    grammar: Hashable
    partial: str = ""  # the word being spelled (lower-cased)
    kind: str | None = None  # its kind
    after_space: bool = False
    # at the start of the answer or right after [Obj]: the text decodes from here on its own
    # (psg4d.model.generation.decode_grammar), so a piece that only reads right after others may not come
    segment_start: bool = True


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks the next-token scores of one turn to what ``grammar`` allows (module docstring).

    Called with the turn's tokens so far (``input_ids [1, L]``, only this turn's) and the scores
    ``[1, V]``; it follows the tokens it has not seen yet, so a generation loop calls it once per
    step. :attr:`dead_end` is set when a state allows no token at all (a tokenizer that cannot spell
    a word the grammar needs): ``<eos>`` is then the only choice."""

    def __init__(self, grammar: WordGrammar, alphabet: TokenAlphabet):
        self.grammar = grammar
        self.alphabet = alphabet
        self.state = _State(grammar.start())
        self.seen = 0
        self.dead_end = False
        self._allowed: dict[_State, torch.Tensor] = {}

    # ------------------------------------------------------------ the state machine
    def _complete(self, st: _State) -> Hashable | None:
        """The grammar state once the word being spelled is complete (None: not a word there)."""
        return st.grammar if not st.partial else self.grammar.advance(st.grammar, st.partial)

    def step(self, st: _State, tid: int) -> _State | None:
        """The state after token ``tid`` (None: not allowed). A word starts after a space, at a
        segment's start or at punctuation's, never glued to the word before it."""
        u = self.alphabet.units.get(tid)
        if u is None or (st.segment_start and not u.space and not u.starts):
            return None
        if u.space:
            if st.after_space:
                return None  # spaces never repeat
            g = self._complete(st)
            if g is None:
                return None
            st = _State(g, after_space=True, segment_start=False)
            if u.kind == "space":
                return st
        text = u.text.lower() if u.kind == "letters" else u.text
        if u.kind == "punct":
            g = self._complete(st)
            if g is None:
                return None
            g = self.grammar.advance(g, text)
            return None if g is None else _State(g, segment_start=text == OBJ_WORD)
        if st.partial:
            if u.space or st.kind != u.kind:
                return None  # (a space completed the word above); letters and digits never touch
        elif not (u.space or st.after_space or st.segment_start):
            return None  # a new word right after punctuation needs its space
        word = st.partial + text
        if not self._prefix_ok(st.grammar, word, u.kind):
            return None
        return _State(st.grammar, partial=word, kind=u.kind, segment_start=False)

    def _prefix_ok(self, g: Hashable, word: str, kind: str) -> bool:
        slot = self.grammar.slot(g)
        if any(lit.startswith(word) for lit in slot.literals):
            return True
        return kind == "letters" and slot.free and len(word) <= MAX_WORD_CHARS and word[0].isalpha()

    def can_end(self, st: _State) -> bool:
        g = self._complete(st)
        return g is not None and self.grammar.slot(g).final

    # ------------------------------------------------------------ allowed tokens
    def _free_words(self, st: _State) -> torch.Tensor | None:
        """``[V]`` mask of the letter tokens that spell free words in ``st`` (no check needed), or None."""
        a = self.alphabet
        masks = []
        if st.partial:
            if st.kind == "letters" and self.grammar.slot(st.grammar).free:
                masks.append(a.letters_upto[MAX_WORD_CHARS - len(st.partial)])
            g = self._complete(st)
            if g is not None and self.grammar.slot(g).free:
                masks.append(a.spaced_letters)
        elif self.grammar.slot(st.grammar).free:
            if st.after_space:
                masks.append(a.word_starts)
            else:
                masks.append(a.spaced_letters)
                if st.segment_start:
                    masks.append(a.opening_letters)
        if not masks:
            return None
        out = masks[0].clone()
        for m in masks[1:]:
            out |= m
        return out

    def _literals(self, st: _State) -> set[int]:
        """Token ids that may spell a literal word, punctuation or a space in ``st`` (checked by
        :meth:`step`): a handful, looked up by their spelling."""
        a = self.alphabet
        out: set[int] = set(a.by_text.get((True, ""), ()))

        def starts(g: Hashable) -> None:
            for lit in self.grammar.slot(g).literals:
                for j in range(1, len(lit) + 1):
                    for space in (False, True):
                        out.update(a.by_text.get((space, lit[:j]), ()))

        if st.partial:
            for lit in self.grammar.slot(st.grammar).literals:
                if lit.startswith(st.partial):
                    for j in range(len(st.partial) + 1, len(lit) + 1):
                        out.update(a.by_text.get((False, lit[len(st.partial):j]), ()))
            g = self._complete(st)
            if g is not None:
                starts(g)
        else:
            starts(st.grammar)
        return out

    def allowed(self, st: _State | None = None) -> torch.Tensor:
        """A ``[V]`` bool mask of the tokens allowed in ``st`` (default: the current state)."""
        st = self.state if st is None else st
        if st not in self._allowed:
            bulk = self._free_words(st)
            mask = torch.zeros(self.alphabet.vocab_size, dtype=torch.bool) if bulk is None else bulk
            ids = [t for t in self._literals(st) if self.step(st, t) is not None]
            if ids:
                mask[torch.tensor(ids)] = True
            if self.can_end(st) or not bool(mask.any()):
                mask[self.alphabet.eos] = True
            self._allowed[st] = mask
        return self._allowed[st]

    def advance(self, tid: int) -> None:
        """Follow one written token (``<eos>`` ends the turn; an unallowed token leaves the state)."""
        if tid == self.alphabet.eos:
            return
        nxt = self.step(self.state, tid)
        if nxt is not None:
            self.state = nxt

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for tid in input_ids[0, self.seen:].tolist():
            self.advance(int(tid))
        self.seen = input_ids.shape[1]
        mask = self.allowed()
        if not self.can_end(self.state) and int(mask.sum()) == 1 and bool(mask[self.alphabet.eos]):
            self.dead_end = True
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[: mask.shape[0]] = mask.to(scores.device)[: scores.shape[-1]]
        return scores.masked_fill(~keep, float("-inf"))
