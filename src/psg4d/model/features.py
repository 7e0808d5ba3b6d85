"""Which branch features enter the aggregator: real, estimated depth, or a pseudo-4D clip.

Per clip of a batch (``[B, T, ...]``), one of:

* ``sensor`` — the RGB and depth branches' features of the real frames;
* ``estimated`` — no depth input: the RGB branch's features, and depth features from
  F_de frame by frame (when the model has the estimators; otherwise the aggregator
  fuses RGB alone, ``none``);
* ``pseudo`` — a lifted 2D image (or, in a stage whose pathway is ``pseudo``, a real
  clip's first frame): F_rte rolls the first frame's RGB features out to ``T`` frames,
  F_de then F_dte do the same for depth.

The real branch features are kept beside what enters the aggregator, so training can
regress the estimators onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from psg4d.errors import ConfigError
from psg4d.model.encoder import BranchFeatures, SceneEncoder
from psg4d.model.estimators import FeatureEstimators

DEPTH_SOURCES = ("sensor", "estimated", "none")


@dataclass
class SceneFeatures:
    real: BranchFeatures  # what the branches made of the frames given
    rgb: torch.Tensor  # [B, T, N, D] entering the aggregator
    depth: torch.Tensor | None  # [B, T, N, D] entering the aggregator (None: RGB alone)
    pseudo: torch.Tensor  # [B] bool: clips rolled out from their first frame
    depth_source: str  # of the clips that are not pseudo: one of DEPTH_SOURCES


def scene_features(
    encoder: SceneEncoder,
    estimators: FeatureEstimators | None,
    rgb: torch.Tensor,
    depth: torch.Tensor | None,
    *,
    disparity_scale: torch.Tensor | None = None,
    pseudo: torch.Tensor | None = None,
) -> SceneFeatures:
    """``rgb [B, T, 3, H, W]``, ``depth [B, T, 1, H, W] | None``, ``pseudo [B]`` bool (None: no
    clip) -> the features of the module docstring."""
    real = encoder.branches(rgb, depth, disparity_scale=disparity_scale)
    b, t = real.rgb.shape[:2]
    pseudo = torch.zeros(b, dtype=torch.bool, device=real.rgb.device) if pseudo is None else pseudo.to(real.rgb.device)
    rgb_in, depth_in = real.rgb, real.depth
    source = "sensor" if depth_in is not None else "none"
    if estimators is None:
        if bool(pseudo.any()):
            raise ConfigError(
                "lifting 2D images to pseudo-4D clips needs the transfer's estimators (model.transfer.estimators:"
                " true, set by the estimator_fit stage and those after it)"
            )
        return SceneFeatures(real=real, rgb=rgb_in, depth=depth_in, pseudo=pseudo, depth_source=source)
    if depth_in is None:
        depth_in = estimators.depth(rgb_in)  # [B, T, N, D], F_de frame by frame
        source = "estimated"
    if bool(pseudo.any()):
        rows = torch.nonzero(pseudo).flatten()
        p_rgb, p_depth = estimators.pseudo_clip(rgb_in[rows, :1], t)  # [P, T, N, D] each
        rgb_in = rgb_in.index_put((rows,), p_rgb.to(rgb_in.dtype))
        depth_in = depth_in.index_put((rows,), p_depth.to(depth_in.dtype))
    return SceneFeatures(real=real, rgb=rgb_in, depth=depth_in, pseudo=pseudo, depth_source=source)
