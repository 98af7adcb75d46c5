#!/usr/bin/env bash
# Sets up everything jaxdef needs on a fresh machine, idempotently:
#   1. the embedded default data set, Fashion-MNIST, from the Debian package
#      dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist),
#      and tcmalloc (libtcmalloc-minimal4: faster XLA compiles) if it can;
#   2. the virtual environment .venv at the repository root;
#   3. the Python packages of requirements.txt (plus requirements-test.txt
#      with --test), installed with uv when it can (faster) and pip otherwise,
#      and jaxdef itself, editable.
# Usage: bash launch/setup.sh [--test]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (allowed: --test)" >&2; exit 2 ;;
  esac
done

data_dir="${JAXDEF_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
need_data=0
[ -f "$data_dir/t10k-images-idx3-ubyte.gz" ] || need_data=1
# tcmalloc: XLA compiles 10-25% faster with it than with glibc's malloc
# (BENCHMARKS.md, 2026-12-06); the tests preload it when it is installed.
need_tcmalloc=0
python3 -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("tcmalloc_minimal"))' \
  2>/dev/null || need_tcmalloc=1
packages=()
[ "$need_data" = 1 ] && packages+=(dataset-fashion-mnist)
[ "$need_tcmalloc" = 1 ] && packages+=(libtcmalloc-minimal4)
apt_get=()
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt_get=(env DEBIAN_FRONTEND=noninteractive apt-get)
elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  apt_get=(sudo env DEBIAN_FRONTEND=noninteractive apt-get)
fi
if [ ${#packages[@]} -gt 0 ] && [ ${#apt_get[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${packages[*]}"
  "${apt_get[@]}" update -qq >/dev/null
  if [ "$need_data" = 1 ]; then
    "${apt_get[@]}" install -y -qq dataset-fashion-mnist >/dev/null
  fi
  if [ "$need_tcmalloc" = 1 ]; then
    # Only a speed-up: not worth failing the set-up for.
    "${apt_get[@]}" install -y -qq libtcmalloc-minimal4 >/dev/null \
      || echo "setup: could not install libtcmalloc-minimal4; continuing without it" >&2
  fi
elif [ "$need_data" = 1 ]; then
  cat >&2 <<MSG
setup: Fashion-MNIST is not in $data_dir and this user cannot install it.
  Either run:  sudo apt-get install dataset-fashion-mnist
  or put the four files t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz,
  train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in a folder and
  export JAXDEF_FASHION_MNIST_DIR=/that/folder before running this again.
MSG
  exit 1
fi
if [ "$need_tcmalloc" = 1 ] && [ ${#apt_get[@]} -eq 0 ]; then
  echo "setup: note: without libtcmalloc-minimal4 (sudo apt-get install libtcmalloc-minimal4)" \
       "XLA compiles 10-25% slower; everything else works" >&2
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: jaxdef needs Python >= 3.10; found $("$python" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
requirements=(-r requirements.txt)
[ "$with_tests" = 1 ] && requirements+=(-r requirements-test.txt)
echo "setup: installing Python packages into .venv"
# uv installs the same packages from the sources pip is configured with
# (launch/pip_to_uv.py), 30-55 s faster on a fresh machine; pip does it
# wherever uv cannot be installed or fails (an empty uv_args: the helper failed).
uv_args=()
if "${pip[@]}" install uv >/dev/null 2>&1 \
    && mapfile -t uv_args < <(.venv/bin/python launch/pip_to_uv.py) && [ ${#uv_args[@]} -gt 0 ] \
    && .venv/bin/python -m uv pip install --python .venv/bin/python -q --compile-bytecode \
         "${uv_args[@]}" "${requirements[@]}"; then
  :
else
  echo "setup: installing with pip (uv was not available or failed)"
  "${pip[@]}" install "${requirements[@]}" 2> >(grep -v "^WARNING: Location" >&2)
fi
"${pip[@]}" install --no-deps --no-build-isolation -e . 2> >(grep -v "^WARNING: Location" >&2) \
  || "${pip[@]}" install --no-deps -e .
# jaxdef's own bytecode, once: where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile its modules from source again.
.venv/bin/python -m compileall -q jaxdef launch configs >/dev/null
echo "setup: done (.venv ready$([ "$with_tests" = 1 ] && echo ', test tools included'))"
