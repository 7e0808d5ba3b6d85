"""``psg4d train``: run an experiment preset (stages, data, model) with overrides.

Runs unchanged under ``torchrun`` (``python -m torch.distributed.run
--nproc_per_node N -m psg4d.cli train ...``); only rank 0 prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from psg4d.errors import ConfigError
from psg4d.train.stages import PRESET_DIR



def resolve_config(path: str) -> Path:
    """A config file path, or the name of a shipped preset (``hoi_tiny`` / ``hoi_tiny.yaml``)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    shipped = PRESET_DIR / name
    if shipped.exists():
        return shipped
    presets = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"{path}: config file not found (shipped presets: {presets})")


def train_command(
    config: str = typer.Option(..., "--config", "-c", help="Experiment YAML, or a shipped preset name (hoi_tiny, ...)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key: --set train.lr=1e-4 --set data.root=runs/synth_hoi (repeatable)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: output_dir of the config)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT's last checkpoints."),
    stage: str | None = typer.Option(
        None, "--stage", help="Run (or resume) only this stage; `init: previous` is the previous stage's final."
    ),
) -> None:
    """Train the model family the config names: the 4D-LLM through the
    experiment's stages, or, for a `kind: pipeline` config, the pipeline baseline's segment, track
    and relation stages; writes checkpoints and metrics."""
    from psg4d.config import load_yaml
    from psg4d.families import TrainRequest, family_of_config

    path = resolve_config(config)
    family = family_of_config(load_yaml(path), where=path)
    report = family.train(TrainRequest(config=path, overrides=list(overrides), out=out, resume=resume, stage=stage))
    if int(os.environ.get("RANK", "0")) == 0:
        for line in report.stages:
            typer.echo(line.describe())
        typer.echo(f"final model: {report.final_dir}" if report.final_dir else
                   f"{family.title} not complete yet (stages left to run)")
