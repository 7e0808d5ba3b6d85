"""The object tags of the 4D-LLM's prompt (:class:`PromptTags`, a mixin of ``PSG4DModel``).

The model tags each video with the object categories it sees, from the tag head (visual tokens
-> category logits) or the segmentation head's per-cell argmax (``model.tag_source``), and uses
them two ways:

* as words in its own prompt (``model.tag_words``): :meth:`PromptTags.inference_tags` at inference,
  :meth:`PromptTags.prompt_tags` at training time, which drops some (``tag_word_noise``) so the LLM
  learns to read past a missed tag; never the ground truth, so training sees what inference sees;
* as extra LLM input tokens after the visual ones (``model.tag_tokens``):
  :meth:`PromptTags._tag_tokens`, each top-K category's name embedding scaled by its probability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only
    from psg4d.model.encoder import EncoderOutput
    from psg4d.model.prompt import Prompt


def category_word_ids(prompt: "Prompt", object_vocab: Sequence[str]) -> torch.Tensor:
    """``[V_obj, W]`` word ids of each category name, right-padded with -1 (``[[-1]]`` for an
    empty vocabulary, so the table is never zero-sized)."""
    cat_ids = [prompt.text_ids(c) for c in object_vocab]
    width = max((len(c) for c in cat_ids), default=1)
    return torch.tensor([c + [-1] * (width - len(c)) for c in cat_ids] or [[-1]], dtype=torch.long)


class PromptTags:
    """The prompt tags of :class:`~psg4d.model.psg4d_llm.PSG4DModel` (a mixin: the model's ``config``,
    ``seg_head``, ``prompt``, ``llm`` and ``_category_ids`` buffer are its own)."""

    def segmentation_tags(self, dense: torch.Tensor) -> list[str]:
        """``dense [T, D, h, w]`` -> the categories that are the segmentation head's per-cell argmax
        over at least ``tag_min_area`` of the frame (mean over frames), in vocabulary order."""
        winner = self.seg_head(dense).argmax(1)  # [T, h, w]; the last class is "unlabelled"
        area = F.one_hot(winner, self.seg_head.out_channels).float().mean(dim=(0, 1, 2))  # [C]
        return [c for c, a in zip(self.config.object_vocab, area.tolist()) if a >= self.config.tag_min_area]

    def predicted_tags(self, tag_logits: torch.Tensor) -> list[str]:
        """``tag_logits [V_obj]`` -> the categories with probability >= ``tag_threshold``."""
        probs = torch.sigmoid(tag_logits.float())
        return [c for c, p in zip(self.config.object_vocab, probs.tolist()) if p >= self.config.tag_threshold]

    def inference_tags(self, dense: torch.Tensor, tag_logits: torch.Tensor | None) -> list[str] | None:
        """The tag words the model writes into its own prompt for one video (None: no tag words).
        ``dense [T, D, h, w]``, ``tag_logits [V_obj]``."""
        cfg = self.config
        if not cfg.tag_words:
            return None
        if cfg.tag_source == "segmentation" and self.seg_head is not None:
            return self.segmentation_tags(dense)
        return self.predicted_tags(tag_logits) if tag_logits is not None else None

    def prompt_tags(self, enc: "EncoderOutput", tag_logits: torch.Tensor | None) -> list[list[str]] | None:
        """Per sample, the tag words of the prompt: the model's own predicted tags
        (:meth:`inference_tags`), never the ground truth. In training each is dropped with
        probability ``tag_word_noise`` (torch RNG), so the LLM learns to read past a missed tag;
        a training prompt thus holds only categories inference could have written."""
        if not self.config.tag_words:
            return None
        with torch.no_grad():
            tags = [self.inference_tags(enc.dense[b].detach(),
                                        None if tag_logits is None else tag_logits[b].detach()) or []
                    for b in range(enc.dense.shape[0])]
        return [self.prompt.training_tags(t) for t in tags] if self.training else tags

    def _tag_tokens(self, tag_logits: torch.Tensor) -> torch.Tensor:
        """Top-K tags ``[B, K, H_llm]``: probability x mean input embedding of the category's words."""
        emb = self.llm.get_input_embeddings()
        ids = self._category_ids.to(tag_logits.device)  # [V_obj, W] padded with -1
        valid = ids >= 0
        words = emb(ids.clamp(min=0)) * valid.unsqueeze(-1)  # [V_obj, W, H]
        names = words.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # [V_obj, H]
        probs = torch.sigmoid(tag_logits)  # [B, V_obj]
        top = probs.topk(min(self.config.tag_tokens, probs.shape[1]), dim=1)
        return top.values.unsqueeze(-1) * names[top.indices]  # [B, K, H]
