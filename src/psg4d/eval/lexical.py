"""The label mapper's lexical checks: edit distance for typos, and a guard against opposite directions.

:mod:`psg4d.eval.automap` uses three things from here:

* :func:`osa_distance`, the optimal-string-alignment (restricted Damerau-Levenshtein) distance:
  insertions, deletions, substitutions and swaps of two neighbouring letters (``"tabel"`` ->
  ``"table"`` is one edit, not two), and :class:`TypoBudget`, how many edits a word of some
  length may carry and still be read as a typo. Nothing for three letters or fewer: one edit
  there makes another word (``on``/``in``, ``cup``/``cap``, ``mug``/``rug``).
* :func:`known_words`, the whole words of the sentence encoder's own WordPiece vocabulary. A
  label word found there is a real word, taken as meant rather than as a typo of a class one
  edit away: ``"cable"`` is not a misspelt ``table``, ``"glove"`` not a misspelt ``globe``.
  Real misspellings (``"tabel"``, ``"botle"``, ``"scisors"``) are not whole words there.
* :func:`direction_conflict`, the guard for spatial and directional predicates. Sentence
  embeddings place opposites close together ("in back of" is nearer to "in front of" than to
  "behind"), so a small explicit table (:data:`POLES`, :data:`OPPOSITES`) names the direction
  words. A candidate class is refused when it names the opposite direction of the label
  (``under`` / ``on``), or when both name a direction and they share none (``under`` /
  ``behind``: a different relation, not a synonym). A class that names no direction is never
  refused by this guard, nor is a label that names none.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

log = logging.getLogger(__name__)


def osa_distance(a: str, b: str, limit: int | None = None) -> int:
    """The optimal-string-alignment distance of ``a`` and ``b``: the fewest insertions, deletions,
    substitutions and transpositions of two adjacent characters (no substring edited twice).

    With ``limit``, any distance above it is returned as ``limit + 1`` as soon as that is certain
    (the typo step only needs distances up to its budget, over every entry of a vocabulary).
    """
    if a == b:
        return 0
    if limit is not None and abs(len(a) - len(b)) > limit:
        return limit + 1
    if not a or not b:
        return len(a) + len(b)
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                d = min(d, prev2[j - 2] + 1)
            cur[j] = d
        if limit is not None and min(cur) > limit and (i == len(a) or min(prev) > limit):
            return limit + 1  # a row and the one before it over the limit: no path comes back under it
        prev2, prev = prev, cur
    return prev[-1] if limit is None else min(prev[-1], limit + 1)


@dataclass(frozen=True)
class TypoBudget:
    """How many edits a typo may carry: 1 from ``one_edit_from`` letters, 2 from ``two_edits_from``.

    Letters are counted without spaces, on the shorter of the two forms compared, so a short class
    is never reached by a longer label's budget (``"cart"`` is not given one edit onto ``car``).
    """

    one_edit_from: int = 4
    two_edits_from: int = 8

    def edits(self, letters: int) -> int:
        if letters >= self.two_edits_from:
            return 2
        return 1 if letters >= self.one_edit_from else 0

    def describe(self) -> str:
        return f"1 edit from {self.one_edit_from} letters, 2 from {self.two_edits_from}"


#: Chosen on the validation table (:mod:`psg4d.eval.automap_validation`: 35 misspellings, 8 real
#: words one edit from a class), at the threshold 0.60. Misspellings mapped right: 0.37 with no typo
#: step (the embedding alone), 0.94 with 1 edit from 4 letters and no second edit, 0.97 (34 of 35;
#: the miss, "telivison", is over the two-letter class tv) with a second edit from any of 6 to 10
#: letters, 0.86-0.89 with the first edit from 5 letters ("sofaa", "hnad", "boook", "puhs" lost),
#: 0.74 from 6. No budget maps a misspelling to a wrong class; without the known-word check every
#: budget from 4 letters takes all 8 real words for typos (5 from 5 letters), with it none. So 1
#: edit from 4 letters, and 2 from 8, the middle of the 6-10 plateau: two edits are then at most a
#: quarter of the letters.
DEFAULT_TYPO_BUDGET = TypoBudget(4, 8)


@functools.lru_cache(maxsize=4)
def _vocab_words(path: str) -> frozenset[str]:
    words = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            w = line.strip()
            if len(w) > 1 and w.isascii() and w.isalpha() and w.islower():
                words.add(w)
    log.info("label mapper: %d known words from %s", len(words), path)
    return frozenset(words)


def known_words() -> frozenset[str]:
    """The whole lower-case words of the packaged all-MiniLM-L6-v2 tokenizer (``vocab.txt``, ~21,700
    words; WordPiece continuations ``##..`` excluded). Read once; no model is loaded. A missing
    package is the same one-line :class:`~psg4d.errors.CheckpointError` as the embedding step's."""
    from psg4d.eval.embedding import model_folder

    return _vocab_words(str(model_folder() / "vocab.txt"))


# ----------------------------------------------------------------------------- directions

#: direction name -> the canonical words and phrases that name it (psg4d.eval.automap.canonical_label
#: forms: lower case, plural -s folded, "towards" -> "toward"). The longest phrase wins, so "in front
#: of" names front (not in), "reach out for" names toward (not out), "close to" names near.
POLES: dict[str, tuple[str, ...]] = {
    "front": ("in front of", "in front", "front", "ahead of", "ahead"),
    "back": ("behind", "back", "back of", "in back of", "at back of", "rear", "at rear of", "in rear of"),
    "on": ("on", "onto", "upon", "on top of", "atop"),
    "off": ("off", "off of"),
    "above": ("above", "over"),
    "under": ("under", "underneath", "beneath", "below"),
    "up": ("up", "upward", "upwards", "lift", "lifting", "lifted", "raise", "raising", "raised"),
    "down": ("down", "downward", "downwards", "lower", "lowering", "lowered", "drop", "dropping", "dropped"),
    "toward": ("toward", "approach", "approaching", "approached", "reach out", "reaching out", "reach out for",
               "reaching out for"),
    "away": ("away", "away from", "from", "leave", "leaving", "retreat", "retreating", "depart", "departing"),
    "in": ("in", "inside", "inside of", "into", "within", "enter", "entering"),
    "out": ("out", "out of", "outside", "outside of", "exit", "exiting"),
    "left": ("left", "left of", "to left of", "on left of", "at left of"),
    "right": ("right", "right of", "to right of", "on right of", "at right of"),
    "push": ("push", "pushing", "pushed", "shove", "shoving", "shoved"),
    "pull": ("pull", "pulling", "pulled", "drag", "dragging", "dragged", "tug", "tugging", "tugged", "yank",
             "yanking", "yanked"),
    "near": ("near", "nearby", "next to", "beside", "close to", "adjacent to", "by side of"),
    "far": ("far", "far from", "far away from", "distant from"),
    "open": ("open", "opening", "opened"),
    "close": ("close", "closing", "closed", "shut", "shutting"),
}  # fmt: skip
#: pairs of opposite directions
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("front", "back"), ("on", "under"), ("on", "off"), ("above", "under"), ("up", "down"), ("toward", "away"),
    ("in", "out"), ("left", "right"), ("push", "pull"), ("near", "far"), ("open", "close"),
)  # fmt: skip

_TERMS: dict[tuple[str, ...], str] = {tuple(t.split()): pole for pole, terms in POLES.items() for t in terms}
_LONGEST = max(len(t) for t in _TERMS)
_OPPOSED = frozenset(OPPOSITES) | frozenset((b, a) for a, b in OPPOSITES)


def directions(words: Sequence[str]) -> tuple[str, ...]:
    """The directions a canonical label names, in order of appearance, longest phrase first
    (``["in", "back", "of"]`` -> ``("back",)``, ``["picking", "up", "from"]`` -> ``("up", "away")``)."""
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            pole = _TERMS.get(tuple(words[i : i + n]))
            if pole is not None:
                if pole not in found:
                    found.append(pole)
                i += n
                break
        else:
            i += 1
    return tuple(found)


def direction_conflict(label: Sequence[str], entry: Sequence[str]) -> str | None:
    """Why a label (canonical words) may not map onto an entry (canonical words), or ``None``.

    ``"back opposes front"`` when a direction of the label opposes one of the entry's;
    ``"under is not back"`` when both name directions and share none.
    """
    lab, ent = directions(label), directions(entry)
    if not lab or not ent:
        return None
    for a in lab:
        for b in ent:
            if (a, b) in _OPPOSED:
                return f"{a} opposes {b}"
    if not set(lab) & set(ent):
        return f"{'+'.join(lab)} is not {'+'.join(ent)}"
    return None


# ----------------------------------------------------------------------------- typos


@dataclass(frozen=True)
class TypoMatch:
    """The typo step's finding: ``entry`` within ``edits`` of the label (``budget`` allowed for
    ``letters``), ``label_form`` -> ``entry_form`` the two spellings compared; or ``entry`` ``None``
    with ``why`` saying why no entry was taken (a tie, a real word)."""

    entry: str | None
    edits: int
    budget: int
    letters: int
    label_form: str = ""
    entry_form: str = ""
    why: str = ""

    @property
    def edit_text(self) -> str:
        return f"{self.edits} edit{'s' * (self.edits != 1)}"


def _letters(form: str) -> str:
    return form.replace(" ", "")


def _distance(forms: Sequence[str], others: Sequence[str], limit: int) -> tuple[int, str, str]:
    """The least :func:`osa_distance` (capped at ``limit + 1``) over the forms of two labels, with
    and without spaces."""
    return min(
        (min(osa_distance(a, b, limit), osa_distance(_letters(a), _letters(b), limit)), a, b)
        for a in forms
        for b in others
    )


def nearest_typo(
    forms: Sequence[str],
    entries: Iterable[tuple[str, Sequence[str]]],
    budget: TypoBudget,
    is_known: Callable[[str], bool] = lambda word: False,
) -> TypoMatch | None:
    """The one entry within the typo budget of a label, by :func:`osa_distance`.

    ``forms``: the label's spellings, word for word the same words (its cleaned form, then its
    canonical form with plurals folded: "puhs" is compared as itself, not as "puh"); ``entries``:
    ``(entry, its forms)``. The least distance over the forms, with and without spaces, counts;
    the budget is that of the fewer letters of the two (unfolded, without spaces).

    ``None`` when no entry is within its budget. A :class:`TypoMatch` whose ``entry`` is ``None``
    when the nearest is not unique (two entries at the same distance) or when every word of the
    label the entry lacks ``is_known`` (a real word, not a typo; asked only then).
    """
    table = dict(entries)
    n_label = max(len(_letters(f)) for f in forms)
    limit = budget.edits(n_label)  # no entry gets more (its budget counts the fewer letters)
    least: int | None = None
    best: list[tuple[int, str, str, str, int]] = []  # (edits, entry, label form, entry form, letters)
    for entry, eforms in table.items():
        d, a, b = _distance(forms, eforms, limit)
        letters = min(n_label, max(len(_letters(f)) for f in eforms))
        if least is None or d < least:
            least, best = d, [(d, entry, a, b, letters)]
        elif d == least:
            best.append((d, entry, a, b, letters))
    if least is None or least == 0 or not any(d <= budget.edits(n) for d, _, _, _, n in best):
        return None
    d, entry, a, b, letters = best[0]
    edits = f"{d} edit{'s' * (d > 1)}"
    if len(best) > 1:
        tied = ", ".join(repr(e) for _, e, _, _, _ in best)
        return TypoMatch(None, d, budget.edits(letters), letters, why=f"{edits} from each of {tied}: a tie")
    entry_words = {w for f in table[entry] for w in f.split()}
    extra = [ws for ws in zip(*(f.split() for f in forms)) if not entry_words & set(ws)]
    if extra and all(any(is_known(w) for w in ws) for ws in extra):
        words = ", ".join(repr(ws[0]) for ws in extra)
        real = "is a real word" if len(extra) == 1 else "are real words"
        return TypoMatch(None, d, budget.edits(letters), letters, why=f"{edits} from {entry!r}, but {words} {real}")
    return TypoMatch(entry, d, budget.edits(letters), letters, a, b)
