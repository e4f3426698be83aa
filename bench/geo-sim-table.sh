#!/usr/bin/env bash
# Run geo-sim scenarios with the release binary and print one table of their reports.
# Used by geo-sim-quick.sh and geo-sim-full.sh: [--quick] [SCENARIO...] (default: all).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=() scale=full
if [ "${1:-}" = "--quick" ]; then mode=(--quick) scale=quick; shift; fi
seed=${SEED:-1}
out=${OUT:-target/geo-sim-bench/$scale-seed$seed}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in geo-sim/scenarios/*.toml; do names+=("$(basename "$f" .toml)"); done
fi
for name in "${names[@]}"; do
  echo "== $name" >&2
  target/release/geo-sim run "geo-sim/scenarios/$name.toml" "${mode[@]}" --seed "$seed" \
    --out "$out/$name" >&2
done
python3 - "$out" "${names[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = []
for n in names:
    try:
        r = json.load(open(f"{out}/{n}/report.json"))
    except Exception as e:
        rows.append((n, "no report", "", "", "", "", "", "", str(e)))
        continue
    c = r["counts"]
    t = r["targets"]
    missed = [x["name"] for x in t if not x["met"]]
    rows.append((n, r["verdict"], c["acknowledged"], c["delivered"], c["lost"], c["duplicated"],
                 c["out_of_order"], f'{len(t) - len(missed)}/{len(t)}',
                 "; ".join(f'{x["name"]}: {x["measured"]}' for x in t)))
head = ("scenario", "verdict", "acked", "delivered", "lost", "dup", "ooo", "targets", "figures")
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(8)]
print("  ".join(str(h).ljust(w[i]) for i, h in enumerate(head[:8])), head[8])
for r in rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(r[:8])), r[8])
print(f"reports under {out}/<scenario>/report.html")
PY
