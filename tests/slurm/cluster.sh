#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine, so tests can submit the sbatch
# scripts recipe-runner generates and wait for them. Needs root and Debian's packages.
#
#   tests/slurm/cluster.sh install               apt-get install slurm-wlm + munge if missing
#   tests/slurm/cluster.sh start  STATE_DIR      munged + slurmctld + slurmd; waits for the node to be idle,
#                                                then prints `export SLURM_CONF=STATE_DIR/slurm.conf`
#   tests/slurm/cluster.sh stop   STATE_DIR      cancels jobs, stops the daemons it started (idempotent)
#   tests/slurm/cluster.sh wait   STATE_DIR JOBID [TIMEOUT_S=600]
#                                                waits until the job leaves the queue, prints
#                                                `JOBID STATE ExitCode=N:S`; exit 0 only if COMPLETED
#   tests/slurm/cluster.sh status STATE_DIR      daemons, sinfo and squeue
#
# Everything (slurm.conf, state, spool, logs, pid files) lives under STATE_DIR; nothing under
# /etc/slurm is touched. Ports: $SLURMCTLD_PORT (6817) and $SLURMD_PORT (6818).
# No accounting daemon: sacct does not work; finished jobs stay visible to `scontrol show job`
# for MinJobAge=3600 s, and are also appended to STATE_DIR/log/jobcomp.txt. A requeued job
# (`scontrol requeue JOBID`) starts again after about 30 s (AuthInfo=cred_expire=30).
set -euo pipefail

PROG=cluster.sh
die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it starts munged, slurmctld and slurmd)"; }

state_dir() {  # absolute path of $1, created
    [ -n "${1:-}" ] || die "missing STATE_DIR (usage: $PROG start|stop|wait|status STATE_DIR ...)"
    mkdir -p "$1" && (cd "$1" && pwd -P)
}

PACKAGES=(slurm-wlm munge)                     # slurm-wlm pulls slurmctld, slurmd, slurm-client
NEEDED=(slurmctld slurmd slurm-client munge)   # what must end up installed

installed() {
    local p
    for p in "${NEEDED[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || return 1
    done
}

cmd_install() {
    need_root
    if installed; then say "slurm and munge already installed"; return 0; fi
    export DEBIAN_FRONTEND=noninteractive
    local log policy_added=""
    log=$(mktemp)
    # the packages' maintainer scripts must not start system-wide munge/slurm services
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    local apt=(apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${PACKAGES[@]}")
    if ! "${apt[@]}" >"$log" 2>&1; then
        say "install failed with the current package lists; running apt-get update and retrying"
        if ! { apt-get update -qq >>"$log" 2>&1 && "${apt[@]}" >>"$log" 2>&1; }; then
            [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
            tail -n 30 "$log" >&2; rm -f "$log"; die "apt-get install ${PACKAGES[*]} failed"
        fi
    fi
    [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
    rm -f "$log"
    installed || die "packages still missing after apt-get install"
    say "installed: $(dpkg-query -W -f='${Package} ${Version}, ' "${PACKAGES[@]}" | sed 's/, $//')"
}

# ---------- processes ----------

alive() {  # alive PIDFILE NAME: the pid in PIDFILE runs a process called NAME
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

stop_pids() {  # stop_pids PIDFILE:NAME...: TERM them all, wait up to 15 s, then KILL
    local spec f name pid left
    local -a pids=() names=()
    for spec in "$@"; do
        f=${spec%:*}; name=${spec##*:}
        if alive "$f" "$name"; then
            pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid"); names+=("$name")
        fi
        rm -f "$f"
    done
    for _ in $(seq 1 150); do
        left=0
        for pid in "${!pids[@]}"; do
            [ "$(cat /proc/"${pids[$pid]}"/comm 2>/dev/null)" = "${names[$pid]}" ] && left=1
        done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for pid in "${!pids[@]}"; do
        if [ "$(cat /proc/"${pids[$pid]}"/comm 2>/dev/null)" = "${names[$pid]}" ]; then
            kill -KILL "${pids[$pid]}" 2>/dev/null || true
            say "killed ${names[$pid]} (pid ${pids[$pid]}) after 15 s"
        else
            say "stopped ${names[$pid]} (pid ${pids[$pid]})"
        fi
    done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {  # start_munge STATE: starts munged as user munge unless one already answers
    local state=$1 key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force >/dev/null
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        fi
        say "created $key"
    fi
    chown munge:munge "$key" && chmod 0400 "$key"
    # /run is a tmpfs on most machines: the socket directory may not survive a reboot
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if munge_works; then
        [ -e "$state/munged.ours" ] || say "using the munged already running"
        return 0
    fi
    runuser -u munge -- /usr/sbin/munged || true
    for _ in $(seq 1 50); do
        if munge_works; then
            cp /run/munge/munged.pid "$state/munged.ours"  # so that `stop` ends only the munged we started
            say "started munged (pid $(cat "$state/munged.ours"))"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
    die "munged did not start (log above: /var/log/munge/munged.log)"
}

# ---------- slurm.conf ----------

write_conf() {  # write_conf STATE NODE
    local state=$1 node=$2 hw
    # the node's hardware as slurmd sees it: NodeName=... CPUs=... ... RealMemory=...
    hw=$(slurmd -C | head -n 1)
    [[ "$hw" == NodeName=* ]] || die "unexpected \`slurmd -C\` output: $hw"
    hw=${hw#NodeName=* }
    cat >"$state/slurm.conf" <<CONF
# Generated by tests/slurm/cluster.sh for a one-node test cluster; \`start\` rewrites it.
ClusterName=recipe-runner-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120): shorter for tests
AuthInfo=cred_expire=30
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# no slurmdbd: sacct does not work; finished jobs stay in \`scontrol show job\` for MinJobAge
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobcomp.txt
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
}

# ---------- subcommands ----------

logs_tail() {
    local f
    for f in "$1/log/slurmctld.log" "$1/log/slurmd.log"; do
        [ -e "$f" ] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }
    done
    return 0
}

cmd_start() {
    need_root
    local state node st=""
    state=$(state_dir "${1:-}")
    installed || die "slurm/munge not installed: run \`$0 install\` first"
    node=$(hostname -s)
    getent hosts "$node" >/dev/null ||
        say "warning: $node does not resolve; daemons use 127.0.0.1, but \`scontrol show hostnames\` gives $node"
    mkdir -p "$state/ctld" "$state/slurmd" "$state/log"
    export SLURM_CONF=$state/slurm.conf
    start_munge "$state"
    if alive "$state/slurmctld.pid" slurmctld || alive "$state/slurmd.pid" slurmd; then
        say "already running; keeping $SLURM_CONF"
    else
        write_conf "$state" "$node"
    fi
    local port
    for port in "${SLURMCTLD_PORT:-6817}" "${SLURMD_PORT:-6818}"; do
        if ! alive "$state/slurmctld.pid" slurmctld && ! alive "$state/slurmd.pid" slurmd && port_busy "$port"; then
            die "port $port is taken (another cluster: stop it, or set SLURMCTLD_PORT/SLURMD_PORT)"
        fi
    done
    if ! alive "$state/slurmctld.pid" slurmctld; then
        slurmctld -f "$SLURM_CONF" || { logs_tail "$state"; die "slurmctld failed to start"; }
    fi
    if ! alive "$state/slurmd.pid" slurmd; then
        slurmd -f "$SLURM_CONF" || { logs_tail "$state"; die "slurmd failed to start"; }
    fi
    for _ in $(seq 1 120); do   # 60 s
        alive "$state/slurmctld.pid" slurmctld || { st="slurmctld not running"; sleep 0.5; continue; }
        alive "$state/slurmd.pid" slurmd || { st="slurmd not running"; sleep 0.5; continue; }
        st=$(sinfo -h -N -n "$node" -o %T 2>/dev/null | head -n 1) || true
        case "$st" in idle|mixed|allocated|completing) break ;; esac
        sleep 0.5
    done
    case "$st" in
        idle|mixed|allocated|completing) ;;
        *) sinfo -N -l >&2 2>&1 || true
           scontrol show node "$node" >&2 2>&1 || true
           logs_tail "$state"
           die "node $node not idle after 60 s (state: ${st:-no answer from slurmctld})" ;;
    esac
    say "node $node is $st"
    echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    need_root
    local state
    state=$(state_dir "${1:-}")
    export SLURM_CONF=$state/slurm.conf
    if alive "$state/slurmctld.pid" slurmctld && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        # no stray job steps once slurmd is gone
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
        say "cancelled the queued jobs"
    fi
    stop_pids "$state/slurmd.pid:slurmd" "$state/slurmctld.pid:slurmctld"
    if [ -e "$state/munged.ours" ]; then  # only the munged that `start` started
        stop_pids "$state/munged.ours:munged"
    fi
    say "stopped"
}

cmd_wait() {
    local state id timeout out rc start info="" jstate code down=""
    state=$(state_dir "${1:-}")
    id=${2:-}; timeout=${3:-600}
    [[ "$id" =~ ^[0-9]+$ ]] || die "usage: $PROG wait STATE_DIR JOBID [TIMEOUT_S]"
    export SLURM_CONF=$state/slurm.conf
    start=$SECONDS
    while :; do
        # a stopped controller: answer from jobcomp.txt (squeue would retry for ~18 s)
        alive "$state/slurmctld.pid" slurmctld || { down=1; break; }
        # -t lists the states in which a job is still queued; squeue -j alone would also show finished jobs
        rc=0; out=$(squeue -h --jobs="$id" -t PD,R,CG,CF,S,RQ,RH,RS,RF,RD,SI,SO,ST,SE -o %T 2>&1) || rc=$?
        if [ "$rc" = 0 ] && [ -z "$out" ]; then break; fi
        if [ "$rc" != 0 ] && [[ "$out" == *"Invalid job id"* ]]; then break; fi
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            echo "$id TIMEOUT_WAITING state=${out//$'\n'/ }"
            return 1
        fi
        sleep 1
    done
    [ -n "$down" ] || info=$(scontrol show job -o "$id" 2>/dev/null) || info=""
    if [ -z "$info" ] && [ -e "$state/log/jobcomp.txt" ]; then
        info=$(grep -E "^JobId=$id " "$state/log/jobcomp.txt" | tail -n 1) || info=""
    fi
    jstate=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
    code=$(sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p' <<<"$info")
    echo "$id ${jstate:-UNKNOWN} ExitCode=${code:-?}${down:+ (slurmctld of $state is not running)}"
    [ "$jstate" = COMPLETED ]
}

cmd_status() {
    local state
    state=$(state_dir "${1:-}")
    export SLURM_CONF=$state/slurm.conf
    alive "$state/slurmctld.pid" slurmctld && echo "slurmctld: pid $(cat "$state/slurmctld.pid")" || echo "slurmctld: stopped"
    alive "$state/slurmd.pid" slurmd && echo "slurmd: pid $(cat "$state/slurmd.pid")" || echo "slurmd: stopped"
    munge_works && echo "munged: running" || echo "munged: stopped"
    if alive "$state/slurmctld.pid" slurmctld; then sinfo -N; squeue; fi
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    wait)    shift; cmd_wait "$@" ;;
    status)  shift; cmd_status "$@" ;;
    *) sed -n '2,20s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
