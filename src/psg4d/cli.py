"""The ``psg4d`` command line: thin wrappers over library functions.

Each area owns its commands (``psg4d/<area>/commands.py``); this module only
mounts them and turns user-facing errors (:class:`psg4d.errors.Psg4dError`)
into one clear message and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from psg4d.errors import Psg4dError

app = typer.Typer(
    name="psg4d",
    help="4D Panoptic Scene Graph generation: synthesise, train, predict, evaluate, visualise.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (command name, module, attribute). A Typer object is mounted as a command group;
# a function as a single command. Explicit table: no discovery by folder names.
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "psg4d.demo", "demo_command"),
    ("synth", "psg4d.data.synth.commands", "synth"),
    ("data", "psg4d.data.commands", "data_app"),
    ("train", "psg4d.train.commands", "train_command"),
    ("predict", "psg4d.infer.commands", "predict_command"),
    ("eval", "psg4d.evaluate", "eval_command"),
    ("diagnose", "psg4d.infer.commands", "diagnose_command"),
    ("viz", "psg4d.viz.commands", "viz_command"),
    ("experiment", "psg4d.experiments.commands", "experiment_app"),
]


def _mount() -> None:
    for name, module, attr in COMMANDS:
        obj = getattr(importlib.import_module(module), attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


_mount()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping user errors to ``error: ...`` and exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except Psg4dError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
