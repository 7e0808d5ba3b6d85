"""The LLM's input sequences: ids of prompt + scene-graph text, and their embeddings.

* The prompt's single ``[Video]`` placeholder is repeated once per visual token
  (:func:`expand_placeholder`), and the projected visual tokens are scattered into the input
  embeddings exactly there (:func:`embed`, LLaVA style).
* With region feedback (:mod:`psg4d.model.region`) every ``[Obj]`` of the text is followed by a
  region id ``-(1 + k)``, which takes row ``k`` of a region table instead of a word embedding
  (:func:`embed_ids`) and is never a label.
* :func:`training_rows` lays out a batch for teacher forcing: ids, attention and labels (-100 on
  the prompt, the visual tokens, region positions and context that is not learned).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from psg4d.model.batching import pad_rows
from psg4d.model.prompt import Prompt
from psg4d.model.region import insert_after, region_id, region_index


def expand_placeholder(prefix: Sequence[int], video: int, n_vis: int) -> list[int]:
    """Prompt ids with its single placeholder ``video`` repeated ``n_vis`` times."""
    where = [i for i, t in enumerate(prefix) if t == video]
    if len(where) != 1:
        raise ValueError(f"prompt has {len(where)} video placeholders, expected 1")
    p = where[0]
    return list(prefix[:p]) + [video] * n_vis + list(prefix[p + 1 :])


def embed_ids(table: nn.Module, input_ids: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
    """Input embeddings ``[..., H]`` of ``input_ids [...]``: ``table``'s word embeddings, and
    ``regions[k]`` (``[K, H]``) at region ids ``-(1 + k)``."""
    is_region = input_ids < 0
    if not bool(is_region.any()):
        return table(input_ids)
    if regions is None:
        raise ValueError("the ids hold region positions but no region embeddings were given")
    embeds = table(input_ids.clamp(min=0))
    return embeds.masked_scatter(is_region.unsqueeze(-1), regions.to(embeds.dtype)[region_index(input_ids[is_region])])


def embed(table: nn.Module, input_ids: torch.Tensor, video: int, visual: torch.Tensor,
          regions: torch.Tensor | None = None) -> torch.Tensor:
    """``input_ids [B, L']`` (placeholder ``video`` expanded), ``visual [B, N_vis, H]`` -> ``[B, L', H]``."""
    embeds = embed_ids(table, input_ids, regions)
    where = input_ids == video  # [B, L']
    if int(where.sum()) != visual.shape[0] * visual.shape[1]:
        raise ValueError(f"{int(where.sum())} placeholder positions (id {video}) for "
                         f"{visual.shape[0] * visual.shape[1]} visual tokens")
    return embeds.masked_scatter(where.unsqueeze(-1), visual.to(embeds.dtype))


def training_rows(prompt: Prompt, target_ids: torch.Tensor, target_mask: torch.Tensor,
                  prompt_tags: Sequence[Sequence[str]] | None, n_vis: int, *, chain: torch.Tensor | None = None,
                  target_loss_mask: torch.Tensor | None = None, num_frames: int = 1,
                  regions: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + target per sample -> (ids, attention, labels) ``[B, L']``, right-padded. ``chain [B]``:
    samples whose prompt is the chain's first step; ``target_loss_mask [B, L]``: 0 where a target
    token is context (a later step's prompt), labelled -100. ``regions``: every ``[Obj]`` is
    followed by a region id (numbered over the batch, in order), labelled -100."""
    if target_loss_mask is not None and target_loss_mask.shape != target_ids.shape:
        raise ValueError(f"target_loss_mask {tuple(target_loss_mask.shape)} does not match target_ids "
                         f"{tuple(target_ids.shape)}")
    ids = prompt.ids
    rows, labels = [], []
    n_regions = 0
    for b in range(target_ids.shape[0]):
        tags = None if prompt_tags is None else prompt_tags[b]
        chained = chain is not None and bool(chain[b])
        prefix = prompt.chain_prefix_ids(tags, num_frames) if chained else prompt.prefix_ids(tags)
        prefix = expand_placeholder(prefix, ids.video, n_vis)
        keep = target_mask[b].bool()
        target = target_ids[b][keep].tolist()
        learn = [True] * len(target) if target_loss_mask is None else target_loss_mask[b][keep].bool().tolist()
        if regions:
            n_obj = target.count(ids.obj)
            learn = [x for t, k in zip(target, learn) for x in ((k, False) if t == ids.obj else (k,))]
            target = insert_after(target, ids.obj, [region_id(n_regions + k) for k in range(n_obj)])
            n_regions += n_obj
        rows.append(prefix + target)
        labels.append([-100] * len(prefix) + [t if k and t >= 0 else -100 for t, k in zip(target, learn)])
    out, attention = pad_rows(rows, ids.pad)
    lab, _ = pad_rows(labels, -100)
    dev = target_ids.device
    return out.to(dev), attention.to(dev), lab.to(dev)
