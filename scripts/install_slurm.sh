#!/usr/bin/env bash
# A single-node SLURM cluster on this machine for the SLURM launcher's tests (tests/test_slurm.py):
# Debian's slurmctld, slurmd, slurm-client and munge, a munge key, a minimal slurm.conf (one node
# with this machine's CPUs and memory, one default partition), then munged, slurmctld and slurmd.
# Idempotent: installs only what is missing, leaves running daemons alone, and exits 0 once sinfo
# shows the node usable; prints one line and exits non-zero when that cannot be done.
set -euo pipefail

fail() { echo "install_slurm.sh: $*" >&2; exit 1; }

node_ready() {
    # idle, mixed or allocated: the node takes jobs (a re-run may find jobs running)
    sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

if command -v sinfo >/dev/null 2>&1 && node_ready; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    fail "SLURM is not running and setting it up needs root (apt-get, daemons)"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "SLURM is not running and this system has no apt-get"
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
        || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if ! { apt-get install -y -qq slurmctld slurmd slurm-client munge \
            || { apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge; }; } \
            >"$log" 2>&1; then
        fail "apt-get install slurmctld slurmd slurm-client munge failed: $(tail -n 1 "$log")"
    fi
fi

# munge: a key readable by munge only, then the daemon (it refuses a key with loose permissions)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force >"$log" 2>&1 || fail "munged did not start: $(tail -n 1 "$log")"
    for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munged started but munge/unmunge fails"
fi

# slurm.conf: this host as controller and only node, with the CPUs and memory slurmd detects
host=$(hostname -s)
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
node_line=$(slurmd -C | grep '^NodeName=' | sed -E 's/ UpTime=.*//')
[ -n "$node_line" ] || fail "slurmd -C did not describe this node"
# MemSpecLimit-free, but keep a little memory back so the node is not drained for a small
# difference between what slurmd -C sees now and at registration
mem=$(echo "$node_line" | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')
node_line=$(echo "$node_line" | sed -E "s/RealMemory=[0-9]+/RealMemory=$(( mem * 9 / 10 ))/")
conf=$(cat <<EOF
# written by lore's scripts/install_slurm.sh: a single-node cluster for tests
ClusterName=lore
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MinJobAge=30
JobRequeue=1
KillWait=5
InactiveLimit=0
OverTimeLimit=0
SchedulerParameters=defer_batch=0
SchedulerType=sched/backfill
MpiDefault=none
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
if [ ! -f "$conf_dir/slurm.conf" ] || [ "$(cat "$conf_dir/slurm.conf")" != "$conf" ]; then
    printf '%s\n' "$conf" >"$conf_dir/slurm.conf"
    changed=1
else
    changed=0
fi

if ! pgrep -x slurmctld >/dev/null; then
    slurmctld -c >"$log" 2>&1 || fail "slurmctld did not start: $(tail -n 1 /var/log/slurm/slurmctld.log 2>/dev/null)"
elif [ "$changed" = 1 ]; then
    scontrol reconfigure >/dev/null 2>&1 || true
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd >"$log" 2>&1 || fail "slurmd did not start: $(tail -n 1 /var/log/slurm/slurmd.log 2>/dev/null)"
fi

for _ in $(seq 1 60); do
    node_ready && exit 0
    # a node left down/drained by an earlier run comes back once the daemons answer
    if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(down|drain)'; then
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 1
done
fail "the node did not become idle in 60 s: $(sinfo -h -N -o '%T %E' 2>/dev/null | head -n 1)"
