#!/usr/bin/env bash
# ResNet152 (report Tables 3-4) on SLURM, one or several nodes:
#   sbatch slurm/resnet152.sh [key=value ...]                    e.g. sbatch slurm/resnet152.sh train.epochs=20
#   sbatch --nodes=4 slurm/resnet152.sh                          4 nodes x 4 GPUs, DDP through accelerate
#   ACCELERATE_CONFIG=launch/deepspeed_zero2.yaml sbatch slurm/resnet152.sh
# Requeued on preemption or near the time limit; the requeued job resumes from the last checkpoint.
#SBATCH --job-name=mlic-resnet152
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

# shellcheck source=slurm/common.sh
source "${MLIC_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
mlic_launch train/resnet152.py "run.output_dir=${RUN_DIR:-runs/resnet152}" "$@"
