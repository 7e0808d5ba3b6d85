"""The ``psg4d`` command line: thin wrappers over library functions.

Each area owns its commands (``psg4d/<area>/commands.py``); this module only
mounts them and turns user-facing errors (:class:`psg4d.errors.Psg4dError`) and usage
errors (unknown commands or options, missing or malformed values) into one clear line and
exit status 2, never a traceback.
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
    ("tune-ranking", "psg4d.tune_ranking", "tune_ranking_command"),
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


def _click_exception() -> type[Exception]:
    """The ``ClickException`` class of the click that typer runs on.

    typer raises the exceptions of whichever click it was built on: the ``click`` package, or,
    since it vendored click, its private copy. Its public ``typer.BadParameter`` is a usage
    error of that click, so the base class is looked up in its ancestry instead of importing
    either module path.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    raise RuntimeError(f"typer {typer.__version__}: BadParameter is not a click exception")  # pragma: no cover


def _command_path(argv: list[str]) -> str:
    """``psg4d`` and the (sub)command names ``argv`` starts with."""
    group = typer.main.get_command(app)
    path = ["psg4d"]
    for token in argv:
        sub = getattr(group, "commands", {}).get(token)
        if sub is None:
            break
        path.append(token)
        group = sub
    return " ".join(path)


def usage_error_line(e: Exception, argv: list[str]) -> str:
    """A click usage error as one line: the problem, then the command's usage and where help is."""
    message = " ".join(e.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    if ctx is None:  # click raises some parser errors (an option's missing value) without one
        return f"error: {message} (see '{_command_path(argv)} --help')"
    usage = " ".join(ctx.get_usage().split())
    hint = f"; see '{ctx.command_path} --help'" if ctx.command.get_help_option(ctx) is not None else ""
    return f"error: {message} ({usage}{hint})"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors and usage errors print one line and exit 2."""
    click_exception = _click_exception()
    argv = list(sys.argv[1:] if argv is None else argv)
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
    except click_exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            # a bare group (`psg4d`, `psg4d data`): its help is the answer. Shown by click's own
            # display, unless typer's rich formatting printed it already (empty message then).
            if e.format_message().strip():
                e.show()
        else:
            typer.echo(usage_error_line(e, argv), err=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
