"""The installed ``psg4d`` console script answers every usage error and every bad input in one line
on stderr with exit status 2, never a traceback, whichever click typer runs on.

Run through the real entry point (a subprocess of the script that the set-up installed), not
``main()``: the usage errors that printed tracebacks were raised by the click that typer vendors,
which a test calling ``main`` with the same installed typer would not have told apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# (argv, a fragment the error line must hold). Usage errors: unknown commands and options, missing
# options, arguments and values, values of the wrong type; one or more of every command family.
USAGE_ERRORS: list[tuple[list[str], str]] = [
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["--nosuch"], "No such option: --nosuch"),
    (["experiment", "nosuch"], "No such command 'nosuch'"),
    (["viz", "pred.json", "--out", "r.html"], "Missing option '--video'"),
    (["eval", "--nosuch"], "No such option: --nosuch"),
    (["predict"], "Missing option '--ckpt'"),
    (["train", "--config"], "Option '--config' requires an argument"),
    (["train", "--config", "hoi_tiny", "--stage"], "Option '--stage' requires an argument"),
    (["demo", "--steps", "many"], "Invalid value for '--steps'"),
    (["synth", "--out", "x", "--videos", "ten"], "Invalid value for '--videos'"),
    (["data", "inspect"], "Missing argument"),
    (["data", "nosuch"], "No such command 'nosuch'"),
    (["data", "convert", "src"], "Missing option '--out'"),
    (["diagnose", "--data", "d"], "Missing option '--ckpt'"),
    (["experiment", "compare", "--videos", "x"], "Invalid value for '--videos'"),
    (["experiment", "transfer", "--nosuch"], "No such option: --nosuch"),
]

# Bad input, found by each command family before any work: one line naming the file and the problem.
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["synth", "--out", "{file}", "--videos", "1"], "exists and is not a folder"),
    (["data", "inspect", "{missing}"], "missing"),
    (["data", "convert", "{missing}", "--out", "{tmp}/converted"], "missing"),
    (["train", "--config", "{missing}/nosuch.yaml"], "config file not found"),
    (["predict", "--ckpt", "{missing}", "--rgb", "{missing}", "--out", "{tmp}/p.json"], "missing"),
    (["eval", "--pred", "{missing}/p.jsonl", "--gt", "{missing}"], "missing"),
    (["diagnose", "--ckpt", "{missing}", "--data", "{missing}"], "missing"),
    (["viz", "{missing}/p.json", "--video", "{missing}", "--out", "{tmp}/r.html"], "missing"),
    (["demo", "--out", "{file}"], "{file}"),
    (["experiment", "predict", "--ckpt", "{missing}", "--data", "{missing}", "--out", "{tmp}/res"], "missing"),
]


def _script() -> str:
    """The ``psg4d`` console script of this interpreter's environment (what the set-up installed)."""
    beside = Path(sys.executable).with_name("psg4d")
    found = str(beside) if beside.is_file() else shutil.which("psg4d")
    assert found, "the psg4d console script is not installed: run `bash scripts/setup.sh`"
    return found


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every case's completed process, run a few at a time (each pays the CLI's start-up)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_file").write_text("not a folder")
    names = {"tmp": str(tmp), "file": str(tmp / "a_file"), "missing": str(tmp / "missing")}
    script = _script()
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([script, *(a.format(**names) for a in argv)], capture_output=True, text=True,
                              cwd=tmp, env=env, timeout=120)

    cases = [argv for argv, _ in USAGE_ERRORS + BAD_INPUTS]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(run, cases))
    return {"names": names, **{tuple(argv): proc for argv, proc in zip(cases, done)}}  # type: ignore[dict-item]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    assert proc.returncode == 2, shown
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


@pytest.mark.parametrize("argv, fragment", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_with_the_usage_hint(answers, argv, fragment):
    proc = answers[tuple(argv)]
    line = _one_error_line(proc)
    assert fragment in line
    assert "--help" in line  # where to read the command's usage
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, fragment", BAD_INPUTS, ids=[" ".join(a[:2]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_problem(answers, argv, fragment):
    line = _one_error_line(answers[tuple(argv)])
    assert fragment.format(**answers["names"]) in line


def test_a_bare_group_shows_its_help(tmp_path):
    proc = subprocess.run([_script(), "data"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2 and "inspect" in proc.stdout + proc.stderr and "convert" in proc.stdout + proc.stderr
