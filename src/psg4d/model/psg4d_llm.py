"""PSG4DModel: the 4D-LLM (scene encoder -> projector -> LLM -> [Obj] -> mask-tube decoder).

Teacher forcing, per sample::

    <bos> [Video]*N_vis  prompt  subj [Obj] pred obj [Obj] 0 3 ; ...  <eos>
          ^ visual tokens          ^ hidden state -> obj_proj -> TubeDecoder prompt

This module holds the network, its forward pass and the text loss. Its neighbours hold the rest:
:mod:`~psg4d.model.batching` (samples -> batches and targets),
:mod:`~psg4d.model.prompt` (the text around the scene graph),
:mod:`~psg4d.model.tagging` (the predicted object tags the prompt holds),
:mod:`~psg4d.model.inputs` (id rows and input embeddings),
:mod:`~psg4d.model.region` (region feedback: the tube after each ``[Obj]``),
:mod:`~psg4d.model.tube_losses` (the mask-tube objectives),
:mod:`~psg4d.model.aux_losses` (the auxiliary heads' losses and the estimators' objective),
:mod:`~psg4d.model.generation` (encode a video, generate, score, decode tubes) and
:mod:`~psg4d.model.pretrained` (checkpoint files and frozen-weight identity).

* The prompt is built here at forward time, after the encoder: its tag words
  (``model.tag_words``) are the model's own predicted tags, never the ground
  truth (in training each is dropped with probability ``tag_word_noise``), so
  training and validation see what inference sees. The ONE ``[Video]``
  placeholder of the prompt is expanded to as many positions as the encoder
  produced tokens, and the projected visual
  tokens are scattered into ``inputs_embeds`` there (LLaVA style).
* Region feedback (``model.region``): after every ``[Obj]`` one position holds that object's
  tube read from the dense maps (:meth:`teacher_regions`: gold or decoded tubes); it is given,
  never a label.
* Text loss: next-token cross-entropy on the scene-graph tokens and ``<eos>``
  only (bos, visual and prompt positions are labelled -100).
* Mask loss: the last-layer hidden state at every position whose id is the
  ``[Obj]`` id (looked up, never a fixed offset) is projected to a mask prompt;
  the decoder's tube for it is compared with the GT tube of the object that
  ``[Obj]`` occurrence refers to. With a presence head (``pred_obj_scores``) its
  per-frame "object present" logit is supervised too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.data.schema import Sample
from psg4d.data.synth.describe import attribute_values, description_fields
from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.attributes import AttributeHead, attribute_table
from psg4d.model.form_geometry import FormReader
from psg4d.model.aux_losses import AuxiliaryObjectives, FormBatch
from psg4d.model.batching import SceneGraphCollator
from psg4d.model.config import ModelConfig
from psg4d.model.encoder import build_encoder
from psg4d.model.estimators import FeatureEstimators
from psg4d.model.features import scene_features
from psg4d.model.contexts import TeacherForcing
from psg4d.model.llm import build_llm
from psg4d.model.mask_decoder import build_mask_decoder
from psg4d.model.sam2_tubes import FrameFeatures, Sam2Tubes
from psg4d.model.tagging import PromptTags, category_word_ids
from psg4d.model.tube_losses import TubeObjectives
from psg4d.model.projector import build_projector
from psg4d.model.prompt import Prompt
from psg4d.model import inputs
from psg4d.model.region import RegionEncoder, RegionFeedback, insert_after
from psg4d.model.pretrained import load_pretrained, save_pretrained
from psg4d.model.weight_files import resolve_weight_paths
from psg4d.model.provenance import pretrained_parameter_names

log = logging.getLogger(__name__)


class PSG4DModel(TubeObjectives, RegionFeedback, PromptTags, AuxiliaryObjectives, nn.Module):
    """See the module docstring. Build with :meth:`from_config` or :meth:`from_pretrained`."""

    def __init__(
        self,
        *,
        config: ModelConfig,
        encoder: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        obj_proj: nn.Module,
        mask_decoder: nn.Module,
        tokenizer: Any,
        tag_head: nn.Module | None = None,
        seg_head: nn.Module | None = None,
        obj_cls_head: nn.Module | None = None,
        estimators: FeatureEstimators | None = None,
        region_encoder: RegionEncoder | None = None,
        attribute_head: AttributeHead | None = None,
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.obj_proj = obj_proj
        self.mask_decoder = mask_decoder
        self.tag_head = tag_head  # visual tokens -> object-category logits (auxiliary loss); optional
        self.seg_head = seg_head  # dense maps -> per-cell category logits (auxiliary loss); optional
        self.obj_cls_head = obj_cls_head  # [Obj] hidden state -> category logits (auxiliary loss); optional
        self.estimators = estimators  # the 2D-to-4D transfer's F_de, F_rte, F_dte; optional
        self.region_encoder = region_encoder  # a decoded tube -> the input after its [Obj]; optional
        self.attribute_head = attribute_head  # dense maps + colours -> per-cell attribute logits; optional
        if attribute_head is not None:
            # [V_obj + 1, F] each category's attribute values (from its description), the targets
            self.register_buffer("_attribute_table", attribute_table(
                attribute_head.values, config.object_vocab, config.category_descriptions), persistent=False)
        if region_encoder is not None:
            # training forwards so far: the gold/decoded region schedule (saved, so a resumed run continues it)
            self.register_buffer("region_forwards", torch.zeros((), dtype=torch.long))
        self.tokenizer = tokenizer
        # the folder from_pretrained read (what sits beside the weights, e.g. the ranking weights)
        self.checkpoint_dir: Path | None = None
        self.prompt = Prompt(tokenizer=tokenizer, object_vocab=config.object_vocab,
                             tag_word_noise=config.tag_word_noise)
        self.ids = self.prompt.ids
        # per-pixel categories feed the scene encoder's segmentation head and SAM2's semantic head
        sam2_semantic = getattr(mask_decoder, "semantic_head", None) is not None
        self.collator = SceneGraphCollator(config=config, prompt=self.prompt,
                                           with_semantic=seg_head is not None or sam2_semantic
                                           or attribute_head is not None)
        rows = self.llm.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise CheckpointError(f"LLM has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens")
        # [V_obj, W] word ids of each category name (-1 pads), for the tag tokens
        self.register_buffer("_category_ids", category_word_ids(self.prompt, config.object_vocab), persistent=False)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "PSG4DModel":
        cfg = resolve_weight_paths(cfg)  # absolute: a checkpoint must not depend on the working directory
        encoder = build_encoder(cfg.resolved_encoder())
        llm, tokenizer = build_llm(cfg.llm, vocab_words=cfg.vocab_words(), max_frames=cfg.max_frames)
        hidden = llm.get_input_embeddings().weight.shape[1]
        n_obj = len(cfg.object_vocab)
        projector = build_projector(cfg.projector.name, cfg.encoder.dim, hidden)
        # construction order = initialisation order: the fused decoder keeps the order its recipes
        # were measured with; SAM2's width is known once it is built
        if cfg.mask_decoder.kind == "fused":
            obj_proj = nn.Linear(hidden, cfg.mask_decoder.transformer_dim)
            mask_decoder = build_mask_decoder(cfg.mask_decoder)
        else:
            if cfg.mask_decoder.semantic_loss_weight > 0 and not n_obj:
                raise ConfigError("model.mask_decoder.semantic_loss_weight > 0 needs an object vocabulary")
            if cfg.mask_decoder.region_prompt and cfg.obj_cls_loss_weight <= 0:
                raise ConfigError("model.mask_decoder.region_prompt needs the [Obj] category head (obj_cls_loss_weight > 0)")
            # one class per category plus "unlabelled", as the segmentation head
            mask_decoder = build_mask_decoder(cfg.mask_decoder, num_classes=n_obj + 1)
            obj_proj = nn.Linear(hidden, mask_decoder.dim)
        return cls(
            config=cfg,
            encoder=encoder,
            projector=projector,
            llm=llm,
            obj_proj=obj_proj,
            mask_decoder=mask_decoder,
            tokenizer=tokenizer,
            tag_head=nn.Linear(hidden, n_obj) if cfg.tag_loss_weight > 0 and n_obj else None,
            # one class per category plus "unlabelled" (pixels no object covers)
            seg_head=nn.Conv2d(cfg.encoder.dim, n_obj + 1, 1) if cfg.seg_loss_weight > 0 and n_obj else None,
            obj_cls_head=nn.Linear(hidden, n_obj) if cfg.obj_cls_loss_weight > 0 and n_obj else None,
            estimators=FeatureEstimators.build(dim=cfg.encoder.dim, cfg=cfg.transfer.estimator)
            if cfg.transfer.estimators else None,
            region_encoder=RegionEncoder(in_dim=cfg.encoder.dim, dim=cfg.region.dim, frames=cfg.max_frames,
                                         hidden=hidden) if cfg.region.enabled else None,
            attribute_head=_attribute_head(cfg),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PSG4DModel":
        """A checkpoint folder written by :meth:`save_pretrained` (see :mod:`psg4d.model.pretrained`)."""
        model = load_pretrained(cls.from_config, path)
        model.checkpoint_dir = Path(path)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        save_pretrained(self, path)

    @property
    def device(self) -> torch.device:
        return self.obj_proj.weight.device

    @property
    def hidden_size(self) -> int:
        return int(self.llm.get_input_embeddings().weight.shape[1])

    def pretrained_parameters(self) -> set[str]:
        """Parameters whose values were loaded from pretrained weight files when the model was built."""
        return pretrained_parameter_names(self)

    def unused_parameters(self) -> set[str]:
        """Parameters that never take part in forward (kept so pretrained checkpoints load strictly);
        under the ``masks`` objective (``sam2_pretrain``), everything but SAM2 itself."""
        unused = {f"mask_decoder.{n}" for n in self.mask_decoder.unused_parameters()}
        if self.config.transfer.objective == "masks":
            unused |= {n for n, _ in self.named_parameters()
                       if not n.startswith(("mask_decoder.sam.", "mask_decoder.semantic_head."))}
        return unused

    @property
    def sam2(self) -> bool:
        """Whether the mask path is SAM2 itself (it reads the frames) rather than the fused decoder."""
        return isinstance(self.mask_decoder, Sam2Tubes)

    def mask_features(self, rgb: torch.Tensor, dense: torch.Tensor) -> FrameFeatures | torch.Tensor:
        """What the mask decoder decodes tubes from, for one clip: SAM2's features of the frames
        ``rgb [T, 3, S, S]``, or the fused decoder's scene-encoder maps ``dense [T, C, h, w]``."""
        return self.mask_decoder.frame_features(rgb) if self.sam2 else dense

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        """Samples -> batch (keys: :mod:`psg4d.model.batching`); clips are played backwards
        (``model.time_reversal``) only in training mode."""
        return self.collator(samples, augment=self.training)

    # ---------------------------------------------------------------- inputs (psg4d.model.inputs)
    def expand_placeholder(self, prefix: Sequence[int], n_vis: int) -> list[int]:
        """Prompt ids with its single ``[Video]`` placeholder repeated ``n_vis`` times."""
        return inputs.expand_placeholder(prefix, self.ids.video, n_vis)

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L']`` (placeholder expanded), ``visual [B, N_vis, H]`` -> ``[B, L', H]``;
        a region id ``-(1 + k)`` takes ``regions[k]`` (``regions [K, H]``)."""
        return inputs.embed(self.llm.get_input_embeddings(), input_ids, self.ids.video, visual, regions)

    def embed_ids(self, input_ids: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings ``[..., H]`` of ``input_ids [...]`` (region ids take ``regions``)."""
        return inputs.embed_ids(self.llm.get_input_embeddings(), input_ids, regions)

    def with_regions(self, ids: Sequence[int], region_ids: Sequence[int]) -> list[int]:
        """``ids`` with ``region_ids[i]`` after the i-th ``[Obj]`` (``model.region``; else ``ids``)."""
        return insert_after(ids, self.ids.obj, region_ids) if self.region_encoder is not None else list(ids)

    def sequences(self, target_ids: torch.Tensor, target_mask: torch.Tensor,
                  prompt_tags: Sequence[Sequence[str]] | None, n_vis: int, *, chain: torch.Tensor | None = None,
                  target_loss_mask: torch.Tensor | None = None, num_frames: int = 1) -> tuple[torch.Tensor, ...]:
        """(ids, attention, labels) ``[B, L']`` of prompt + target (:func:`psg4d.model.inputs.training_rows`;
        region ids after every ``[Obj]`` with region feedback)."""
        return inputs.training_rows(self.prompt, target_ids, target_mask, prompt_tags, n_vis, chain=chain,
                                    target_loss_mask=target_loss_mask, num_frames=num_frames,
                                    regions=self.region_encoder is not None)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor | None, disparity_scale: torch.Tensor | None = None,
               *, lifted: torch.Tensor | None = None):
        """-> (encoder output, LLM input tokens ``[B, N_vis (+K tags), H_llm]``, tag logits ``[B, V_obj]`` | None).
        ``disparity_scale [B]``: see :func:`~psg4d.model.encoder.disparity_scale_of` (None: the default camera);
        ``lifted [B]``: clips to roll out from their first frame (:mod:`psg4d.model.features`)."""
        return self.encode_scene(rgb, depth, disparity_scale, lifted=lifted)[1:]

    def encode_scene(self, rgb: torch.Tensor, depth: torch.Tensor | None, disparity_scale: torch.Tensor | None = None,
                     *, lifted: torch.Tensor | None = None):
        """-> (:class:`~psg4d.model.features.SceneFeatures`, then :meth:`encode`'s three)."""
        pseudo = lifted
        if self.training and self.config.transfer.pathway == "pseudo":  # a stage that trains on imagined clips
            pseudo = torch.ones(rgb.shape[0], dtype=torch.bool, device=rgb.device)
        feats = scene_features(self.encoder, self.estimators, rgb, depth, disparity_scale=disparity_scale,
                               pseudo=pseudo)
        enc = self.encoder.aggregate(feats.rgb, feats.depth, feats.real.hw)
        visual = self.projector(enc.tokens)  # [B, N_vis, H_llm]
        tag_logits = None
        if self.tag_head is not None:
            tag_logits = self.tag_head(visual).amax(dim=1).float()  # [B, V_obj]: any token may carry a category
            if self.config.tag_tokens > 0:
                visual = torch.cat([visual, self._tag_tokens(tag_logits).to(visual.dtype)], dim=1)
        return feats, enc, visual, tag_logits

    # --------------------------------------------------------------- forward
    def teacher_forced(
        self, *, target_ids: torch.Tensor, target_mask: torch.Tensor, rgb: torch.Tensor,
        depth: torch.Tensor | None = None, disparity_scale: torch.Tensor | None = None,
        lifted: torch.Tensor | None = None,
        chain: torch.Tensor | None = None, target_loss_mask: torch.Tensor | None = None,
        mask_targets: list[torch.Tensor] | None = None, mask_valid: list[torch.Tensor] | None = None,
    ) -> TeacherForcing:
        """Encode, build each sample's prompt (:meth:`prompt_tags`) and run the LLM over prompt + target.
        In training mode the scene-graph input tokens get ``input_token_dropout``. With region
        feedback, the region after each ``[Obj]`` is its gold tube (``mask_targets``) or the tube its
        hidden state decodes (:meth:`teacher_regions`)."""
        cfg = self.config
        feats, enc, visual, tag_logits = self.encode_scene(rgb, depth, disparity_scale, lifted=lifted)
        tags = self.prompt_tags(enc, tag_logits)
        ids, attention, labels = self.sequences(target_ids, target_mask, tags, visual.shape[1], chain=chain,
                                                target_loss_mask=target_loss_mask, num_frames=rgb.shape[1])
        inp = ids
        if self.training and cfg.input_token_dropout > 0:
            unk = self.tokenizer.unk_token_id
            if unk is None:
                raise ConfigError("model.input_token_dropout needs a tokenizer with an unknown token")
            drop = (torch.rand(ids.shape, device=ids.device) < cfg.input_token_dropout) & (labels != -100)
            drop &= ids != self.ids.obj  # [Obj] positions carry the mask prompts
            inp = ids.masked_fill(drop, unk)
        regions = self.teacher_regions(enc, rgb, inp, attention, visual, mask_targets, mask_valid)
        out = self.llm(inputs_embeds=self.embed(inp, visual, regions), attention_mask=attention,
                       output_hidden_states=True)
        return TeacherForcing(enc=enc, ids=ids, labels=labels, hidden=out.hidden_states[-1], logits=out.logits,
                              tag_logits=tag_logits, prompt_tags=tags, features=feats)

    def forward(
        self,
        *,
        target_ids: torch.Tensor,
        target_mask: torch.Tensor,
        rgb: torch.Tensor,
        depth: torch.Tensor | None = None,
        disparity_scale: torch.Tensor | None = None,
        mask_targets: list[torch.Tensor] | None = None,
        mask_valid: list[torch.Tensor] | None = None,
        tags: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        obj_ids: list[list[int]] | None = None,
        obj_categories: list[torch.Tensor] | None = None,
        lifted: torch.Tensor | None = None,
        chain: torch.Tensor | None = None,
        target_loss_mask: torch.Tensor | None = None,
        object_masks: list[torch.Tensor] | None = None,
        object_categories: list[torch.Tensor] | None = None,
        intrinsics: list[torch.Tensor | None] | None = None,
        **meta: Any,
    ) -> dict[str, torch.Tensor]:
        """Losses of the configured objective (``model.transfer.objective``, set by the stage kind):
        the LLM's, the estimators' alone (no LLM pass), or both."""
        cfg = self.config
        # validation of SAM2's pretraining measures what it trains; every other stage is judged on the LLM's losses
        objective = cfg.transfer.objective if self.training or cfg.transfer.objective == "masks" else "llm"
        if objective == "estimators":
            return self._estimator_objective(rgb, depth, disparity_scale, lifted)
        if objective == "attributes":
            return self._attribute_objective(rgb, depth, disparity_scale, semantic,
                                             forms=FormBatch(object_masks, object_categories, intrinsics))
        if objective == "masks":
            return self.promptable_loss(rgb, object_masks, semantic)
        tf = self.teacher_forced(target_ids=target_ids, target_mask=target_mask, rgb=rgb, depth=depth,
                                 disparity_scale=disparity_scale, lifted=lifted,
                                 chain=chain, target_loss_mask=target_loss_mask,
                                 mask_targets=mask_targets, mask_valid=mask_valid)
        logits = tf.logits[:, :-1].float()  # [B, L'-1, V]
        loss_text = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tf.labels[:, 1:].reshape(-1),
                                    ignore_index=-100)
        mask = self.tube_loss(tf, rgb, mask_targets, mask_valid, obj_ids, semantic)
        loss = cfg.text_loss_weight * loss_text + cfg.mask_loss_weight * mask["total"]
        loss, extra = self._auxiliary_losses(loss, tf, mask, objective=objective, tags=tags,
                                             obj_categories=obj_categories, semantic=semantic, lifted=lifted,
                                             rgb=rgb)
        return {
            "loss": loss,
            "loss_text": loss_text,
            "loss_mask": mask["total"],
            "loss_focal": mask["focal"],
            "loss_dice": mask["dice"],
            "loss_iou": mask["iou"],
            **({"loss_presence": mask["presence"]} if "presence" in mask else {}),
            **extra,
        }

    # ------------------------------------------------------------------ tubes
    def decode_tubes(self, features: FrameFeatures | torch.Tensor, obj_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` (:meth:`mask_features` of one clip), ``obj_hidden [N, H]`` -> ``(mask_logits
        [N, T, h, w], iou_pred [N, T])``; frames the presence head (if any) scores absent get an
        empty mask."""
        regions = self.region_prompts(features, obj_hidden, torch.zeros(obj_hidden.shape[0], dtype=torch.long))
        out = self.mask_decoder.decode(features, self.obj_proj(obj_hidden.to(self.obj_proj.weight.dtype)),
                                       **({"regions": regions} if regions is not None else {}))
        return self.mask_decoder.gate_absent(out), out.iou_pred

    def region_prompts(self, features: FrameFeatures | torch.Tensor, obj_hidden: torch.Tensor,
                       videos: torch.Tensor, *, semantic_logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """With ``mask_decoder.region_prompt``: each ``[Obj]``'s mask prompts ``[N, T, h, w]``, the
        semantic head's map of the category distribution its hidden state ``obj_hidden [N, H]``
        names (:meth:`Sam2Tubes.region_masks`, reusing ``semantic_logits`` where given); otherwise None."""
        if not (self.sam2 and self.config.mask_decoder.region_prompt):
            return None
        categories = self.obj_cls_head(obj_hidden.to(self.obj_cls_head.weight.dtype)).float().softmax(-1)
        return self.mask_decoder.region_masks(features, categories, videos.to(categories.device),
                                              logits=semantic_logits)


def _attribute_head(cfg: ModelConfig) -> AttributeHead | None:
    """The attribute head of ``cfg`` (``attribute_loss_weight > 0``), or None."""
    if cfg.attribute_loss_weight <= 0:
        return None
    if not cfg.object_vocab or not any(description_fields(d) for ds in cfg.category_descriptions.values() for d in ds):
        raise ConfigError("model.attribute_loss_weight > 0 needs category descriptions made of attribute words "
                          "(model.category_descriptions, filled from the synthetic world's data)")
    values = attribute_values()
    form = FormReader(shapes=values["shape"]) if cfg.attribute_form != "map" else None
    return AttributeHead(dim=cfg.encoder.dim, values=values, form=form)
