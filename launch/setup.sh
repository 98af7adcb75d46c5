#!/usr/bin/env bash
# Sets up everything jaxdef needs on a fresh machine, idempotently:
#   1. the embedded default data set, Fashion-MNIST, from the Debian package
#      dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist);
#   2. the virtual environment .venv at the repository root;
#   3. the Python packages of requirements.txt (plus requirements-test.txt
#      with --test) and jaxdef itself, editable.
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
if [ ! -f "$data_dir/t10k-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "setup: installing Fashion-MNIST with sudo (Debian package dataset-fashion-mnist)"
    sudo apt-get update -qq >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    cat >&2 <<MSG
setup: Fashion-MNIST is not in $data_dir and this user cannot install it.
  Either run:  sudo apt-get install dataset-fashion-mnist
  or put the four files t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz,
  train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in a folder and
  export JAXDEF_FASHION_MNIST_DIR=/that/folder before running this again.
MSG
    exit 1
  fi
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
"${pip[@]}" install "${requirements[@]}" 2> >(grep -v "^WARNING: Location" >&2)
"${pip[@]}" install --no-deps --no-build-isolation -e . 2> >(grep -v "^WARNING: Location" >&2) \
  || "${pip[@]}" install --no-deps -e .
echo "setup: done (.venv ready$([ "$with_tests" = 1 ] && echo ', test tools included'))"
