// Benchmark (bench/restart-failover.sh): nodes of a three-region cluster of
// `edgeroom serve` processes restart under traffic, as an operator would see it.
//
// MEMBERS unmodified socket.io-client members in one room, spread over the three
// regions, each behind its region's front door (a proxy that sends new connections to
// its region's node while that node's /healthz answers, else to the next region's);
// three publishers, one per region, broadcast numbered events with acks at RATE/s
// each; recovery on. Two scenarios, each printed as one JSON line:
//   kill9_restart   kill -9 of one node, restarted DOWN_MS later from its data dir;
//   rolling_sigterm every node in turn stopped with SIGTERM and started again.
// Figures: acknowledged events lost / duplicated / reordered over members whose every
// reconnect recovered, members never back, recovered vs fresh sessions, time from a
// disconnect to being back (p50/p99/max), and the time from a restart until traffic
// flows both ways between a client of the restarted node and one of another node.
import http from "node:http";
import net from "node:net";
import { io } from "socket.io-client";
import { Cluster } from "./procs.mjs";

const MEMBERS = Number(process.env.MEMBERS ?? 150);
const RATE = Number(process.env.RATE ?? 20);
const DOWN_MS = Number(process.env.DOWN_MS ?? 5000);
const PATH = "/apps/echo/socket.io/";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const cluster = new Cluster();
const n = cluster.size;

/** Region `i`'s front door: its node while healthy, else the next region's. */
async function frontDoor(i) {
  const healthy = cluster.urls.map(() => true);
  const check = async () => {
    for (let k = 0; k < n; k++) {
      const r = await cluster.get(k, "/healthz");
      healthy[k] = r.status === 200;
    }
  };
  const timer = setInterval(check, 200);
  const pick = () => {
    for (let k = 0; k < n; k++) {
      const j = (i + k) % n;
      if (healthy[j]) return new URL(cluster.urls[j]);
    }
    return new URL(cluster.urls[i]);
  };
  const server = http.createServer((req, res) => {
    res.writeHead(400);
    res.end();
  });
  server.on("upgrade", (req, socket, head) => {
    const t = pick();
    const up = net.connect(Number(t.port), t.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let k = 0; k < req.rawHeaders.length; k += 2) raw += `${req.rawHeaders[k]}: ${req.rawHeaders[k + 1]}\r\n`;
      up.write(raw + "\r\n");
      up.write(head);
      socket.pipe(up).pipe(socket);
    });
    up.on("error", () => socket.destroy());
    up.on("close", () => socket.destroy());
    socket.on("error", () => up.destroy());
    socket.on("close", () => up.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => (clearInterval(timer), server.close()) };
}

function client(url, room, opts = {}) {
  return io(url, {
    path: PATH,
    forceNew: true,
    transports: ["websocket"],
    auth: { room },
    reconnectionDelay: 300,
    reconnectionDelayMax: 1000,
    ...opts,
  });
}

const q = (v, p) => {
  if (!v.length) return null;
  const s = [...v].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor(s.length * p))]);
};

async function scenario(name, doors, act) {
  const room = `${name}-${process.pid}`;
  const members = [];
  for (let k = 0; k < MEMBERS; k++) {
    const s = client(doors[k % n].url, room);
    const m = { s, got: [], sessions: [], downAt: null, back: [], gaps: 0, fresh: 0, recovered: 0 };
    s.on("broadcast", (x) => m.got.push(x));
    s.on("edgeroom:error", (e) => e?.code === "history_gap" && m.gaps++);
    s.on("disconnect", () => (m.downAt = Date.now()));
    s.on("connect", () => {
      if (m.downAt !== null) {
        m.back.push(Date.now() - m.downAt);
        if (s.recovered) m.recovered++;
        else m.fresh++;
        m.downAt = null;
      }
    });
    members.push(m);
  }
  await Promise.all(members.map((m) => new Promise((r) => (m.s.connected ? r() : m.s.once("connect", r)))));
  // Publishers, one per region, each through its front door.
  const pubs = [];
  for (let i = 0; i < n; i++) {
    const s = client(doors[i].url, room);
    await new Promise((r) => s.once("connect", r));
    pubs.push({ s, from: `p${i}`, next: 0, acked: [] });
  }
  await sleep(1000);
  let publishing = true;
  const loops = pubs.map(async (p) => {
    while (publishing) {
      const i = p.next++;
      p.s
        .timeout(5000)
        .emitWithAck("broadcast", { from: p.from, i })
        .then(() => p.acked.push(i))
        .catch(() => {});
      await sleep(1000 / RATE);
    }
  });
  const extra = await act(room);
  await sleep(2000);
  publishing = false;
  await Promise.all(loops);
  await sleep(3000);

  let lost = 0;
  let dup = 0;
  let reordered = 0;
  let counted = 0;
  let neverBack = 0;
  for (const m of members) {
    if (!m.s.connected) neverBack++;
    if (m.fresh > 0 || !m.s.connected) continue;
    counted++;
    for (const p of pubs) {
      const got = m.got.filter((x) => x.from === p.from).map((x) => x.i);
      const seen = new Set(got);
      dup += got.length - seen.size;
      for (let k = 1; k < got.length; k++) if (got[k] <= got[k - 1]) reordered++;
      for (const i of p.acked) if (!seen.has(i)) lost++;
    }
  }
  const back = members.flatMap((m) => m.back);
  const out = {
    bench: "restart_failover",
    scenario: name,
    members: MEMBERS,
    publishers: pubs.length,
    rate_per_publisher: RATE,
    acked: pubs.reduce((a, p) => a + p.acked.length, 0),
    members_counted: counted,
    lost,
    duplicated: dup,
    reordered,
    gap_notices: members.reduce((a, m) => a + m.gaps, 0),
    never_back: neverBack,
    reconnects_recovered: members.reduce((a, m) => a + m.recovered, 0),
    reconnects_fresh: members.reduce((a, m) => a + m.fresh, 0),
    back_ms: { p50: q(back, 0.5), p99: q(back, 0.99), max: q(back, 1) },
    ...extra,
  };
  console.log(JSON.stringify(out));
  for (const m of members) m.s.disconnect();
  for (const p of pubs) p.s.disconnect();
}

/**
 * From the moment node `i` was started again: how long until a client connected to it
 * and a client of node `j` each receive what the other broadcasts, and from then on
 * receive all of it.
 */
async function bothWays(room, i, j, started) {
  const probeRoom = `${room}-probe`;
  await cluster.healthy(i, 60_000);
  const healthyAt = Date.now();
  const a = client(cluster.urls[i], probeRoom, { reconnection: false });
  const b = client(cluster.urls[j], probeRoom, { reconnection: false });
  await Promise.all([a, b].map((s) => new Promise((r) => s.once("connect", r))));
  const joinedAt = Date.now();
  const firstAt = { a: null, b: null };
  const got = { a: [], b: [] };
  a.on("broadcast", (x) => (got.a.push(x.i), firstAt.a ??= Date.now()));
  b.on("broadcast", (x) => (got.b.push(x.i), firstAt.b ??= Date.now()));
  let k = 0;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && (firstAt.a === null || firstAt.b === null || Date.now() - Math.max(firstAt.a, firstAt.b) < 2000)) {
    a.emit("broadcast", { i: k });
    b.emit("broadcast", { i: k });
    k++;
    await sleep(20);
  }
  await sleep(1000);
  const both = firstAt.a && firstAt.b ? Math.max(firstAt.a, firstAt.b) : null;
  // Once flowing, nothing is missing after the first one each side got.
  const holes = (v) => (v.length ? v[v.length - 1] - v[0] + 1 - new Set(v).size : null);
  a.disconnect();
  b.disconnect();
  return {
    restart_to_healthy_ms: healthyAt - started,
    restart_to_both_ways_ms: both ? both - started : null,
    joined_to_both_ways_ms: both ? both - joinedAt : null,
    probe_holes_after_first: { to_restarted: holes(got.a), from_restarted: holes(got.b) },
  };
}

await cluster.up();
const doors = [];
for (let i = 0; i < n; i++) doors.push(await frontDoor(i));
try {
  await scenario("kill9_restart", doors, async (room) => {
    await sleep(2000);
    await cluster.stop(2, "SIGKILL");
    await sleep(DOWN_MS);
    const started = Date.now();
    cluster.start(2);
    return bothWays(room, 2, 0, started);
  });
  await scenario("rolling_sigterm", doors, async (room) => {
    const flows = [];
    for (let i = 0; i < n; i++) {
      await sleep(2000);
      await cluster.stop(i, "SIGTERM");
      const started = Date.now();
      cluster.start(i);
      flows.push(await bothWays(room, i, (i + 1) % n, started));
    }
    const pick = (f) => flows.map(f).filter((x) => x !== null);
    return {
      restart_to_both_ways_ms: pick((f) => f.restart_to_both_ways_ms),
      joined_to_both_ways_ms: pick((f) => f.joined_to_both_ways_ms),
      probe_holes_after_first: flows.map((f) => f.probe_holes_after_first),
    };
  });
} finally {
  for (const d of doors) d.close();
  await cluster.stopAll();
}
process.exit(0);
