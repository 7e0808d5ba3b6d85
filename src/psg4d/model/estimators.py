"""The 2D-to-4D transfer's feature estimators: imagine the depth and the time an image lacks.

They work in the scene encoder's branch feature space (``[B, T, N, D]``: per frame,
the ``N = h*w`` patch tokens of the RGB or depth branch, after its head):

* :class:`DepthEstimator` (F_de) — a frame's RGB features -> that frame's depth
  features (what the depth branch would have made of a real depth map): a few
  transformer blocks over the frame's tokens.
* :class:`TemporalEstimator` (F_rte for RGB, F_dte for depth) — the features of
  frames ``0..j`` -> those of frame ``j + 1``, autoregressively. Each block attends
  within a frame (spatial) and then, per patch location, over time with a causal
  mask, so the prediction at step ``j`` never sees frames after ``j``; it predicts
  the *change* from frame ``j`` (a residual), and a sinusoid of the step index
  tells it how far into the clip it is. :meth:`TemporalEstimator.rollout` grows a
  clip of ``T`` frames from its first frame(s).

The pseudo-4D path (:meth:`FeatureEstimators.pseudo_clip`): a single frame's RGB
features -> F_rte rollout for the RGB sequence; F_de, then F_dte rollout for the
depth sequence. Both then enter the encoder's aggregator exactly where real
features do. An RGB-only video uses F_de alone, frame by frame.

:func:`estimator_losses` regresses the estimators onto the frozen encoder's real
features (MSE + cosine) and adds a consistency term: the aggregator's fusion of the
predicted RGB and depth should match its fusion of the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.backbones import PreNormBlock
from psg4d.model.merging import sinusoid

# What a training stage optimises (``TransferConfig.objective``) and how it makes a 4D sample's
# features (``TransferConfig.pathway``); explicit tables, set per stage kind.
# "masks": SAM2's promptable video segmentation alone (the ``sam2_pretrain`` stage; no LLM pass).
OBJECTIVES = ("llm", "estimators", "llm+estimators", "masks", "attributes")
PATHWAYS = ("real", "pseudo")


@dataclass
class EstimatorConfig:
    """Sizes of the three estimators (they share the encoder's width D)."""

    depth_layers: int = 2  # F_de blocks over one frame's tokens
    temporal_layers: int = 2  # F_rte / F_dte (spatial + causal temporal) blocks
    heads: int = 4
    mlp_ratio: float = 2.0


@dataclass
class TransferConfig:
    """The 2D-to-4D transfer's part of the model config.

    ``estimators`` builds F_de, F_rte and F_dte (stage kinds from ``estimator_fit`` on set it).
    ``objective`` / ``pathway`` are training settings that a stage kind sets: which losses its
    forward computes, and whether a 4D sample's features are the real ones or rolled out by the
    estimators from its first frame (a lifted 2D image always is). Inference ignores them: it
    uses real features, and F_de for depth when a video comes without depth.
    """

    estimators: bool = False
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    # frames of a pseudo clip lifted from an image (0: the model's max_frames)
    pseudo_frames: int = 0
    objective: str = "llm"
    pathway: str = "real"
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    consistency_weight: float = 1.0
    # weight of the estimator losses next to the LLM's when the objective has both
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"model.transfer.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.pathway not in PATHWAYS:
            raise ConfigError(f"model.transfer.pathway must be one of {PATHWAYS}, got {self.pathway!r}")
        if not self.estimators and (self.objective not in ("llm", "masks") or self.pathway != "real"):
            raise ConfigError(
                f"model.transfer: objective {self.objective!r} / pathway {self.pathway!r} need the estimators"
                " (model.transfer.estimators: true)"
            )
        if self.pseudo_frames < 0:
            raise ConfigError(f"model.transfer.pseudo_frames must be >= 0, got {self.pseudo_frames}")


class DepthEstimator(nn.Module):
    """F_de: ``[B, T, N, D]`` RGB features -> depth features, frame by frame."""

    def __init__(self, *, dim: int, cfg: EstimatorConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            PreNormBlock(dim=dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.depth_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        b, t, n, d = rgb.shape
        x = rgb.reshape(b * t, n, d)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x).reshape(b, t, n, d)  # [B, T, N, D]


class TemporalEstimator(nn.Module):
    """F_rte / F_dte: ``x [B, T, N, D]`` -> ``[B, T, N, D]``, output ``j`` = frame ``j + 1``
    predicted from frames ``0..j`` (see the module docstring)."""

    def __init__(self, *, dim: int, cfg: EstimatorConfig):
        super().__init__()
        self.dim = dim
        self.step = nn.Linear(dim, dim)  # the step index's sinusoid -> a feature offset
        self.spatial = nn.ModuleList(
            PreNormBlock(dim=dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.temporal_layers)
        )
        self.temporal = nn.ModuleList(
            PreNormBlock(dim=dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.temporal_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        # start as "nothing moves": the first prediction of frame j + 1 is frame j
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        steps = torch.arange(t, device=x.device)
        h = x + self.step(sinusoid(steps, d).to(x.dtype))[None, :, None, :]  # [B, T, N, D]
        # True above the diagonal: step j attends to steps <= j only
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        for spatial, temporal in zip(self.spatial, self.temporal):
            h = spatial(h.reshape(b * t, n, d)).reshape(b, t, n, d)  # within a frame: no look across time
            h = h.permute(0, 2, 1, 3).reshape(b * n, t, d)  # [B*N, T, D], one sequence per location
            h = temporal(h, mask=causal).reshape(b, n, t, d).permute(0, 2, 1, 3)
        return x + self.head(h)  # [B, T, N, D]

    def rollout(self, start: torch.Tensor, frames: int) -> torch.Tensor:
        """``start [B, T0, N, D]`` (the known first frames) -> ``[B, frames, N, D]``, each further
        frame predicted from all frames before it."""
        seq = start
        while seq.shape[1] < frames:
            nxt = self(seq)[:, -1:]  # [B, 1, N, D]: the frame after the last one
            seq = torch.cat([seq, nxt], dim=1)
        return seq[:, :frames]


class FeatureEstimators(nn.Module):
    """F_de, F_rte and F_dte, and the pseudo-4D path built from them."""

    def __init__(self, *, depth: DepthEstimator, rgb_temporal: TemporalEstimator, depth_temporal: TemporalEstimator):
        super().__init__()
        self.depth = depth
        self.rgb_temporal = rgb_temporal
        self.depth_temporal = depth_temporal

    @classmethod
    def build(cls, *, dim: int, cfg: EstimatorConfig) -> "FeatureEstimators":
        return cls(
            depth=DepthEstimator(dim=dim, cfg=cfg),
            rgb_temporal=TemporalEstimator(dim=dim, cfg=cfg),
            depth_temporal=TemporalEstimator(dim=dim, cfg=cfg),
        )

    def pseudo_clip(self, first_rgb: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``first_rgb [B, 1, N, D]`` (one frame's RGB features) -> pseudo RGB and depth sequences
        ``[B, frames, N, D]`` each: F_rte rollout; F_de then F_dte rollout."""
        rgb = self.rgb_temporal.rollout(first_rgb, frames)
        depth = self.depth_temporal.rollout(self.depth(first_rgb), frames)
        return rgb, depth


def _regression(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE, mean 1 - cosine over tokens) of ``[..., D]`` features against detached targets."""
    target = target.detach().to(pred.dtype)
    return F.mse_loss(pred, target), (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def estimator_losses(
    est: FeatureEstimators, rgb: torch.Tensor, depth: torch.Tensor | None, fuse, cfg: TransferConfig
) -> dict[str, torch.Tensor]:
    """Teacher-forced losses of the estimators on real features ``rgb``, ``depth`` ``[B, T, N, D]``
    (``depth`` None: RGB video, F_rte only); ``fuse(rgb [B', N, D], depth) -> [B', N, D]`` is the
    encoder's aggregator.

    F_de per frame; F_rte and F_dte predict frames 1..T-1 from the real frames before them (the
    depth sequence F_dte reads is F_de's, as in the pseudo-4D path); consistency compares the
    fusion of the predicted RGB and depth of frames 1..T-1 with the fusion of the real ones."""
    b, t, n, d = rgb.shape
    out: dict[str, torch.Tensor] = {}
    total = rgb.new_zeros(())
    if t > 1:
        rgb_next = est.rgb_temporal(rgb[:, :-1])  # [B, T-1, N, D]: frames 1..T-1
        out["rte_mse"], out["rte_cos"] = _regression(rgb_next, rgb[:, 1:])
        total = total + cfg.mse_weight * out["rte_mse"] + cfg.cosine_weight * out["rte_cos"]
    if depth is not None:
        depth_hat = est.depth(rgb)  # [B, T, N, D]
        out["de_mse"], out["de_cos"] = _regression(depth_hat, depth)
        total = total + cfg.mse_weight * out["de_mse"] + cfg.cosine_weight * out["de_cos"]
        if t > 1:
            depth_next = est.depth_temporal(depth_hat[:, :-1])
            out["dte_mse"], out["dte_cos"] = _regression(depth_next, depth[:, 1:])
            pred_fused = fuse(rgb_next.reshape(-1, n, d), depth_next.reshape(-1, n, d))
            real_fused = fuse(rgb[:, 1:].reshape(-1, n, d), depth[:, 1:].reshape(-1, n, d))
            out["consistency"] = F.mse_loss(pred_fused, real_fused.detach())
            total = total + cfg.mse_weight * out["dte_mse"] + cfg.cosine_weight * out["dte_cos"] + (
                cfg.consistency_weight * out["consistency"])
    out["total"] = total
    return out


def pseudo_feature_losses(
    pseudo_rgb: torch.Tensor, pseudo_depth: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, cfg: TransferConfig
) -> dict[str, torch.Tensor]:
    """Feature matching of a pseudo clip (rolled out from frame 0) against the real one, all
    ``[B, T, N, D]``: how far the imagined depth and time are from the video's."""
    out: dict[str, torch.Tensor] = {}
    out["pseudo_rgb_mse"], out["pseudo_rgb_cos"] = _regression(pseudo_rgb, rgb)
    out["pseudo_depth_mse"], out["pseudo_depth_cos"] = _regression(pseudo_depth, depth)
    out["total"] = cfg.mse_weight * (out["pseudo_rgb_mse"] + out["pseudo_depth_mse"]) + cfg.cosine_weight * (
        out["pseudo_rgb_cos"] + out["pseudo_depth_cos"])
    return out
