#!/usr/bin/env bash
# Runs one jaxdef experiment on several hosts of a SLURM cluster.
#
# One task per host; each task sees all of its host's GPUs and shards its
# batches over them (jaxdef.sharding); the tasks join one JAX run through
# jax.distributed.initialize (python -m launch.run --distributed reads
# SLURM_NTASKS, SLURM_PROCID and the node list) and split the sweep's cells
# by claiming them in the shared workdir, so no cell is computed or written
# twice. Steps and requirements: BUILD.md, "Multi-host runs".
#
#   WORKDIR=/shared/runs/default sbatch --nodes=4 launch/slurm_sweep.sh
#   WORKDIR=/shared/runs/k-sweep CONFIG=configs/default.py sbatch --nodes=2 \
#       launch/slurm_sweep.sh --config.attack.votes=100
#
# Extra arguments go to launch.run. Environment:
#   WORKDIR   output folder on a file system every host mounts (required)
#   CONFIG    config file (default configs/default.py)
#   VENV      the virtual environment (default .venv in the repository)
#   JAX_COORDINATOR_PORT  coordinator port (default 61440 + job id mod 4096)
#
#SBATCH --job-name=jaxdef-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=jaxdef-sweep-%j.out
set -euo pipefail

# sbatch runs a copy of this script from the spool: start from the folder
# the job was submitted from (the repository root).
cd "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}"
if [ ! -f launch/run.py ]; then
  echo "slurm_sweep.sh: submit from the jaxdef repository root (no launch/run.py in $PWD)" >&2
  exit 2
fi
if [ -z "${WORKDIR:-}" ]; then
  echo "slurm_sweep.sh: set WORKDIR to a folder on a file system all hosts share" >&2
  exit 2
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "slurm_sweep.sh: not inside a SLURM job; submit it with sbatch" >&2
  exit 2
fi
python="${VENV:-.venv}/bin/python"
if [ ! -x "$python" ]; then
  echo "slurm_sweep.sh: no Python at $python; run 'bash launch/setup.sh' once on the shared file system, or set VENV" >&2
  exit 2
fi
mkdir -p "$WORKDIR"

# One task per host, with all the GPUs the job holds on that host (JAX's own
# SLURM detection would keep one GPU per task; launch.run --distributed keeps
# them all and prints how many each process sees).
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "$python" -m launch.run --distributed --config="${CONFIG:-configs/default.py}" \
  --workdir="$WORKDIR" "$@"
