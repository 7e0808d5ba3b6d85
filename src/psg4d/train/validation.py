"""The 4D-LLM's validation: the :class:`Validator` protocol and the default one (val loss,
grounding diagnostics and, when enabled, R@K of the predictor on the val videos)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from psg4d.data.schema import Sample
from psg4d.engine import distributed as dist_utils
from psg4d.engine.distributed import DistInfo
from psg4d.engine.runtime import autocast, to_device
from psg4d.train.data import MixtureDataset
from psg4d.train.stages import StageConfig


class Validator(Protocol):
    """Called on every rank, with the unwrapped model (full parameters) in eval mode; returns
    scalar metrics, of which rank 0's are logged. Every rank calls it so that a validator may use
    collective operations (each rank validating its share and reducing, as the default one does)
    without leaving a rank waiting in a collective the others never enter."""

    def __call__(self, model: nn.Module, *, stage: StageConfig, step: int) -> dict[str, float]: ...


class DefaultValidator:
    """Val loss on up to ``max_videos`` val videos and, when enabled, R@K / mR@K of
    the Predictor's scene graphs on the same videos.

    Under torchrun each rank takes every ``world_size``-th video and the sums are reduced over
    the ranks, so every rank enters the same collectives in the same order and returns the
    same metrics, which do not depend on the number of ranks (the grounding gap, a table over
    the first four videos, is computed by rank 0 and shared).
    """

    def __init__(
        self,
        *,
        dataset: MixtureDataset,
        device: torch.device,
        amp: torch.dtype | None,
        batch_size: int,
        recall: bool,
        protocol: str,
        info: DistInfo | None = None,
    ):
        self.dataset = dataset
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self.recall = recall
        self.protocol = protocol
        self.info = info or DistInfo(rank=0, local_rank=0, world_size=1, device=device)

    def _samples(self) -> list[Sample]:
        return [self.dataset[i] for i in range(len(self.dataset))]

    def __call__(self, model: nn.Module, *, stage: StageConfig, step: int) -> dict[str, float]:
        from psg4d.model.psg4d_llm import PSG4DModel

        info = self.info
        samples = self._samples()
        mine = samples[info.rank :: info.world_size]
        # (sum, count) per metric, summed over the ranks below
        loss_sum, batches = 0.0, 0
        with torch.no_grad(), autocast(self.device, self.amp):
            for i in range(0, len(mine), self.batch_size):
                batch = to_device(model.collate(mine[i : i + self.batch_size]), self.device)
                loss_sum += float(model(**batch)["loss"].float().item())
                batches += 1
        sums = {"val_loss": (loss_sum, batches)}
        shared: dict[str, float] = {}
        # SAM2's pretraining stage has no LLM to judge yet: its val_loss is the promptable one
        llm_stage = not (isinstance(model, PSG4DModel) and model.config.transfer.objective == "masks")
        if isinstance(model, PSG4DModel) and len(samples) >= 2 and llm_stage:
            # cheap (teacher forced) and says what R@K cannot: whether the LLM reads the
            # video at all, and the mask quality perfect text would get
            from psg4d.infer.diagnostics import grounding, teacher_forced_masks

            if info.is_main:
                shared["val_grounding_gap"] = grounding(model, samples[:4]).gap
            masks = teacher_forced_masks(model, mine) if mine else None
            sums["val_tf_mask_hit"] = (masks.hit * masks.occurrences, masks.occurrences) if masks else (0.0, 0)
        totals = dist_utils.sum_across_ranks([v for pair in sums.values() for v in pair], info)
        metrics = {k: totals[2 * i] / totals[2 * i + 1] for i, k in enumerate(sums) if totals[2 * i + 1] > 0}
        if "val_tf_mask_hit" in sums:
            metrics.setdefault("val_tf_mask_hit", 0.0)  # no [Obj] decoded: no object frame was hit
        metrics.update(dist_utils.gather_objects(shared, info)[0])
        if self.recall and llm_stage:
            from psg4d.eval import evaluate
            from psg4d.infer.predictor import Predictor, PredictorConfig

            # the training run's thread count, not one adapted to the load: training goes on after
            predictor = Predictor(model=model, config=PredictorConfig(threads=torch.get_num_threads()))
            preds = [predictor.predict(s.video) for s in mine]
            # collective under torchrun: the metric sums every rank's share before computing
            scores = evaluate(preds, {s.graph.video_id: s.graph for s in mine}, protocol=self.protocol)
            metrics.update({k: float(v) for k, v in scores.items() if isinstance(v, (int, float))})
        return metrics
