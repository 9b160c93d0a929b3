#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the SLURM test tier: Debian's slurm-wlm 22.05 with munge, accounting
# through slurmdbd and MariaDB, one controller and two compute nodes (n1, n2) with their own hostnames.
#   tests/slurm/cluster.sh start   install what is missing (apt-get), start everything, wait until both nodes are idle
#   tests/slurm/cluster.sh stop    stop exactly what start started (by the PIDs it recorded) and undo its /etc/hosts lines
#   tests/slurm/cluster.sh env     the environment a client needs (eval "$(tests/slurm/cluster.sh env)")
# State, configs and logs in $SLURM_TEST_DIR (default /tmp/phi3v-slurm). All traffic stays on loopback: the
# controller, slurmdbd and both slurmd listen on 127.0.0.1 and 127.0.1.x; MariaDB has no network at all (unix socket).
# No systemd is needed: every daemon is started here, in the foreground of its own background process.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/phi3v-slurm}
CLUSTER=phi3v
NODES=(n1 n2)
CPUS=$(nproc)
MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # each node offers half the machine
HOSTS_MARK="# phi3v-slurm test cluster"
# munge's default socket: the clients (sbatch, sacct, sacctmgr) look there whatever slurm.conf says
MUNGE_SOCKET=/run/munge/munge.socket.2
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "slurm-cluster: $*" >&2; }

node_addr() { echo "127.0.1.$(( $1 + 10 ))"; }  # n1 -> 127.0.1.11, n2 -> 127.0.1.12

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do  # 'deinstall ok config-files' (removed, not purged) counts as missing
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# background DAEMON_NAME COMMAND...: start a foreground daemon in the background, record its PID
background() {
  local name=$1; shift
  "$@" >"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.5
  done
}

write_configs() {
  mkdir -p "$DIR"/{log,pids,state,munge,mysql,run}
  for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
  [ -f "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
  chmod 700 "$DIR/munge"; chmod 400 "$DIR/munge/munge.key"
  local nodes="" i=0
  for n in "${NODES[@]}"; do
    i=$(( i + 1 ))
    nodes+="NodeName=$n NodeAddr=$(node_addr $i) NodeHostname=$n Port=$(( 6830 + i )) CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN"$'\n'
  done
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
CommunicationParameters=NoCtldInAddrAny
${nodes}PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF
  chmod 600 "$DIR/slurmdbd.conf"
}

add_hosts() {
  remove_hosts
  local i=0
  for n in "${NODES[@]}"; do
    i=$(( i + 1 ))
    echo "$(node_addr $i) $n $HOSTS_MARK" >>/etc/hosts
  done
}

remove_hosts() {
  if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    grep -v "$HOSTS_MARK" /etc/hosts >"$DIR/hosts.tmp" || true
    cat "$DIR/hosts.tmp" >/etc/hosts  # in place: /etc/hosts may be a bind mount
    rm -f "$DIR/hosts.tmp"
  fi
}

start() {
  if [ -f "$DIR/pids/slurmctld.pid" ] && kill -0 "$(cat "$DIR/pids/slurmctld.pid")" 2>/dev/null; then
    log "already running ($DIR)"; return
  fi
  install
  write_configs
  add_hosts
  export SLURM_CONF="$DIR/slurm.conf"
  if [ -S "$MUNGE_SOCKET" ] && munge -n </dev/null >/dev/null 2>&1; then
    log "a munged not started by this script answers on $MUNGE_SOCKET: stop it first"; return 1
  fi
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  background munged munged -F --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 20 munge sh -c "munge -n </dev/null"
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --datadir="$DIR/mysql" --user=root --skip-test-db >"$DIR/log/mariadb-install.out" 2>&1
  fi
  background mariadbd mariadbd --datadir="$DIR/mysql" --socket="$DIR/run/mysql.sock" --skip-networking --user=root \
    --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log"
  wait_for 60 MariaDB test -S "$DIR/run/mysql.sock"
  # slurmdbd reads slurmdbd.conf beside $SLURM_CONF; MariaDB's client library finds the socket in MYSQL_UNIX_PORT
  background slurmdbd env MYSQL_UNIX_PORT="$DIR/run/mysql.sock" slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  background slurmctld slurmctld -D -i -f "$DIR/slurm.conf"
  wait_for 60 slurmctld scontrol ping
  for n in "${NODES[@]}"; do
    background "slurmd-$n" unshare --uts sh -c "hostname $n && exec slurmd -D -N $n -f '$DIR/slurm.conf'"
  done
  wait_for 90 "both nodes idle" all_idle || { sinfo -N -l >&2 || true; return 1; }
  log "up: ${NODES[*]} idle; export SLURM_CONF=$DIR/slurm.conf"
}

all_idle() {
  local states
  states=$(sinfo -h -N -o "%T" 2>/dev/null | sort -u)
  if echo "$states" | grep -qE "down|drain|unknown"; then
    scontrol update nodename="$(IFS=,; echo "${NODES[*]}")" state=resume >/dev/null 2>&1 || true
  fi
  [ "$states" = "idle" ]
}

stop() {
  local pidfile pid
  if [ -f "$DIR/pids/slurmctld.pid" ] && kill -0 "$(cat "$DIR/pids/slurmctld.pid")" 2>/dev/null; then
    SLURM_CONF="$DIR/slurm.conf" scancel --cluster="$CLUSTER" --full --quiet --user=root 2>/dev/null || true
    sleep 1  # the nodes end the jobs' processes before their slurmd goes
  fi
  for name in slurmd-n2 slurmd-n1 slurmctld slurmdbd mariadbd munged; do
    pidfile="$DIR/pids/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      # the recorded process and its children (unshare's child is the slurmd) and nothing else
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  remove_hosts
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
