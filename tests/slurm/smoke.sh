#!/usr/bin/env bash
# Smoke test for tests/slurm/cluster.sh: install, start, run trivial jobs shaped like the
# sbatch scripts recipe-runner generates, stop. Needs root. Usage: tests/slurm/smoke.sh [STATE_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C=$here/cluster.sh
state=${1:-/tmp/rr-slurm-smoke}
work=$(mktemp -d)
trap '"$C" stop "$state" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
t() { local s=$SECONDS; "$@"; echo "  ($((SECONDS - s)) s: $*)" >&2; }

t "$C" install
eval "$(t "$C" start "$state")"
cd "$work"

# 1. trivial round trip
id=$(sbatch --parsable --output=out-%j.txt --wrap hostname)
t "$C" wait "$state" "$id" 60
[ "$(cat "out-$id.txt")" = "$(hostname -s)" ]

# 2. the generated script's shape (CPU: no --gpus-per-node); logs/ must exist before sbatch
cat >launch.sh <<'JOB'
#!/usr/bin/env bash
#SBATCH --job-name=smoke
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/slurm-%j.out
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "${RUN_DIR:-$SLURM_SUBMIT_DIR}"
mkdir -p logs
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="$SLURM_JOB_ID"
export MASTER_ADDR MASTER_PORT RDZV_ID
srun --kill-on-bad-exit=1 bash -c 'echo "node_rank=${SLURM_NODEID} master=${MASTER_ADDR}:${MASTER_PORT} rdzv=${RDZV_ID} from_env=${SMOKE_VAR}"'
JOB
mkdir -p logs
id=$(SMOKE_VAR=passed sbatch --parsable launch.sh)
t "$C" wait "$state" "$id" 60
grep -qx "node_rank=0 master=$(hostname -s):29500 rdzv=$id from_env=passed" "logs/slurm-$id.out"

# 3. without logs/ the job fails before the script runs (ExitCode 0:53, no output anywhere)
mkdir nologs && cd nologs
id=$(sbatch --parsable ../launch.sh)
if "$C" wait "$state" "$id" 60; then echo "expected a failure without logs/" >&2; exit 1; fi
cd ..

t "$C" stop "$state"
echo "smoke test passed"
