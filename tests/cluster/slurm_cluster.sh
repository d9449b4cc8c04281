#!/usr/bin/env bash
# A throw-away Slurm cluster of two nodes on this one machine, for the tests and for trying the
# slurm/*.sh scripts by hand (root; Debian's slurmctld slurmd slurm-client munge).
#
#   tests/cluster/slurm_cluster.sh start DIR    bring it up in DIR; prints `export SLURM_CONF=...`
#   tests/cluster/slurm_cluster.sh stop DIR     cancel every job, stop every daemon by its PID file
#   tests/cluster/slurm_cluster.sh install      apt-get the four packages
#
# Then, in the shell that sources the printed line:
#   eval "$(tests/cluster/slurm_cluster.sh start /tmp/slurm)"; sinfo
#   ACCELERATE_USE_CPU=true sbatch --nodes=2 --cpus-per-task=1 slurm/cnn.sh --config configs/demo.yaml
#
# Two slurmd (node1, node2) listen on 127.0.0.1 with their own ports, each in its own UTS and mount
# namespace with its own host name and an /etc/hosts that maps node1 and node2 to 127.0.0.1, so a
# job's `hostname` and its rendezvous address behave as on a cluster. Each node offers 2 CPUs and
# one GPU gres backed by /dev/null (slurmd drops a GPU gres with no File=), so the scripts'
# `--gres=gpu:1` is schedulable; the tests ask `--gres=none` and run with ACCELERATE_USE_CPU=true. Ports: MLIC_SLURM_PORT (default 16817) for slurmctld and
# the next two for the nodes.
#
# The settings this sandbox needs (measured): proctrack/pgid (linuxproc leaks a job's background
# children past the job; no cgroups here), task/none, no accounting, and cred_expire=10 (a requeued
# job starts cred_expire+1 s after its requeue; Slurm silently turns values under 5 into 120).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm_cluster: $*" >&2; exit 1; }

install_packages() {
  [ "$(id -u)" -eq 0 ] || die "installing needs root"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_config() {
  local dir=$1 port=$2
  cat >"$dir/slurm.conf" <<EOF
ClusterName=mlic-test
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname=node1 Port=$((port + 1)) CPUs=2 RealMemory=4000 Gres=gpu:1 State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.1 NodeHostname=node2 Port=$((port + 2)) CPUs=2 RealMemory=4000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
  echo "NodeName=node[1-2] Name=gpu File=/dev/null" >"$dir/gres.conf"
  printf '127.0.0.1 localhost node1 node2\n::1 localhost\n' >"$dir/hosts"
}

start() {
  local dir=$1 port=${MLIC_SLURM_PORT:-16817} node
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as their user, and the nodes need namespaces)"
  for bin in slurmctld slurmd munged sbatch unshare; do
    command -v "$bin" >/dev/null || die "$bin not found: run '$0 install' (Debian: ${PACKAGES[*]})"
  done
  [ ! -f "$dir/slurmctld.pid" ] || die "$dir already holds a cluster: stop it first"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  dir=$(cd "$dir" && pwd)
  chmod 755 "$dir" "$dir/munge"
  write_config "$dir" "$port"
  export SLURM_CONF=$dir/slurm.conf

  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"

  slurmctld -f "$SLURM_CONF" -i
  for node in node1 node2; do
    mkdir -p "$dir/spool/$node"
    # its own host name and /etc/hosts; slurmd daemonizes and stays in the namespaces
    unshare --uts --mount --propagation private sh -c \
      "hostname $node && mount --bind '$dir/hosts' /etc/hosts && exec slurmd -f '$SLURM_CONF' -N $node"
  done
  local waited=0
  until [ "$(sinfo -h -o '%t' 2>/dev/null | sort -u | tr -d '\n')" = "idle" ]; do
    sleep 0.5
    waited=$((waited + 1))
    if [ "$waited" -gt 60 ]; then
      sinfo -N >&2 || true
      tail -n 5 "$dir"/*.log >&2 || true
      stop "$dir"
      die "the nodes did not become idle in 30 s (logs above)"
    fi
  done
  echo "export SLURM_CONF=$SLURM_CONF"
}

kill_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$file"
}

stop() {
  local dir=$1 file
  [ -f "$dir/slurm.conf" ] || return 0
  export SLURM_CONF=$dir/slurm.conf
  if [ -f "$dir/slurmctld.pid" ]; then
    scancel --full --quiet --partition=debug 2>/dev/null || true
    # a job's processes end with the job: wait until nothing runs
    for _ in $(seq 40); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  # every daemon asked at once, then each waited for (and killed if it will not go)
  for file in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -f "$file" ]; then kill "$(cat "$file")" 2>/dev/null || true; fi
  done
  for file in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do kill_pidfile "$file"; done
}

case "${1:-}" in
  install) install_packages ;;
  start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
