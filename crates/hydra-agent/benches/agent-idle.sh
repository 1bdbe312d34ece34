#!/usr/bin/env bash
# Idle resident memory and CPU of `hydra agent` (worker role, enrolled, heartbeating, no session)
# over SECONDS (default 60), next to a `hydra server` on loopback. A measurement, not a test.
#
# Run: cargo build --release -p hydra && bash crates/hydra-agent/benches/agent-idle.sh [SECONDS]
set -euo pipefail
seconds=${1:-60}
bin=${HYDRA_BIN:-target/release/hydra}
dir=$(mktemp -d)
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin" server --listen 127.0.0.1:27070 --data-dir "$dir/server" --admin-token bench-admin \
  2>"$dir/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:27070/api/v1/health >/dev/null 2>&1 && break
  sleep 0.1
done

HYDRA_CONTROLLER__TOKEN=bench-admin "$bin" agent --listen 127.0.0.1:27071 \
  --server http://127.0.0.1:27070 --state-dir "$dir/agent" --node-id idle-worker \
  2>"$dir/agent.log" &
agent_pid=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:27071/api/v1/status 2>/dev/null | grep -q '"last_heartbeat":"' && break
  sleep 0.1
done

ticks() { awk '{print $14 + $15}' "/proc/$agent_pid/stat"; }
hz=$(getconf CLK_TCK)
start_ticks=$(ticks)
start_time=$(date +%s.%N)
sleep "$seconds"
end_ticks=$(ticks)
end_time=$(date +%s.%N)
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status")
hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent_pid/status")
python3 - "$start_ticks" "$end_ticks" "$start_time" "$end_time" "$hz" "$rss_kb" "$hwm_kb" <<'PY'
import sys
t0, t1, s0, s1, hz, rss, hwm = map(float, sys.argv[1:])
cpu = (t1 - t0) / hz
wall = s1 - s0
print(f"hydra agent idle over {wall:.0f} s: RSS {rss/1024:.1f} MiB (peak {hwm/1024:.1f} MiB), "
      f"CPU {cpu:.2f} s = {100*cpu/wall:.3f}% of a core")
PY
