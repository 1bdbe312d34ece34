#!/usr/bin/env bash
# The agent riding out the loss of its control plane, measured: its resident memory while the
# health checker, the bundle poller and the write journal run (degraded, journaling every beat),
# beside Debian's `serf agent` measured in the same run; then the journal's replay rate once the
# server is back. A measurement, not a test. Needs `serf` (apt-get install serf, as root).
#
# Run: cargo build --release -p hydra -p hydra-agent && bash crates/hydra-agent/benches/ride-out.sh [SECONDS]
# (HYDRA_BIN=target/debug/hydra measures a debug build. HYDRA_AGENT_BIN=target/release/hydra-agent
# measures the lean agent binary; the server is always HYDRA_BIN's. HYDRA_BIN_BEFORE=/path/to/an/older/hydra
# (or hydra-agent) runs that binary's agent beside it, same server, same time, so a change is
# measured in one run.)
set -euo pipefail
seconds=${1:-30}
bin=${HYDRA_BIN:-target/release/hydra}
agent_bin=${HYDRA_AGENT_BIN:-$bin}
bin_before=${HYDRA_BIN_BEFORE:-}
dir=$(mktemp -d)
server_pid=""
agent_pid=""
before_pid=""
serf_pid=""
cleanup() {
  for pid in "$serf_pid" "$agent_pid" "$before_pid" "$server_pid"; do
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
# Where it goes: anonymous memory (heap, stacks, buffers) and pages of the binary and libraries.
split() { awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {printf "anon %.1f, file %.1f", a / 1024, f / 1024}' "/proc/$1/status"; }

start_agent() { # BIN NAME PORT: starts it in the background (the caller reads $!)
  local command=("$1")
  case "$(basename "$1")" in
    hydra-agent*) ;;           # the lean binary is the agent
    *) command+=(agent) ;;     # `hydra agent`
  esac
  HYDRA_CONTROLLER__TOKEN=bench-admin HYDRA_HEARTBEAT__INTERVAL=1 HYDRA_HEALTH__INTERVAL=1 \
    HYDRA_BUNDLE__POLL_INTERVAL=1 RUST_LOG=info "${command[@]}" --listen "127.0.0.1:$3" \
    --server http://127.0.0.1:27070 --state-dir "$dir/$2" --node-id "ride-out-$2" \
    2>"$dir/$2.log" &
}
wait_heartbeat() { # PORT
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$1/api/v1/status" 2>/dev/null | grep -q '"last_heartbeat":"' && return 0
    sleep 0.1
  done
}

start_server
start_agent "$agent_bin" agent 27071
agent_pid=$!
if [ -n "$bin_before" ]; then
  start_agent "$bin_before" before 27072
  before_pid=$!
  wait_heartbeat 27072
fi
wait_heartbeat 27071

kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
wait_log "$dir/agent.log" "[health] no master reachable" 10
sleep "$seconds"
agent_rss=$(rss "$agent_pid")
agent_hwm=$(hwm "$agent_pid")
agent_split=$(split "$agent_pid")
journal=$(wc -l < "$dir/agent/journal.jsonl")
if [ -n "$before_pid" ]; then
  before_rss=$(rss "$before_pid")
  before_hwm=$(hwm "$before_pid")
  before_split=$(split "$before_pid")
fi

serf agent -node=ride-out-bench -bind=127.0.0.1:27946 -rpc-addr=127.0.0.1:27373 \
  >"$dir/serf.log" 2>&1 &
serf_pid=$!
sleep "$seconds"
serf_rss=$(rss "$serf_pid")
serf_hwm=$(hwm "$serf_pid")
serf_split=$(split "$serf_pid")

start_server
wait_log "$dir/agent.log" "[journal] replayed journaled writes" 30
line=$(grep -F "[journal] replayed journaled writes" "$dir/agent.log" | head -1)
sent=$(sed -E 's/.*sent=([0-9]+).*/\1/' <<<"$line")
elapsed=$(sed -E 's/.*elapsed_ms=([0-9]+).*/\1/' <<<"$line")
echo "$(basename "$agent_bin") agent degraded for ${seconds} s (health checker, bundle poller, journal of ${journal} writes): RSS ${agent_rss} MiB (${agent_split}; peak ${agent_hwm} MiB)"
if [ -n "$before_pid" ]; then
  echo "hydra agent of $bin_before beside it, same ${seconds} s: RSS ${before_rss} MiB (${before_split}; peak ${before_hwm} MiB)"
fi
echo "serf agent ($(serf version | head -1)) after ${seconds} s: RSS ${serf_rss} MiB (${serf_split}; peak ${serf_hwm} MiB)"
python3 -c "import sys; s, e = int(sys.argv[1]), int(sys.argv[2]); print(f'journal replay: {s} writes in {e} ms = {1000 * s / max(e, 1):.0f} writes/s')" "$sent" "$elapsed"
