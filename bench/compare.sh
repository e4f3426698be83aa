#!/usr/bin/env bash
# Edgeroom against Node socket.io@4 and socketioxide, side by side in one run: the same
# loadgen scenarios over Socket.IO (WebSocket transport) against each server, every
# server implementing the `echo` contract (bench/peers/), the server pinned to core 0
# and loadgen to core 1. Prints each run's JSON line, then a table with the ratios the
# Socket.IO gateway is judged by.
#
#   bench/compare.sh                       # all scenarios, all servers
#   SERVERS="edgeroom socketioxide" SCENARIOS="echo" bench/compare.sh
#
# Tunables (env): FANOUT_SUBS=1000 FANOUT_RATE=100 SECS=10 ECHO_CONNS=50 ECHO_WINDOW=16
#                 IDLE_CONNS=10000
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-"edgeroom socket.io socketioxide"}
SCENARIOS=${SCENARIOS:-"fanout echo conns"}
SECS=${SECS:-10}
FANOUT_SUBS=${FANOUT_SUBS:-1000}
FANOUT_RATE=${FANOUT_RATE:-100}
ECHO_CONNS=${ECHO_CONNS:-50}
ECHO_WINDOW=${ECHO_WINDOW:-16}
IDLE_CONNS=${IDLE_CONNS:-10000}
PORT=${PORT:-18090}

rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p edgeroom -p loadgen
cargo build --release --locked --manifest-path bench/peers/socketioxide/Cargo.toml --target-dir target/peers
[ "bench/peers/node/node_modules/.package-lock.json" -nt bench/peers/node/package-lock.json ] ||
  npm ci --prefix bench/peers/node --silent --no-audit --no-fund
# Both sides hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
results="$work/results.jsonl"
pid=
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

start_server() {
  local name=$1
  case $name in
    edgeroom)
      rm -rf "$work/data"
      taskset -c 0 target/release/edgeroom dev --standalone --listen "127.0.0.1:$PORT" --data-dir "$work/data" \
        >"$work/$name.log" 2>&1 &
      ;;
    socket.io)
      PORT=$PORT taskset -c 0 node bench/peers/node/server.mjs >"$work/$name.log" 2>&1 &
      ;;
    socketioxide)
      PORT=$PORT taskset -c 0 target/peers/release/socketioxide-peer >"$work/$name.log" 2>&1 &
      ;;
    *) echo "unknown server $name" >&2; exit 1 ;;
  esac
  pid=$!
  # Edgeroom's dev node serves while it still deploys (compiles) the examples: wait for
  # the last one, so compilation is not measured.
  local ready="socket.io/?EIO=4&transport=polling"
  [ "$name" = edgeroom ] && ready="v1/apps/counter"
  for _ in $(seq 300); do
    if curl -sf "http://127.0.0.1:$PORT/$ready" >/dev/null; then
      sleep 1
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

loadgen() {
  taskset -c 1 target/release/loadgen "$@" --addr "127.0.0.1:$PORT" --server-pid "$pid" | tee -a "$results"
}

for server in $SERVERS; do
  for scenario in $SCENARIOS; do
    start_server "$server"
    case $scenario in
      fanout)
        loadgen fanout --protocol socketio --server "$server" --rooms 1 --subs "$FANOUT_SUBS" \
          --pubs 1 --rate "$FANOUT_RATE" --secs "$SECS"
        # Edgeroom's own protocol too, for reference (same node, same room shape).
        [ "$server" = edgeroom ] &&
          loadgen fanout --protocol native --server edgeroom-native --rooms 1 \
            --subs "$FANOUT_SUBS" --pubs 1 --rate "$FANOUT_RATE" --secs "$SECS"
        ;;
      echo)
        loadgen echo --protocol socketio --server "$server" --conns "$ECHO_CONNS" \
          --window "$ECHO_WINDOW" --secs "$SECS"
        [ "$server" = edgeroom ] &&
          loadgen echo --protocol native --server edgeroom-native --conns "$ECHO_CONNS" \
            --window "$ECHO_WINDOW" --secs "$SECS"
        ;;
      conns)
        loadgen conns --protocol socketio --server "$server" --conns "$IDLE_CONNS" --rooms 10 --secs 5
        ;;
    esac
    stop_server
  done
done

python3 - "$results" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["scenario"], r["server"]): r for r in rows}
servers = []
for r in rows:
    if r["server"] not in servers:
        servers.append(r["server"])

def get(scen, server, field):
    r = by.get((scen, server))
    return None if r is None else r.get(field)

def kernel_share(r):
    # The kernel's part is mostly socket syscalls: one write per delivery costs every
    # server the same, so it bounds how far below a peer a server's total can go.
    total, kernel = r.get("server_cpu_s"), r.get("server_kernel_cpu_s")
    return "n/a" if not total or kernel is None else f"{kernel / total:.0%}"

def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.2f}"

print("\n== summary ==")
for s in servers:
    f = by.get(("fanout", s))
    if f:
        print(f"fanout  {s:13} delivered/s {f['delivered_per_s']:>9} loss {f['loss']} dup {f['duplicates']} "
              f"ooo {f['out_of_order']} p50 {f['latency_ms']['p50']} ms p99 {f['latency_ms']['p99']} ms "
              f"cpu-s/M deliveries {f['server_cpu_s_per_million_deliveries']} (kernel {kernel_share(f)})")
for s in servers:
    e = by.get(("echo", s))
    if e:
        print(f"echo    {s:13} acks/s {e['acks_per_s']:>9} p50 {e['latency_ms']['p50']} ms "
              f"p99 {e['latency_ms']['p99']} ms cpu-s/M acks {e['server_cpu_s_per_million_acks']} (kernel {kernel_share(e)})")
for s in servers:
    c = by.get(("conns", s))
    if c:
        print(f"conns   {s:13} connected {c['connected']:>6} alive {c['alive_after_idle']:>6} "
              f"rss/conn {c['server_rss_per_conn_bytes']} B")

print("\n== ratios (edgeroom / peer) ==")
cpu = lambda s: get("fanout", s, "server_cpu_s_per_million_deliveries")
print(f"fanout CPU-s per million deliveries vs socketioxide: {ratio(cpu('edgeroom'), cpu('socketioxide'))} (target <= 0.5)")
print(f"fanout CPU-s per million deliveries vs socket.io:    {ratio(cpu('edgeroom'), cpu('socket.io'))}")
acks = lambda s: get("echo", s, "acks_per_s")
print(f"echo acks/s vs socketioxide: {ratio(acks('edgeroom'), acks('socketioxide'))} (target >= 2)")
print(f"echo acks/s vs socket.io:    {ratio(acks('edgeroom'), acks('socket.io'))}")
rss = lambda s: get("conns", s, "server_rss_per_conn_bytes")
print(f"idle memory per connection vs socket.io:    {ratio(rss('edgeroom'), rss('socket.io'))} (target <= 0.5)")
print(f"idle memory per connection vs socketioxide: {ratio(rss('edgeroom'), rss('socketioxide'))}")
PY
