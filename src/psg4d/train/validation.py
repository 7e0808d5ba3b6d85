"""What the training loop runs besides its step: seeding, moving batches to the device,
autocast, and validation (the :class:`Validator` protocol and the default one: val loss,
grounding diagnostics and, when enabled, R@K of the predictor on the val videos)."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from psg4d.data.schema import Sample
from psg4d.train.data import MixtureDataset
from psg4d.train.stages import StageConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class Validator(Protocol):
    """Called on rank 0 with the unwrapped model in eval mode; returns scalar metrics."""

    def __call__(self, model: nn.Module, *, stage: StageConfig, step: int) -> dict[str, float]: ...



class DefaultValidator:
    """Val loss on up to ``max_videos`` val videos and, when enabled, R@K / mR@K of
    the Predictor's scene graphs on the same videos."""

    def __init__(
        self,
        *,
        dataset: MixtureDataset,
        device: torch.device,
        amp: torch.dtype | None,
        batch_size: int,
        recall: bool,
        protocol: str,
    ):
        self.dataset = dataset
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self.recall = recall
        self.protocol = protocol

    def _samples(self) -> list[Sample]:
        return [self.dataset[i] for i in range(len(self.dataset))]

    def __call__(self, model: nn.Module, *, stage: StageConfig, step: int) -> dict[str, float]:
        samples = self._samples()
        losses: list[float] = []
        with torch.no_grad(), autocast(self.device, self.amp):
            for i in range(0, len(samples), self.batch_size):
                batch = to_device(model.collate(samples[i : i + self.batch_size]), self.device)
                losses.append(float(model(**batch)["loss"].float().item()))
        metrics = {"val_loss": float(np.mean(losses))}
        from psg4d.model.psg4d_llm import PSG4DModel

        if isinstance(model, PSG4DModel) and len(samples) >= 2:
            # cheap (teacher forced) and says what R@K cannot: whether the LLM reads the
            # video at all, and the mask quality perfect text would get
            from psg4d.infer.diagnostics import grounding, teacher_forced_masks

            metrics["val_grounding_gap"] = grounding(model, samples[:4]).gap
            metrics["val_tf_mask_hit"] = teacher_forced_masks(model, samples).hit
        if self.recall:
            from psg4d.eval import evaluate
            from psg4d.infer.predictor import Predictor, PredictorConfig

            # the training run's thread count, not one adapted to the load: training goes on after
            predictor = Predictor(model=model, config=PredictorConfig(threads=torch.get_num_threads()))
            preds = [predictor.predict(s.video) for s in samples]
            scores = evaluate(preds, {s.graph.video_id: s.graph for s in samples}, protocol=self.protocol)
            metrics.update({k: float(v) for k, v in scores.items() if isinstance(v, (int, float))})
        return metrics
