// Unmodified socket.io-client@4 against three Edgeroom nodes behind a plain round-robin
// load balancer with no stickiness (runtime/edgeroom/tests/it/dataplane.rs starts the nodes and
// passes their URLs in EDGEROOM_URLS). Every HTTP request and every WebSocket upgrade
// goes to the next node in turn, so an Engine.IO session's polls, posts and upgrade
// land on nodes that do not own it: they must be forwarded to the owner.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { WAIT, within, once, connected, balancer, until } from "./helpers.mjs";
import { io } from "socket.io-client";

const NODES = (process.env.EDGEROOM_URLS ?? "").split(",").filter(Boolean);
assert.equal(NODES.length, 3, "EDGEROOM_URLS must name three nodes");
const PATH = "/apps/echo/socket.io/";

const lb = await balancer(NODES);
after(() => lb.server.close());

let unique = 0;
const fresh = (prefix) => `${prefix}-${process.pid}-${++unique}`;



/** The first argument of each `broadcast` event (the offset the server appends is dropped). */
// The broadcasts `socket` receives, but for the markers `meet` sends.
function broadcasts(socket) {
  const got = [];
  socket.on("broadcast", (...args) => {
    if (args[0] !== MARKER) got.push(args[0]);
  });
  return got;
}

const MARKER = "meet";

// A member that just joined on one node and a sender on another are concurrent until
// the room's replicas have met (the sender's node learns the other has a member): `b`
// repeats a marker until `a` has one, so what `b` sends next reaches `a`.
async function meet(a, b) {
  let met = false;
  a.on("broadcast", (v) => {
    if (v === MARKER) met = true;
  });
  while (!met) {
    await b.timeout(WAIT).emitWithAck("broadcast", MARKER);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("polling through the balancer: connect, emit with ack, receive, from every node", async () => {
  const room = fresh("rr-poll");
  const a = io(lb.url, { path: PATH, forceNew: true, reconnection: false, transports: ["polling"], auth: { room } });
  // The other member sits on one node directly.
  const b = io(NODES[2], { path: PATH, forceNew: true, reconnection: false, transports: ["websocket"], auth: { room } });
  try {
    const before = [...lb.hits];
    await Promise.all([connected(a), connected(b)]);
    const got = broadcasts(a);
    for (let i = 0; i < 30; i++) {
      assert.deepEqual(await a.timeout(WAIT).emitWithAck("echo", { i, text: "héllo" }), { i, text: "héllo" });
    }
    for (let i = 0; i < 30; i++) await b.timeout(WAIT).emitWithAck("broadcast", i);
    await until(() => got.length === 30, "30 broadcasts");
    assert.deepEqual(got, [...Array(30).keys()]);
    // Its requests went to every node, not just the one that owns the session.
    assert.ok(lb.hits.every((h, i) => h - before[i] >= 5), `hits per node: ${lb.hits}`);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test("the websocket upgrade lands on another node and the session goes on over it", async () => {
  const room = fresh("rr-upgrade");
  const a = io(lb.url, { path: PATH, forceNew: true, reconnection: false, auth: { room } });
  try {
    await connected(a);
    await until(() => a.io.engine.transport.name === "websocket", "the upgrade");
    const acks = [];
    for (let i = 0; i < 200; i++) acks.push(a.timeout(WAIT).emitWithAck("echo", i));
    assert.deepEqual(await within(Promise.all(acks), "200 acks"), [...Array(200).keys()]);
    assert.equal(a.io.engine.transport.name, "websocket");
  } finally {
    a.disconnect();
  }
});

test("connection state recovery through the balancer, on whichever node it lands", async () => {
  const room = fresh("rr-recover");
  const a = io(lb.url, {
    path: PATH,
    forceNew: true,
    transports: ["polling"],
    auth: { room },
    reconnectionDelay: 300,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
  });
  const b = io(NODES[0], { path: PATH, forceNew: true, reconnection: false, transports: ["websocket"], auth: { room } });
  try {
    await Promise.all([connected(a), connected(b)]);
    const got = broadcasts(a);
    await meet(a, b);
    await b.timeout(WAIT).emitWithAck("broadcast", 0);
    await until(() => got.length === 1, "the first broadcast");
    const id = a.id;
    for (let round = 1; round <= 3; round++) {
      const gone = once(a, "disconnect");
      a.io.engine.close(); // the transport drops; the client did not leave
      await gone;
      for (let i = round * 10 - 9; i <= round * 10; i++) await b.timeout(WAIT).emitWithAck("broadcast", i);
      await once(a, "connect");
      assert.equal(a.recovered, true, `socket.recovered after drop ${round}`);
      assert.equal(a.id, id, "same socket id");
    }
    await b.timeout(WAIT).emitWithAck("broadcast", 31); // live again
    await until(() => got.length === 32, "32 broadcasts");
    await a.timeout(WAIT).emitWithAck("echo", "sync");
    assert.deepEqual(got, [...Array(32).keys()]);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

// socket.disconnect() leaves for good, as in socket.io: connect() again is a new session
// (new id, not recovered) on whichever node it lands.
for (const transport of ["polling", "websocket"]) {
  test(`${transport}: an explicit disconnect ends the session; connect() again is a new one`, async () => {
    const room = fresh(`rr-leave-${transport}`);
    const a = io(lb.url, { path: PATH, forceNew: true, reconnection: false, transports: [transport], auth: { room } });
    const b = io(NODES[1], { path: PATH, forceNew: true, reconnection: false, transports: ["websocket"], auth: { room } });
    try {
      await Promise.all([connected(a), connected(b)]);
      const got = broadcasts(a);
      await meet(a, b);
      await b.timeout(WAIT).emitWithAck("broadcast", 0);
      await until(() => got.length === 1, "the first broadcast");
      const id = a.id;
      for (let round = 1; round <= 3; round++) {
        a.disconnect();
        for (let i = 1; i <= 5; i++) await b.timeout(WAIT).emitWithAck("broadcast", round * 100 + i);
        a.connect();
        await connected(a);
        assert.equal(a.recovered, false, `socket.recovered after explicit disconnect ${round}`);
        assert.notEqual(a.id, id, `a new socket id after explicit disconnect ${round}`);
        // The new member is live once a broadcast reaches it. Its join on one node and
        // b's broadcast on another are concurrent until the room's replicas have met,
        // so b repeats a marker until one arrives.
        const live = `live-${round}`;
        const markers = (async () => {
          while (!got.includes(live)) {
            await b.timeout(WAIT).emitWithAck("broadcast", live);
            await new Promise((r) => setTimeout(r, 100));
          }
        })();
        await until(() => got.includes(live), `a broadcast after reconnecting ${round}`);
        await markers;
      }
      // Nothing sent while it was away arrives: a node whose last member of the room had
      // left stops following the room, and what it catches up on when the new member
      // joins goes to its log, not to the newcomer.
      const leaked = got.filter((v) => typeof v === "number" && v > 100);
      assert.deepEqual(leaked, [], "broadcasts sent while it was away reached the new session");
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
}
