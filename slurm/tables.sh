#!/usr/bin/env bash
# One report table as a job array, one array task per run:
#   mlic tables 5 --dry-run                      # lists the runs (and the sbatch line below)
#   sbatch --array=0-5 slurm/tables.sh 5         # or: mlic tables 5 --submit; later: mlic tables 5 --collect
# Each task trains configs/tables/table<N>/<run>.yaml into runs/tables/table<N>/<run>.
# (`ablations` for the §3-§4 ablations.)
#SBATCH --job-name=mlic-table
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out

# shellcheck source=slurm/common.sh
source "${MLIC_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
TABLE=${1:?usage: sbatch --array=0-N slurm/tables.sh TABLE [key=value ...]  (TABLE: 1-6 or ablations)}
shift
NAME_DIR=$TABLE
[ -d "configs/tables/$NAME_DIR" ] || NAME_DIR=table$TABLE
mapfile -t RUNS < <(find "configs/tables/$NAME_DIR" -name '*.yaml' | sort)
CONFIG=${RUNS[${SLURM_ARRAY_TASK_ID:-0}]:?no run ${SLURM_ARRAY_TASK_ID:-0} in table $TABLE}
NAME=$(basename "$CONFIG" .yaml)
# The model -> entry map (resnet50 trains through train/resnet152.py, ...) lives once, in mlic.reporting.tables.
ENTRY=$(python -m mlic.reporting.tables entry-for "$CONFIG")
# MLIC_TABLE_RUNS: where the run folders go (`mlic tables N --scale demo --submit` sets runs/tables-demo)
mlic_launch "train/$ENTRY.py" --config "$CONFIG" "run.output_dir=${MLIC_TABLE_RUNS:-runs/tables}/$NAME_DIR/$NAME" "$@"
