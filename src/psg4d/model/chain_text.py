"""Chained scene-graph text: four steps over the same visual tokens, each step's output read by the next.

One chained sample is one multi-turn sequence; every turn is a prompt (rendered from its template
file in ``chain_templates/``, shipped with the package) and the model's answer, closed by ``<eos>``::

    <bos> [Video] (objects : ...)? <describe prompt>  1 small red sphere : apple [Obj] ; 2 skin-coloured palm : hand [Obj] <eos>
    <pairs prompt>     2 1 <eos>
    <relation prompt>  2 holding 1 ; 2 picking up 1 <eos>
    <span prompt>      2 holding 1 3 7 ; 2 picking up 1 1 3 <eos>

1. **describe**: every object that takes part in a relation, numbered from 1 in order of first
   mention (canonical triplet order, :func:`~psg4d.model.grammar.canonical_triplets`), as
   ``<index> <description> : <category> [Obj]``. The description comes first so the category is
   decided after the appearance is put into words. The ``[Obj]`` hidden state prompts the mask
   decoder for the object's tube, as in the direct grammar; it closes the item, where the state
   has read the object's description and name. With ``[Obj]`` right after the number instead
   the state must guess which object comes next, and training went slower (BENCHMARKS.md).
2. **pairs**: the ordered (subject, object) index pairs that interact.
3. **relation**: ``<subject> <predicate> <object>`` per related pair and predicate.
4. **span**: ``<subject> <predicate> <object> <start> <end>`` per span (model-frame indices).

In training the prompts are context (no loss) and the answers and their ``<eos>`` are targets.
At inference (:mod:`psg4d.infer.chain`) each prompt is appended after the previous answer and
generation runs to the next ``<eos>``.

The parsers never raise: whatever cannot be read is recorded as a *problem* (a sentence) and
skipped, so a malformed answer still yields a valid scene graph with its problems listed.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Sequence

from psg4d.data.schema import ObjectTrack, SceneGraph4D, merge_spans
from psg4d.errors import ConfigError
from psg4d.model.grammar import canonical_triplets, clean_phrase
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP

STEPS: tuple[str, ...] = ("describe", "pairs", "relation", "span")
# Values a template may use: {last_frame} is the last model frame (spans are 0..last_frame).
TEMPLATE_FIELDS: frozenset[str] = frozenset({"last_frame"})
# Separates an object's description from its category in the describe step.
NAME_SEP = ":"
_MAX_DIGITS = 6  # an index or frame number longer than this is not one
# Words every chained answer may use besides categories, predicates and descriptions: the name
# separator and object numbers (frame numbers are in the tokenizer already).
CHAIN_WORDS: tuple[str, ...] = (NAME_SEP, *(str(i) for i in range(1, 33)))


@dataclass(frozen=True)
class ChainTemplates:
    """The prompt text of each step (``{field}`` placeholders from :data:`TEMPLATE_FIELDS`)."""

    texts: dict[str, str]

    @classmethod
    def load(cls, folder: str | None = None) -> "ChainTemplates":
        """One ``<step>.txt`` per step from ``folder`` (default: the package's ``chain_templates``)."""
        from pathlib import Path

        texts = {}
        for step in STEPS:
            if folder is None:
                path = resources.files("psg4d.model") / "chain_templates" / f"{step}.txt"
            else:
                path = Path(folder) / f"{step}.txt"
            if not path.is_file():
                raise ConfigError(f"{path}: chain prompt template not found")
            text = " ".join(path.read_text(encoding="utf-8").split())
            if not text:
                raise ConfigError(f"{path}: chain prompt template is empty")
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f}
            if used - TEMPLATE_FIELDS:
                raise ConfigError(f"{path}: unknown template fields {sorted(used - TEMPLATE_FIELDS)};"
                                  f" known: {sorted(TEMPLATE_FIELDS)}")
            texts[step] = text
        return cls(texts)

    def render(self, step: str, *, num_frames: int) -> str:
        """The prompt of ``step`` for a clip of ``num_frames`` model frames."""
        return self.texts[step].format(last_frame=max(num_frames - 1, 0))

    def words(self) -> list[str]:
        """Every word the templates can write (for a word-level tokenizer's vocabulary)."""
        return sorted({w for t in self.texts.values() for w in t.replace("{", " ").replace("}", " ").split()})


@dataclass
class ChainText:
    """A graph as the four answers (``answers[step]``) and the object id of each ``[Obj]``."""

    answers: dict[str, str]
    obj_ids: list[int]


def describe_phrase(text: str) -> str:
    """A description or category as chain words: no ``[Obj]``, ``;`` or ``:``, single spaces."""
    return " ".join(clean_phrase(text).replace(NAME_SEP, " ").split())


def format_chain(graph: SceneGraph4D, *, describe: Callable[[ObjectTrack], str]) -> ChainText:
    """``graph`` (spans on the model timeline) as the four chained answers; ``describe(obj)`` is
    an object's appearance in words."""
    objects = graph.object_by_id()
    rows = canonical_triplets(graph)
    order: dict[int, int] = {}  # object id -> 1-based index, by first mention
    for _, _, s, _, o in rows:
        for i in (s, o):
            order.setdefault(i, len(order) + 1)
    items = []
    for oid, k in order.items():
        obj = objects[oid]
        items.append(f"{k} {describe_phrase(describe(obj)) or describe_phrase(obj.category)} {NAME_SEP} "
                     f"{describe_phrase(obj.category)} {OBJ_TOKEN}")
    pairs: dict[tuple[int, int], None] = {}
    relations: dict[tuple[int, str, int], list[tuple[int, int]]] = {}
    for a, b, s, p, o in rows:
        pairs.setdefault((order[s], order[o]))
        relations.setdefault((order[s], p, order[o]), []).append((a, b))
    sep = f" {TRIPLET_SEP} "
    rel_lines = [f"{s} {p} {o}" for (s, p, o) in relations]
    span_lines = [f"{s} {p} {o} {a} {b}" for (s, p, o), spans in relations.items() for a, b in merge_spans(spans)]
    return ChainText(
        answers={"describe": sep.join(items), "pairs": sep.join(f"{s} {o}" for s, o in pairs),
                 "relation": sep.join(rel_lines), "span": sep.join(span_lines)},
        obj_ids=list(order),
    )


# ------------------------------------------------------------------ parsing
@dataclass
class ChainObject:
    index: int  # the number the answer gave it
    description: str
    category: str
    obj_index: int  # which [Obj] of the describe answer (its hidden state prompts the tube)


@dataclass
class StepResult:
    items: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _items(text: str) -> list[str]:
    return [" ".join(part.split()) for part in str(text).split(TRIPLET_SEP)]


def _int(word: str) -> int | None:
    return int(word) if word.isdigit() and len(word) <= _MAX_DIGITS else None


def parse_describe(text: str) -> StepResult:
    """``k description : category [Obj] ; ...`` -> :class:`ChainObject` per item with an ``[Obj]``."""
    out = StepResult()
    obj_count = 0
    seen: set[int] = set()
    for item in _items(text):
        if not item:
            continue
        n_obj = item.count(OBJ_TOKEN)
        here, obj_count = obj_count, obj_count + n_obj
        if n_obj == 0:
            out.problems.append(f"describe: {item!r} has no {OBJ_TOKEN}, so no tube; skipped")
            continue
        body = item.split(OBJ_TOKEN)[0].split()
        index = _int(body[0]) if body else None
        if index is None:
            out.problems.append(f"describe: {item!r} does not start with an object number; skipped")
            continue
        if index in seen:
            out.problems.append(f"describe: object {index} listed twice; the first kept")
            continue
        rest = " ".join(body[1:])
        desc, sep, cat = rest.rpartition(NAME_SEP)
        if not sep:  # no description: the words are the category
            desc, cat = "", rest
        cat = " ".join(cat.split())
        if not cat:
            out.problems.append(f"describe: object {index} has no category; skipped")
            continue
        if n_obj > 1:
            out.problems.append(f"describe: object {index} has {n_obj} {OBJ_TOKEN}; the first prompts its tube")
        seen.add(index)
        out.items.append(ChainObject(index, " ".join(desc.split()), cat, here))
    return out


def parse_pairs(text: str, known: set[int]) -> StepResult:
    """``s o ; ...`` -> ``(s, o)`` index pairs between known objects (unknown ones recorded)."""
    out = StepResult()
    for item in _items(text):
        if not item:
            continue
        words = item.split()
        nums = [_int(w) for w in words]
        if len(words) != 2 or None in nums:
            out.problems.append(f"pairs: {item!r} is not two object numbers; skipped")
            continue
        s, o = nums
        if s not in known or o not in known:
            out.problems.append(f"pairs: {item!r} names an object the describe step did not list; skipped")
        elif s == o:
            out.problems.append(f"pairs: {item!r} pairs an object with itself; skipped")
        elif (s, o) not in out.items:
            out.items.append((s, o))
    return out


def _relation(item: str, known: set[int], step: str, n_tail: int, problems: list[str]):
    words = item.split()
    if len(words) < 3 + n_tail:
        problems.append(f"{step}: {item!r} is too short to be a relation; skipped")
        return None
    head = _int(words[0])
    tail = [_int(w) for w in words[len(words) - 1 - n_tail:]]
    if head is None or None in tail:
        problems.append(f"{step}: {item!r} does not have the object numbers where they belong; skipped")
        return None
    s, o, rest = head, tail[0], tail[1:]
    pred = " ".join(words[1 : len(words) - 1 - n_tail])
    if s not in known or o not in known:
        problems.append(f"{step}: {item!r} names an object the describe step did not list; skipped")
        return None
    return s, pred, o, rest


def parse_relations(text: str, known: set[int], predicates: Sequence[str] | None = None) -> StepResult:
    """``s predicate o ; ...`` -> ``(s, predicate, o)``; a predicate outside ``predicates`` is kept
    (open vocabulary) and recorded."""
    out = StepResult()
    vocab = None if not predicates else {clean_phrase(p).lower(): clean_phrase(p) for p in predicates}
    for item in _items(text):
        if not item:
            continue
        rel = _relation(item, known, "relation", 0, out.problems)
        if rel is None:
            continue
        s, pred, o, _ = rel
        if vocab is not None:
            if pred.lower() in vocab:
                pred = vocab[pred.lower()]
            else:
                out.problems.append(f"relation: predicate {pred!r} is not in the predicate vocabulary; kept as is")
        if (s, pred, o) not in out.items:
            out.items.append((s, pred, o))
    return out


def parse_spans(text: str, known: set[int], num_frames: int) -> StepResult:
    """``s predicate o start end ; ...`` -> ``(s, predicate, o, start, end)`` on ``[0, num_frames)``:
    reversed bounds are swapped and out-of-range ones clamped, each recorded."""
    out = StepResult()
    last = max(num_frames - 1, 0)
    for item in _items(text):
        if not item:
            continue
        rel = _relation(item, known, "span", 2, out.problems)
        if rel is None:
            continue
        s, pred, o, (a, b) = rel
        if a > b:
            out.problems.append(f"span: {item!r} ends before it starts; bounds swapped")
            a, b = b, a
        if b > last:
            out.problems.append(f"span: {item!r} runs past the last frame {last}; clamped")
            a, b = min(a, last), last
        out.items.append((s, pred, o, a, b))
    return out


_PUNCT = re.compile(r"\s+")


def normalize_description(text: str) -> str:
    """Descriptions compared case- and whitespace-insensitively."""
    return _PUNCT.sub(" ", str(text).lower()).strip()
