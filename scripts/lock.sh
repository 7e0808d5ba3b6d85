#!/usr/bin/env bash
# Refresh requirements.lock: set up a fresh environment with the newest versions pyproject.toml and
# scripts/setup.sh allow (no lock), run the test suite in it, and only when the suite passes write
# what that environment holds to requirements.lock. Arguments are passed on to pytest.
# PSG4D_LOCK_VENV: where the environment goes (default: a folder under $TMPDIR; removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/fresh_venv.sh
source scripts/fresh_venv.sh
fresh_venv "${PSG4D_LOCK_VENV:-${TMPDIR:-/tmp}/psg4d-lock-venv}"
PSG4D_LOCK=off bash scripts/setup.sh
candidate="$(mktemp requirements.lock.XXXXXX)"
trap 'rm -f "$candidate"' EXIT
{
  echo "# Exact versions the test suite passed with; scripts/setup.sh installs them (pip constraints)."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $(python3 -c 'import platform; print(f"CPython {platform.python_version()} on {platform.system()} {platform.machine()}")');"
  echo "# refresh with: bash scripts/lock.sh   (writes this file only when the suite passes)"
  installed_pins
} > "$candidate"
python3 -m pytest "$@"
mv "$candidate" requirements.lock
trap - EXIT
echo "scripts/lock.sh: wrote requirements.lock ($(lock_pins requirements.lock | wc -l) pins)"
