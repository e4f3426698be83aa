#!/usr/bin/env bash
# Control-plane failover on loopback: three `edgeroom serve` processes (release) form
# a cluster; the Raft leader is killed with SIGKILL; measures the time until another
# node reports a new leader and until a deploy through a surviving node succeeds, then
# restarts the killed node and measures until it serves that deploy. Repeats ROUNDS
# times and prints one JSON line.
#
#   bench/failover.sh          ROUNDS=5 bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
rustup toolchain install >/dev/null 2>&1
cargo build --release --locked -p edgeroom
work=$(mktemp -d)
trap 'pkill -KILL -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/edgeroom cluster init --dir "$work/certs" --nodes f1,f2,f3 >/dev/null
python3 - "$work" "$ROUNDS" <<'PY'
import json, os, socket, subprocess, sys, time, urllib.request

work, rounds = sys.argv[1], int(sys.argv[2])
names = ["f1", "f2", "f3"]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

ports = [free_port() for _ in names]
voters = ", ".join(f'"{n}@127.0.0.1:{p}"' for n, p in zip(names, ports))
for n, p in zip(names, ports):
    open(f"{work}/{n}.toml", "w").write(
        f'node_id = "{n}"\nregion = "{n}"\nlisten = "127.0.0.1:{p}"\ndata_dir = "{work}/{n}"\n'
        f'admin_key = "k"\n[cluster]\npeer_listen = "127.0.0.1:{p}"\ntls_dir = "{work}/certs"\n'
        f'voters = [{voters}]\n')

def spawn(i):
    return subprocess.Popen(["target/release/edgeroom", "serve", "--config", f"{work}/{names[i]}.toml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def call(i, path, method="GET", body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ports[i]}{path}", data=body, method=method,
                                 headers={"Authorization": "Bearer k"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except Exception:
        return None, None

def leader(i):
    _, c = call(i, "/v1/cluster")
    return (c or {}).get("cluster", {}).get("leader") if c else None

procs = [spawn(i) for i in range(3)]
wasm = [open(f"target/wasm-guests/wasm32-wasip2/release/{n}.wasm", "rb").read() for n in ("echo", "chat")]
elect, deploy, rejoin = [], [], []
version = 0
for r in range(rounds):
    deadline = time.time() + 60
    while not (lead := leader(0) or leader(1) or leader(2)):
        assert time.time() < deadline, "no leader"
        time.sleep(0.05)
    li = names.index(lead)
    other = (li + 1) % 3
    procs[li].kill(); procs[li].wait()
    t0 = time.perf_counter()
    while (l := leader(other)) in (None, lead):
        time.sleep(0.01)
    t1 = time.perf_counter()
    version += 1
    while True:
        s, body = call(other, "/v1/apps/bench/handler", "PUT", wasm[version % 2])
        if s == 200:
            version = body["version"]
            break
        time.sleep(0.01)
    t2 = time.perf_counter()
    procs[li] = spawn(li)
    while (call(li, "/v1/apps/bench")[1] or {}).get("version") != version:
        time.sleep(0.02)
    t3 = time.perf_counter()
    elect.append((t1 - t0) * 1000); deploy.append((t2 - t0) * 1000); rejoin.append((t3 - t2) * 1000)
for p in procs:
    p.kill(); p.wait()
med = lambda xs: round(sorted(xs)[len(xs) // 2])
print(json.dumps({"scenario": "failover", "rounds": rounds,
                  "new_leader_ms": {"median": med(elect), "max": round(max(elect))},
                  "deploy_after_kill_ms": {"median": med(deploy), "max": round(max(deploy))},
                  "restarted_node_serves_it_ms": {"median": med(rejoin), "max": round(max(rejoin))}}))
PY
