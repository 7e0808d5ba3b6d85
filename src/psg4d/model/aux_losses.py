"""The 4D-LLM's objectives besides text and mask tubes (:class:`AuxiliaryObjectives`, a mixin of
``PSG4DModel``; called by its ``forward``).

* :meth:`AuxiliaryObjectives._auxiliary_losses` — the optional heads' losses added to the LLM
  objective: SAM2's semantic head, the tag head, the ``[Obj]`` category head, the scene encoder's
  segmentation head, the attribute head and, under ``llm+estimators``, the imagined clips' feature match;
* :meth:`AuxiliaryObjectives._estimator_objective` — the ``estimator_fit`` stage's objective
  (``transfer.objective: estimators``): the 2D-to-4D estimators alone, no LLM pass;
* :meth:`AuxiliaryObjectives._attribute_objective` — the ``attribute_fit`` stage's objective
  (``transfer.objective: attributes``): the attribute head alone on the frozen encoder's maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from psg4d.errors import ConfigError, DataError
from psg4d.model.attributes import attribute_loss
from psg4d.model.estimators import estimator_losses, pseudo_feature_losses
from psg4d.model.form_geometry import FORM_FIELDS, measure_tubes
from psg4d.model.losses import segmentation_loss
from psg4d.model.tokens import OBJ_TOKEN

if TYPE_CHECKING:  # annotations only
    from psg4d.model.contexts import TeacherForcing


class FormBatch(NamedTuple):
    """What the form reader learns from in a batch: every object's true tube ``masks`` B x ``[N_all, T, S, S]``,
    its ``categories`` B x ``[N_all]`` (object_vocab index, -100 outside it) and each clip's ``intrinsics``
    B x ``[3, 3]`` (None: none); any of them None where the batch does not carry it."""

    masks: list[torch.Tensor] | None
    categories: list[torch.Tensor] | None
    intrinsics: list[torch.Tensor | None] | None


class AuxiliaryObjectives:
    """The auxiliary objectives of :class:`~psg4d.model.psg4d_llm.PSG4DModel` (a mixin: the model's
    ``config``, ``ids``, ``encoder``, ``estimators``, ``tag_head``, ``seg_head`` and ``obj_cls_head``
    are its own)."""

    def _auxiliary_losses(
        self, loss: torch.Tensor, tf: "TeacherForcing", mask: dict[str, torch.Tensor], *, objective: str,
        tags: torch.Tensor | None, obj_categories: list[torch.Tensor] | None, semantic: torch.Tensor | None,
        lifted: torch.Tensor | None, rgb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss`` (text + mask) plus each configured head's weighted loss, and those losses by name.
        Each term is added as soon as it is computed, in a fixed order: the autograd graph, and so the
        gradients' summation order, is that of a single written-out sum."""
        cfg = self.config
        extra: dict[str, torch.Tensor] = {}
        if "semantic" in mask:
            extra["loss_sam2_seg"] = mask["semantic"]
            loss = loss + cfg.mask_decoder.semantic_loss_weight * mask["semantic"]
        if tf.tag_logits is not None and tags is not None:
            extra["loss_tag"] = F.binary_cross_entropy_with_logits(tf.tag_logits, tags.to(tf.tag_logits))
            loss = loss + cfg.tag_loss_weight * extra["loss_tag"]
        if self.obj_cls_head is not None and obj_categories is not None:
            extra["loss_obj_cls"] = self._obj_category_loss(tf, obj_categories)
            loss = loss + cfg.obj_cls_loss_weight * extra["loss_obj_cls"]
        if self.seg_head is not None and semantic is not None:
            extra["loss_seg"] = self.segmentation_loss(tf.enc.dense, semantic)
            loss = loss + cfg.seg_loss_weight * extra["loss_seg"]
        if self.attribute_head is not None and semantic is not None and rgb is not None:
            extra["loss_attr"] = self.attribute_objective_loss(tf.enc.dense, rgb, semantic)
            loss = loss + cfg.attribute_loss_weight * extra["loss_attr"]
        if objective == "llm+estimators":
            fm = self._pseudo_feature_losses(tf, lifted)
            if fm is not None:
                extra.update({f"loss_{k}": v for k, v in fm.items() if k != "total"})
                loss = loss + cfg.transfer.feature_weight * fm["total"]
        return loss, extra

    def _pseudo_feature_losses(self, tf: "TeacherForcing",
                               lifted: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """The imagined clips should also look like the real ones they stand for: feature losses of the
        rolled-out clips that have real frames to compare with (None: no such clip in the batch)."""
        feats = tf.features
        real = feats.pseudo.clone()  # [B] rolled-out clips ...
        if lifted is not None:
            real &= ~lifted.to(real.device)  # ... that are real videos, not lifted images
        if feats.real.depth is None or not bool(real.any()):
            return None
        return pseudo_feature_losses(feats.rgb[real], feats.depth[real], feats.real.rgb[real],
                                     feats.real.depth[real], self.config.transfer)

    def _estimator_objective(self, rgb: torch.Tensor, depth: torch.Tensor | None,
                             disparity_scale: torch.Tensor | None,
                             lifted: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The ``estimator_fit`` stage: regress the estimators onto the real features of the clips
        that have them (lifted images have neither time nor depth to learn from)."""
        if self.estimators is None:
            raise ConfigError("model.transfer.objective 'estimators' needs model.transfer.estimators: true")
        real = self.encoder.branches(rgb, depth, disparity_scale=disparity_scale)
        keep = torch.ones(rgb.shape[0], dtype=torch.bool, device=real.rgb.device)
        if lifted is not None:
            keep &= ~lifted.to(keep.device)
        if not bool(keep.any()) or (real.depth is None and real.rgb.shape[1] < 2):
            raise DataError(None, "fitting the estimators needs RGB-D frames or RGB videos of >= 2 frames"
                                  " in every batch")
        losses = estimator_losses(self.estimators, real.rgb[keep], None if real.depth is None else real.depth[keep],
                                  self.encoder.fusion, self.config.transfer)
        return {"loss": losses.pop("total"), **{f"loss_{k}": v for k, v in losses.items()}}

    def _attribute_objective(self, rgb: torch.Tensor, depth: torch.Tensor | None,
                             disparity_scale: torch.Tensor | None,
                             semantic: torch.Tensor | None, *, forms: FormBatch | None = None) -> dict[str, torch.Tensor]:
        """The ``attribute_fit`` stage: the attribute head alone on the scene encoder's maps (no LLM pass), and
        its form reader (if any) on the true tubes' geometry."""
        if self.attribute_head is None or semantic is None:
            raise ConfigError("model.transfer.objective 'attributes' needs model.attribute_loss_weight > 0")
        with torch.no_grad():  # the encoder is frozen in this stage: its maps are inputs
            _, enc, _, _ = self.encode_scene(rgb, depth, disparity_scale)
        loss = self.attribute_objective_loss(enc.dense, rgb, semantic)
        out = {"loss_attr": loss}
        form = self.form_objective_loss(depth, forms) if self.attribute_head.form is not None else None
        if form is not None:
            out["loss_form"] = form
            loss = loss + form
        return {"loss": loss, **out}

    def form_objective_loss(self, depth: torch.Tensor | None, forms: FormBatch | None) -> torch.Tensor | None:
        """The form reader's loss (:meth:`~psg4d.model.form_geometry.FormReader.loss`) on every object of the
        batch with depth, intrinsics and a described category, its true tube cut to the mask decoder's grid
        and to the pixels in front of its surroundings as a predicted tube is at reading (``depth
        [B, T, 1, S, S]`` metres); None where fewer than two such objects are in the batch."""
        if depth is None or forms is None or forms.masks is None or forms.categories is None or forms.intrinsics is None:
            return None
        head, table = self.attribute_head, self._attribute_table
        geometry, targets = [], {f: [] for f in FORM_FIELDS}
        for b, (masks, cats, k) in enumerate(zip(forms.masks, forms.categories, forms.intrinsics)):
            if k is None or masks.shape[0] == 0:
                continue
            geometry.append(measure_tubes(masks.cpu(), depth[b, :, 0].float().cpu(), k, grid=self.config.mask_decoder.grid))
            for c in cats.tolist():
                for f, out in targets.items():  # the category's value of the field (None: no description)
                    value = -1 if c < 0 else int(table[c, head.fields.index(f)])
                    out.append(head.values[f][value] if value >= 0 else None)
        if sum(g.shape[0] for g in geometry) < 2:  # the reader's batch statistics need two
            return None
        x = torch.cat(geometry).to(next(head.form.parameters()).device)
        return head.form.loss(x, targets["size"], targets["shape"])

    def attribute_objective_loss(self, dense: torch.Tensor, rgb: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """:func:`~psg4d.model.attributes.attribute_loss` of ``attribute_head(dense [B, T, D, h, w],
        rgb [B, T, 3, H, W])`` against ``semantic [B, T, S, S]``."""
        b, t, d, h, w = dense.shape
        logits = self.attribute_head(dense.reshape(b * t, d, h, w), rgb.reshape(b * t, *rgb.shape[2:]))
        return attribute_loss(logits, semantic.reshape(b * t, *semantic.shape[-2:]), self._attribute_table)

    def _obj_category_loss(self, tf: "TeacherForcing", obj_categories: list[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the ``[Obj]`` category head on every ``[Obj]`` hidden state against
        ``obj_categories`` (B x ``[N_obj]``, -100: outside the vocabulary)."""
        pos = tf.ids == self.ids.obj  # [B, L'] in order, matching obj_categories
        target = torch.cat([c.to(tf.hidden.device) for c in obj_categories])  # [N_all]
        logits = self.obj_cls_head(tf.hidden[pos]).float()  # [N_all, V_obj]
        if target.numel() != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} {OBJ_TOKEN} tokens but {target.numel()} object categories")
        if bool((target >= 0).any()):
            return F.cross_entropy(logits, target, ignore_index=-100)
        return logits.sum() * 0  # keeps the head in the graph (DDP) with an exact zero

    def segmentation_loss(self, dense: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """``seg_head(dense [B, T, D, h, w])`` against ``semantic [B, T, S, S]`` (see
        :func:`psg4d.model.losses.segmentation_loss`)."""
        b, t, d, h, w = dense.shape
        logits = self.seg_head(dense.reshape(b * t, d, h, w)).float()  # [B*T, C, h, w]
        return segmentation_loss(logits, semantic.reshape(b * t, *semantic.shape[-2:]))
