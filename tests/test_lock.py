"""requirements.lock: what the set-up installs, consistent with pyproject.toml, and the shell
functions that .ci/run compares the environment against it with."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def _bash(script: str) -> str:
    """Run ``script`` after sourcing scripts/fresh_venv.sh, with this interpreter as python3."""
    bindir = Path(sys.executable).parent
    proc = subprocess.run(["bash", "-c", f"export PATH={bindir}:$PATH; source scripts/fresh_venv.sh; {script}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_line_is_an_exact_pin_and_every_dependency_is_pinned_within_its_range():
    text = LOCK.read_text()
    assert "bash scripts/lock.sh" in text  # says how it is refreshed
    pins = _pins(text)
    # pyproject.toml's ranges, as the installed project declares them: its own and the extras the set-up installs
    for spec in requires("psg4d") or []:
        req = Requirement(spec)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("dev", "pretrained", "sam2")):
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is not {req.specifier}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the build on this machine's disk
    assert "pip" not in pins and "psg4d" not in pins


def test_the_setup_installs_under_the_lock():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'export PIP_CONSTRAINT="$PWD/requirements.lock"' in setup


def test_lock_pins_drop_comments_and_sort_as_installed_pins_do(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("# made by a test\n\nzeta==1\nAlpha==2\n  # indented comment\nbeta==3\n")
    assert _bash(f"lock_pins {lock}").split() == ["Alpha==2", "beta==3", "zeta==1"]


def test_installed_pins_list_this_environment_without_pip_and_the_project():
    pins = _pins(_bash("installed_pins"))
    from importlib.metadata import version

    assert pins["pytest"] == version("pytest") and pins["torch"].startswith("2.14.1")
    assert "pip" not in pins and "psg4d" not in pins
    listed = _bash("installed_pins").splitlines()
    assert listed == sorted(listed, key=str.upper)  # `LC_ALL=C sort -f`, as lock_pins sorts: comparable line by line
