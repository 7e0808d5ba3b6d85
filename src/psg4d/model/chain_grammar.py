"""What each chained turn may write, word by word: the grammars that constrain chained decoding.

Each turn of the chain (:mod:`psg4d.model.chain_text`) has a template; its grammar allows exactly
what that template allows, and nothing that would not parse:

* **describe** — ``k description : category [Obj]`` items numbered ``1, 2, ...`` in order, at most
  ``max_objects`` of them; descriptions of 1-10 words and categories of 1-4 words (letters only);
* **pairs** — ``s o`` with ``s != o`` both numbers the describe turn listed, each pair once;
* **relation** — ``s predicate o`` for a pair the pairs turn listed (none listed: an empty answer),
  a predicate of 1-4 words, at most :data:`MAX_PER_PAIR` predicates per pair;
* **span** — ``s predicate o start end`` for a relation the relation turn listed, frames
  ``0 <= start <= end <= last`` of the clip, at most :data:`MAX_SPANS` spans per relation;

items separated by ``;``, the answer ending after the last item. Every grammar's language is
finite, so a turn decoded under it ends: :meth:`WordGrammar.max_chars` bounds its length (each
generated token writes at least one character), and it is the turn's token budget. The budget of
``pairs``, ``relation`` and ``span`` follows from the objects the describe turn listed.

A grammar works on words: a state, the :class:`Slot` of words it accepts next, and the state after
a word. The token level (which token may come next, whatever the tokenizer) is
:mod:`psg4d.model.constrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence

from psg4d.model.chain_text import NAME_SEP
from psg4d.model.tokens import TRIPLET_SEP

#: the word the [Obj] token stands for in a grammar (a character no text holds)
OBJ_WORD = "\x01"
MAX_WORD_CHARS = 16  # a free word (description, category, predicate) is at most this long
DESCRIPTION_WORDS = 10
CATEGORY_WORDS = 4
PREDICATE_WORDS = 4
MAX_PER_PAIR = 3  # predicates the relation turn may give one pair
MAX_SPANS = 4  # spans the span turn may give one relation


@dataclass(frozen=True)
class Slot:
    """The words a grammar state accepts next: ``literals`` (exact words), ``free`` (any word of
    letters, at most :data:`MAX_WORD_CHARS`), and whether the answer may end here (``final``)."""

    literals: frozenset[str] = frozenset()
    free: bool = False
    final: bool = False


class WordGrammar(Protocol):
    """A turn's grammar over words (hashable states; :class:`Slot` per state)."""

    def start(self) -> Hashable: ...

    def slot(self, state: Hashable) -> Slot: ...

    def advance(self, state: Hashable, word: str) -> Hashable | None:
        """The state after ``word`` (lower-cased letters, digits, ``:``, ``;`` or :data:`OBJ_WORD`);
        None when the slot does not accept it."""

    def max_chars(self) -> int:
        """An upper bound on the characters of any answer the grammar accepts."""


def _free_word(word: str) -> bool:
    return 0 < len(word) <= MAX_WORD_CHARS and all(c.isalpha() or c in "'-" for c in word) and word[0].isalpha()


def _digits(n: int) -> int:
    return len(str(max(n, 0)))


_SEP = frozenset({TRIPLET_SEP})


class DescribeGrammar:
    """``k description : category [Obj] ; ...``; state ``(items done, phase, words in phase)``."""

    def __init__(self, max_objects: int):
        self.max_objects = max(int(max_objects), 0)

    def start(self):
        return (0, "index", 0)

    def slot(self, state) -> Slot:
        k, phase, n = state
        if phase == "index":
            return Slot(literals=frozenset({str(k + 1)}) if k < self.max_objects else frozenset(), final=k == 0)
        if phase == "desc":
            return Slot(literals=frozenset({NAME_SEP}) if n else frozenset(), free=n < DESCRIPTION_WORDS)
        if phase == "cat":
            return Slot(literals=frozenset({OBJ_WORD}) if n else frozenset(), free=n < CATEGORY_WORDS)
        return Slot(literals=_SEP if k < self.max_objects else frozenset(), final=True)  # after an item

    def advance(self, state, word: str):
        k, phase, n = state
        slot = self.slot(state)
        if word not in slot.literals and not (slot.free and _free_word(word)):
            return None
        if phase == "index":
            return (k, "desc", 0)
        if phase == "desc":
            return (k, "cat", 0) if word == NAME_SEP else (k, "desc", n + 1)
        if phase == "cat":
            return (k + 1, "after", 0) if word == OBJ_WORD else (k, "cat", n + 1)
        return (k, "index", 0)

    def max_chars(self) -> int:
        word = MAX_WORD_CHARS + 1
        item = _digits(self.max_objects) + 1 + DESCRIPTION_WORDS * word + 2 + CATEGORY_WORDS * word + 2 + 2
        return self.max_objects * item + 1


class PairsGrammar:
    """``s o ; ...`` over the listed object numbers, ``s != o``, each pair once; state
    ``(pairs done, phase, subject)``."""

    def __init__(self, objects: Sequence[int]):
        self.objects = sorted(set(int(o) for o in objects))
        self.all_pairs = frozenset((s, o) for s in self.objects for o in self.objects if s != o)

    def start(self):
        return (frozenset(), "s", None)

    def _open(self, done, s=None):
        return [p for p in self.all_pairs - done if s is None or p[0] == s]

    def slot(self, state) -> Slot:
        done, phase, s = state
        if phase == "s":
            return Slot(literals=frozenset(str(a) for a, _ in self._open(done)), final=not done)
        if phase == "o":
            return Slot(literals=frozenset(str(b) for _, b in self._open(done, s)))
        return Slot(literals=_SEP if self._open(done) else frozenset(), final=True)

    def advance(self, state, word: str):
        done, phase, s = state
        if word not in self.slot(state).literals:
            return None
        if phase == "s":
            return (done, "o", int(word))
        if phase == "o":
            return (done | {(s, int(word))}, "after", None)
        return (done, "s", None)

    def max_chars(self) -> int:
        d = _digits(max(self.objects, default=0))
        return len(self.all_pairs) * (2 * (d + 1) + 2) + 1


class RelationGrammar:
    """``s predicate o ; ...`` for the listed pairs; state ``(items done, phase, subject, words)``
    where ``items done`` counts the predicates of each pair (a repeated item is refused)."""

    def __init__(self, pairs: Sequence[tuple[int, int]]):
        self.pairs = sorted({(int(s), int(o)) for s, o in pairs if s != o})

    def start(self):
        return (frozenset(), "s", None, ())

    def _room(self, done, s=None):
        return [(a, b) for a, b in self.pairs if (s is None or a == s)
                and sum(1 for x, _, y in done if (x, y) == (a, b)) < MAX_PER_PAIR]

    def slot(self, state) -> Slot:
        done, phase, s, words = state
        if phase == "s":
            return Slot(literals=frozenset(str(a) for a, _ in self._room(done)), final=not done)
        if phase == "p":
            pred = " ".join(words)
            objs = frozenset(str(b) for _, b in self._room(done, s) if (s, pred, b) not in done) if words else frozenset()
            return Slot(literals=objs, free=len(words) < PREDICATE_WORDS)
        return Slot(literals=_SEP if self._room(done) else frozenset(), final=True)

    def advance(self, state, word: str):
        done, phase, s, words = state
        slot = self.slot(state)
        if word not in slot.literals and not (slot.free and _free_word(word)):
            return None
        if phase == "s":
            return (done, "p", int(word), ())
        if phase == "p":
            if word.isdigit():
                return (done | {(s, " ".join(words), int(word))}, "after", None, ())
            return (done, "p", s, words + (word,))
        return (done, "s", None, ())

    def max_chars(self) -> int:
        d = _digits(max((max(p) for p in self.pairs), default=0))
        item = 2 * (d + 1) + PREDICATE_WORDS * (MAX_WORD_CHARS + 1) + 2
        return len(self.pairs) * MAX_PER_PAIR * item + 1


class SpanGrammar:
    """``s predicate o start end ; ...`` for the listed relations on frames ``0..last``; state
    ``(spans done, phase, subject, words, object, start)``."""

    def __init__(self, relations: Sequence[tuple[int, str, int]], last_frame: int):
        self.relations = sorted({(int(s), " ".join(str(p).lower().split()), int(o)) for s, p, o in relations})
        self.last = max(int(last_frame), 0)

    def start(self):
        return (frozenset(), "s", None, (), None, None)

    def _room(self, done):
        return [r for r in self.relations if sum(1 for x in done if x[:3] == r) < MAX_SPANS]

    def slot(self, state) -> Slot:
        done, phase, s, words, o, a = state
        frames = range(self.last + 1)
        if phase == "s":
            return Slot(literals=frozenset(str(r[0]) for r in self._room(done)), final=not done)
        if phase == "p":  # the next word of a listed predicate of s, or its object once a predicate is whole
            n = len(words)
            lits = set()
            for rs, rp, ro in self._room(done):
                pw = tuple(rp.split())
                if rs == s and pw[:n] == words:
                    lits.add(pw[n] if n < len(pw) else str(ro))
            return Slot(literals=frozenset(lits))
        if phase == "a":
            return Slot(literals=frozenset(str(f) for f in frames))
        if phase == "b":
            return Slot(literals=frozenset(str(f) for f in frames if f >= a
                                           and (s, " ".join(words), o, a, f) not in done))
        return Slot(literals=_SEP if self._room(done) else frozenset(), final=True)

    def advance(self, state, word: str):
        done, phase, s, words, o, a = state
        if word not in self.slot(state).literals:
            return None
        if phase == "s":
            return (done, "p", int(word), (), None, None)
        if phase == "p":
            return (done, "a", s, words, int(word), None) if word.isdigit() else (done, "p", s, words + (word,), None, None)
        if phase == "a":
            return (done, "b", s, words, o, int(word))
        if phase == "b":
            return (done | {(s, " ".join(words), o, a, int(word))}, "after", None, (), None, None)
        return (done, "s", None, (), None, None)

    def max_chars(self) -> int:
        d = _digits(max((max(r[0], r[2]) for r in self.relations), default=0))
        f = _digits(self.last)
        longest = max((len(r[1]) for r in self.relations), default=0)
        item = 2 * (d + 1) + longest + 1 + 2 * (f + 1) + 2
        return len(self.relations) * MAX_SPANS * item + 1
