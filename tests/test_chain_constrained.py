"""Constrained chained decoding: each turn's grammar (psg4d.model.chain_grammar) and the token-level
processor (psg4d.model.constrained) on a word-level tokenizer whose words may also be spelled in
character pieces. Random scores stand in for a model that has learnt nothing: whatever it prefers,
a constrained turn ends, names only objects that exist and frames inside the clip, and reads back
without a problem."""

from __future__ import annotations

import pytest
import torch

from psg4d.model.chain_grammar import (
    MAX_PER_PAIR, OBJ_WORD, DescribeGrammar, PairsGrammar, RelationGrammar, SpanGrammar,
)
from psg4d.model.chain_text import parse_describe, parse_pairs, parse_relations, parse_spans
from psg4d.model.constrained import GrammarLogitsProcessor, token_alphabet_uncached
from psg4d.model.tokenizer import build_word_tokenizer
from psg4d.model.tokens import OBJ_TOKEN, special_token_ids

WORDS = ["small red sphere", "flat blue block", "cup", "table", "person", "holding", "next to", "on",
         "1", "2", "3", "4", "5", ":", ";"]


@pytest.fixture(scope="module")
def alphabet():
    tok = build_word_tokenizer(WORDS, max_frames=12)
    ids = special_token_ids(tok)
    return tok, ids, token_alphabet_uncached(tok, obj_id=ids.obj, eos_id=ids.eos, banned=[ids.pad, ids.video])


def _decode(tok, ids, token_ids):
    """Text as the chain predictor reads it: [Obj] tokens kept as the word."""
    parts, cur = [], []
    for t in token_ids:
        if t == ids.obj:
            parts.append(tok.decode(cur, skip_special_tokens=True))
            cur = []
        elif t != ids.eos:
            cur.append(t)
    parts.append(tok.decode(cur, skip_special_tokens=True))
    return f" {OBJ_TOKEN} ".join(p.strip() for p in parts).strip()


def _run(grammar, alphabet, seed: int, *, bias=None):
    """Greedy decoding of random scores under ``grammar``: (token ids, text, processor)."""
    tok, ids, alpha = alphabet
    g = torch.Generator().manual_seed(seed)
    proc = GrammarLogitsProcessor(grammar, alpha)
    out: list[int] = []
    budget = grammar.max_chars() + 1
    while len(out) < budget:
        scores = torch.randn(1, len(tok), generator=g) * 3
        scores[0, ids.eos] -= 4.0  # a model that would rather go on
        if bias is not None:
            scores[0, bias] += 6.0
        nxt = int(torch.argmax(proc(torch.tensor([out], dtype=torch.long), scores)[0]))
        out.append(nxt)
        if nxt == ids.eos:
            break
    return out, _decode(tok, ids, out), proc


def test_grammars_accept_their_templates_and_refuse_what_does_not_parse():
    d = DescribeGrammar(2)
    st = d.start()
    for w in ["1", "small", "red", ":", "cup", OBJ_WORD, ";", "2", "flat", ":", "table", OBJ_WORD]:
        st = d.advance(st, w)
        assert st is not None, w
    assert d.slot(st).final and d.slot(st).literals == frozenset()  # two objects listed: only the end
    assert d.advance(d.start(), "2") is None  # items are numbered from 1, in order
    p = PairsGrammar([1, 2])
    assert p.advance(p.start(), "3") is None  # no such object
    assert p.advance(p.advance(p.start(), "1"), "1") is None  # not with itself
    r = RelationGrammar([(1, 2)])
    assert r.advance(r.start(), "2") is None  # not a listed pair
    st = r.start()
    for k, pred in enumerate(["on", "holding", "touching", "behind"][:MAX_PER_PAIR]):
        for w in (["1", pred, "2"] if k == 0 else [";", "1", pred, "2"]):
            st = r.advance(st, w)
        assert st is not None
    assert r.slot(st).literals == frozenset() and r.slot(st).final  # the pair is full: only the end
    st = r.advance(r.advance(r.advance(r.start(), "1"), "on"), "2")
    assert r.advance(r.advance(r.advance(st, ";"), "1"), "on") is not None
    assert r.advance(r.advance(r.advance(r.advance(st, ";"), "1"), "on"), "2") is None  # an item twice
    s = SpanGrammar([(1, "next to", 2)], last_frame=5)
    st = s.start()
    for w in ["1", "next", "to", "2", "3"]:
        st = s.advance(st, w)
    assert s.advance(st, "2") is None and s.advance(st, "6") is None  # end before start; past the clip
    assert s.advance(s.advance(s.start(), "1"), "holding") is None  # not a listed relation


@pytest.mark.parametrize("seed", range(8))
def test_a_constrained_turn_always_ends_with_existing_objects_and_frames_inside_the_clip(alphabet, seed):
    tok, ids, _ = alphabet
    objects, pairs_listed = [1, 2, 3], [(1, 2), (3, 1)]
    relations = [(1, "holding", 2), (3, "next to", 1)]
    turns = [
        (DescribeGrammar(3), lambda text: parse_describe(text)),
        (PairsGrammar(objects), lambda text: parse_pairs(text, set(objects))),
        (RelationGrammar(pairs_listed), lambda text: parse_relations(text, set(objects))),
        (SpanGrammar(relations, last_frame=7), lambda text: parse_spans(text, set(objects), 8)),
    ]
    for grammar, parse in turns:
        out, text, proc = _run(grammar, alphabet, seed)
        assert out[-1] == ids.eos, (type(grammar).__name__, text)  # ended, within the budget
        assert not proc.dead_end
        res = parse(text)
        assert res.problems == [], (text, res.problems)
        if isinstance(grammar, PairsGrammar):
            assert all(s in objects and o in objects and s != o for s, o in res.items)
        if isinstance(grammar, RelationGrammar):
            assert all((s, o) in pairs_listed for s, _, o in res.items)
        if isinstance(grammar, SpanGrammar):
            assert all(0 <= a <= b <= 7 for *_, a, b in res.items), text
            assert all((s, p.lower(), o) in relations for s, p, o, _, _ in res.items)  # any case
        if isinstance(grammar, DescribeGrammar):
            assert [o.index for o in res.items] == list(range(1, len(res.items) + 1)) and len(res.items) <= 3


def test_a_model_that_wants_an_unknown_object_or_frame_cannot_write_it(alphabet):
    tok, ids, _ = alphabet
    nine, eleven = tok.convert_tokens_to_ids("9"), tok.convert_tokens_to_ids("11")
    out, text, _ = _run(PairsGrammar([1, 2]), alphabet, 0, bias=[nine])
    assert nine not in out and parse_pairs(text, {1, 2}).problems == []
    out, text, _ = _run(SpanGrammar([(1, "on", 2)], last_frame=7), alphabet, 1, bias=[eleven, nine])
    assert eleven not in out and nine not in out
    assert all(b <= 7 for *_, b in parse_spans(text, {1, 2}, 8).items)


def test_words_spelled_in_pieces_are_followed(alphabet):
    """The tiny tokenizer spells an unknown word with ``##`` pieces: the processor follows the
    word across tokens and completes it at the next space or punctuation."""
    tok, ids, alpha = alphabet
    proc = GrammarLogitsProcessor(DescribeGrammar(1), alpha)
    pieces = tok(" 1 kettle : cup", add_special_tokens=False)["input_ids"] + [ids.obj]
    assert len(pieces) > 5  # "kettle" is not a word of this tokenizer
    for k, t in enumerate(pieces):
        assert proc.allowed(proc.state)[t], (k, tok.convert_ids_to_tokens([t]))
        proc.advance(t)
    assert proc.can_end(proc.state)


def test_the_budget_follows_the_listed_objects():
    assert PairsGrammar([1, 2]).max_chars() < PairsGrammar([1, 2, 3, 4]).max_chars()
    assert RelationGrammar([(1, 2)]).max_chars() < RelationGrammar([(1, 2), (2, 1)]).max_chars()
    assert PairsGrammar([]).max_chars() == 1  # nothing listed: only the end of the answer
    assert RelationGrammar([]).max_chars() == 1 and RelationGrammar([]).slot(RelationGrammar([]).start()).final


@pytest.mark.parametrize("grammar", [DescribeGrammar(2), RelationGrammar([(1, 2)]),
                                     SpanGrammar([(1, "next to", 2)], last_frame=11)], ids=lambda g: type(g).__name__)
def test_the_fast_masks_allow_exactly_the_tokens_the_state_machine_accepts(alphabet, grammar):
    """The free-word masks are taken in bulk, without stepping each token: at every state of a
    random decode they must equal stepping every token of the vocabulary."""
    tok, ids, alpha = alphabet
    out, _, proc = _run(grammar, alphabet, 3)
    replay = GrammarLogitsProcessor(grammar, alpha)
    for t in out:
        st = replay.state
        brute = torch.tensor([replay.step(st, v) is not None for v in range(len(tok))])
        brute[ids.eos] = replay.can_end(st)
        assert torch.equal(replay.allowed(st), brute), tok.convert_ids_to_tokens(
            torch.nonzero(replay.allowed(st) ^ brute).flatten().tolist())
        replay.advance(t)


def test_an_untrained_model_s_chain_ends_every_turn_and_reads_back_whole():
    """A model that has learnt nothing writes until its limit when decoding is free; constrained,
    each of its turns ends within its budget and every item parses."""
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.predictor import PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import chain_config, described_sample

    torch.manual_seed(0)
    model = PSG4DModel.from_config(chain_config())
    video = described_sample().video
    free = ChainPredictor(model=model, config=PredictorConfig(mode="chain", constrained=False, max_new_tokens=40))
    free_steps = free.predict(video).meta["chain"]["steps"]
    assert any(s["stopped"] == "length" for s in free_steps)  # what constraining is for
    pred = ChainPredictor(model=model, config=PredictorConfig(mode="chain", chain_max_objects=4)).predict(video)
    pred.validate(require_tubes=True)
    steps = pred.meta["chain"]["steps"]
    assert [s["stopped"] for s in steps] == ["eos"] * 4, [(s["answer"], s["budget"]) for s in steps]
    assert pred.meta["chain"]["problems"] == 0, [s["problems"] for s in steps]
    assert len(steps[0]["items"]) <= 4
