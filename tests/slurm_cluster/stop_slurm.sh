#!/bin/bash
# Stop what start_slurm.sh started, by recorded PID only (no pkill/killall).
SLURM_DIR=${SLURM_DIR:-/tmp/slurmci}
export SLURM_CONF="$SLURM_DIR/slurm.conf"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# 1. cancel all jobs and wait until they are gone: slurmstepd processes would outlive slurmd otherwise
if alive "$SLURM_DIR/run/slurmctld.fg.pid"; then
  squeue -h -o %i 2>/dev/null | xargs -r scancel
  for i in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
# 2. SIGTERM slurmd + slurmctld, wait up to 10 s, then SIGKILL
pids=""
for d in slurmd slurmctld; do
  f="$SLURM_DIR/run/$d.fg.pid"; alive "$f" && { kill "$(cat "$f")"; pids="$pids $(cat "$f")"; }
  rm -f "$f"
done
for p in $pids; do
  for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p"
done
# 3. slurmdbd and mariadbd (only present with SLURM_CI_ACCOUNTING=1)
for d in slurmdbd mariadbd; do
  f="$SLURM_DIR/run/$d.fg.pid"
  if alive "$f"; then p=$(cat "$f"); kill "$p"
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
  fi
  rm -f "$f"
done
# 4. munged, only if start_slurm.sh started it
f="$SLURM_DIR/run/munged.pid"
if alive "$f"; then
  p=$(cat "$f"); kill "$p"
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$f"
echo "slurm stopped"
