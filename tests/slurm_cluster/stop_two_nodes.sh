#!/bin/bash
# Stop what start_two_nodes.sh started (by recorded PID), then remove its namespaces, bridge and hosts files.
SLURM_DIR=${SLURM_DIR:-/tmp/slurm2}
export SLURM_CONF="$SLURM_DIR/slurm.conf"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$SLURM_DIR/run/slurmctld.fg.pid"; then
  squeue -h -o %i 2>/dev/null | xargs -r scancel
  for i in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
pids=""
for f in "$SLURM_DIR"/run/slurmd-dtnode1.fg.pid "$SLURM_DIR"/run/slurmd-dtnode2.fg.pid "$SLURM_DIR/run/slurmctld.fg.pid"; do
  alive "$f" && { kill "$(cat "$f")"; pids="$pids $(cat "$f")"; }
  rm -f "$f"
done
for p in $pids; do
  for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p"
done
# Whatever still runs inside the namespaces (a task of a killed node) goes with them.
for ns in dtn1 dtn2; do
  for p in $(ip netns pids $ns 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del $ns 2>/dev/null
  rm -rf /etc/netns/$ns
done
ip link del dtnbr 2>/dev/null
f="$SLURM_DIR/run/munged.pid"
if alive "$f"; then
  p=$(cat "$f"); kill "$p"
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$f"
echo "two-node slurm stopped"
