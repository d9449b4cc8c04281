# shellcheck shell=bash
# Sourced by every slurm/*.sh: environment, rendezvous, preemption, and the launch itself.
#
# Knobs (environment): MLIC_VENV (default: <repo>/.venv), GPUS_PER_NODE (default: SLURM's count),
# ACCELERATE_CONFIG (default: launch/multi_gpu.yaml), MAIN_PORT (default: a free port on the first node).

set -euo pipefail

REPO=${MLIC_REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}
cd "$REPO"
mkdir -p logs

# Preemption: SLURM sends USR1 to this shell (--signal=B:USR1@120) before the time limit, or SIGTERM
# (a preemption; USR1 first with SlurmctldParameters=preempt_send_user_signal). We create the stop
# file; every rank sees it at its next check, they save a checkpoint together and exit 0; then this
# script requeues the job, which resumes from that checkpoint. The traps come first: bash's default
# for USR1 is to exit, and a short --signal may come at once.
export MLIC_STOP_FILE=${MLIC_STOP_FILE:-$REPO/logs/.stop-${SLURM_JOB_ID:-local}}
rm -f "$MLIC_STOP_FILE"
on_signal() {
  echo "mlic: $1 received at $(date), asking the run to checkpoint and stop"
  touch "$MLIC_STOP_FILE"
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

if [ -f "${MLIC_VENV:-$REPO/.venv}/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${MLIC_VENV:-$REPO/.venv}/bin/activate"
fi

NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "gpu:4" -> 4
NUM_PROCESSES=$((NNODES * GPUS_PER_NODE))
MAIN_IP=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
# This shell runs on the first node, where the c10d store will listen: a port free there now (a port
# from the job id collided between jobs whose ids agree modulo the range).
MAIN_PORT=${MAIN_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/multi_gpu.yaml}
[ -f "$ACCELERATE_CONFIG" ] || { echo "mlic: no accelerate config $ACCELERATE_CONFIG (ACCELERATE_CONFIG, from $REPO)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-8}}
DEEPSPEED=""
if grep -Eqi "distributed_type[\"']?:[[:space:]]*[\"']?DEEPSPEED" "$ACCELERATE_CONFIG"; then DEEPSPEED=1; fi
# ACCELERATE_USE_CPU=true (how a CPU cluster runs the MULTI_GPU configs) silently turns DeepSpeed off;
# without a GPU, mlic gives DeepSpeed the gloo backend by itself.
if [ -n "${ACCELERATE_USE_CPU:-}" ] && [ -n "$DEEPSPEED" ]; then
  echo "mlic: $ACCELERATE_CONFIG is DeepSpeed: ignoring ACCELERATE_USE_CPU=$ACCELERATE_USE_CPU, which would turn it off"
  unset ACCELERATE_USE_CPU
fi

# mlic_launch SCRIPT [key=value ...]: one `accelerate launch` per node; the node rank is escaped so
# that it expands on each node, inside srun, not here.
mlic_launch() {
  local script=$1
  shift
  local args line
  printf -v args '%q ' "$script" "$@"
  # The c10d store's address: torchrun reads it from PET_RDZV_ENDPOINT. accelerate passes it for several
  # machines (unless --same_network), but a single-node launch gets only master_port, which c10d
  # ignores: every such job put its store on localhost:29400, and two jobs on one node collided.
  line="PET_RDZV_ENDPOINT=$MAIN_IP:$MAIN_PORT accelerate launch --config_file $(printf '%q' "$ACCELERATE_CONFIG") --num_processes $NUM_PROCESSES"
  # is_host: node 0 hosts the c10d store. torch otherwise picks the host by matching addresses, which
  # fails where every node resolves alike (one machine) or through aliases and second NICs.
  line+=" --num_machines $NNODES --machine_rank \$SLURM_NODEID --rdzv_backend c10d"
  line+=" --rdzv_conf is_host=\$((SLURM_NODEID == 0))"
  line+=" --main_process_ip $MAIN_IP --main_process_port $MAIN_PORT"
  # several nodes under DeepSpeed: torchrun's rendezvous as above (accelerate's default, pdsh, needs ssh)
  if [ -n "$DEEPSPEED" ]; then line+=" --deepspeed_multinode_launcher standard"; fi
  line+=" $args"
  echo "mlic: $line"
  # In the background so that the trap runs as soon as the signal comes (bash defers traps while it
  # waits for a foreground child); wait again after a trap, until the run has saved and exited.
  # shellcheck disable=SC2016  # expands on each node
  local hello='echo "mlic: node $SLURM_NODEID of $SLURM_NNODES ($(hostname)) starts its processes"'
  # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): without it each node's launcher,
  # workers and data loaders would share one CPU wherever tasks are bound
  srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    bash -c "$hello; $line" &
  local pid=$! status=0
  while true; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  if [ -f "$MLIC_STOP_FILE" ]; then
    rm -f "$MLIC_STOP_FILE"
    echo "mlic: requeueing job ${SLURM_JOB_ID:-?} to resume from its checkpoint"
    scontrol requeue "${SLURM_JOB_ID}"
    return 0
  fi
  return "$status"
}
