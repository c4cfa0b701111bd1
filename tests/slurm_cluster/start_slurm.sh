#!/bin/bash
# Start a throw-away single-node Slurm 22.05 (munged + slurmctld + slurmd) without systemd or cgroups.
# Needs root. Usage:  SLURM_DIR=/tmp/slurmci [SLURM_CI_CPUS=4] [SLURM_CI_ACCOUNTING=1] ./start_slurm.sh
#                     export SLURM_CONF=$SLURM_DIR/slurm.conf
# SLURM_CI_CPUS=N       declare N CPUs on the node (may exceed nproc; uses SlurmdParameters=config_overrides)
# SLURM_CI_ACCOUNTING=1 also run MariaDB + slurmdbd so that sacct works (needs packages slurmdbd mariadb-server)
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurmci}
NODE=$(hostname -s)
rm -rf "$SLURM_DIR/state"                      # fresh controller state => job ids start at 1
mkdir -p "$SLURM_DIR"/{log,run,state/ctld,state/d}
export SLURM_CONF="$SLURM_DIR/slurm.conf"
# Hardware line from slurmd -C (CPUs, sockets, cores, threads, RealMemory) unless SLURM_CI_CPUS overrides.
if [ -n "${SLURM_CI_CPUS:-}" ]; then
  MEM=$(slurmd -C | head -n1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  HW="NodeName=${NODE} CPUs=${SLURM_CI_CPUS} RealMemory=${MEM}"
  OVR="SlurmdParameters=config_overrides"      # accept more CPUs than the machine has
else
  HW=$(slurmd -C | head -n1); OVR=""
fi
if [ "${SLURM_CI_ACCOUNTING:-0}" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat > "$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (min 5) is also how long a requeued job must wait before it may start again (default 120 s)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${SLURM_DIR}/state/ctld
SlurmdSpoolDir=${SLURM_DIR}/state/d
SlurmctldPidFile=${SLURM_DIR}/run/slurmctld.pid
SlurmdPidFile=${SLURM_DIR}/run/slurmd.pid
SlurmctldLogFile=${SLURM_DIR}/log/slurmctld.log
SlurmdLogFile=${SLURM_DIR}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${ACCT}
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# send the job's --signal (e.g. USR1) at preemption time instead of SIGTERM
SlurmctldParameters=preempt_send_user_signal
${OVR}
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
${HW} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug  Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1  GraceTime=10
PartitionName=urgent Nodes=ALL Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
# munge: the Debian postinst creates /etc/munge/munge.key; recreate if missing
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
rm -f "$SLURM_DIR/run/munged.pid"
if ! munge -n >/dev/null 2>&1; then              # only start (and later stop) munged if none is running
  setsid runuser -u munge -- /usr/sbin/munged -F >"$SLURM_DIR/log/munged.out" 2>&1 </dev/null &
  for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$SLURM_DIR/run/munged.pid"   # pid of munged itself (runuser is its parent)
fi
if [ "${SLURM_CI_ACCOUNTING:-0}" = 1 ]; then
  DB="$SLURM_DIR/mysql"; rm -rf "$DB"; mkdir -p "$DB"
  mariadb-install-db --user=root --datadir="$DB/data" --auth-root-authentication-method=socket --skip-test-db >"$SLURM_DIR/log/mariadb-install.log" 2>&1
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DB/data" --socket="$DB/mysqld.sock" \
      --pid-file="$DB/mysqld.pid" --bind-address=127.0.0.1 --port=3306 --innodb-buffer-pool-size=64M \
      --log-error="$SLURM_DIR/log/mariadbd.err" >/dev/null 2>&1 </dev/null &
  echo $! > "$SLURM_DIR/run/mariadbd.fg.pid"
  for i in $(seq 100); do mariadb --socket="$DB/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb --socket="$DB/mysqld.sock" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat > "$SLURM_DIR/slurmdbd.conf" <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=${SLURM_DIR}/log/slurmdbd.log
PidFile=${SLURM_DIR}/run/slurmdbd.pid
DBD
  chmod 600 "$SLURM_DIR/slurmdbd.conf"           # slurmdbd reads it from dirname($SLURM_CONF)
  setsid /usr/sbin/slurmdbd -D >"$SLURM_DIR/log/slurmdbd.out" 2>&1 </dev/null &
  echo $! > "$SLURM_DIR/run/slurmdbd.fg.pid"
  for i in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -i add cluster ci >/dev/null
fi
# Foreground mode (-D) detached with setsid; record PIDs ourselves.
setsid /usr/sbin/slurmctld -D -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmctld.out" 2>&1 </dev/null &
echo $! > "$SLURM_DIR/run/slurmctld.fg.pid"
setsid /usr/sbin/slurmd -D -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmd.out" 2>&1 </dev/null &
echo $! > "$SLURM_DIR/run/slurmd.fg.pid"
for i in $(seq 150); do                          # wait (max 30 s) for the node to be idle
  [ "$(sinfo -h -N -p debug -o %T 2>/dev/null)" = idle ] && break
  sleep 0.2
done
if [ "$(sinfo -h -N -p debug -o %T 2>/dev/null)" != idle ]; then
  echo "slurm did not come up" >&2; sinfo -R >&2 || true; tail -n 30 "$SLURM_DIR"/log/*.log >&2; exit 1
fi
echo "slurm up: export SLURM_CONF=$SLURM_CONF"
