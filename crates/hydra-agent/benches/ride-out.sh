#!/usr/bin/env bash
# The agent riding out the loss of its control plane, measured: its resident memory while the
# health checker, the bundle poller and the write journal run (degraded, journaling every beat),
# beside Debian's `serf agent` measured in the same run; then the journal's replay rate once the
# server is back. A measurement, not a test. Needs `serf` (apt-get install serf, as root).
#
# Run: cargo build --release -p hydra && bash crates/hydra-agent/benches/ride-out.sh [SECONDS]
# (HYDRA_BIN=target/debug/hydra measures a debug build.)
set -euo pipefail
seconds=${1:-30}
bin=${HYDRA_BIN:-target/release/hydra}
dir=$(mktemp -d)
server_pid=""
agent_pid=""
serf_pid=""
cleanup() {
  for pid in "$serf_pid" "$agent_pid" "$server_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

start_server() {
  "$bin" server --listen 127.0.0.1:27070 --data-dir "$dir/server" --admin-token bench-admin \
    2>>"$dir/server.log" &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:27070/api/v1/health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server did not start" >&2
  exit 1
}
wait_log() { # FILE TEXT SECONDS
  for _ in $(seq 1 $(($3 * 10))); do
    grep -qF "$2" "$1" && return 0
    sleep 0.1
  done
  echo "no '$2' in $1 within $3 s" >&2
  exit 1
}
rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

start_server
HYDRA_CONTROLLER__TOKEN=bench-admin HYDRA_HEARTBEAT__INTERVAL=1 HYDRA_HEALTH__INTERVAL=1 \
  HYDRA_BUNDLE__POLL_INTERVAL=1 RUST_LOG=info "$bin" agent --listen 127.0.0.1:27071 \
  --server http://127.0.0.1:27070 --state-dir "$dir/agent" --node-id ride-out-worker \
  2>"$dir/agent.log" &
agent_pid=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:27071/api/v1/status 2>/dev/null | grep -q '"last_heartbeat":"' && break
  sleep 0.1
done

kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
wait_log "$dir/agent.log" "[health] no master reachable" 10
sleep "$seconds"
agent_rss=$(rss "$agent_pid")
agent_hwm=$(hwm "$agent_pid")
journal=$(wc -l < "$dir/agent/journal.jsonl")

serf agent -node=ride-out-bench -bind=127.0.0.1:27946 -rpc-addr=127.0.0.1:27373 \
  >"$dir/serf.log" 2>&1 &
serf_pid=$!
sleep "$seconds"
serf_rss=$(rss "$serf_pid")
serf_hwm=$(hwm "$serf_pid")

start_server
wait_log "$dir/agent.log" "[journal] replayed journaled writes" 30
line=$(grep -F "[journal] replayed journaled writes" "$dir/agent.log" | head -1)
sent=$(sed -E 's/.*sent=([0-9]+).*/\1/' <<<"$line")
elapsed=$(sed -E 's/.*elapsed_ms=([0-9]+).*/\1/' <<<"$line")
echo "hydra agent degraded for ${seconds} s (health checker, bundle poller, journal of ${journal} writes): RSS ${agent_rss} MiB (peak ${agent_hwm} MiB)"
echo "serf agent ($(serf version | head -1)) after ${seconds} s: RSS ${serf_rss} MiB (peak ${serf_hwm} MiB)"
python3 -c "import sys; s, e = int(sys.argv[1]), int(sys.argv[2]); print(f'journal replay: {s} writes in {e} ms = {1000 * s / max(e, 1):.0f} writes/s')" "$sent" "$elapsed"
