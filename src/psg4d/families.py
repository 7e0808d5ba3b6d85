"""One registry of model families: which code trains from an experiment config, and which loads a
checkpoint and predicts with it.

A checkpoint says what it is in the header of its ``config.json``::

    {"format": "psg4d-model", "kind": "psg4d_llm", "version": 2, ...}

and an experiment YAML by its top-level ``kind`` (none: the 4D-LLM). :data:`FAMILIES` maps a kind
to its :class:`Family`; every command that takes a checkpoint or a training config (``psg4d
train``, ``psg4d predict`` on one video or a folder of videos, ``psg4d eval --ckpt``, the
experiments) looks the family up here instead of testing for one. A new family is one row of
:data:`FAMILIES` and two functions in its own package: ``train(TrainRequest) -> TrainReport`` and
``load_predictor(ckpt, PredictOptions) -> VideoPredictor``.

The rows name those functions by import path (``"package.module:function"``), imported when a
command uses them, the way transformers' auto classes name their models: the registry sits low
(``psg4d.infer`` asks it for a predictor of any family) while the families' trainers sit above
``psg4d.infer``.

Checkpoints written before the header had all three keys still read: a 4D-LLM checkpoint has
``format`` and ``version`` but no ``kind`` (:data:`LLM_KIND`), a pipeline one ``kind: pipeline``
but no ``format`` (version 1).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from psg4d.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from psg4d.data.schema import SceneGraph4D, Video4D

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT = "psg4d-model"
LLM_KIND = "psg4d_llm"
PIPELINE_KIND = "pipeline"


# ------------------------------------------------------------------------ what a family provides
@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """One ``psg4d train`` call: an experiment YAML, ``key=value`` overrides, where to write, whether
    to continue a run found there, and one stage to run alone (None: all)."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    resume: bool = True
    stage: str | None = None


@dataclass(frozen=True, kw_only=True)
class StageLine:
    """What a finished (or already done) stage reports: ``work`` says what it did (``"300 steps"``)."""

    name: str
    skipped: bool
    work: str
    wall_s: float
    final_loss: float | None = None
    val: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        state = "already done" if self.skipped else f"{self.work} in {self.wall_s:.0f} s"
        loss = f", final loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        val = ", ".join(f"{k} {v:.4f}" for k, v in sorted(self.val.items()))
        return f"stage {self.name}: {state}{loss}{'; ' + val if val else ''}"


@dataclass(frozen=True, kw_only=True)
class TrainReport:
    stages: list[StageLine]
    final_dir: Path | None  # the checkpoint to predict with; None while stages are left to run


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """How to predict, whatever the family (a family refuses, in one line, an option it has no use
    for). ``depth_given``: whether the videos come with depth (None: not known at load time, e.g.
    a dataset split), so the loader can say what a missing depth means for its model."""

    max_new_tokens: int | None = None  # a bound on generated text (a family that writes none meets it)
    max_candidates: int = 300
    threads: int | None = None
    mode: str = "auto"
    vocabulary: list[str] | None = None
    namer: str | None = None  # chain mode: the pretrained LM that names unknown objects
    depth_given: bool | None = None


class VideoPredictor(Protocol):
    """What every family's predictor offers the commands (:mod:`psg4d.infer.video_predict`)."""

    max_frames: int | None  # frames one pass reads (longer videos stream in windows); None: any length
    image_size: int  # the shorter side frames are read at (never upscaled)
    max_candidates: int  # relations kept per video

    def predict(self, video: "Video4D", *, mask_size: tuple[int, int] | None = None) -> "SceneGraph4D": ...


# ------------------------------------------------------------------------ the table
@dataclass(frozen=True, kw_only=True)
class Family:
    """One model family: its ``kind``, the header versions it reads, and its two functions."""

    kind: str
    title: str  # what messages call it
    versions: tuple[int, ...]
    trainer: str  # "module:function" (TrainRequest) -> TrainReport
    predictor: str  # "module:function" (checkpoint folder, PredictOptions) -> VideoPredictor

    def train(self, request: TrainRequest) -> TrainReport:
        return _resolve(self.trainer)(request)

    def load_predictor(self, ckpt: str | Path, options: PredictOptions | None = None) -> VideoPredictor:
        return _resolve(self.predictor)(Path(ckpt), options or PredictOptions())


FAMILIES: dict[str, Family] = {
    LLM_KIND: Family(kind=LLM_KIND, title="4D-LLM", versions=(1, 2),
                     trainer="psg4d.train.family:train",
                     predictor="psg4d.infer.predictor_factory:load_predictor"),
    PIPELINE_KIND: Family(kind=PIPELINE_KIND, title="pipeline baseline", versions=(1,),
                          trainer="psg4d.baseline.family:train",
                          predictor="psg4d.baseline.family:load_predictor"),
}

# Stage folders of a family's training that hold part of a model (their config.json kind): named,
# so a command given one says which folder to use instead.
PARTIAL_KINDS = {"segmenter": PIPELINE_KIND, "relation": PIPELINE_KIND}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------ headers
@dataclass(frozen=True)
class Header:
    format: str
    kind: str
    version: int


def header(kind: str) -> dict[str, Any]:
    """The header keys a checkpoint of family ``kind`` writes first into its ``config.json``."""
    return {"format": FORMAT, "kind": kind, "version": FAMILIES[kind].versions[-1]}


def strip_header(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the header's ``format`` and ``version`` (``kind`` stays: a family's
    config may hold it as a field)."""
    return {k: v for k, v in config.items() if k not in ("format", "version")}


def read_header(ckpt: str | Path) -> Header:
    """The header of checkpoint folder ``ckpt`` (pre-registry checkpoints as the module docstring
    says); one line naming the folder or file when there is none."""
    path = Path(ckpt)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    file = path / CONFIG_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; {path} is not a psg4d checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: malformed JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: not a psg4d checkpoint (the top level is not an object)")
    kind = meta.get("kind")
    fmt = meta.get("format", FORMAT if kind in (PIPELINE_KIND, *PARTIAL_KINDS) else None)
    if fmt != FORMAT:
        raise CheckpointError(f"{file}: not a psg4d checkpoint (expected \"format\": \"{FORMAT}\")")
    version = meta.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{file}: \"version\" must be a whole number, got {version!r}")
    return Header(format=fmt, kind=LLM_KIND if kind is None else str(kind), version=version)


def family_of_checkpoint(ckpt: str | Path) -> Family:
    """The family that reads checkpoint ``ckpt``, after checking its header's kind and version."""
    head = read_header(ckpt)
    file = Path(ckpt) / CONFIG_FILE
    if head.kind in PARTIAL_KINDS:
        owner = FAMILIES[PARTIAL_KINDS[head.kind]]
        raise CheckpointError(f"{file}: one stage of a {owner.title} (kind {head.kind!r}), not a whole model; "
                              "use the run's final/ folder")
    family = FAMILIES.get(head.kind)
    if family is None:
        raise CheckpointError(f"{file}: kind {head.kind!r} is no model family this psg4d knows "
                              f"({', '.join(FAMILIES)})")
    if head.version not in family.versions:
        raise CheckpointError(f"{file}: {family.title} checkpoint version {head.version}; this psg4d reads "
                              f"version {', '.join(map(str, family.versions))}")
    return family


def family_of_config(data: dict[str, Any], *, where: str | Path) -> Family:
    """The family an experiment config (a YAML's mapping) trains: its top-level ``kind``, the
    4D-LLM where it has none."""
    kind = data.get("kind", LLM_KIND)
    family = FAMILIES.get(kind) if isinstance(kind, str) else None
    if family is None:
        raise ConfigError(f"{where}: kind {kind!r} is no model family ({', '.join(FAMILIES)})")
    return family


def require_family(ckpt: str | Path, kind: str, purpose: str) -> None:
    """Refuse, in one line, a checkpoint of another family than ``kind`` for ``purpose`` (a
    command that reads what only that family has, e.g. the LLM's text probabilities)."""
    family = family_of_checkpoint(ckpt)
    if family.kind != kind:
        raise CheckpointError(f"{ckpt}: a {family.title} checkpoint; {purpose} needs a {FAMILIES[kind].title} one")
