"""Every special token string the 4D-LLM uses, in one place.

The scene-graph text (see :mod:`psg4d.model.grammar`) reads::

    <bos> [Video] x N_vis  <prompt words>  subj [Obj] pred obj [Obj] 0 3 ; ... <eos>

* ``[Video]`` is a placeholder: the collator repeats it once per visual token and
  :class:`~psg4d.model.psg4d_llm.PSG4DModel` overwrites the embeddings at exactly
  the positions whose id is the placeholder id (looked up, never a fixed offset).
* ``[Obj]`` follows every subject and object mention; the LLM's last-layer hidden
  state at that position prompts the mask decoder for that object's tube.
* ``;`` separates triplets. It is an ordinary word (not added to the vocabulary)
  so a pretrained tokenizer keeps its own token for it.

``special_token_ids(tokenizer)`` looks the ids up and asserts that each special
string encodes to exactly one token, so a tokenizer that silently splits
``[Obj]`` into pieces fails loudly instead of training on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

from psg4d.errors import CheckpointError

OBJ_TOKEN = "[Obj]"
VIDEO_TOKEN = "[Video]"
TRIPLET_SEP = ";"

# Conventions of the word-level tokenizer built for the `tiny` LLM; a pretrained
# tokenizer keeps its own bos/eos and only gets PAD_TOKEN when it has no pad.
PAD_TOKEN = "[Pad]"
UNK_TOKEN = "[Unk]"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"

# Tokens added to every tokenizer (pretrained or not) as special tokens.
ADDED_SPECIAL_TOKENS: tuple[str, ...] = (OBJ_TOKEN, VIDEO_TOKEN)

# The instruction after the visual tokens. Short on purpose: the tiny tokenizer
# spells unknown words with character pieces.
PROMPT_TEXT = "scene graph :"
# With ``model.tag_words``: the tagged categories, written before PROMPT_TEXT as
# ``objects : mug , jar , tissue box`` (Oscar-style object tags as words).
TAG_PROMPT_TEXT = "objects :"
TAG_SEP = ","


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens in one tokenizer."""

    obj: int
    video: int
    pad: int
    eos: int
    bos: int | None


def _single_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise CheckpointError(
            f"tokenizer encodes special token {token!r} as {len(ids)} tokens {ids}, expected exactly 1"
        )
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid != ids[0] or tid == tokenizer.unk_token_id:
        raise CheckpointError(f"tokenizer has no id for special token {token!r} (got {tid}, encodes to {ids[0]})")
    return int(tid)


def special_token_ids(tokenizer) -> SpecialTokenIds:
    """Look up the special ids of ``tokenizer``; raise CheckpointError if any is missing or multi-token."""
    if tokenizer.eos_token_id is None:
        raise CheckpointError("tokenizer has no eos token")
    if tokenizer.pad_token_id is None:
        raise CheckpointError("tokenizer has no pad token")
    return SpecialTokenIds(
        obj=_single_id(tokenizer, OBJ_TOKEN),
        video=_single_id(tokenizer, VIDEO_TOKEN),
        pad=int(tokenizer.pad_token_id),
        eos=int(tokenizer.eos_token_id),
        bos=None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
    )
