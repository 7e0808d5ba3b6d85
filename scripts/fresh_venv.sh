# shellcheck shell=bash
# Sourced by .ci/run and scripts/lock.sh: `fresh_venv DIR` makes DIR a new virtual environment that
# does not see the system's site-packages, activates it, and links in the pinned torch build when
# the system Python has exactly that build (so pip treats the pin as met instead of downloading
# ~4 GB again; nothing else of the system is visible).
fresh_venv() {
  local venv="$1"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  hash -r
  if [ "$(command -v python3)" != "$venv/bin/python3" ] || ! python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    echo "fresh_venv: python3 is $(command -v python3), not the fresh environment's $venv/bin/python3" >&2
    return 1
  fi
  local base_py sys_site sys_purelib venv_purelib entry
  base_py="$(python3 -c 'import sys; print(sys.base_prefix)')/bin/python3"
  sys_site="$("$base_py" -c 'import sysconfig, importlib.metadata as m
print(sysconfig.get_paths()["purelib"])
print(m.version("torch").split("+")[0], m.version("torchvision").split("+")[0])' 2>/dev/null || true)"
  sys_purelib="$(sed -n 1p <<<"$sys_site")"
  if [ "$(sed -n 2p <<<"$sys_site")" = "2.14.1 0.29.1" ]; then
    venv_purelib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    shopt -s nullglob
    for entry in "$sys_purelib"/{torch,torchgen,torchvision,torchvision.libs,triton,nvidia,functorch} \
                 "$sys_purelib"/{torch-,torchvision-,triton-,nvidia_}*.dist-info; do
      ln -sfn "$entry" "$venv_purelib/"
    done
    shopt -u nullglob
  fi
}

# The environment's packages as `name==version` lines, as requirements.lock holds them: what
# `pip freeze` lists (setuptools and wheel included: sam2 is built with them), but pip itself and
# the project (installed editable), sorted case-insensitively.
installed_pins() {
  python3 -m pip freeze --all --exclude-editable | grep -v -i -e '^pip==' -e '^psg4d==' | LC_ALL=C sort -f
}

# The pins of a lock file (comments and blank lines dropped), sorted as installed_pins sorts.
lock_pins() {
  grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$1" | LC_ALL=C sort -f
}
