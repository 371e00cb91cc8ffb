#!/usr/bin/env bash
# A single-node Slurm cluster in one folder, for distren's tests and benchmarks: a munge key,
# munged (as the munge user), slurm.conf with this host as controller and node, slurmctld and
# slurmd started directly (no systemd). Everything lives in DIR; the daemons are stopped by
# their pid files, never by name. Needs root and Debian's slurm-wlm and munge
# (scripts/setup.sh --test installs them).
#
#   scripts/slurm-cluster.sh start DIR [CPUS]   start; prints SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-cluster.sh stop DIR           cancel every job of the cluster, stop the daemons
#
# Clients (sbatch, squeue, scancel, distren serve --slurm) need SLURM_CONF=DIR/slurm.conf.
# CPUS (default 8) is the node's CPU count as Slurm sees it (SlurmdParameters=config_overrides):
# worker jobs mostly wait on POV-Ray's start-up, so more jobs than cores may run at once.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR [CPUS]" >&2
    exit 2
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pid() {   # stop the process whose pid is in file $1 (if any), waiting up to 10 s
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "$cmd" in
start)
    for tool in munged slurmctld slurmd sbatch; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
    done
    cpus=${3:-8}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # munged runs as the munge user and refuses files it does not own: a folder of its own,
    # reachable (the parents must be searchable by munge)
    chmod 755 "$dir"
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
    chown munge:munge "$dir/munge"
    chmod 755 "$dir/munge"   # clients reach the socket: execute for all
    if [ ! -f "$dir/munge/munge.key" ]; then
        head -c 1024 /dev/urandom > "$dir/munge/munge.key"
        chown munge:munge "$dir/munge/munge.key"
        chmod 400 "$dir/munge/munge.key"
    fi
    runuser -u munge -- munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    host=$(hostname -s)
    cat > "$dir/slurm.conf" <<EOF
# written by distren's scripts/slurm-cluster.sh: a one-node cluster for tests
ClusterName=distren
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=2
NodeName=distrennode NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=distrennode Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -c -f "$SLURM_CONF"
    slurmd -N distrennode -f "$SLURM_CONF"
    for _ in $(seq 200); do
        state=$(sinfo -h -N -o %t 2>/dev/null || true)
        if [ "$state" = "idle" ]; then
            echo "SLURM_CONF=$SLURM_CONF"
            exit 0
        fi
        sleep 0.1
    done
    echo "$0: the node did not come up (sinfo: ${state:-nothing}); logs in $dir/log" >&2
    exit 1
    ;;
stop)
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        export SLURM_CONF="$dir/slurm.conf"
        # the jobs' processes outlive slurmd: cancel them first, and wait for them to end
        scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null || true)" ] && break
            sleep 0.1
        done
    fi
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munge/munged.pid"
    ;;
*)
    echo "usage: $0 start|stop DIR [CPUS]" >&2
    exit 2
    ;;
esac
