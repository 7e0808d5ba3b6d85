#!/usr/bin/env bash
# split_payload.sh BIG_DIR SMALL_DIR OUT_ROOT
#
# Lays out what the device calls carry (README.md beside this file), from the wheels in BIG_DIR
# (too big for one call: they travel as one tar split into parts) and SMALL_DIR (installed as
# they are). Writes OUT_ROOT/part1 .. OUT_ROOT/partN:
#   partK/payload.part-<aa, ab, ...>   the K-th byte range of a deterministic tar of BIG_DIR's wheels
#   partK/MANIFEST.sha256              the SHA-256 of every part, of every wheel in the tar (big/NAME)
#                                      and of every small wheel (wheels/NAME); the same in each part
#   partN/wheels/*.whl                 SMALL_DIR's wheels ride with the last part
# N is PSG4D_DEVICE_PARTS (default 3: the README's three calls). Refuses, exit 2 with one line and
# no part folders left behind, if a part folder would exceed PSG4D_DEVICE_PART_LIMIT bytes
# (default 60 MiB: a call carries at most 64 MiB with the repository's files).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 3 ] || die 2 "usage: split_payload.sh BIG_DIR SMALL_DIR OUT_ROOT"
big=$1 small=$2 root=$3
parts=${PSG4D_DEVICE_PARTS:-3}
limit=${PSG4D_DEVICE_PART_LIMIT:-62914560}
[[ $parts =~ ^[1-9][0-9]?$ ]] || die 2 "PSG4D_DEVICE_PARTS must be 1 to 99, got '$parts'"
mapfile -t bigs < <(cd "$big" && find . -maxdepth 1 -type f -name '*.whl' -printf '%f\n' | LC_ALL=C sort)
mapfile -t smalls < <(cd "$small" && find . -maxdepth 1 -type f -name '*.whl' -printf '%f\n' | LC_ALL=C sort)
[ ${#bigs[@]} -gt 0 ] || die 2 "no wheels in $big"

mkdir -p "$root"
rm -rf "$root"/part[0-9]* "$root/.split"
mkdir "$root/.split"
# The same wheels give the same tar, byte for byte (names sorted, owners and times fixed), so a
# rebuild keeps the parts a warm device machine already holds valid.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=a+r,u+w,go-w --format=gnu \
  -cf "$root/.split/payload.tar" -C "$big" "${bigs[@]}"
total=$(stat -c %s "$root/.split/payload.tar")
chunk=$(((total + parts - 1) / parts))
split -b "$chunk" -a 2 "$root/.split/payload.tar" "$root/.split/payload.part-"
rm "$root/.split/payload.tar"
mapfile -t names < <(cd "$root/.split" && ls payload.part-* | LC_ALL=C sort)
[ ${#names[@]} -eq "$parts" ] || die 2 "split made ${#names[@]} parts, not $parts"

manifest="$root/.split/MANIFEST.sha256"
{
  for n in "${names[@]}"; do echo "$(sha "$root/.split/$n")  $n"; done
  for w in "${bigs[@]}"; do echo "$(sha "$big/$w")  big/$w"; done
  for w in "${smalls[@]}"; do echo "$(sha "$small/$w")  wheels/$w"; done
} >"$manifest"

for k in $(seq 1 "$parts"); do
  d="$root/part$k"
  mkdir -p "$d"
  mv "$root/.split/${names[k - 1]}" "$d/"
  cp "$manifest" "$d/"
done
last="$root/part$parts"
mkdir -p "$last/wheels"
for w in "${smalls[@]}"; do cp "$small/$w" "$last/wheels/"; done
rm -rf "$root/.split"

over=""
for k in $(seq 1 "$parts"); do
  bytes=$(find "$root/part$k" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  echo "part$k: $(mib "$bytes") MiB ($bytes bytes): $(cd "$root/part$k" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | tr '\n' ' ')"
  if [ "$bytes" -gt "$limit" ]; then over="$over part$k ($(mib "$bytes") MiB)"; fi
done
if [ -n "$over" ]; then
  rm -rf "$root"/part[0-9]*
  die 2 "refused: over the $(mib "$limit") MiB a device call may carry:$over; raise PSG4D_DEVICE_PARTS and add a staging call to scripts/device/README.md"
fi
