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
    """Train the 4D-LLM through the experiment's stages (or, for a `kind: pipeline` config, the
    pipeline baseline's segment, track and relation stages); writes checkpoints and metrics."""
    from psg4d.baseline.config import is_pipeline_yaml

    path = resolve_config(config)
    if is_pipeline_yaml(path):
        _train_pipeline(path, list(overrides), out, resume, stage)
        return
    from psg4d.train.loop import train
    from psg4d.train.stages import load_experiment

    cfg = load_experiment(path, list(overrides))
    result = train(cfg, out_dir=out, resume=resume, only_stage=stage)
    if int(os.environ.get("RANK", "0")) == 0:
        for st in result.stages:
            state = "already done" if st.skipped else f"{st.steps} steps in {st.wall_s:.0f} s"
            loss = f"{st.final_loss:.4f}" if st.final_loss is not None else "n/a"
            val = ", ".join(f"{k} {v:.4f}" for k, v in sorted(st.val.items()))
            typer.echo(f"stage {st.name}: {state}, final loss {loss}{'; ' + val if val else ''}")
        typer.echo(f"final model: {result.final_dir}")


def _train_pipeline(path: Path, overrides: list[str], out: Path | None, resume: bool, stage: str | None) -> None:
    from psg4d.baseline.config import load_pipeline_config
    from psg4d.baseline.pipeline import train_pipeline

    result = train_pipeline(load_pipeline_config(path, overrides), out_dir=out, resume=resume, only_stage=stage)
    for st in result.stages:
        state = "already done" if st.skipped else f"{st.steps} {'videos' if st.name == 'track' else 'steps'} in {st.wall_s:.0f} s"
        loss = f", final loss {st.final_loss:.4f}" if st.final_loss is not None else ""
        typer.echo(f"stage {st.name}: {state}{loss}")
    typer.echo(f"final pipeline: {result.final_dir}" if result.final_dir else "pipeline not complete yet")
