"""Scene-graph grammar: format -> parse round trip, repair rules, fuzzing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.errors import DataError
from psg4d.model.grammar import canonical_triplets, format_scene_graph, parse_scene_graph

PREDICATES = ["picking up", "holding", "next to", "in front of", "on"]


def graph(relations, cats=("person", "water dispenser", "cup", "table")) -> SceneGraph4D:
    objs = [ObjectTrack(i, c, tube=MaskTube.empty(8, 4, 4)) for i, c in enumerate(cats)]
    return SceneGraph4D("v", 8, 4, 4, objs, relations)


def as_rows(g: SceneGraph4D, parsed, gt_obj_ids):
    cats = {o.object_id: o.category for o in g.objects}
    rows = sorted(
        (t.start, t.end, gt_obj_ids[t.subject_obj_index], t.predicate, gt_obj_ids[t.object_obj_index])
        for t in parsed.triplets
    )
    for t in parsed.triplets:
        assert t.subject == cats[gt_obj_ids[t.subject_obj_index]]
        assert t.object == cats[gt_obj_ids[t.object_obj_index]]
    return rows


def test_round_trip_multiword_and_multispan():
    g = graph([
        Relation(0, 1, "picking up", [(0, 1), (5, 7)]),
        Relation(0, 2, "holding", [(2, 4)]),
        Relation(2, 3, "in front of", [(0, 0)]),
        Relation(3, 2, "on", [(3, 3)]),
    ])
    gt = format_scene_graph(g, predicates=PREDICATES)
    assert gt.text.startswith("cup [Obj] in front of table [Obj] 0 0 ; person [Obj] picking up water dispenser")
    assert len(gt.obj_ids) == 2 * 5  # one triplet per span
    for preds in (PREDICATES, None):  # the particle rule reads these predicates without a vocabulary too
        parsed = parse_scene_graph(gt.text, predicates=preds, num_frames=8)
        assert parsed.dropped == 0
        assert as_rows(g, parsed, gt.obj_ids) == canonical_triplets(g)


def test_canonical_order_is_deterministic():
    rels = [Relation(1, 0, "on", [(3, 4)]), Relation(0, 1, "holding", [(0, 2)]), Relation(0, 2, "holding", [(0, 2)])]
    a = format_scene_graph(graph(rels)).text
    b = format_scene_graph(graph(list(reversed(rels)))).text
    assert a == b
    assert a.index("person [Obj] holding water dispenser") < a.index("person [Obj] holding cup") < a.index("[Obj] on")


def test_format_rejects_unknown_predicate_and_object():
    with pytest.raises(DataError, match="not in the predicate vocabulary"):
        format_scene_graph(graph([Relation(0, 1, "kicking", [(0, 1)])]), predicates=PREDICATES)
    with pytest.raises(DataError, match="not an object"):
        format_scene_graph(graph([Relation(0, 9, "on", [(0, 1)])]))


def test_vocabulary_longest_match_and_unknown_predicate():
    text = "person [Obj] in front of table [Obj] 1 2 ; person [Obj] kicking ball [Obj] 0 1"
    parsed = parse_scene_graph(text, predicates=["in", "in front of", "on"])
    assert [(t.predicate, t.object) for t in parsed.triplets] == [("in front of", "table")]
    assert parsed.dropped == 1
    # without a vocabulary the particle rule keeps "kicking" and the object words
    parsed = parse_scene_graph(text)
    assert [(t.predicate, t.object) for t in parsed.triplets] == [("in front of", "table"), ("kicking", "ball")]


def test_repairs_spans_and_separators():
    text = "a [Obj] on b [Obj] 7 2 c [Obj] on d [Obj] 12 ;[Obj] on e [Obj] 1 ; f [Obj] on g [Obj] ; h [Obj] on"
    parsed = parse_scene_graph(text, num_frames=5)
    got = [(t.subject, t.object, t.start, t.end, t.subject_obj_index, t.object_obj_index) for t in parsed.triplets]
    # reversed span swapped then clamped; missing ';' recovered; single number -> [n, n] clamped
    assert got == [("a", "b", 2, 4, 0, 1), ("c", "d", 4, 4, 2, 3)]
    # empty subject, triplet without span numbers, unfinished triplet
    assert parsed.dropped == 3


def test_obj_adjacent_without_spaces_and_case():
    parsed = parse_scene_graph("Person[Obj] Holding Cup[Obj] 0 1", predicates=["holding"])
    assert [(t.subject, t.predicate, t.object) for t in parsed.triplets] == [("Person", "holding", "Cup")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*"ab ;0123456789\n", "[Obj]", " [Obj] ", "on", "next to", "[Ob", "j]"]), max_size=40)
    .map("".join)
    | st.text(max_size=80)
)
def test_parser_never_raises(text):
    for preds in (None, PREDICATES):
        r = parse_scene_graph(text, predicates=preds, num_frames=6)
        assert r.dropped >= 0
        n_obj = text.count("[Obj]")
        for t in r.triplets:
            assert 0 <= t.start <= t.end <= 5
            assert 0 <= t.subject_obj_index < t.object_obj_index < n_obj
            assert t.subject and t.predicate and t.object


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.sampled_from(PREDICATES), st.integers(0, 7),
                          st.integers(0, 7)), max_size=8))
def test_round_trip_property(rows):
    rels = [Relation(s, o, p, [(min(a, b), max(a, b))]) for s, o, p, a, b in rows]
    g = graph(rels)
    gt = format_scene_graph(g, predicates=PREDICATES)
    parsed = parse_scene_graph(gt.text, predicates=PREDICATES, num_frames=8)
    assert parsed.dropped == 0
    assert as_rows(g, parsed, gt.obj_ids) == canonical_triplets(g)
    assert len(gt.obj_ids) == gt.text.count("[Obj]") == 2 * len(parsed.triplets)


def test_rejects_non_string_quietly():
    assert parse_scene_graph(None).triplets == []  # type: ignore[arg-type]
    assert np.isscalar(parse_scene_graph("").dropped)


def test_a_span_number_too_long_for_int_saturates_instead_of_raising():
    # int() refuses strings of more than 4,300 digits; the parser promises never to raise
    huge = "7" * 5000
    clamped = parse_scene_graph(f"cup [Obj] on table [Obj] 1 {huge}", num_frames=6)
    assert [(t.start, t.end) for t in clamped.triplets] == [(1, 5)]
    free = parse_scene_graph(f"cup [Obj] on table [Obj] {huge} 2")
    assert [(t.start, t.end) for t in free.triplets] == [(2, 10**18 - 1)]
