#!/bin/bash
# Start a throw-away TWO-node Slurm on one machine: each slurmd in its own network namespace, with its own
# address and node name, joined to one slurmctld by a local bridge. Jobs' tasks run inside their node's
# namespace, so a two-node job talks between the namespaces as between machines (all traffic stays on
# the bridge). Needs root and `ip netns`. Usage:
#   SLURM_DIR=/tmp/slurm2 ./start_two_nodes.sh   then   export SLURM_CONF=$SLURM_DIR/slurm.conf
# Nodes dtnode1 (10.77.0.11, namespace dtn1) and dtnode2 (10.77.0.12, dtn2); controller 10.77.0.1.
# Ports 6917/6918, so it runs beside the one-node cluster (6817/6818). stop_two_nodes.sh undoes it all.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm2}
CPUS=${SLURM_CI_CPUS:-2}
rm -rf "$SLURM_DIR/state"
mkdir -p "$SLURM_DIR"/{log,run,state/ctld,state/dtnode1,state/dtnode2}
export SLURM_CONF="$SLURM_DIR/slurm.conf"

# --- the network: a bridge in this namespace, one veth pair per node namespace
command -v ip >/dev/null || { echo "start_two_nodes: the ip command (iproute2) is missing" >&2; exit 1; }
ip link add dtnbr type bridge 2>/dev/null || true
ip addr replace 10.77.0.1/24 dev dtnbr
ip link set dtnbr up
for n in 1 2; do
  ns=dtn$n
  ip netns add $ns 2>/dev/null || true
  ip link add dtveth$n type veth peer name eth0 netns $ns 2>/dev/null || true
  ip link set dtveth$n master dtnbr up
  ip -n $ns addr replace 10.77.0.1$n/24 dev eth0
  ip -n $ns link set eth0 up
  ip -n $ns link set lo up
  # Each node's /etc/hosts (bound over the real one in its mount namespace, below) names the others.
  mkdir -p /etc/netns/$ns
  printf '127.0.0.1 localhost\n10.77.0.1 dtctl\n10.77.0.11 dtnode1\n10.77.0.12 dtnode2\n' > /etc/netns/$ns/hosts
done

MEM=$(slurmd -C | head -n1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cat > "$SLURM_CONF" <<CONF
ClusterName=ci2
SlurmctldHost=$(hostname -s)(10.77.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=${SLURM_DIR}/state/ctld
SlurmdSpoolDir=${SLURM_DIR}/state/%n
SlurmctldPidFile=${SLURM_DIR}/run/slurmctld.pid
SlurmdPidFile=${SLURM_DIR}/run/slurmd-%n.pid
SlurmctldLogFile=${SLURM_DIR}/log/slurmctld.log
SlurmdLogFile=${SLURM_DIR}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=10
NodeName=dtnode1 NodeAddr=10.77.0.11 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
NodeName=dtnode2 NodeAddr=10.77.0.12 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=two Nodes=dtnode[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
rm -f "$SLURM_DIR/run/munged.pid"
if ! munge -n >/dev/null 2>&1; then
  setsid runuser -u munge -- /usr/sbin/munged -F >"$SLURM_DIR/log/munged.out" 2>&1 </dev/null &
  for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$SLURM_DIR/run/munged.pid"
fi
setsid /usr/sbin/slurmctld -D -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmctld.out" 2>&1 </dev/null &
echo $! > "$SLURM_DIR/run/slurmctld.fg.pid"
for n in 1 2; do
  # nsenter (not `ip netns exec`, which remounts /sys without the cgroup file system slurmd needs) into
  # the node's network namespace, plus private mount and UTS namespaces: its hosts file is /etc/hosts and
  # its host name is the node's (gloo and NCCL advertise the address the host name resolves to).
  setsid nsenter --net=/run/netns/dtn$n unshare --mount --uts --propagation private sh -c \
    "mount --bind /etc/netns/dtn$n/hosts /etc/hosts && hostname dtnode$n && exec /usr/sbin/slurmd -D -N dtnode$n -f $SLURM_CONF" \
    >"$SLURM_DIR/log/slurmd-dtnode$n.out" 2>&1 </dev/null &
  echo $! > "$SLURM_DIR/run/slurmd-dtnode$n.fg.pid"
done
for i in $(seq 150); do
  [ "$(sinfo -h -N -p two -o %T 2>/dev/null | sort -u)" = idle ] && break
  sleep 0.2
done
if [ "$(sinfo -h -N -p two -o %T 2>/dev/null | sort -u)" != idle ]; then
  echo "two-node slurm did not come up" >&2; sinfo -N -R >&2 || true; tail -n 30 "$SLURM_DIR"/log/*.log >&2; exit 1
fi
echo "two-node slurm up: export SLURM_CONF=$SLURM_CONF"
