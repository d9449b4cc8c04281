#!/usr/bin/env bash
# the report's small CNN (Tables 1-2) on SLURM, one or several nodes:
#   sbatch slurm/cnn.sh [key=value ...]                    e.g. sbatch slurm/cnn.sh train.epochs=20
#   sbatch --nodes=4 slurm/cnn.sh                          4 nodes x 1 GPUs, DDP through accelerate
#   ACCELERATE_CONFIG=launch/deepspeed_zero2.yaml sbatch slurm/cnn.sh
# Requeued on preemption or near the time limit; the requeued job resumes from the last checkpoint.
#SBATCH --job-name=mlic-cnn
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

# shellcheck source=slurm/common.sh
source "${MLIC_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
mlic_launch train/cnn.py "run.output_dir=${RUN_DIR:-runs/cnn}" "$@"
