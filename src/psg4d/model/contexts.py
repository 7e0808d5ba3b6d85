"""What inference keeps about one video: the encoded prefix, what generation read and wrote.

:class:`VideoContext` (the LLM prefix, the dense maps, the region table) is made by
:meth:`SceneGraphGenerator.encode_video <psg4d.model.generation.SceneGraphGenerator.encode_video>`;
:class:`Generation` is one greedy decoding; :class:`GenerationCache` is the key/value cache
generation leaves on the context for later scoring (:mod:`psg4d.model.scoring`).
:class:`TeacherForcing` is one teacher-forced training pass (prompt + target through the LLM).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from psg4d.model.encoder import EncoderOutput
from psg4d.model.features import SceneFeatures


@dataclass
class VideoContext:
    """An encoded video ready for decoding: the LLM prefix and the dense maps."""

    prefix_embeds: torch.Tensor  # [1, P, H_llm] bos + visual tokens + prompt
    dense: torch.Tensor  # [T, C, h, w] the scene encoder's per-frame maps
    mask_features: Any  # what the mask decoder reads (PSG4DModel.mask_features): SAM2's, or `dense`
    frame_indices: np.ndarray  # [T] source frame of each model frame
    num_frames: int  # T, the model timeline
    tags: list[str] | None = None  # the tag words in the prompt (model.tag_words)
    # where the depth features came from: "sensor", "estimated" (F_de from RGB) or "none"
    depth_source: str = "sensor"
    # Left by generate(): what it read, so teacher forcing in a context that starts with it does
    # not run those positions again.
    kv: GenerationCache | None = None
    # region feedback: the region embeddings ([H_llm] each) that region id -(1 + k) stands for
    regions: list[torch.Tensor] = field(default_factory=list)


@dataclass
class GenerationCache:
    """The KV cache of ``prefix + ids`` and the next-token log-probabilities after each
    ``ids[:k]`` (``dists[k]``, ``[V]``) as generation computed them."""

    cache: Any
    ids: list[int]
    dists: list[torch.Tensor]
    offset: int = 0  # dists[0] follows ids[:offset] (a generation that started after some tokens)

    def serves(self, context_ids: Sequence[int]) -> bool:
        """Whether scoring after ``context_ids`` needs nothing but this cache."""
        k = len(context_ids)
        return self.offset <= k < self.offset + len(self.dists) and self.ids[:k] == list(context_ids)

    def dist(self, k: int) -> torch.Tensor:
        """Next-token log-probabilities ``[V]`` after ``ids[:k]`` (``serves`` that context first)."""
        return self.dists[k - self.offset]


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # the output (exact repeats of earlier triplets removed)
    obj_hidden: torch.Tensor  # [N_objtok, H_llm] last-layer hidden state at each output [Obj]
    step_logprobs: list[float]  # log-probability of each output token
    context: VideoContext
    context_ids: list[int]  # every token fed to the LLM after the prefix, repeats included
    positions: list[int]  # positions[i]: index of token_ids[i] in context_ids (len(context_ids) if never fed)
    # region feedback: the region id fed after each output [Obj] (aligned with obj_hidden); else empty
    obj_regions: list[int] = field(default_factory=list)

    def context_before(self, i: int) -> list[int]:
        """What the LLM had read (after the prefix) when it produced output token ``i``."""
        return self.context_ids[: self.positions[i]]

    def context_after(self, eos: int) -> list[int]:
        """The whole text as the LLM read it, plus an output token it never read (generation cut by
        its length limit) other than ``eos``: the context of anything appended to the text."""
        unread = [t for t, p in zip(self.token_ids, self.positions) if p >= len(self.context_ids) and t != eos]
        return self.context_ids + unread


def cache_kwarg(llm: torch.nn.Module) -> str:
    """KV-cache argument/output name: ``cache`` in recent transformers, ``past_key_values`` before."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@dataclass
class TeacherForcing:
    """One teacher-forced pass: the encoder output and the LLM over prompt + target."""

    enc: EncoderOutput
    ids: torch.Tensor  # [B, L'] input ids, placeholder expanded to N_vis positions
    labels: torch.Tensor  # [B, L'] target ids, -100 outside the scene-graph text
    hidden: torch.Tensor  # [B, L', H] last-layer hidden states
    logits: torch.Tensor  # [B, L', V]
    tag_logits: torch.Tensor | None  # [B, V_obj]
    prompt_tags: list[list[str]] | None  # the tag words each sample's prompt held
    features: SceneFeatures  # what entered the aggregator, and the real branch features
