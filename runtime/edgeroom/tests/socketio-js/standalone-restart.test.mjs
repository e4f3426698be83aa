// socket.io-client@4 against a standalone `edgeroom serve` that is killed with SIGKILL
// and started again from its data directory. Run by runtime/edgeroom/tests/it/cli.rs,
// which passes:
//   EDGEROOM_BIN     the edgeroom binary
//   EDGEROOM_CONFIG  the node's config (admin key EDGEROOM_KEY)
//   EDGEROOM_URL     its client URL
//   EDGEROOM_ECHO    the echo component, deployed here as app `echo`
//
// A member whose connection dropped, while acknowledged events went on, recovers after
// the restart with `recovered === true` and gets every one of them, once and in order:
// the node's room journal kept the events and the session.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import { io } from "socket.io-client";
import { connected, until, within } from "./helpers.mjs";

const { EDGEROOM_BIN: BIN, EDGEROOM_CONFIG: CONFIG, EDGEROOM_URL: URL, EDGEROOM_KEY: KEY } = process.env;
const PATH = "/apps/echo/socket.io/";
let node = null;
const sockets = [];

function start() {
  node = spawn(BIN, ["serve", "--config", CONFIG], { stdio: ["ignore", "ignore", "inherit"] });
}

async function killNode() {
  const exited = new Promise((r) => node.once("exit", r));
  node.kill("SIGKILL");
  await exited;
}

async function healthy() {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${URL}/healthz`)).ok) return;
    } catch {}
    if (Date.now() > deadline) throw new Error("the node did not come up");
    await new Promise((r) => setTimeout(r, 50));
  }
}

after(async () => {
  for (const s of sockets) s.disconnect();
  if (node && node.exitCode === null) await killNode();
});

function member(room, opts = {}) {
  const s = io(URL, { path: PATH, forceNew: true, transports: ["websocket"], auth: { room }, ...opts });
  sockets.push(s);
  s.got = [];
  s.on("broadcast", (m) => s.got.push(m.i));
  return s;
}

test("a member recovers after kill -9 of its standalone node with every acknowledged event", async () => {
  start();
  await healthy();
  const put = await fetch(`${URL}/v1/apps/echo/handler`, {
    method: "PUT",
    headers: { authorization: `Bearer ${KEY}` },
    body: fs.readFileSync(process.env.EDGEROOM_ECHO),
  });
  assert.equal(put.status, 200);

  const room = `journal-${process.pid}`;
  const p = member(room);
  // The member reconnects by hand, after the restart.
  const m = member(room, { reconnection: false });
  await Promise.all([connected(p), connected(m)]);
  for (let i = 0; i < 5; i++) await p.timeout(5_000).emitWithAck("broadcast", { i });
  await until(() => m.got.length === 5, "the first 5");

  // The member's connection drops (its transport closes; not `disconnect()`, which
  // would end its session).
  const dropped = new Promise((r) => m.once("disconnect", r));
  m.io.engine.close();
  assert.notEqual(await within(dropped, "the drop"), "io client disconnect");
  for (let i = 5; i < 10; i++) await p.timeout(5_000).emitWithAck("broadcast", { i });

  await killNode();
  start();
  await healthy();
  m.connect();
  await connected(m);
  assert.equal(m.recovered, true, "the session came back with the node");
  await until(() => m.got.length >= 10, "the events missed");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(m.got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});
