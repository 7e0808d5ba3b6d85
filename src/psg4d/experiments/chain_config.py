"""The chain experiment's settings (:class:`ChainExperimentConfig`, ``psg4d experiment chain``'s options) and
the names it trains under; the experiment itself is :mod:`psg4d.experiments.chain`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from psg4d.errors import ConfigError
from psg4d.experiments.common import DESIGN_WORLDS, refuse_design_world
from psg4d.model.config import ATTRIBUTE_FORMS
from psg4d.model.llm import PACKAGED_LLMS

STAGE_ORDER = ("4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d", "attribute_fit")
LLM_PRESETS = {"tiny": "hoi_tiny.yaml", "smollm2-135m": "hoi_smollm2.yaml"}
# Novel categories whose descriptions name them in everyday words (the language test), and one whose
# description does not (an orange cylinder with white checks: a jar only by convention).
NOVEL = ("apple", "phone", "globe", "jar")


@dataclass(kw_only=True)
class ChainExperimentConfig:
    out: Path = Path("runs/experiments/chain")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/chain")
    llms: list[str] = field(default_factory=lambda: ["tiny", "smollm2-135m"])
    novel: tuple[str, ...] = NOVEL
    videos: int = 200  # 4D training videos
    images: int = 800  # 2D training images
    test_videos: int = 30  # scored: the first N of the world's test split
    # the world's test split is sized for this many videos whatever --test-videos scores, so that
    # scoring fewer (a slow pretrained LLM) reuses the world and the trained runs
    world_test_videos: int = 60
    frames: int = 16
    size: int = 64
    # the fair protocol (BENCHMARKS.md): judged on a world never used for design, each arm trained
    # with every training seed; direct and chain share each run's checkpoint (equal budgets)
    world_seed: int = 29
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # a run on a design world (--design): it informs the design, judges nothing, and says so in the JSON
    design: bool = False
    device: str = "cpu"  # training and prediction: "cpu" or "cuda"
    chain_prob: float = 0.5
    # how the chain names an object of an unseen description: "free" (the LLM writes a name; the
    # mapper maps it), "vocabulary" (the LLM scores every name of the dataset's vocabulary)
    namings: list[str] = field(default_factory=lambda: ["free", "vocabulary"])
    # a pretrained LM that names the chain's unknown objects over the vocabulary as one more arm
    # ("vocabulary by <namer>": the same predictions, named again; psg4d.model.llm.PACKAGED_LLMS),
    # for an LLM trained from scratch, which has no language knowledge of its own
    namer: str | None = None
    # how that namer scores the vocabulary: "raw" log-probabilities, or "calibrated" against a neutral
    # description; the default is the scoring psg4d experiment naming's validation group chose
    # (bench/results/naming.json, chosen_on_validation)
    namer_scoring: str = "raw"
    # optimizer steps of the tiny model's six stages
    steps: dict[str, int] = field(default_factory=lambda: {
        "4d_init": 900, "estimator_fit": 150, "pseudo4d_init": 100, "transfer_2d": 500, "finetune_4d": 200,
        "attribute_fit": 1500,
    })
    # the attribute head's learning rate in attribute_fit (chosen with its steps by psg4d experiment
    # colour_reading on design world 1)
    attribute_lr: float = 0.01
    # where the size and shape words are read from (model.attribute_form): "geometry" (measured from the
    # tube's depth) or "map" (the head's cells); chosen on design world 1 (psg4d experiment colour_reading --ckpt)
    attribute_form: str = "geometry"
    # the form reader's learning rate in attribute_fit (design world 1's validation objects: both size and
    # shape read right from their true tubes cut to the decoder's cells for 230 of 303 at 0.003, 198 at 0.01)
    form_lr: float = 0.003
    # steps of a pretrained LLM's one stage on the tiny model's trained vision (about ten CPU-seconds
    # a step on 2 cores for SmolLM2-135M, against half a second for the tiny model)
    llm_steps: int = 300
    batch_size: dict[str, int] = field(default_factory=lambda: {"tiny": 2, "smollm2-135m": 2})
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.videos, self.images, self.test_videos, self.frames, self.size = 8, 12, 3, 6, 32
            self.world_test_videos = 3
            self.steps, self.llm_steps, self.seeds = {s: 2 for s in STAGE_ORDER}, 2, self.seeds[:1]
        unknown = [m for m in self.llms if m not in LLM_PRESETS]
        if unknown or not self.llms:
            raise ConfigError(f"--llms: choose from {sorted(LLM_PRESETS)}, got {self.llms}")
        bad = [n for n in self.namings if n not in ("vocabulary", "free")]
        if bad or not self.namings:
            raise ConfigError(f"namings must be 'vocabulary' and/or 'free', got {self.namings}")
        if self.videos < 1 or self.images < 1 or self.test_videos < 1:
            raise ConfigError("--videos, --images and --test-videos must be positive")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds must be distinct training seeds, got {self.seeds}")
        if self.namer_scoring not in ("raw", "calibrated"):
            raise ConfigError(f"namer_scoring must be 'raw' or 'calibrated', got {self.namer_scoring!r}")
        if self.namer is not None and self.namer not in PACKAGED_LLMS:
            raise ConfigError(f"--namer: choose from {sorted(PACKAGED_LLMS)}, got {self.namer!r}")
        if self.attribute_form not in ATTRIBUTE_FORMS:
            raise ConfigError(f"--attribute-form must be 'geometry', 'map' or 'both', got {self.attribute_form!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be 'cpu' or 'cuda', got {self.device!r}")
        if not self.design:
            refuse_design_world(self.world_seed, quick=self.quick)
        elif self.world_seed not in DESIGN_WORLDS and not self.quick:
            raise ConfigError(f"--design runs on a design world {DESIGN_WORLDS}, not on world {self.world_seed}")
