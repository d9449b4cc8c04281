#!/usr/bin/env bash
# ViT-B/16 balanced + weighted (report Tables 5-6) on SLURM, one or several nodes:
#   sbatch slurm/vit.sh [key=value ...]                    e.g. sbatch slurm/vit.sh train.epochs=20
#   sbatch --nodes=4 slurm/vit.sh                          4 nodes x 4 GPUs, DDP through accelerate
#   ACCELERATE_CONFIG=launch/deepspeed_zero2.yaml sbatch slurm/vit.sh
# Requeued on preemption or near the time limit; the requeued job resumes from the last checkpoint.
#SBATCH --job-name=mlic-vit
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

# shellcheck source=slurm/common.sh
source "${MLIC_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
mlic_launch train/vit.py "run.output_dir=${RUN_DIR:-runs/vit}" "$@"
