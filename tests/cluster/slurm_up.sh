#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for the tests, without systemd and without touching
# /etc: everything (slurm.conf, munge key and socket, state, spool, logs, pid files) lives in
# STATE_DIR.
#
#   tests/cluster/slurm_up.sh STATE_DIR        start; prints KEY=VALUE lines on stdout
#                                              (SLURM_CONF=..., SLURM_TEST_PARTITION=...),
#                                              also written to STATE_DIR/env
#   tests/cluster/slurm_up.sh stop STATE_DIR   stop it again (same as slurm_down.sh STATE_DIR)
#
# By hand:  tests/cluster/slurm_up.sh /tmp/slurm && export SLURM_CONF=/tmp/slurm/slurm.conf
#           export PATH="$PWD/tests/cluster/bin:$PATH"    # sacct for submitit, see bin/sacct
#           sinfo; srun -n2 hostname; ...; tests/cluster/slurm_down.sh /tmp/slurm
#
# Needs root (slurmd starts job steps as the submitting user), `munged` (Debian: munge),
# `slurmctld`/`slurmd` + client commands (Debian: slurm-wlm), and python3 to pick free ports.
# One node named after `hostname -s` with the machine's CPUs (nproc) and 95 % of its memory,
# one default partition `debug`, consumable CPUs (several jobs share the node), no accounting
# database (finished jobs go to a job completion log instead), no cgroups (memory and CPU
# requests are booked, not enforced). Two clusters in two state directories can run at once
# (own ports, own munged), but the tests use one at a time. Daemon logs: STATE_DIR/log.
#
# Environment knobs: SLURM_UP_TIMEOUT (seconds to wait for the node to be idle, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin" # the daemons live there; not on every user's PATH

if [[ "${1:-}" == "stop" ]]; then
    shift
    exec "$HERE/slurm_down.sh" "$@"
fi
if [[ "${1:-}" == "start" ]]; then
    shift
fi
if [[ $# -ne 1 ]]; then
    echo "usage: $0 [start] STATE_DIR | $0 stop STATE_DIR" >&2
    exit 2
fi

say() { echo "slurm_up: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd runs jobs as their user; SlurmUser=root)"
for tool in munged slurmctld slurmd sinfo sbatch srun squeue scontrol python3; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH (Debian: apt-get install -y slurm-wlm munge)"
done

mkdir -p "$1"
STATE="$(cd "$1" && pwd)"
CONF="$STATE/slurm.conf"
for name in munged slurmctld slurmd; do
    pidfile="$STATE/run/$name.pid"
    if [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "$name of a cluster in $STATE is still running (pid $(cat "$pidfile")); stop it first: $HERE/slurm_down.sh $STATE"
    fi
done

# munged refuses directories that others can write to
chmod 0755 "$STATE"
mkdir -p "$STATE"/{munge,run,log,ctld,spool/slurmd}
chmod 0755 "$STATE/munge"
rm -f "$STATE"/run/*.pid "$STATE/env"

# ---- configuration -------------------------------------------------------------------------
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_TOTAL_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
# a bit under the total, or slurmd reports less than configured and the node is drained
REAL_MEM_MB=$((MEM_TOTAL_MB * 95 / 100))
PARTITION=debug
read -r CTLD_PORT SLURMD_PORT < <(python3 - <<'EOF'
import socket

socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
MUNGE_SOCKET="$STATE/munge/munge.socket"

cat >"$CONF" <<EOF
# Written by tests/cluster/slurm_up.sh for a test cluster in $STATE
ClusterName=xraytest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5

StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf

# no systemd, no cgroups, no accounting database
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# finished jobs and their states, one line each (what tests/cluster/bin/sacct reads)
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SlurmdParameters=config_overrides

# several jobs share the node, one CPU each
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU

# a down node comes back on its own; finished jobs leave squeue quickly; short kill grace
ReturnToService=2
MinJobAge=2
KillWait=2
OverTimeLimit=0
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60
# batch jobs may be requeued (scontrol requeue, preemption, node failure)
JobRequeue=1
# a job asking for more than the node has is refused at submission instead of pending for ever
EnforcePartLimits=ALL

NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$REAL_MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: >"$STATE/plugstack.conf" # no SPANK plugins (not the host's /etc/slurm/plugstack.conf)

# ---- start ---------------------------------------------------------------------------------
fail() {
    say "ERROR: $*"
    for log in "$STATE"/log/*.log; do
        [[ -f "$log" ]] || continue
        say "---- last lines of $log"
        tail -n 20 "$log" >&2 || true
    done
    say "logs: $STATE/log/{munged,slurmctld,slurmd}.log (and *-start.log: their stderr)"
    "$HERE/slurm_down.sh" "$STATE" >&2 || true
    exit 1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out waiting for $what"
        sleep 0.2
    done
}

TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
export SLURM_CONF="$CONF"
# The daemons run with STATE_DIR/log as their working directory (slurmd sets that too, and
# slurmstepd inherits it): slurm_down.sh finds leftovers of this cluster, and of no other, by it.
cd "$STATE/log"

if [[ ! -s "$STATE/munge/munge.key" ]]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 0400 "$STATE/munge/munge.key"
munged --force \
    --key-file="$STATE/munge/munge.key" \
    --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE/run/munged.pid" \
    --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed" \
    </dev/null >>"$STATE/log/munged-start.log" 2>&1 ||
    fail "munged did not start"
wait_for 10 "munged's pid file" test -s "$STATE/run/munged.pid"
if command -v munge >/dev/null; then
    wait_for 10 "munged to answer on $MUNGE_SOCKET" \
        bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
fi

# (stdio away from the caller's pipes: a daemon holding them would keep a reader waiting)
slurmctld -f "$CONF" </dev/null >>"$STATE/log/slurmctld-start.log" 2>&1 ||
    fail "slurmctld did not start"
wait_for 20 "slurmctld's pid file" test -s "$STATE/run/slurmctld.pid"
slurmd -f "$CONF" </dev/null >>"$STATE/log/slurmd-start.log" 2>&1 ||
    fail "slurmd did not start"
wait_for 20 "slurmd's pid file" test -s "$STATE/run/slurmd.pid"

deadline=$((SECONDS + TIMEOUT))
until [[ "$(sinfo -h -N -n "$NODE" -p "$PARTITION" -o '%t' 2>/dev/null)" == idle ]]; do
    for name in munged slurmctld slurmd; do
        kill -0 "$(cat "$STATE/run/$name.pid")" 2>/dev/null || fail "$name exited (see its log)"
    done
    if ((SECONDS >= deadline)); then
        fail "node $NODE not idle after ${TIMEOUT}s; sinfo says: $(sinfo -N -l 2>&1 || true)"
    fi
    sleep 0.2
done

{
    echo "SLURM_CONF=$CONF"
    echo "SLURM_TEST_STATE_DIR=$STATE"
    echo "SLURM_TEST_PARTITION=$PARTITION"
    echo "SLURM_TEST_NODE=$NODE"
    echo "SLURM_TEST_CPUS=$CPUS"
    echo "SLURM_TEST_MUNGE_SOCKET=$MUNGE_SOCKET"
} | tee "$STATE/env"
say "cluster up: node $NODE ($CPUS CPUs, ${REAL_MEM_MB} MB), partition $PARTITION," \
    "slurmctld port $CTLD_PORT, slurmd port $SLURMD_PORT; export SLURM_CONF=$CONF"
