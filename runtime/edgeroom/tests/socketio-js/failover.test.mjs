// socket.io-client@4 behind a round-robin balancer, when the node that owns its
// session goes away: runtime/edgeroom/tests/it/dataplane.rs starts three nodes (EDGEROOM_URLS,
// EDGEROOM_NAMES in the same order), and stops the node this test names on its
// standard output (`OWNER <node>`), then creates the file `gone` in FAILOVER_DIR.
// The client reconnects through the balancer to a surviving node and recovers its
// session there: same id, `recovered`, every event it missed once and in order.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { io } from "socket.io-client";
import { WAIT, within, once, connected, balancer, until } from "./helpers.mjs";

const NODES = (process.env.EDGEROOM_URLS ?? "").split(",").filter(Boolean);
const NAMES = (process.env.EDGEROOM_NAMES ?? "").split(",").filter(Boolean);
const DIR = process.env.FAILOVER_DIR;
assert.equal(NODES.length, 3, "EDGEROOM_URLS must name three nodes");
assert.equal(NAMES.length, 3, "EDGEROOM_NAMES must name them");
assert.ok(DIR, "FAILOVER_DIR must be set");
const PATH = "/apps/echo/socket.io/";

const lb = await balancer(NODES);
after(() => lb.server.close());


test("the session's node goes away: the client recovers on another node with nothing lost", async () => {
  const room = `failover-${process.pid}`;
  const a = io(lb.url, {
    path: PATH,
    forceNew: true,
    transports: ["websocket"],
    auth: { room },
    reconnectionDelay: 200,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  await connected(a);
  // The Engine.IO session id names its owner.
  const owner = a.io.engine.id.split(".").at(-1);
  const survivor = NODES[(NAMES.indexOf(owner) + 1) % 3];
  assert.ok(NAMES.includes(owner), `session id ${a.io.engine.id} names no node`);
  const b = io(survivor, { path: PATH, forceNew: true, reconnection: false, transports: ["websocket"], auth: { room } });
  try {
    await connected(b);
    const got = [];
    a.on("broadcast", (...args) => got.push(args[0]));
    const id = a.id;
    for (let i = 0; i < 10; i++) await b.timeout(WAIT).emitWithAck("broadcast", i);
    await until(() => got.length === 10, "10 broadcasts");

    const gone = once(a, "disconnect");
    console.log(`OWNER ${owner}`);
    await within(gone, "the owner going away", 30_000);
    await until(() => fs.existsSync(path.join(DIR, "gone")), "the node stopped", 30_000);
    for (let i = 10; i < 30; i++) await b.timeout(WAIT).emitWithAck("broadcast", i);
    if (!a.connected) await once(a, "connect");
    assert.equal(a.recovered, true, "socket.recovered");
    assert.equal(a.id, id, "same socket id");
    assert.notEqual(a.io.engine.id.split(".").at(-1), owner, "a new session on a surviving node");
    await b.timeout(WAIT).emitWithAck("broadcast", 30);
    await until(() => got.length === 31, "31 broadcasts");
    await a.timeout(WAIT).emitWithAck("echo", "sync");
    assert.deepEqual(got, [...Array(31).keys()]);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});
