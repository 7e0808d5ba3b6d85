#!/usr/bin/env bash
# stage_part.sh PART_FOLDER   (on the device machine: calls 1 and 2 of README.md beside this file)
#
# Checks the payload part that this call carried (PART_FOLDER, e.g. .whl/part1) against its
# MANIFEST.sha256 and keeps it outside the repository, in $PSG4D_DEVICE_STAGE (default
# /root/psg4d-device), where the next call, made while the machine is still warm, finds it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die 2 "usage: stage_part.sh PART_FOLDER (e.g. .whl/part1)"
part=$1
stage=${PSG4D_DEVICE_STAGE:-$DEVICE_STAGE_DEFAULT}
manifest="$part/MANIFEST.sha256"
[ -f "$manifest" ] || die 3 "$manifest is missing: carry $part (built by scripts/device/build_wheelhouse.sh) in this call"
mapfile -t all < <(manifest_parts "$manifest")
mapfile -t mine < <(cd "$part" && ls payload.part-* 2>/dev/null | LC_ALL=C sort)
[ ${#mine[@]} -gt 0 ] || die 3 "no payload.part-* in $part: carry the folder build_wheelhouse.sh wrote"
mkdir -p "$stage"
for p in "${mine[@]}"; do
  want=$(manifest_sum "$manifest" "$p")
  [ -n "$want" ] || die 3 "$part/$p is not in its MANIFEST.sha256: rebuild with scripts/device/build_wheelhouse.sh"
  got=$(sha "$part/$p")
  [ "$got" = "$want" ] || die 3 "$part/$p has SHA-256 ${got:0:12}..., its MANIFEST.sha256 says ${want:0:12}...: the transfer or the build is broken; rebuild and rerun this call"
  cp "$part/$p" "$stage/.$p.tmp"
  mv "$stage/.$p.tmp" "$stage/$p"
done
cp "$manifest" "$stage/MANIFEST.sha256"
have=""
for p in "${all[@]}"; do
  if [ -f "$stage/$p" ]; then have="$have ${p#payload.part-}"; fi
done
echo "staged ${mine[*]} (SHA-256 checked) in $stage; parts there now:$have of ${#all[@]}; make the next call at once (the machine stays warm about 30 s)"
