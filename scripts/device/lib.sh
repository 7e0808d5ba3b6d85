# Shared by the scripts of scripts/device/ (sourced, not run). Bash and coreutils only: the same
# code runs here and on the device machine (README.md beside this file).

# The payload (the two packages holding model weights, too big for one device call) is split into
# parts named payload.part-aa, -ab, ...; the device keeps the parts of earlier calls here.
DEVICE_STAGE_DEFAULT=/root/psg4d-device

# die CODE MESSAGE: one line on stderr, then exit CODE.
die() {
  local code=$1
  shift
  echo "device: $*" >&2
  exit "$code"
}

# mib BYTES: BYTES in MiB with one decimal.
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# sha FILE: its SHA-256 (hex).
sha() { sha256sum "$1" | cut -d' ' -f1; }

# manifest_sum MANIFEST NAME: the SHA-256 MANIFEST records for NAME (empty if none).
manifest_sum() { awk -v n="$2" '$2 == n { print $1; exit }' "$1"; }

# manifest_parts MANIFEST: the payload parts it lists, in order, one a line.
manifest_parts() { awk '$2 ~ /^payload\.part-/ { print $2 }' "$1" | LC_ALL=C sort; }

# src_digest ROOT: one SHA-256 over the files under ROOT/src (names and contents), so the device can
# tell whether the psg4d wheel it installs was built from the source tree that travelled with it.
src_digest() {
  (
    cd "$1/src" &&
      find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
  )
}
