#!/usr/bin/env bash
# Stop the test cluster that tests/cluster/slurm_up.sh started in STATE_DIR:
#   tests/cluster/slurm_down.sh STATE_DIR
# Cancels its jobs, then stops exactly the daemons named in STATE_DIR/run/*.pid (slurmd,
# slurmctld, munged: SIGTERM, then SIGKILL after a grace period) and waits for them to exit;
# job-step daemons (slurmstepd) that outlived slurmd are found by their working directory
# or open files inside STATE_DIR. Safe to run twice, or on a half-started
# cluster. Leaves STATE_DIR (logs) in place.
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
[[ -d "$1" ]] || exit 0
STATE="$(cd "$1" && pwd)"
CONF="$STATE/slurm.conf"
say() { echo "slurm_down: $*" >&2; }

alive() { # alive PID NAME: PID runs the program NAME (not a recycled pid, not a zombie)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2"* ]] || return 1
    stat="${stat##*) }" # the state letter follows "(comm) "
    [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

pid_of() { # pid_of NAME: the pid from NAME's pid file if that process still runs, else ""
    local file="$STATE/run/$1.pid" pid
    [[ -s "$file" ]] || return 0
    pid="$(tr -dc 0-9 <"$file")"
    if [[ -n "$pid" ]] && alive "$pid" "$1"; then echo "$pid"; fi
}

stop_pid() { # stop_pid PID NAME
    local pid=$1 name=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do # 10 s
        alive "$pid" "$name" || return 0
        sleep 0.1
    done
    say "$name (pid $pid) ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" "$name" || return 0
        sleep 0.1
    done
    say "$name (pid $pid) is still there after SIGKILL"
    return 1
}

status=0

# 1. the cluster's jobs, while slurmctld can still cancel them
if [[ -n "$(pid_of slurmctld)" && -f "$CONF" ]]; then
    export SLURM_CONF="$CONF"
    jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
        say "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do # 15 s
            [[ -z "$(timeout 10 squeue -h -t R,CG,S -o %A 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
fi

# 2. the daemons, clients before servers
for name in slurmd slurmctld munged; do
    pid="$(pid_of "$name")"
    if [[ -n "$pid" ]]; then
        stop_pid "$pid" "$name" || status=1
    fi
    rm -f "$STATE/run/$name.pid"
done

# 3. leftovers of this cluster: job-step daemons (slurmstepd) of jobs still running when slurmd
#    went, or anything else of slurm/munge working in STATE_DIR or holding one of its files open
for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    [[ "$pid" == "$$" ]] && continue
    name="$(cat "$proc/comm" 2>/dev/null)" || continue
    case "$name" in munged | slurmctld | slurmscriptd | slurmd | slurmstepd) ;; *) continue ;; esac
    mine=0
    cwd="$(readlink "$proc/cwd" 2>/dev/null)"
    if [[ "$cwd" == "$STATE" || "$cwd" == "$STATE"/* ]]; then
        mine=1
    else
        for fd in "$proc"/fd/*; do
            if [[ "$(readlink "$fd" 2>/dev/null)" == "$STATE"/* ]]; then
                mine=1
                break
            fi
        done
    fi
    if ((mine)); then
        say "stopping leftover $name (pid $pid)"
        stop_pid "$pid" "$name" || status=1
    fi
done
exit $status
