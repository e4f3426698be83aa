#!/usr/bin/env bash
# Deploy commit latency on the local three-region cluster (`edgeroom dev`, release):
# alternately deploy two different handlers through each node in turn, so every deploy
# makes a new version that is checked, committed through Raft and live on the node
# asked before the answer; then wait until every node serves it. Prints percentiles.
#
#   bench/deploy-latency.sh            # 60 deploys
#   N=200 bench/deploy-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-60}
PORT=${PORT:-18400}
rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p edgeroom
data=$(mktemp -d)
target/release/edgeroom dev --listen "127.0.0.1:$PORT" --data-dir "$data" >"$data/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.3:$PORT/v1/apps/counter" >/dev/null && break
  sleep 0.1
done
wasm=target/wasm-guests/wasm32-wasip2/release
python3 - "$N" "$PORT" "$wasm" <<'PY'
import json, sys, time, urllib.request

n, port, wasm = int(sys.argv[1]), sys.argv[2], sys.argv[3]
blobs = [open(f"{wasm}/{name}.wasm", "rb").read() for name in ("echo", "chat")]
nodes = [f"http://127.0.0.{i}:{port}" for i in (1, 2, 3)]

def get(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)

commit, everywhere = [], []
for i in range(n):
    node = nodes[i % 3]
    req = urllib.request.Request(f"{node}/v1/apps/bench/handler", data=blobs[i % 2], method="PUT")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        body = json.load(r)
    t1 = time.perf_counter()
    assert not body["unchanged"], body
    while not all(get(f"{u}/v1/apps/bench")["version"] == body["version"] for u in nodes):
        time.sleep(0.0005)
    t2 = time.perf_counter()
    if i >= 2:  # the first two compile the handlers; later ones hit the compile cache
        commit.append((t1 - t0) * 1000)
        everywhere.append((t2 - t0) * 1000)

def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2)

print(json.dumps({
    "scenario": "deploy", "deploys": len(commit), "handler_bytes": [len(b) for b in blobs],
    "commit_ms": {"p50": pct(commit, 50), "p99": pct(commit, 99), "max": round(max(commit), 2)},
    "live_everywhere_ms": {"p50": pct(everywhere, 50), "p99": pct(everywhere, 99),
                           "max": round(max(everywhere), 2)},
}))
PY
