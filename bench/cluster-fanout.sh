#!/usr/bin/env bash
# Rooms that span nodes, on loopback (release build): `edgeroom dev` runs three regions
# in one process (127.0.0.1-3); one room's members are spread over the three nodes in
# turn, the publisher on the first, `echo`'s `broadcast` at a fixed rate. Then the same
# load on one standalone node, for the cost of replication. The server runs on core 0,
# loadgen on core 1. Prints each run's JSON line, then a summary line:
#   - cross-node delivery latency p50/p99, delivered/s, loss/duplicates/reordering;
#   - server CPU per million deliveries, cluster and standalone;
#   - CPU per forwarded message (the cluster's extra busy CPU over standalone, idle
#     CPU subtracted, divided by the messages sent node to node) and memory per
#     forwarded message (the cluster process's RSS growth over the run less the
#     standalone node's, divided by the same: replicas keep the last two minutes of a
#     room's events, so this is what a forwarded message costs while it is history; run
#     long enough, e.g. SECS=30, for it to stand out of the allocator's noise).
#
#   bench/cluster-fanout.sh        SUBS=300 RATE=1000 SECS=10 bench/cluster-fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${SUBS:-300}
RATE=${RATE:-1000}
SECS=${SECS:-10}
PORT=${PORT:-18090}
rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p edgeroom -p loadgen
work=$(mktemp -d)
trap 'pkill -KILL -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() {
  for ip in "$@"; do
    for _ in $(seq 600); do
      curl -sf "http://$ip:$PORT/v1/apps/echo" >/dev/null && break
      sleep 0.1
    done
  done
}

run() { # name, dev args, loadgen node args
  local name=$1 dev_args=$2 nodes=$3
  # shellcheck disable=SC2086
  taskset -c 0 target/release/edgeroom dev $dev_args --listen "127.0.0.1:$PORT" \
    --data-dir "$work/$name" >"$work/$name.log" 2>&1 &
  local pid=$!
  # shellcheck disable=SC2086
  wait_ready 127.0.0.1 $( [ "$name" = cluster ] && echo 127.0.0.2 127.0.0.3 )
  sleep 3
  # What the node(s) burn with no clients (heartbeats, pings), per second.
  local t0 t1
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep 4
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  echo "{\"idle_cpu_s_per_s\": $(echo "($t1 - $t0) / $(getconf CLK_TCK) / 4" | bc -l | xargs printf '%.4f')}" >"$work/$name.idle"
  # shellcheck disable=SC2086
  taskset -c 1 target/release/loadgen fanout --addr "127.0.0.1:$PORT" $nodes --rooms 1 \
    --subs "$SUBS" --pubs 1 --rate "$RATE" --secs "$SECS" --server-pid "$pid" \
    --server "$name" | tee "$work/$name.json"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}

run cluster "" "--also 127.0.0.2:$PORT --also 127.0.0.3:$PORT"
run standalone "--standalone" ""

python3 - "$work/cluster.json" "$work/standalone.json" "$work/cluster.idle" "$work/standalone.idle" <<'PY'
import json, sys
c, s, ci, si = (json.load(open(p)) for p in sys.argv[1:5])
fwd = c["forwarded"] or 1
# Busy CPU: the run's CPU less what the process burns idle over as long.
busy = lambda r, idle: r["server_cpu_s"] - idle["idle_cpu_s_per_s"] * r["secs"]
extra_cpu = busy(c, ci) - busy(s, si) if c["server_cpu_s"] and s["server_cpu_s"] else None
grow = lambda r: r["server_rss_end"] - r["server_rss_start"] if r["server_rss_end"] and r["server_rss_start"] else None
rss = grow(c) - grow(s) if grow(c) is not None and grow(s) is not None else None
print(json.dumps({
    "summary": "cluster-fanout",
    "nodes": c["nodes"], "subs": c["subs"], "rate": c["rate"], "secs": c["secs"],
    "cross_node_latency_ms": {k: c["cross_node_latency_ms"][k] for k in ("p50", "p99", "max")},
    "delivered_per_s": c["delivered_per_s"],
    "loss": c["loss"], "duplicates": c["duplicates"], "out_of_order": c["out_of_order"],
    "forwarded": c["forwarded"],
    "cpu_s_per_million_deliveries": {"cluster": c["server_cpu_s_per_million_deliveries"],
                                     "standalone": s["server_cpu_s_per_million_deliveries"]},
    "idle_cpu_s_per_s": {"cluster": round(ci["idle_cpu_s_per_s"], 4), "standalone": round(si["idle_cpu_s_per_s"], 4)},
    "cluster_vs_standalone_busy_cpu": round(busy(c, ci) / busy(s, si), 2) if s["server_cpu_s"] else None,
    "extra_cpu_us_per_forwarded_message": round(extra_cpu * 1e6 / fwd, 1) if extra_cpu is not None else None,
    "rss_bytes_per_forwarded_message": round(rss / fwd) if rss is not None else None,
}))
PY
