"""A small word-level tokenizer for the ``tiny`` LLM, built from the scene-graph vocabulary.

Built with the ``tokenizers`` library as a WordPiece model whose vocabulary is

* the special tokens (pad, unk, bos, eos, ``[Obj]``, ``[Video]``),
* every word of the given categories/predicates/prompt, the separator ``;``,
* the frame numbers ``0 .. max_frames - 1`` as whole words,
* every printable ASCII character, alone and as a ``##`` continuation piece.

Known words are one token each. An unseen word (an open-vocabulary category such
as "kettle") falls back to character pieces (``k ##e ##t ##t ##l ##e``), so it
stays expressible and decodes back exactly; only a word with a character outside
printable ASCII becomes ``[Unk]``. The result is a ``transformers``
``PreTrainedTokenizerFast`` (``save_pretrained``/``from_pretrained`` work as usual).
"""

from __future__ import annotations

import string
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from psg4d.model.tokens import (
    ADDED_SPECIAL_TOKENS,
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    PROMPT_TEXT,
    TAG_PROMPT_TEXT,
    TRIPLET_SEP,
    UNK_TOKEN,
)

_CHARS = [c for c in string.printable if not c.isspace()]


def build_word_tokenizer(words: Iterable[str], *, max_frames: int) -> PreTrainedTokenizerFast:
    """Tokenizer over the words of ``words`` (phrases are split on whitespace), lower-cased."""
    specials = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *ADDED_SPECIAL_TOKENS]
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for tok in specials:
        add(tok)
    add(TRIPLET_SEP)
    for c in _CHARS:
        add(c)
        add("##" + c)
    for i in range(max_frames):
        add(str(i))
    for w in sorted({w.lower() for phrase in [*words, PROMPT_TEXT, TAG_PROMPT_TEXT] for w in phrase.split()}):
        add(w)

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=200))
    # Lowercase so "Person" and "person" share a token; categories are compared
    # case-insensitively downstream anyway.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # ";" is split off so "cup;" does not spell the separator with character pieces.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(TRIPLET_SEP, behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=list(ADDED_SPECIAL_TOKENS),
    )
    return fast
