"""Special tokens and the tiny word-level tokenizer."""

from __future__ import annotations

import pytest

from psg4d.errors import CheckpointError
from psg4d.model.grammar import parse_scene_graph
from psg4d.model.tokenizer import build_word_tokenizer
from psg4d.model.tokens import ADDED_SPECIAL_TOKENS, OBJ_TOKEN, VIDEO_TOKEN, special_token_ids


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(["person", "water dispenser", "picking up", "holding"], max_frames=16)


def test_special_ids_are_single_distinct_tokens(tok):
    ids = special_token_ids(tok)
    for token, tid in ((OBJ_TOKEN, ids.obj), (VIDEO_TOKEN, ids.video)):
        assert tok.encode(token, add_special_tokens=False) == [tid]
        assert tok.convert_ids_to_tokens(tid) == token
    assert len({ids.obj, ids.video, ids.pad, ids.eos, ids.bos}) == 5


def test_known_words_are_one_token_and_unknown_words_spell_out(tok):
    text = "person [Obj] picking up kettle [Obj] 3 12 ; water dispenser [Obj]"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:4] == ["person", OBJ_TOKEN, "picking", "up"]
    assert pieces[4:10] == ["k", "##e", "##t", "##t", "##l", "##e"]  # open vocabulary: no [Unk]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    parsed = parse_scene_graph(tok.decode(ids), predicates=["picking up"])
    assert [(t.subject, t.predicate, t.object, t.start, t.end) for t in parsed.triplets] == [
        ("person", "picking up", "kettle", 3, 12)
    ]


def test_save_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "person [Obj] holding mug [Obj] 0 1"
    assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert special_token_ids(again) == special_token_ids(tok)


def test_missing_special_token_is_an_error(tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[Pad]": 0, "[Unk]": 1, "</s>": 2, "a": 3}, unk_token="[Unk]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bare = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[Pad]", unk_token="[Unk]", eos_token="</s>")
    with pytest.raises(CheckpointError, match=r"\[Obj\]"):
        special_token_ids(bare)
    assert set(ADDED_SPECIAL_TOKENS) <= set(tok.get_vocab())
