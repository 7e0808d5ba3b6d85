"""The label mapper's typo step and direction guard (psg4d.eval.lexical, psg4d.eval.automap).

None of these loads the sentence encoder: the embedding step, where it is reached, runs on a fixed
table of vectors. The known-word check reads the packaged tokenizer's word list (a text file) where
a test leaves ``known_words`` to its default.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _fake_encoders import NoEncoder, TableEncoder

from psg4d.eval import AutoLabelMapper, auto_label_map
from psg4d.eval import automap_validation as validation
from psg4d.eval.lexical import TypoBudget, direction_conflict, directions, nearest_typo, osa_distance


def lexical_only(vocabulary, **kw) -> AutoLabelMapper:
    return AutoLabelMapper(vocabulary, encoder=NoEncoder(), embedding=False, **kw)


# ------------------------------------------------------------------ edit distance


def test_osa_distance_counts_a_swap_as_one_edit():
    assert osa_distance("tabel", "table") == 1  # Levenshtein: 2
    assert osa_distance("lapptop", "laptop") == 1 and osa_distance("sofaa", "sofa") == 1
    assert osa_distance("refigerater", "refrigerator") == 2
    assert osa_distance("", "abc") == 3 and osa_distance("same", "same") == 0
    assert osa_distance("ca", "abc") == 3  # optimal string alignment: no substring edited twice
    # with a limit: anything beyond it is limit + 1, the rest exact
    assert osa_distance("photosynthesis", "table", 2) == 3 and osa_distance("tabel", "table", 2) == 1


def test_typo_budget_grows_with_length():
    b = TypoBudget(4, 8)
    assert [b.edits(n) for n in (1, 3, 4, 7, 8, 13)] == [0, 0, 1, 1, 2, 2]
    assert b.describe() == "1 edit from 4 letters, 2 from 8"


# ------------------------------------------------------------------ the typo step


def test_misspelling_maps_by_typo_with_its_reason():
    m = lexical_only(validation.SYNTH_OBJECTS, known_words=frozenset())
    r = m.map("Tabel")
    assert (r.target, r.method, r.similarity, r.nearest) == ("table", "typo", None, "table")
    assert r.reason == "typo: 1 edit from 'table' ('tabel' -> 'table'; 1 allowed for 5 letters)"
    assert r.to_json()["reason"] == r.reason
    # plurals, multi-word classes and two edits on long words
    assert m.map("suitcsaes").target == "suitcase"
    assert (m.map("cardbord boxes").target, m.map("cardbord boxes").method) == ("cardboard box", "typo")
    hoi = lexical_only(validation.HOI_OBJECTS, known_words=frozenset())
    two = hoi.map("refigerater")
    assert two.target == "refrigerator" and two.reason.startswith("typo: 2 edits from 'refrigerator'")
    assert hoi.map("scisors").target == "Scissors"  # the vocabulary's own spelling
    # a swap that the plural folding would hide ("puhs" is not the plural of "puh")
    assert lexical_only(validation.HOI_PREDICATES, known_words=frozenset()).map("puhs").target == "push"


def test_three_letter_words_are_never_edited():
    m = lexical_only(["cup", "mug", "on", "dog"], known_words=frozenset())
    for text in ("cap", "mud", "in", "dgo", "mugg", "cupp"):
        r = m.map(text)
        assert (r.target, r.method) == (None, "unmapped"), (text, r)
    # nor is a longer label given an edit onto a three-letter class ("cart" is not a misspelt car)
    assert lexical_only(["car", "bus"], known_words=frozenset()).map("cart").method == "unmapped"


def test_too_many_edits_for_the_length_is_not_a_typo():
    m = lexical_only(["bottle", "refrigerator"], known_words=frozenset())
    assert m.map("botl").method == "unmapped"  # 2 edits, 4 letters: 1 allowed
    assert m.map("refrgrator").target == "refrigerator"  # 2 edits, 10 letters: 2 allowed
    assert m.map("rfrgrator").method == "unmapped"  # 3 edits


def test_a_tie_in_edit_distance_is_not_decided_by_typo():
    m = lexical_only(["cart", "card", "table"], known_words=frozenset())
    r = m.map("carx")
    assert (r.target, r.method) == (None, "unmapped")
    assert "a tie" in r.reason and "'cart'" in r.reason and "'card'" in r.reason
    # the tie falls to the embedding step, which decides it on meaning
    enc = TableEncoder({"a cart": [1, 0, 0, 0], "a card": [0, 1, 0, 0], "a table": [0, 0, 1, 0],
                        "a carx": [0.9, 0.1, 0, 0]})  # fmt: skip
    r = AutoLabelMapper(["cart", "card", "table"], kind="object", encoder=enc, known_words=frozenset()).map("carx")
    assert (r.target, r.method) == ("cart", "embedding") and r.reason.startswith("typo step declined")
    # the tie is found however far apart the tied entries' own budgets are
    found = nearest_typo(("abcd",), [("abce", ("abce",)), ("abcf", ("abcf",))], TypoBudget(4, 8))
    assert found is not None and found.entry is None and "a tie" in found.why


def test_a_real_word_is_not_a_typo():
    m = lexical_only(validation.KITCHEN_OBJECTS)  # the packaged tokenizer's words
    for text, near in (("cable", "table"), ("glove", "globe"), ("staple", "stapler"), ("cables", "table")):
        r = m.map(text)
        assert r.method == "unmapped", (text, r)
        assert f"1 edit from {near!r}" in r.reason and "real word" in r.reason
    assert m.map("tabel").target == "table"  # a misspelling is not a word
    # a multi-word label: one misspelt word is enough to be a typo
    assert m.map("bowling pni").target == "bowling pin"


def test_typo_never_crosses_a_direction():
    m = lexical_only(validation.SYNTH_PREDICATES, known_words=frozenset())
    r = m.map("sitting in")  # one edit from "sitting on", but in is not on
    assert (r.target, r.method) == (None, "unmapped")
    assert "typo step declined (1 edit from 'sitting on', in is not on)" in r.reason
    assert m.map("sittng on").target == "sitting on"
    assert m.map("in").method == "unmapped"  # and short words are not edited at all


# ------------------------------------------------------------------ the direction guard


def test_directions_read_the_longest_phrase():
    assert directions(["in", "back", "of"]) == ("back",)
    assert directions(["in", "front", "of"]) == ("front",)
    assert directions(["reaching", "out", "for"]) == ("toward",)
    assert directions(["picking", "up", "from"]) == ("up", "away")
    assert directions(["holding"]) == ()
    assert direction_conflict(["in", "back", "of"], ["in", "front", "of"]) == "back opposes front"
    assert direction_conflict(["underneath"], ["on"]) == "under opposes on"
    assert direction_conflict(["under"], ["behind"]) == "under is not back"
    assert direction_conflict(["on", "top", "of"], ["on"]) is None
    assert direction_conflict(["pushing", "away"], ["pushing"]) is None  # shares push
    assert direction_conflict(["holding"], ["on"]) is None and direction_conflict(["under"], ["holding"]) is None


def _predicate_encoder(label_vec):
    return TableEncoder({
        "a person in front of something": [1, 0, 0, 0], "a person behind something": [0.8, 0.6, 0, 0],
        "a person holding something": [0, 0, 1, 0], "a person in back of something": label_vec,
    })  # fmt: skip


def test_an_antonym_is_refused_and_the_next_nearest_taken():
    # "in back of" nearest to "in front of" (0.98), then "behind" (0.90): the guard refuses the first
    enc = _predicate_encoder([1, 0.2, 0, 0])
    m = AutoLabelMapper(["in front of", "behind", "holding"], kind="predicate", encoder=enc)
    r = m.map("in back of")
    assert (r.target, r.method, r.nearest) == ("behind", "embedding", "behind")
    assert r.reason.startswith("embedding: direction guard refused 'in front of'")
    assert r.reason == ("embedding: direction guard refused 'in front of' 0.981 (back opposes front); "
                        "next nearest 'behind' similarity 0.902 >= 0.6")
    # without the guard the opposite wins
    off = AutoLabelMapper(["in front of", "behind", "holding"], kind="predicate", encoder=enc, direction_guard=False)
    assert off.map("in back of").target == "in front of"


def test_an_antonym_is_refused_and_left_unmapped_below_the_threshold():
    # the next nearest allowed is under the threshold: unmapped, and it (not the opposite) is reported
    enc = _predicate_encoder([0.9, -0.5, 0.4, 0])
    m = AutoLabelMapper(["in front of", "behind", "holding"], kind="predicate", encoder=enc, threshold=0.6)
    r = m.map("in back of")
    assert (r.target, r.method, r.nearest) == (None, "unmapped", "behind")
    assert r.similarity == pytest.approx(0.42 / np.linalg.norm([0.9, -0.5, 0.4]), abs=1e-6)
    assert r.reason == ("unmapped: direction guard refused 'in front of' 0.815 (back opposes front); "
                        f"next nearest 'behind' {r.similarity:.3f} < 0.6")
    # an opposite below the threshold is passed over without a line: the label was not near it anyway
    low = AutoLabelMapper(["in front of", "behind", "holding"], kind="predicate", encoder=enc, threshold=0.9)
    assert low.map("in back of").reason == f"unmapped: nearest 'behind' {r.similarity:.3f} < 0.9"


def test_the_guard_refusing_every_entry_leaves_the_label_unmapped():
    enc = TableEncoder({"a person on something": [1, 0, 0, 0], "a person underneath something": [1, 0, 0, 0]})
    r = AutoLabelMapper(["on"], kind="predicate", encoder=enc).map("underneath")
    assert (r.target, r.nearest, r.similarity) == (None, None, None)
    assert "refused every entry" in r.reason


# ------------------------------------------------------------------ the report


def test_report_json_says_why_each_label_mapped():
    enc = TableEncoder({"a cup": [1, 0, 0, 0], "a table": [0, 1, 0, 0], "a beaker": [0.95, 0.05, 0, 0]})
    lm, report = auto_label_map(object_labels=["tabel", "cups", "beaker", "cup", "quasar"],
                                objects=["cup", "table"], encoder=enc)  # fmt: skip
    assert lm.objects == {"tabel": "table", "cups": "cup", "beaker": "cup"}
    obj = report["objects"]
    assert obj["by_method"] == {"exact": 1, "normalised": 1, "typo": 1, "embedding": 1, "unmapped": 1}
    assert [m["method"] for m in obj["mappings"]] == ["unmapped", "embedding", "typo", "normalised", "exact"]
    reasons = {m["text"]: m["reason"] for m in json.loads(json.dumps(report))["objects"]["mappings"]}
    assert reasons["tabel"].startswith("typo: 1 edit from 'table'")
    assert reasons["cups"].startswith("normalised: 'cups' -> 'cup'")
    assert reasons["beaker"].startswith("embedding: 'cup' similarity")
    assert reasons["quasar"].startswith("unmapped: nearest") and reasons["cup"].startswith("exact")
    assert report["typo_budget"] == "1 edit from 4 letters, 2 from 8"
    _, off = auto_label_map(object_labels=["tabel"], objects=["cup", "table"], encoder=enc, typo=None)
    assert off["typo_budget"] is None and off["objects"]["by_method"]["typo"] == 0


@pytest.mark.parametrize("text", ["", "...", "  "])
def test_empty_labels_are_unmapped_with_a_reason(text):
    r = lexical_only(["cup"]).map(text)
    assert r.method == "unmapped" and r.reason == "unmapped: empty label"
