"""Shared test helpers.

Dependencies that scripts/setup.sh installs (the README's set-up) are not optional: a test that
needs one skips on a developer machine without it, but fails in CI (``.ci/run`` sets
``PSG4D_CI=1``), so CI cannot pass by skipping what the README promises. Genuinely optional
extras (the official ImageBind code, a second GPU, CPU affinity) skip with ``pytest.skip`` as before.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

#: Set to 1 by .ci/run: a missing set-up dependency fails instead of skipping.
CI_ENV = "PSG4D_CI"


def missing_setup_dependency(package: str, why: str) -> NoReturn:
    """Skip the calling test because ``package`` (which scripts/setup.sh installs) is missing, or,
    under ``PSG4D_CI=1``, fail it with a one-line message."""
    __tracebackhide__ = True  # reported at the test's line, not here
    msg = f"{package} is missing, but scripts/setup.sh installs it ({why})"
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(f"{CI_ENV}=1: {msg}", pytrace=False)
    pytest.skip(msg)


def require_setup_dependency(module: str, why: str, *, package: str | None = None) -> ModuleType:
    """Import and return ``module``, which scripts/setup.sh installs (as the distribution
    ``package``, default: ``module``). Not installed: see :func:`missing_setup_dependency`. A module
    that is installed but fails to import raises as usual."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the module is there but something it imports is not: a real error
        missing_setup_dependency(package or module, why)
