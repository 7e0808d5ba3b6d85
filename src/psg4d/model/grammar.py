"""The one module that writes and parses scene-graph text.

Grammar (one triplet per span)::

    subject [Obj] predicate object [Obj] start end ; subject [Obj] ...

* ``start``/``end`` are inclusive frame indices in the model's frame timeline.
* Categories and predicates may have several words ("water dispenser",
  "picking up"). The parser splits by *structure*: the first ``[Obj]`` closes the
  subject, the second closes ``predicate object``, and the integers after it are
  the span.
* Predicate vs object words: with a predicate vocabulary the predicate is the
  **longest** vocabulary entry (in words, case-insensitive) that is a prefix of the
  words between the two ``[Obj]`` while leaving at least one word for the object;
  no match -> the triplet is dropped. Without a vocabulary the predicate is the
  first word plus the longest run of following words from :data:`PARTICLES`
  (prepositions/particles such as "up", "to", "of"), again leaving one word for
  the object: "picking up water dispenser" -> ("picking up", "water dispenser"),
  "in front of table" -> ("in front of", "table").
* A relation with several spans becomes one triplet per span (after
  :func:`~psg4d.data.schema.merge_spans`).
* Canonical order (deterministic training targets): by start frame, end frame,
  subject id, predicate, object id.

Parsing never raises. Whatever cannot form a triplet is counted in
``ParseResult.dropped``: a partial triplet cut by ``;`` or the end of the text,
words with no ``[Obj]``, an empty subject, a middle part that cannot be split
into predicate and object, an unknown predicate (vocabulary given), or no span
number. Span repair: a single number ``n`` means ``[n, n]``; reversed bounds are
swapped; with ``num_frames`` both ends are clamped to ``[0, num_frames - 1]``;
numbers after the first two are ignored. A missing ``;`` is tolerated: a word
after the span numbers starts the next triplet.

``[Obj]`` indices (``subject_obj_index``/``object_obj_index``) count every
``[Obj]`` occurrence in the text, including those of dropped triplets, so they
index the ``[Obj]`` token positions of the generated sequence one to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from psg4d.data.schema import SceneGraph4D, merge_spans
from psg4d.errors import DataError
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP

# Words that continue a predicate after its first word when no vocabulary is given.
PARTICLES: frozenset[str] = frozenset(
    {
        "about", "above", "across", "against", "along", "around", "at", "away", "behind", "below",
        "beneath", "beside", "between", "by", "down", "for", "from", "front", "in", "inside", "into",
        "near", "next", "of", "off", "on", "onto", "out", "outside", "over", "through", "to",
        "toward", "towards", "under", "up", "upon", "with", "within",
    }
)  # fmt: skip

_LEXER = re.compile(re.escape(OBJ_TOKEN) + "|" + re.escape(TRIPLET_SEP) + r"|\n|[^\s;]+?(?=\[Obj\]|;|\s|$)")
_INT = re.compile(r"^\d+$")
# Span numbers longer than this saturate instead of being converted: int() refuses more than 4,300
# digits, and no video has 10^18 frames (with ``num_frames`` they clamp to the last frame anyway).
_MAX_DIGITS = 18
_SATURATED = 10**_MAX_DIGITS - 1


@dataclass
class GrammarText:
    """Scene-graph text and the object id each ``[Obj]`` occurrence refers to, in order."""

    text: str
    obj_ids: list[int]


@dataclass
class ParsedTriplet:
    subject: str
    predicate: str
    object: str
    start: int
    end: int
    subject_obj_index: int
    object_obj_index: int


@dataclass
class ParseResult:
    triplets: list[ParsedTriplet] = field(default_factory=list)
    dropped: int = 0


def clean_phrase(name: str) -> str:
    """A category/predicate as grammar words: no ``[Obj]``, no ``;``, single spaces."""
    name = name.replace(OBJ_TOKEN, " ").replace(TRIPLET_SEP, " ").replace("\n", " ")
    return " ".join(name.split())


def canonical_triplets(graph: SceneGraph4D) -> list[tuple[int, int, int, str, int]]:
    """``(start, end, subject_id, predicate, object_id)`` per relation span, canonically sorted."""
    rows = []
    for r in graph.relations:
        for a, b in merge_spans(r.spans):
            rows.append((int(a), int(b), int(r.subject_id), clean_phrase(r.predicate), int(r.object_id)))
    return sorted(set(rows))


def format_scene_graph(graph: SceneGraph4D, *, predicates: Sequence[str] | None = None) -> GrammarText:
    """Write ``graph`` as grammar text.

    With ``predicates``, a relation whose predicate is not in the vocabulary is a
    DataError, because the parser could not read it back.
    """
    objects = graph.object_by_id()
    vocab = None if predicates is None else {clean_phrase(p).lower() for p in predicates}
    parts: list[str] = []
    obj_ids: list[int] = []
    for start, end, sid, pred, oid in canonical_triplets(graph):
        for role, i in (("subject", sid), ("object", oid)):
            if i not in objects:
                raise DataError(graph.video_id, f"relation {role} id {i} is not an object of this video")
        if vocab is not None and pred.lower() not in vocab:
            raise DataError(graph.video_id, f"predicate {pred!r} is not in the predicate vocabulary")
        subj, obj = clean_phrase(objects[sid].category), clean_phrase(objects[oid].category)
        if not subj or not obj or not pred:
            raise DataError(graph.video_id, f"empty category or predicate in relation ({sid}, {pred!r}, {oid})")
        parts.append(f"{subj} {OBJ_TOKEN} {pred} {obj} {OBJ_TOKEN} {start} {end}")
        obj_ids.extend((sid, oid))
    return GrammarText(text=f" {TRIPLET_SEP} ".join(parts), obj_ids=obj_ids)


def _split_middle(words: list[str], vocab: list[tuple[list[str], str]] | None) -> tuple[str, str] | None:
    if len(words) < 2:
        return None
    lower = [w.lower() for w in words]
    if vocab is not None:
        for pred_words, canonical in vocab:  # sorted longest first
            n = len(pred_words)
            if n < len(words) and lower[:n] == pred_words:
                return canonical, " ".join(words[n:])
        return None
    n = 1
    while n < len(words) - 1 and lower[n] in PARTICLES:
        n += 1
    return " ".join(words[:n]), " ".join(words[n:])


def parse_scene_graph(
    text: str, *, predicates: Sequence[str] | None = None, num_frames: int | None = None
) -> ParseResult:
    """Parse grammar text into triplets; never raises (see module docstring for the repair rules)."""
    vocab = None
    if predicates is not None:
        entries = {clean_phrase(p).lower(): clean_phrase(p) for p in predicates if clean_phrase(p)}
        vocab = sorted(((k.split(), v) for k, v in entries.items()), key=lambda e: -len(e[0]))
    result = ParseResult()
    if not isinstance(text, str):
        return result

    subject: list[str] = []
    middle: list[str] = []
    numbers: list[int] = []
    state = "subject"  # subject -> middle -> span
    obj_count = 0
    subj_idx = obj_idx = -1

    def finish() -> None:
        nonlocal subject, middle, numbers, state
        if state == "span" and numbers:
            split = _split_middle(middle, vocab)
            if subject and split is not None:
                a = numbers[0]
                b = numbers[1] if len(numbers) > 1 else a
                a, b = min(a, b), max(a, b)
                if num_frames is not None and num_frames > 0:
                    a, b = min(max(a, 0), num_frames - 1), min(max(b, 0), num_frames - 1)
                pred, obj = split
                result.triplets.append(ParsedTriplet(" ".join(subject), pred, obj, a, b, subj_idx, obj_idx))
            else:
                result.dropped += 1
        elif subject or middle or state != "subject":
            result.dropped += 1
        subject, middle, numbers, state = [], [], [], "subject"

    for tok in _LEXER.findall(text):
        if tok in (TRIPLET_SEP, "\n"):
            finish()
        elif tok == OBJ_TOKEN:
            if state == "subject":
                subj_idx, state = obj_count, "middle"
            elif state == "middle":
                obj_idx, state = obj_count, "span"
            else:
                # an [Obj] where span numbers belong: close this triplet, and the
                # [Obj] closes an (empty, hence dropped) subject of the next
                finish()
                subj_idx, state = obj_count, "middle"
            obj_count += 1
        elif state == "subject":
            subject.append(tok)
        elif state == "middle":
            middle.append(tok)
        elif _INT.match(tok) and len(numbers) < 2:
            numbers.append(int(tok) if len(tok) <= _MAX_DIGITS else _SATURATED)
        elif _INT.match(tok):
            continue  # extra numbers after the span are ignored
        else:
            finish()  # missing separator: this word starts the next subject
            subject.append(tok)
    finish()
    return result
