"""Training stages as data, and the experiment config that strings them together.

A stage is a :class:`StageConfig`: which modules of the model train (name
prefixes), their learning rates, the dataset mix, where the weights start from
and for how long. What a stage *kind* means (its default trainable modules,
whether it may lift 2D data into 4D, which modules it adds to the model) is one
row of :data:`STAGE_KINDS`, so the 2D-to-4D transfer adds its stages
(``estimator_fit``, ``pseudo4d_init``, ``transfer_2d``, ``finetune_4d``) as rows
that run on the same loop.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Literal, Sequence, get_args

from psg4d.config import ExclusiveKeys, build_with_overrides, did_you_mean, from_dict, load_yaml, merge_dicts, to_dict
from psg4d.engine.run_folder import flatten
from psg4d.errors import ConfigError
from psg4d.model.config import ModelConfig

# "previous": the final weights of the stage before this one in `stages`.
INIT_PREVIOUS = "previous"
# The shipped presets (``psg4d train --config hoi_tiny``).
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True, kw_only=True)
class StageKind:
    """What a kind of stage is allowed to do (one row of :data:`STAGE_KINDS`)."""

    # Module-name prefixes that train when a stage does not list its own.
    default_trainable: tuple[str, ...]
    # Whether its data mix may hold 2D datasets lifted to 4D by the estimators.
    lifts_2d: bool = False
    # Modules this stage adds to the model: weights for them may be missing from
    # the init checkpoint (they start from their own initialisation).
    new_modules: tuple[str, ...] = ()
    # Modules that train whenever the model has them (auxiliary heads that only some
    # model configs build, e.g. the 4D-LLM's `tag_head`).
    optional_trainable: tuple[str, ...] = ()
    # Model-config fields (dotted) this kind sets: what the model builds and what its forward
    # optimises in this stage (the 4D-LLM's `transfer` settings).
    model_settings: tuple[tuple[str, Any], ...] = ()
    # Kinds one of which must come earlier in the run when the stage starts from the previous
    # stage's weights: it keeps the modules they added (and says so in its model_settings).
    needs_earlier: tuple[str, ...] = ()


# The stage that needs the estimators to lift 2D scene graphs into 4D; named in
# the error a 4D-only stage gives for `lift_2d: true`.
LIFT_2D_STAGE = "transfer_2d"

# modules only some model configs build (auxiliary heads, the region-feedback encoder)
_HEADS = ("tag_head", "seg_head", "obj_cls_head", "region_encoder", "attribute_head")
_ESTIMATORS = ("transfer.estimators", True)

STAGE_KINDS: dict[str, StageKind] = {
    # stage 0 (SAM2 as SAM2): SAM2's promptable video segmentation (points, boxes, masks; memory
    # across frames) on the dense masks of every object, no LLM: the tiny-scale counterpart of
    # starting from SAM2's released weights. The 4D-LLM stages start from it.
    "sam2_pretrain": StageKind(
        default_trainable=("mask_decoder",),
        model_settings=(("transfer.objective", "masks"),),
    ),
    # stage 1: train the 4D-LLM on 4D scenes with gold 4D scene graphs
    "4d_init": StageKind(
        default_trainable=("projector", "llm", "obj_proj", "mask_decoder"),
        optional_trainable=_HEADS,
    ),
    # stage 2 (2D-to-4D transcending): fit F_de, F_rte, F_dte to the frozen encoder's real features
    "estimator_fit": StageKind(
        default_trainable=("estimators",),
        new_modules=("estimators",),
        model_settings=(_ESTIMATORS, ("transfer.objective", "estimators"), ("transfer.pathway", "real")),
    ),
    # stage 3: a little 4D data through the estimators (clips rolled out from their first frame),
    # supervised by the gold 4D graphs plus feature matching against the real clips
    "pseudo4d_init": StageKind(
        default_trainable=("estimators", "projector", "obj_proj", "mask_decoder"),
        optional_trainable=_HEADS,
        model_settings=(_ESTIMATORS, ("transfer.objective", "llm+estimators"), ("transfer.pathway", "pseudo")),
    ),
    # stage 4: 2D scene-graph images lifted to pseudo-4D clips, trained with their image-level graphs
    "transfer_2d": StageKind(
        default_trainable=("projector", "llm", "obj_proj", "mask_decoder"),
        lifts_2d=True,
        optional_trainable=_HEADS,
        model_settings=(_ESTIMATORS, ("transfer.objective", "llm"), ("transfer.pathway", "real")),
    ),
    # stage 5: back on the real 4D data. What the 2D images taught about categories the 4D videos
    # never show is forgotten within a few hundred steps of 4D-only training: the category heads
    # (tags, segmentation, [Obj] category) stay frozen, and the mix may replay lifted 2D images
    # (BENCHMARKS.md, the transfer experiment's design runs).
    "finetune_4d": StageKind(
        default_trainable=("projector", "llm", "obj_proj", "mask_decoder"),
        lifts_2d=True,
        model_settings=(_ESTIMATORS, ("transfer.objective", "llm"), ("transfer.pathway", "real")),
    ),
    # after the transfer (open vocabulary): the attribute head (psg4d.model.attributes) alone on the
    # frozen scene encoder's maps, from the per-pixel category maps and the categories' descriptions;
    # the chained predictor reads what each tube looks like with it (the "unknown object" outcome)
    "attribute_fit": StageKind(
        default_trainable=("attribute_head",),
        new_modules=("attribute_head",),
        model_settings=(_ESTIMATORS, ("attribute_loss_weight", 1.0), ("transfer.objective", "attributes"),
                        ("transfer.pathway", "real")),
        needs_earlier=("estimator_fit",),
    ),
}


# Keys of which a config sets exactly one. A `--set` of one replaces the others where the preset
# set them (`--set stages.0.max_steps=500` on a preset whose stage runs `epochs: 3`); setting two of
# them on one command line is an error (psg4d.config.apply_overrides).
EXCLUSIVE_KEYS: tuple[ExclusiveKeys, ...] = (
    ExclusiveKeys(section="stages.*", keys=("max_steps", "epochs")),
)


@dataclass(kw_only=True)
class DataSourceConfig:
    """One dataset of a mix: ``path`` (relative paths resolve against ``data.root``),
    optional reader ``format`` (None: detected by its marker file), ``split``, and
    the sampling ``weight`` relative to the other sources."""

    path: str
    format: str | None = None
    split: str = "train"
    weight: float = 1.0
    lift_2d: bool = False
    # Use only the first N videos of the split (None: all).
    max_videos: int | None = None


@dataclass(kw_only=True)
class DataConfig:
    """Data shared by all stages: the default training mix and the validation sources."""

    root: str = ""
    train: list[DataSourceConfig] = field(default_factory=list)
    val: list[DataSourceConfig] = field(default_factory=list)
    # Datasets with at most this many videos are held in memory after first read.
    cache_max_videos: int = 256
    num_workers: int = 0

    def resolve(self, source: DataSourceConfig) -> Path:
        p = Path(source.path).expanduser()
        return p if p.is_absolute() or not self.root else Path(self.root).expanduser() / p


# The optimizers and decay schedules a config may name (``psg4d.engine.optim`` builds each; the typed
# config loader refuses any other name, suggesting the closest).
OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["cosine", "linear", "constant"]


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping shared by all stages (per-process batch size)."""

    batch_size: int = 1
    grad_accum: int = 1
    optimizer: OptimizerName = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: SchedulerName = "cosine"
    warmup_steps: int = 0
    # The schedule decays to lr * min_lr_ratio.
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # auto: bf16 autocast on CUDA, off on CPU.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # auto: cuda:LOCAL_RANK when CUDA is available, else cpu.
    device: str = "auto"
    num_threads: int | None = None
    # Re-count every `adapt_threads_every` steps the CPUs other processes keep busy and train on the
    # rest (at most num_threads, or the CPUs this process may use): with 2 threads on 2 shared cores a
    # busy neighbour makes each step ~10x slower, with 1 thread ~1.3x. On, float sums follow the
    # load, so a resumed run is no longer bit-identical to an uninterrupted one. 0 (the default and
    # the shipped presets'): a fixed count, and exact resume whatever the load.
    adapt_threads_every: int = 0
    parallel: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = False
    log_every: int = 1
    # 0: validate only at the end of a stage.
    val_every: int = 0
    val_max_videos: int = 8
    # Compute R@K / mR@K with the Predictor during validation (besides val loss).
    val_recall: bool = True
    val_protocol: str = "pvsg"
    save_every: int = 100
    # Numbered step checkpoints kept per stage (`last` always points at the newest).
    keep_last: int = 2
    progress: bool = True


@dataclass(kw_only=True)
class StageConfig:
    """One training stage. Exactly one of ``max_steps`` / ``epochs`` sets its length."""

    name: str
    kind: str = "4d_init"
    # Module-name prefixes that train; empty: the kind's default.
    trainable: list[str] = field(default_factory=list)
    # Learning rate per module-name prefix (longest prefix wins); others use train.lr.
    lr: dict[str, float] = field(default_factory=dict)
    # The training mix; empty: data.train.
    data: list[DataSourceConfig] = field(default_factory=list)
    # None: fresh model; "previous": the previous stage's final weights; else a checkpoint folder.
    init: str | None = None
    max_steps: int | None = None
    epochs: float | None = None
    # Overrides of model.loss fields for this stage (e.g. {mask_dice: 0.5}).
    loss_weights: dict[str, float] = field(default_factory=dict)

    @property
    def kind_spec(self) -> StageKind:
        return STAGE_KINDS[self.kind]

    def trainable_prefixes(self, present: Collection[str] = ()) -> list[str]:
        """The stage's prefixes (else its kind's default), plus the kind's optional modules
        among ``present`` (the model's top-level modules)."""
        prefixes = list(self.trainable) or list(self.kind_spec.default_trainable)
        return prefixes + [p for p in self.kind_spec.optional_trainable if p in present and p not in prefixes]


@dataclass(kw_only=True)
class ExperimentConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)
    output_dir: str = "runs/experiment"
    seed: int = 0
    # the model family (psg4d.families); a YAML may leave it out
    kind: Literal["psg4d_llm"] = "psg4d_llm"

    def __post_init__(self) -> None:
        validate_experiment(self)

    def stage_data(self, stage: StageConfig) -> list[DataSourceConfig]:
        return stage.data or self.data.train

    def model_config_for(self, stage: StageConfig) -> ModelConfig:
        """The model config with the stage kind's settings and the stage's loss-weight overrides applied."""
        model = self.model
        for dotted, value in stage.kind_spec.model_settings:
            model = _with_field(model, dotted, value, where=f"stage {stage.name!r} ({stage.kind})")
        if not stage.loss_weights:
            return model
        loss = getattr(model, "loss", None)
        if loss is None or not dataclasses.is_dataclass(loss):
            raise ConfigError(f"stage {stage.name!r}: loss_weights given but the model config has no `loss` section")
        valid = {f.name for f in dataclasses.fields(loss)}
        unknown = sorted(set(stage.loss_weights) - valid)
        if unknown:
            raise ConfigError(f"stage {stage.name!r}: unknown loss weight(s) {unknown}; valid: {sorted(valid)}")
        return dataclasses.replace(model, loss=dataclasses.replace(loss, **stage.loss_weights))


def _with_field(cfg: Any, dotted: str, value: Any, *, where: str) -> Any:
    """``cfg`` (nested dataclasses) with field ``dotted`` set to ``value`` (re-validated)."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
        raise ConfigError(f"{where}: sets model.{dotted}, which this model's config does not have")
    new = value if not rest else _with_field(getattr(cfg, head), rest, value, where=where)
    return dataclasses.replace(cfg, **{head: new})


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Raise ConfigError on anything that would otherwise fail mid-run."""
    t = cfg.train
    if not cfg.stages:
        raise ConfigError("stages: an experiment needs at least one stage")
    for name, value in (("batch_size", t.batch_size), ("grad_accum", t.grad_accum), ("log_every", t.log_every)):
        if value < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {value}")
    if t.keep_last < 1:
        raise ConfigError(f"train.keep_last must be >= 1, got {t.keep_last}")
    _validate_train(t)
    if cfg.data.num_workers < 0 or cfg.data.cache_max_videos < 0:
        raise ConfigError(
            f"data.num_workers ({cfg.data.num_workers}) and data.cache_max_videos ({cfg.data.cache_max_videos})"
            " must be >= 0"
        )
    seen: set[str] = set()
    for i, s in enumerate(cfg.stages):
        where = f"stages[{i}] ({s.name!r})"
        if s.kind not in STAGE_KINDS:
            raise ConfigError(
                f"{where}: unknown stage kind {s.kind!r}{did_you_mean(s.kind, STAGE_KINDS)}; valid kinds: {sorted(STAGE_KINDS)}"
            )
        if not s.name or "/" in s.name or s.name.startswith("."):
            raise ConfigError(f"{where}: stage name must be a plain folder name")
        if s.name in seen:
            raise ConfigError(f"{where}: duplicate stage name")
        seen.add(s.name)
        if (s.max_steps is None) == (s.epochs is None):
            raise ConfigError(f"{where}: set exactly one of max_steps and epochs")
        if s.max_steps is not None and s.max_steps < 1:
            raise ConfigError(f"{where}: max_steps must be >= 1")
        if s.epochs is not None and s.epochs <= 0:
            raise ConfigError(f"{where}: epochs must be > 0")
        if s.init == INIT_PREVIOUS and i == 0:
            raise ConfigError(f"{where}: init 'previous' but this is the first stage")
        earlier = s.kind_spec.needs_earlier
        if earlier and s.init == INIT_PREVIOUS and not any(e.kind in earlier for e in cfg.stages[:i]):
            raise ConfigError(f"{where}: a {s.kind!r} stage keeps the modules of an earlier {' or '.join(earlier)} "
                              "stage; put one before it")
        for prefix, lr in s.lr.items():
            if not (math.isfinite(lr) and lr >= 0):
                raise ConfigError(f"{where}: lr[{prefix!r}] must be a finite number >= 0, got {lr}")
        for name, w in s.loss_weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"{where}: loss_weights[{name!r}] must be a finite number >= 0, got {w}")
        sources = cfg.stage_data(s)
        if not sources:
            raise ConfigError(f"{where}: no training data (set data.train or the stage's data)")
        for j, src in enumerate(sources):
            if src.max_videos is not None and src.max_videos < 1:
                raise ConfigError(f"{where}: data[{j}] max_videos must be >= 1 or null, got {src.max_videos}")
            if src.weight <= 0:
                raise ConfigError(f"{where}: data[{j}] weight must be > 0, got {src.weight}")
            if src.lift_2d and not s.kind_spec.lifts_2d:
                raise ConfigError(
                    f"{where}: data[{j}] ({src.path}) has lift_2d: true, but a {s.kind!r} stage trains on 4D data only;"
                    f" lifting 2D scene graphs to 4D needs the depth/4D estimators of the {LIFT_2D_STAGE!r} stage"
                )
        cfg.model_config_for(s)


def _validate_train(t: TrainConfig) -> None:
    """The ``train`` section's numbers, checked before a model is built (an invalid value would
    otherwise surface as a torch traceback mid-run, or silently train nothing)."""
    def bad(key: str, rule: str, value: Any) -> ConfigError:
        return ConfigError(f"train.{key}: must be {rule}, got {value!r}")

    if not (math.isfinite(t.lr) and t.lr > 0):
        raise bad("lr", "a finite number > 0", t.lr)
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise bad("weight_decay", "a finite number >= 0", t.weight_decay)
    if not all(math.isfinite(b) and 0 <= b < 1 for b in t.betas):
        raise bad("betas", "two numbers in [0, 1)", list(t.betas))
    if not (math.isfinite(t.min_lr_ratio) and 0 <= t.min_lr_ratio <= 1):
        raise bad("min_lr_ratio", "in [0, 1]", t.min_lr_ratio)
    if t.max_grad_norm is not None and not (math.isfinite(t.max_grad_norm) and t.max_grad_norm > 0):
        raise bad("max_grad_norm", "a finite number > 0 or null", t.max_grad_norm)
    for key in ("warmup_steps", "adapt_threads_every", "val_every", "val_max_videos", "save_every"):
        if getattr(t, key) < 0:
            raise bad(key, ">= 0", getattr(t, key))
    if t.num_threads is not None and t.num_threads < 1:
        raise bad("num_threads", ">= 1 or null", t.num_threads)
    for key, names in (("optimizer", get_args(OptimizerName)), ("scheduler", get_args(SchedulerName))):
        value = getattr(t, key)  # a config built in code skips the loader's check
        if value not in names:
            raise ConfigError(f"train.{key}: unknown {value!r}{did_you_mean(value, names)}; valid: {sorted(names)}")


def check_local_weights(model_cfg: Any) -> None:
    """Fail in seconds, naming the field, when a configured local weight path is missing
    (rather than after building half of a large model). Paths resolve as the model resolves
    them (:func:`psg4d.model.provenance.resolve_weight_path`)."""
    from psg4d.model.weight_files import WEIGHT_FIELDS, WEIGHTS_ENV, get_field, resolve_weight_path

    for dotted, is_local in WEIGHT_FIELDS.items():
        value = get_field(model_cfg, dotted)
        if value is None or not is_local(value):
            continue
        path = resolve_weight_path(str(value))
        if not path.exists():
            raise ConfigError(
                f"model.{dotted}: {path} not found; download the weights and point the config at them"
                f" (e.g. --set model.{dotted}=/path/to/{path.name}, or put them in ${WEIGHTS_ENV})"
            )


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """YAML preset (with ``_base_``) + ``key=value`` overrides -> :class:`ExperimentConfig`."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    where = str(path) if path else "config"
    return build_with_overrides(lambda d: experiment_from_data(d, where=where), data, overrides, where=where,
                                exclusive=EXCLUSIVE_KEYS)


def experiment_from_data(data: dict[str, Any], *, where: str = "config") -> ExperimentConfig:
    """A config as plain data (what a YAML preset holds) -> :class:`ExperimentConfig`."""
    if "model" not in data:
        raise ConfigError(f"{where}: missing the `model` section")
    try:
        data = dict(data, model=resolve_model_preset(data["model"]))
    except ConfigError as e:
        raise ConfigError(f"{where}: model.preset: {e}") from None
    return from_dict(ExperimentConfig, data, where="", source=where)


def resolve_model_preset(model: Any) -> Any:
    """``model: {preset: NAME, ...}`` -> the named preset's settings with the given keys merged over them."""
    if not isinstance(model, dict) or "preset" not in model:
        return model
    from psg4d.model.config import model_preset

    return merge_dicts(to_dict(model_preset(str(model["preset"]))), model)


def model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What makes another 4D-LLM in an experiment's settings: the model config and each stage's
    kind. Schedule and optimiser settings may change on resume (a longer run continues)."""
    stages = {str(s.get("name")): s.get("kind") for s in cfg.get("stages") or [] if isinstance(s, dict)}
    return {**flatten(cfg.get("model") or {}, "model"), **{f"stages.{n}.kind": k for n, k in stages.items()}}


def preset_experiment(
    preset: str | Path, data_root: Path, out_dir: Path, *, seed: int, steps: int | None,
    pretrain_steps: int | None = None, overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The training preset ``preset`` (a file of :data:`PRESET_DIR` or a path) on the world
    ``data_root``, written to ``out_dir``, seed ``seed``, ``overrides`` (``key=value``) on top; every
    stage ``steps`` optimizer steps long and SAM2's ``sam2_pretrain`` stages ``pretrain_steps``
    (None: the preset's own length)."""
    base = [f"data.root={Path(data_root).resolve()}", f"output_dir={Path(out_dir).resolve()}", f"seed={seed}"]
    exp = load_experiment(PRESET_DIR / preset, base + list(overrides))
    for stage in exp.stages:
        n = pretrain_steps if stage.kind == "sam2_pretrain" else steps
        if n is not None:
            stage.max_steps, stage.epochs = n, None
    return exp
