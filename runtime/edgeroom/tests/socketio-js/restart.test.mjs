// socket.io-client@4 members of a cluster of `edgeroom serve` processes whose nodes
// restart: stopped with SIGTERM and started again from their data directory, or killed
// with SIGKILL and started again a few seconds later. Run by runtime/edgeroom/tests/it/cli.rs,
// which writes the cluster's certificates and configs (see procs.mjs).
//
// - A member of a node that restarts, recovering there after a newcomer made the
//   room's replica there start afresh, gets every acknowledged event it missed, once
//   and in order, with `recovered === true` and no gap notice.
// - After kill -9 and a restart past the failure timeout, traffic flows both ways
//   with the restarted node at once (no waiting for a dead connection to time out).
// - Members on the surviving nodes are never told of a gap that is not there.
// - A node with no members in a room shows its members on every node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { Cluster } from "./procs.mjs";
import { within, connected, until as untilHolds } from "./helpers.mjs";

const cluster = new Cluster();
const PATH = "/apps/echo/socket.io/";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MEMBERS = 100;

before(async () => {
  await cluster.up();
});
const sockets = [];
after(async () => {
  for (const s of sockets) s.disconnect();
  await cluster.stopAll();
});

/** A socket.io-client member of `room` on node `i`, recording what it is sent. */
function member(i, room, opts = {}) {
  const s = io(cluster.urls[i], {
    path: PATH,
    forceNew: true,
    transports: ["websocket"],
    reconnection: false,
    auth: { room },
    ...opts,
  });
  sockets.push(s);
  s.got = [];
  s.errors = [];
  s.on("broadcast", (m) => s.got.push(m));
  s.on("edgeroom:error", (e) => s.errors.push(e));
  return s;
}

/** Restarts take a while: a longer default than the shared helper's. */
const until = (check, what, ms = 20_000) => untilHolds(check, what, ms);

/** Broadcast `{from, i}` with an ack; resolves once acknowledged. */
function send(s, from, i) {
  return s.timeout(10_000).emitWithAck("broadcast", { from, i });
}

const numbers = (s, from) => s.got.filter((m) => m.from === from).map((m) => m.i);
const range = (a, b) => Array.from({ length: b - a }, (_, k) => a + k);

test("members recovering on their restarted node after a newcomer get everything they missed", async () => {
  const room = `restart-${process.pid}`;
  const p = member(0, room);
  await connected(p);
  // Many members on the node that restarts: their adoptions keep the other replicas
  // busy answering, which is when an adoption that stopped waiting early lost events.
  const ms = Array.from({ length: MEMBERS }, () => member(2, room));
  await Promise.all(ms.map(connected));
  await cluster.until(async () => (await cluster.room(0, room))?.members?.length === MEMBERS + 1, "all listed");
  for (let i = 0; i < 10; i++) await send(p, "p", i);
  await until(() => ms.every((m) => m.got.length === 10), "the first 10");
  const ids = ms.map((m) => m.id);

  // Their node drains and stops; the room goes on without it.
  const gone = Promise.all(ms.map((m) => new Promise((r) => (m.connected ? m.once("disconnect", r) : r()))));
  await cluster.stop(2, "SIGTERM");
  await within(gone, "the members' disconnects");
  for (let i = 10; i < 30; i++) await send(p, "p", i);

  // Back from its data directory; a newcomer joins there first.
  cluster.start(2);
  await cluster.healthy(2);
  const n = member(2, room);
  await connected(n);
  // The members come back to the same node with their pid and offset, all at once,
  // while the publisher's node is busy with a burst: the history they missed comes
  // from a replica that takes a while to answer.
  const burst = range(30, 330).map((i) => send(p, "p", i));
  for (const m of ms) m.connect();
  await Promise.all(ms.map(connected));
  await Promise.all(burst);
  for (let i = 330; i < 335; i++) await send(p, "p", i);
  await until(() => ms.every((m) => m.got.length >= 335), "all 335", 20_000).catch(() => {});
  for (const [k, m] of ms.entries()) {
    assert.equal(m.recovered, true, `member ${k}: socket.recovered`);
    assert.equal(m.id, ids[k], `member ${k}: same socket id`);
    assert.deepEqual(numbers(m, "p"), range(0, 335), `member ${k}: every event once, in order`);
    assert.deepEqual(m.errors, [], `member ${k}: no gap notice`);
  }
  assert.deepEqual(p.errors, [], "no gap notice where nothing was lost");

  // Node 1 has no member of the room: it shows the members on the other nodes.
  const view = await cluster.room(1, room);
  const on = (node) => (view?.members ?? []).filter((x) => x.node === node).length;
  assert.equal(on(cluster.names[0]), 1, JSON.stringify(view));
  assert.equal(on(cluster.names[2]), MEMBERS + 1, JSON.stringify(view));
  for (const s of [p, n, ...ms]) s.disconnect();
});

test("after kill -9 and a restart past the failure timeout, traffic flows both ways at once", async () => {
  const room = `kill-${process.pid}`;
  const x = member(0, room);
  const y = member(1, room);
  const old = member(2, room);
  for (const s of [x, y, old]) await connected(s);
  await cluster.until(async () => (await cluster.room(0, room))?.members?.length === 3, "three listed");
  for (let i = 0; i < 5; i++) await send(x, "x", i);
  await until(() => old.got.length === 5 && y.got.length === 5, "the first 5");

  await cluster.stop(2, "SIGKILL");
  await sleep(4_000);
  cluster.start(2);
  await cluster.healthy(2);
  const restarted = Date.now();
  await cluster.until(() => cluster.allAlive(0), "node 0 sees node 2 alive");
  await cluster.until(() => cluster.allAlive(2), "node 2 sees everyone alive");

  const z = member(2, room);
  await connected(z);
  const joined = Date.now();
  // From now on every broadcast either way must arrive within a second.
  let sentX = 5;
  let sentZ = 0;
  const lateAfter = 1_000;
  const deadline = Date.now() + 3_000;
  while (Date.now() < deadline) {
    await send(x, "x", sentX++);
    await send(z, "z", sentZ++);
    await sleep(50);
  }
  await until(() => numbers(z, "x").length >= 1 && numbers(x, "z").length === sentZ, "traffic both ways", lateAfter);
  const zFromX = numbers(z, "x");
  // What x sent once z had joined reaches z, once and in order; a broadcast sent in
  // the instant z's join takes to reach x's node may precede it.
  assert.ok(zFromX[0] <= 6, `z got x's events from ${zFromX[0]} on`);
  assert.deepEqual(zFromX, range(zFromX[0], sentX), "x to z: nothing lost after the first");
  assert.deepEqual(numbers(x, "z"), range(0, sentZ), "z to x: everything");
  assert.deepEqual(numbers(y, "z"), range(0, sentZ), "z to y: everything");
  for (const s of [x, y, z]) assert.deepEqual(s.errors, [], "no gap notice");
  console.log(`restart to both ways: ${joined - restarted} ms until a client could join, then every event within ${lateAfter} ms`);
  for (const s of [x, y, z, old]) s.disconnect();
});
