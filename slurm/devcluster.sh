#!/usr/bin/env bash
# devcluster.sh - a real one-node SLURM cluster on 127.0.0.1 for tests and CI.
#
# Usage: bash slurm/devcluster.sh {install|start|stop|restart|status|up} [options]
#
#   install   apt-get install slurmctld slurmd slurm-client munge (skipped if present)
#   start     (re)write the config, start munged, slurmctld, slurmd; wait for the
#             node to be idle. Running it while the cluster is up restarts it.
#   stop      stop the daemons (idempotent)
#   restart   stop + start
#   status    show daemons, sinfo and squeue
#   up        install + start
#
# Options (install/start/up):
#   --with-accounting  also install MariaDB + slurmdbd and enable `sacct`
#                      (optional; the basic cluster never depends on it)
#   --keep-state       keep slurmctld's saved state (jobs, job ids) across restarts and
#                      leave running jobs alone (also for stop); by default stop/start
#                      cancel all jobs and `start` begins with an empty queue
#
# Environment:
#   SLURM_DEV_DIR            dev dir for config copy, state, spool, logs, pids
#                            (default /tmp/bench-slurm)
#   SLURM_CONF               where the config is installed; default /etc/slurm/slurm.conf,
#                            the path client commands (sbatch, squeue, sacct, submitit)
#                            read without anything exported. An existing config not
#                            written by this script is backed up first.
#   SLURM_DEV_CPUS           CPUs advertised by the node (default: nproc). More than
#                            nproc over-subscribes (SlurmdParameters=config_overrides).
#   SLURM_DEV_START_TIMEOUT  seconds to wait for the node to be idle (default 60)
#   SLURM_DEV_CLUSTER_NAME   ClusterName (default benchdev)
#   SLURM_DEV_ACCOUNTING     1 = same as --with-accounting
#   SLURM_DEV_DB_PORT        MariaDB port for --with-accounting (default 3307)
#   SLURM_DEV_CRED_EXPIRE    AuthInfo=cred_expire, also the delay before a requeued
#                            job may restart (default 10 s; SLURM's default is 120)
#
# Works as root without systemd (daemons are started directly, never via systemctl).
set -euo pipefail

DEV_DIR="${SLURM_DEV_DIR:-/tmp/bench-slurm}"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
export SLURM_CONF="$CONF"
CLUSTER_NAME="${SLURM_DEV_CLUSTER_NAME:-benchdev}"
START_TIMEOUT="${SLURM_DEV_START_TIMEOUT:-60}"
DB_PORT="${SLURM_DEV_DB_PORT:-3307}"
CRED_EXPIRE="${SLURM_DEV_CRED_EXPIRE:-10}"
MARKER="# Managed by CollectionLoRA Bench slurm/devcluster.sh"
PKGS=(slurmctld slurmd slurm-client munge)
ACCT_PKGS=(slurmdbd mariadb-server mariadb-client)

WITH_ACCOUNTING="${SLURM_DEV_ACCOUNTING:-0}"
FIRST_JOB_ID=1
KEEP_STATE=0
T0=$(date +%s)

log() { printf '[devcluster %3ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { printf '[devcluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo bash $0 ...)"
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_install() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "packages already installed: $*"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    local t
    t=$(date +%s)
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || log "warning: apt-get update failed, trying the install anyway"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DEV_DIR/log/apt.log" 2>&1 \
        || { tail -n 30 "$DEV_DIR/log/apt.log" >&2; die "apt-get install failed (log: $DEV_DIR/log/apt.log)"; }
    log "installed in $(($(date +%s) - t))s"
}

make_dirs() {
    mkdir -p "$DEV_DIR"/{log,run,state,spool/slurmd,etc}
    chmod 0755 "$DEV_DIR" "$DEV_DIR/log" "$DEV_DIR/run" "$DEV_DIR/etc"
}

# ---------------------------------------------------------------- process helpers
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

pidfile_pid() {  # pidfile -> pid if that process is alive
    local pid
    [[ -f $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    pid_alive "$pid" && echo "$pid"
}

stop_pids() {  # "name:pid" ...: SIGTERM them all, wait up to 15 s, then SIGKILL the rest
    local item pending=() still=()
    for item in "$@"; do
        pid_alive "${item#*:}" || continue
        kill -TERM "${item#*:}" 2>/dev/null || true
        pending+=("$item")
    done
    for _ in $(seq 1 150); do
        ((${#pending[@]})) || return 0
        still=()
        for item in "${pending[@]}"; do
            if pid_alive "${item#*:}"; then
                still+=("$item")
            else
                log "stopped ${item%%:*} (pid ${item#*:})"
            fi
        done
        pending=("${still[@]}")
        ((${#pending[@]})) && sleep 0.1
    done
    for item in "${pending[@]}"; do
        log "${item%%:*} (pid ${item#*:}) ignored SIGTERM, sending SIGKILL"
        kill -KILL "${item#*:}" 2>/dev/null || true
    done
    sleep 0.2
}

daemon_targets() {  # name pidfile -> "name:pid" of our daemon and of strays of that name
    local name=$1 pidfile=$2 pid ours=""
    if ours=$(pidfile_pid "$pidfile"); then echo "$name:$ours"; fi
    rm -f "$pidfile"
    # Other processes of this name: the daemon's own start-up parent (it lingers ~2 s after
    # start) or a daemon started some other way, which would hold our port: stop them too.
    for pid in $(pgrep -x "$name" || true); do
        [[ $pid == "$ours" ]] && continue
        log "also stopping $name process $pid" >&2
        echo "$name:$pid"
    done
}

# ---------------------------------------------------------------- munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already running"
        return 0
    fi
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating munge key $key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            runuser -u munge -- mungekey --create --keyfile="$key"
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
        chown munge:munge "$key"
        chmod 0400 "$key"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    touch "$DEV_DIR/log/munged.log"
    chown munge:munge "$DEV_DIR/log/munged.log"
    chmod 0640 "$DEV_DIR/log/munged.log"
    # --force: a munged killed earlier may have left a stale socket lock behind.
    runuser -u munge -- /usr/sbin/munged --force --log-file="$DEV_DIR/log/munged.log" \
        || { tail -n 20 "$DEV_DIR/log/munged.log" >&2; die "munged failed to start"; }
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { tail -n 20 "$DEV_DIR/log/munged.log" >&2; die "munged does not answer"; }
    touch "$DEV_DIR/run/munged.ours"
    log "munged started"
}

stop_munge() {
    [[ -f $DEV_DIR/run/munged.ours ]] || return 0  # not ours: leave it alone
    local pid
    if pid=$(pidfile_pid /run/munge/munged.pid); then
        stop_pids "munged:$pid"
    fi
    rm -f "$DEV_DIR/run/munged.ours"
}

# ---------------------------------------------------------------- accounting (optional)
DB_SOCK() { echo "$DEV_DIR/run/mysqld.sock"; }

start_mariadb() {
    local datadir="$DEV_DIR/mysql" sock
    sock=$(DB_SOCK)
    if [[ ! -d $datadir/mysql ]]; then
        log "initialising MariaDB datadir $datadir"
        mkdir -p "$datadir"
        mariadb-install-db --user=root --datadir="$datadir" --auth-root-authentication-method=socket \
            --skip-test-db >"$DEV_DIR/log/mariadb-install.log" 2>&1 \
            || { tail -n 20 "$DEV_DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    if ! pidfile_pid "$DEV_DIR/run/mariadbd.pid" >/dev/null; then
        mariadbd --no-defaults --user=root --datadir="$datadir" --socket="$sock" \
            --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$DEV_DIR/run/mariadbd.pid" \
            --log-error="$DEV_DIR/log/mariadb.log" --innodb-buffer-pool-size=128M \
            --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
        disown || true
    fi
    for _ in $(seq 1 300); do
        mariadb --no-defaults -uroot --socket="$sock" -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb --no-defaults -uroot --socket="$sock" -e 'SELECT 1' >/dev/null 2>&1 \
        || { tail -n 20 "$DEV_DIR/log/mariadb.log" >&2; die "MariaDB did not start"; }
    mariadb --no-defaults -uroot --socket="$sock" -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'benchdev';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'benchdev';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    log "MariaDB up on 127.0.0.1:$DB_PORT"
}

write_slurmdbd_conf() {
    local dbd_conf
    dbd_conf="$(dirname "$CONF")/slurmdbd.conf"
    cat >"$DEV_DIR/etc/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$DEV_DIR/log/slurmdbd.log
PidFile=$DEV_DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=benchdev
StorageLoc=slurm_acct_db
EOF
    backup_foreign "$dbd_conf"
    install -m 0600 -o root -g root "$DEV_DIR/etc/slurmdbd.conf" "$dbd_conf"
}

start_slurmdbd() {
    write_slurmdbd_conf
    slurmdbd || { tail -n 30 "$DEV_DIR/log/slurmdbd.log" >&2; die "slurmdbd failed to start"; }
    for _ in $(seq 1 300); do
        sacctmgr -n list cluster >/dev/null 2>&1 && break
        sleep 0.2
    done
    sacctmgr -n list cluster >/dev/null 2>&1 \
        || { tail -n 30 "$DEV_DIR/log/slurmdbd.log" >&2; die "slurmdbd does not answer"; }
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    log "slurmdbd up (accounting enabled)"
}

# ---------------------------------------------------------------- config
backup_foreign() {  # back up an existing file not written by this script
    local f=$1
    if [[ -f $f ]] && ! grep -qF "$MARKER" "$f"; then
        local bak
        bak="$f.bench-backup.$(date +%Y%m%d%H%M%S)"
        cp -p "$f" "$bak"
        log "backed up existing $f -> $bak"
    fi
}

write_conf() {
    local host cpus nproc_ mem_mb real_mem def_mem overrides="" acct
    host=$(hostname -s)
    # GNU nproc honours OMP_NUM_THREADS / OMP_THREAD_LIMIT (CI sets one thread per process);
    # the node advertises the machine's processors
    nproc_=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    cpus=${SLURM_DEV_CPUS:-$nproc_}
    [[ $cpus =~ ^[1-9][0-9]*$ ]] || die "SLURM_DEV_CPUS must be a positive integer, got '$cpus'"
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # headroom for the OS and the daemons: 10%, at least 512 MB
    real_mem=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
    ((real_mem > 256)) || real_mem=256
    def_mem=$((real_mem / cpus))
    ((cpus > nproc_)) && overrides="SlurmdParameters=config_overrides"
    if ((WITH_ACCOUNTING)); then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat >"$DEV_DIR/etc/slurm.conf" <<EOF
$MARKER
# Regenerated on every start; dev dir: $DEV_DIR
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s); keep it short so checkpoint/requeue round trips are fast.
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DEV_DIR/state
SlurmdSpoolDir=$DEV_DIR/spool/slurmd
SlurmctldPidFile=$DEV_DIR/run/slurmctld.pid
SlurmdPidFile=$DEV_DIR/run/slurmd.pid
SlurmctldLogFile=$DEV_DIR/log/slurmctld.log
SlurmdLogFile=$DEV_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$overrides
# scheduling: fast turnaround for small test grids (main scheduler every 3 s, backfill
# every 5 s; without sched_interval a requeued job idles up to a minute), big arrays
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,bf_continue,sched_interval=3
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$def_mem
MaxArraySize=10001
MaxJobCount=100000
FirstJobId=$FIRST_JOB_ID
# timeouts / requeue (submitit checkpoints on USR2, then runs scontrol requeue)
JobRequeue=1
MinJobAge=120
KillWait=10
OverTimeLimit=0
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
# accounting
$acct
JobCompType=jobcomp/none
# the single node and partition
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p "$(dirname "$CONF")"
    backup_foreign "$CONF"
    install -m 0644 "$DEV_DIR/etc/slurm.conf" "$CONF"
    log "wrote $CONF (node $host, CPUs=$cpus, RealMemory=${real_mem}MB, accounting=$WITH_ACCOUNTING)"
}

# ---------------------------------------------------------------- lifecycle
print_logs() {
    local f
    for f in slurmctld.log slurmd.log slurmdbd.log munged.log; do
        [[ -f $DEV_DIR/log/$f ]] || continue
        echo "----- $DEV_DIR/log/$f (last 40 lines) -----" >&2
        tail -n 40 "$DEV_DIR/log/$f" >&2
    done
}

fail_start() {
    echo "[devcluster] ERROR: $*" >&2
    sinfo -N -o '%N %T %E' >&2 2>/dev/null || true
    print_logs
    exit 1
}

node_state() { sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1; }

wait_for_idle() {
    local deadline=$(($(date +%s) + START_TIMEOUT)) state="" resumed=0
    while (($(date +%s) < deadline)); do
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated) return 0 ;;
            down* | drain* | fail*)
                if ((!resumed)); then
                    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        sleep 0.5
    done
    fail_start "node not idle after ${START_TIMEOUT}s (state: '${state:-no answer}')"
}

cmd_install() {
    need_root
    make_dirs
    apt_install "${PKGS[@]}"
    ((WITH_ACCOUNTING)) && apt_install "${ACCT_PKGS[@]}"
    return 0
}

cmd_stop() {
    need_root
    local quiet=${1:-} keep_munge=${2:-}
    if [[ -z $quiet ]]; then log "stopping"; fi
    # Cancel leftover jobs so no slurmstepd outlives slurmd (with --keep-state running jobs
    # are left alone and reattach to the next slurmd, as on a real cluster).
    # Only with a config present: without one the client tries a DNS SRV lookup and hangs.
    if ((!KEEP_STATE)) && [[ -f $CONF ]] && command -v scontrol >/dev/null && timeout 5 scontrol ping >/dev/null 2>&1; then
        local jobs
        jobs=$(timeout 5 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 50); do
                [[ -z $(timeout 5 squeue -h -o '%A' 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    local targets=()
    mapfile -t targets < <(daemon_targets slurmd "$DEV_DIR/run/slurmd.pid"
                           daemon_targets slurmctld "$DEV_DIR/run/slurmctld.pid")
    stop_pids "${targets[@]}"
    # accounting last, so slurmctld can flush its records to slurmdbd
    mapfile -t targets < <(daemon_targets slurmdbd "$DEV_DIR/run/slurmdbd.pid")
    stop_pids "${targets[@]}"
    local pid
    if pid=$(pidfile_pid "$DEV_DIR/run/mariadbd.pid"); then stop_pids "mariadbd:$pid"; fi
    [[ -n $keep_munge ]] || stop_munge
    if [[ -z $quiet ]]; then log "stopped"; fi
}

cmd_start() {
    need_root
    for b in slurmctld slurmd sinfo munged; do
        command -v "$b" >/dev/null || die "$b not found: run 'bash $0 install' (or 'up')"
    done
    make_dirs
    # restart cleanly if anything is still running (munged may keep running)
    cmd_stop quiet keep_munge
    if ((!KEEP_STATE)); then
        rm -rf "${DEV_DIR:?}/state" "${DEV_DIR:?}/spool"
        mkdir -p "$DEV_DIR/state" "$DEV_DIR/spool/slurmd"
    fi
    # fresh logs for this run (old ones kept as *.prev)
    local f
    for f in slurmctld slurmd slurmdbd; do
        [[ -f $DEV_DIR/log/$f.log ]] && mv -f "$DEV_DIR/log/$f.log" "$DEV_DIR/log/$f.log.prev"
    done
    write_conf
    start_munge
    if ((WITH_ACCOUNTING)); then
        if ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
            die "accounting packages missing: run 'bash $0 install --with-accounting'"
        fi
        start_mariadb
        start_slurmdbd
        if ((!KEEP_STATE)); then
            # fresh controller state restarts job ids: continue after the ids already in
            # the accounting DB so `sacct -j ID` never mixes up two jobs
            local max_id
            max_id=$(sacct -a -X -n -P -o JobIDRaw -S 2000-01-01 -E now 2>/dev/null \
                | tr -dc '0-9\n' | sort -n | tail -n1 || true)
            if [[ -n $max_id ]]; then
                FIRST_JOB_ID=$((max_id + 1))
                write_conf >/dev/null
                log "job ids continue at $FIRST_JOB_ID (after those in the accounting DB)"
            fi
        fi
    elif [[ -f $(dirname "$CONF")/slurmdbd.conf ]] && grep -qF "$MARKER" "$(dirname "$CONF")/slurmdbd.conf"; then
        rm -f "$(dirname "$CONF")/slurmdbd.conf"
    fi
    slurmctld -f "$CONF" || fail_start "slurmctld failed to start"
    for _ in $(seq 1 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
    scontrol ping >/dev/null 2>&1 || fail_start "slurmctld does not answer 'scontrol ping'"
    log "slurmctld up"
    slurmd -f "$CONF" || fail_start "slurmd failed to start"
    wait_for_idle
    log "cluster up: $(sinfo -h -o '%P %a %D %T %N' | head -n1) (conf $CONF, logs $DEV_DIR/log)"
}

cmd_status() {
    local name pid rc=0
    for name in munged slurmctld slurmd slurmdbd mariadbd; do
        case $name in
            munged) pid=$(pidfile_pid /run/munge/munged.pid || true) ;;
            *) pid=$(pidfile_pid "$DEV_DIR/run/$name.pid" || true) ;;
        esac
        if [[ -n $pid ]]; then
            printf '%-10s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s not running\n' "$name"
        fi
    done
    echo "config: $CONF  dev dir: $DEV_DIR"
    if timeout 5 sinfo >/dev/null 2>&1; then
        sinfo -N -o '%N %P %T %c %m %E'
        squeue
    else
        echo "sinfo: controller not reachable"
        rc=1
    fi
    return $rc
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || { usage; exit 2; }
    shift
    local a
    for a in "$@"; do
        case $a in
            --with-accounting) WITH_ACCOUNTING=1 ;;
            --keep-state) KEEP_STATE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option: $a" ;;
        esac
    done
    case $cmd in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_start ;;
        status) cmd_status ;;
        up) cmd_install; cmd_start ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
