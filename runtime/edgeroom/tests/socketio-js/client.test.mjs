// Unmodified socket.io-client@4 against a real Edgeroom node (started by
// runtime/edgeroom/tests/it/socketio.rs, which passes its URL in EDGEROOM_URL). The node's default
// app is `echo`; `chat`, `counter` and `scoped` (echo with namespaces restricted to
// /allowed-<digits>) are deployed too. Connection state recovery is on, so every
// event from a room carries its offset as an extra last argument.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WAIT, within, once, connected, until } from "./helpers.mjs";
import { io, Manager } from "socket.io-client";
import WebSocket from "ws";
import { createHmac } from "node:crypto";

const URL = process.env.EDGEROOM_URL;
assert.ok(URL, "EDGEROOM_URL must name the node under test");

let unique = 0;
const fresh = (prefix) => `${prefix}-${process.pid}-${++unique}`;

/** A client with its own Engine.IO connection; no automatic reconnection unless asked. */
function client(nsp = "/", opts = {}) {
  return io(URL + nsp, { forceNew: true, reconnection: false, ...opts });
}


/** Split an event's arguments from the recovery offset the server appends. */
function withoutOffset(args) {
  const offset = args.at(-1);
  assert.equal(typeof offset, "string", `last argument ${JSON.stringify(offset)} is not an offset`);
  return args.slice(0, -1);
}

/** Collect `event`'s first argument until `n` arrived. */
function collect(socket, event, n) {
  const got = [];
  const done = new Promise((resolve) => {
    socket.on(event, (...args) => {
      got.push(args[0]);
      if (got.length === n) resolve(got);
    });
  });
  return { got, done: () => within(done, `${n} ${event} events`) };
}

const SHAPES = [
  null,
  true,
  false,
  0,
  -1.5,
  Number.MAX_SAFE_INTEGER,
  "",
  "héllo wörld ✓ 😀 \u0000 \"quoted\" \\ \n",
  [],
  {},
  [1, "two", { three: [true, null] }],
  { nested: { deeper: { deepest: ["x", { y: 1 }] } }, "key with spaces": "é" },
];

for (const transport of ["websocket", "polling"]) {
  test(`${transport} only: connect, and acks carry every JSON shape`, async () => {
    const s = client("/", { transports: [transport] });
    try {
      await connected(s);
      assert.equal(s.io.engine.transport.name, transport);
      assert.ok(s.id);
      for (const v of SHAPES) {
        const reply = await s.timeout(WAIT).emitWithAck("echo", v);
        assert.deepEqual(reply, v);
      }
      // Several arguments come back as several arguments.
      const many = await new Promise((resolve) =>
        s.emit("echo", 1, "2", { 3: [true] }, (...args) => resolve(args)),
      );
      assert.deepEqual(many, [1, "2", { 3: [true] }]);
    } finally {
      s.disconnect();
    }
  });

  test(`${transport}: binary round trips (nested, empty, 64 KiB)`, async () => {
    const s = client("/", { transports: [transport] });
    try {
      await connected(s);
      const big = Buffer.alloc(64 * 1024, 0);
      for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
      const all = Buffer.from([...Array(256).keys()]);
      const cases = [
        [Buffer.alloc(0)],
        [all],
        [big],
        [{ file: { name: "a.bin", bytes: all }, list: [Buffer.from([1]), "x", Buffer.from([2, 3])] }],
        ["text", Buffer.from([9]), 3],
      ];
      for (const args of cases) {
        const reply = await new Promise((resolve) => s.emit("echo", ...args, (...r) => resolve(r)));
        assert.deepEqual(reply, args);
      }
      // Binary in a server-sent event, not just in an ack.
      const got = once(s, "echo");
      s.emit("echo", { blob: all });
      const args = withoutOffset(await got);
      assert.deepEqual(args, [{ blob: all }]);
    } finally {
      s.disconnect();
    }
  });
}

test("multi-argument events reach the sender and other members", async () => {
  const room = fresh("multi");
  const a = client("/", { auth: { room } });
  const b = client("/", { auth: { room } });
  try {
    await Promise.all([connected(a), connected(b)]);
    const echoed = once(a, "echo");
    a.emit("echo", 1, "2", { 3: [true] }, [null]);
    assert.deepEqual(withoutOffset(await echoed), [1, "2", { 3: [true] }, [null]]);
    const seen = once(b, "broadcast");
    await a.timeout(WAIT).emitWithAck("broadcast", "x", { y: ["z"] }, 4.25);
    assert.deepEqual(withoutOffset(await seen), ["x", { y: ["z"] }, 4.25]);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test("upgrade from polling to websocket keeps the session and its order", async () => {
  const room = fresh("upgrade");
  const b = client("/", { auth: { room }, transports: ["websocket"] });
  await connected(b);
  const a = client("/", { auth: { room } }); // default: polling, then upgrade
  const got = [];
  const transports = new Set();
  a.on("broadcast", (n) => {
    got.push(n);
    transports.add(a.io.engine.transport.name);
  });
  const drops = [];
  a.on("disconnect", (why) => drops.push(why));
  const upgraded = within(
    new Promise((resolve) => a.io.once("open", () => a.io.engine.once("upgrade", resolve))),
    "upgrade",
  );
  // A steady stream from `b` starts as soon as `a`'s Engine.IO handshake is done, so it
  // flows while `a` joins and while its transport changes (however the machine's load
  // stretches those), and stops only once `a` has had events over the WebSocket.
  let sending = true;
  let next = 0;
  a.io.once("open", async () => {
    while (sending) {
      for (let k = 0; k < 20; k++) b.emit("broadcast", next++);
      await new Promise((r) => setTimeout(r, 5));
    }
  });
  try {
    await connected(a);
    await upgraded;
    assert.equal(a.io.engine.transport.name, "websocket");
    const why = () => `(got ${got.length}, the last ${got.at(-1)} of ${next}; disconnects: ${drops.join(", ") || "none"})`;
    await until(() => transports.has("websocket"), `events over the websocket ${why()}`);
    sending = false;
    const last = next - 1;
    try {
      await until(() => got.at(-1) === last, "the end of the stream");
    } catch (e) {
      e.message += ` ${why()}`;
      throw e;
    }
    got.forEach((n, i) => i > 0 && assert.equal(n, got[i - 1] + 1, `gap or reorder at ${i}`));
    console.log(`upgrade test: ${got.length} events over ${[...transports].join(" then ")}`);
    assert.deepEqual(await a.timeout(WAIT).emitWithAck("echo", "after"), "after");
  } finally {
    sending = false;
    a.disconnect();
    b.disconnect();
  }
});

test("namespaces are rooms and one connection multiplexes them", async () => {
  const alpha = fresh("/alpha");
  const beta = fresh("/beta");
  const m = new Manager(URL, { reconnection: false });
  const a1 = m.socket(alpha);
  const a2 = m.socket(beta);
  const other = client(alpha);
  const outsider = client(beta);
  try {
    await Promise.all([a1, a2, other, outsider].map(connected));
    // Socket ids differ per namespace; the handler says which room it is.
    assert.notEqual(a1.id, a2.id);
    assert.equal((await a1.timeout(WAIT).emitWithAck("whoami")).room, alpha);
    assert.equal((await a2.timeout(WAIT).emitWithAck("whoami")).room, beta);
    let leaked = 0;
    outsider.on("broadcast", () => leaked++);
    a2.on("broadcast", () => leaked++);
    const seen = once(other, "broadcast");
    await a1.timeout(WAIT).emitWithAck("broadcast", "to alpha");
    assert.deepEqual(withoutOffset(await seen), ["to alpha"]);
    // A round trip through beta after the broadcast: anything leaked would be here.
    await a2.timeout(WAIT).emitWithAck("echo", "sync");
    await outsider.timeout(WAIT).emitWithAck("echo", "sync");
    assert.equal(leaked, 0);
  } finally {
    m._close?.();
    a1.disconnect();
    a2.disconnect();
    other.disconnect();
    outsider.disconnect();
  }
});

test("auth.room picks the main namespace's room", async () => {
  const r1 = fresh("r1");
  const r2 = fresh("r2");
  const a = client("/", { auth: { room: r1 } });
  const b = client("/", { auth: { room: r1 } });
  const c = client("/", { auth: { room: r2 } });
  try {
    await Promise.all([a, b, c].map(connected));
    assert.equal((await a.timeout(WAIT).emitWithAck("whoami")).room, r1);
    assert.equal((await c.timeout(WAIT).emitWithAck("whoami")).room, r2);
    let leaked = 0;
    c.on("broadcast", () => leaked++);
    const seen = once(b, "broadcast");
    await a.timeout(WAIT).emitWithAck("broadcast", "hi r1");
    assert.deepEqual(withoutOffset(await seen), ["hi r1"]);
    await c.timeout(WAIT).emitWithAck("echo", "sync");
    assert.equal(leaked, 0);
  } finally {
    [a, b, c].forEach((s) => s.disconnect());
  }
});

for (const transport of ["websocket", "polling"]) {
  test(`${transport}: 1000 back-to-back events and acks arrive in order`, async () => {
    const room = fresh("burst");
    const a = client("/", { auth: { room }, transports: [transport] });
    const b = client("/", { auth: { room }, transports: ["websocket"] });
    try {
      await Promise.all([connected(a), connected(b)]);
      const { got, done } = collect(b, "broadcast", 1000);
      const acks = [];
      const acked = new Promise((resolve) => {
        for (let i = 0; i < 1000; i++) {
          a.emit("broadcast", i, () => {
            acks.push(i);
            if (acks.length === 1000) resolve();
          });
        }
      });
      await done();
      await within(acked, "1000 acks");
      const expected = [...Array(1000).keys()];
      assert.deepEqual(got, expected);
      assert.deepEqual(acks, expected);
      // Echo replies keep order too.
      const replies = await Promise.all(
        expected.slice(0, 300).map((i) => a.timeout(WAIT).emitWithAck("echo", i)),
      );
      assert.deepEqual(replies, expected.slice(0, 300));
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
}

test("disconnect ends the session; connecting again is a new one", async () => {
  const room = fresh("again");
  const s = client("/", { auth: { room } });
  try {
    await connected(s);
    const first = s.id;
    s.disconnect();
    assert.equal(s.connected, false);
    s.connect();
    await connected(s);
    assert.notEqual(s.id, first);
    assert.equal(s.recovered, false);
    assert.equal(await s.timeout(WAIT).emitWithAck("echo", "back"), "back");
  } finally {
    s.disconnect();
  }
});

for (const transport of ["websocket", "polling"]) {
  test(`${transport}: connection state recovery replays what was missed, once, in order`, async () => {
    const room = fresh(`recover-${transport}`);
    const a = io(URL, {
      forceNew: true,
      transports: [transport],
      auth: { room },
      reconnectionDelay: 500,
      reconnectionDelayMax: 500,
      randomizationFactor: 0,
    });
    const b = client("/", { auth: { room }, transports: ["websocket"] });
    try {
      await Promise.all([connected(a), connected(b)]);
      assert.equal(a.recovered, false);
      const got = [];
      a.on("broadcast", (...args) => got.push(withoutOffset(args)[0]));
      const first = once(a, "broadcast");
      await b.timeout(WAIT).emitWithAck("broadcast", 0);
      await first;
      const id = a.id;
      const gone = once(a, "disconnect");
      a.io.engine.close(); // the transport drops; the client did not leave
      await gone;
      for (let i = 1; i <= 20; i++) await b.timeout(WAIT).emitWithAck("broadcast", i);
      await once(a, "connect");
      assert.equal(a.recovered, true, "socket.recovered");
      assert.equal(a.id, id, "same socket id");
      await b.timeout(WAIT).emitWithAck("broadcast", 21); // live again
      await until(() => got.length >= 22, "22 events");
      await a.timeout(WAIT).emitWithAck("echo", "sync");
      assert.deepEqual(got, [...Array(22).keys()]);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
}

for (const transport of ["websocket", "polling"]) {
  test(`${transport}: an explicit disconnect ends the session; connect() again is a new one`, async () => {
    const room = fresh(`leave-${transport}`);
    const a = client("/", { transports: [transport], auth: { room } });
    const b = client("/", { auth: { room }, transports: ["websocket"] });
    try {
      await Promise.all([connected(a), connected(b)]);
      const got = [];
      a.on("broadcast", (...args) => got.push(withoutOffset(args)[0]));
      await b.timeout(WAIT).emitWithAck("broadcast", 0);
      await until(() => got.length === 1, "the first broadcast");
      const id = a.id;
      a.disconnect();
      for (let i = 1; i <= 5; i++) await b.timeout(WAIT).emitWithAck("broadcast", 100 + i);
      a.connect();
      await connected(a);
      assert.equal(a.recovered, false, "socket.recovered after an explicit disconnect");
      assert.notEqual(a.id, id, "a new socket id");
      await b.timeout(WAIT).emitWithAck("broadcast", 1);
      await until(() => got.length === 2, "the broadcast after reconnecting");
      await a.timeout(WAIT).emitWithAck("echo", "sync");
      assert.deepEqual(got, [0, 1], "what was sent while disconnected is not replayed");
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
}

// Attachments travel as separate messages, each under maxHttpBufferSize, so only a cap
// on the whole event bounds their sum (limits.max_event_bytes, 2 MiB): a larger event
// is refused with too_large and reaches no one; the socket goes on.
test("an event over max_event_bytes is refused with too_large, not delivered", async () => {
  const room = fresh("too-large");
  const a = client("/", { auth: { room }, transports: ["websocket"] });
  const b = client("/", { auth: { room }, transports: ["websocket"] });
  try {
    await Promise.all([connected(a), connected(b)]);
    const got = [];
    b.on("broadcast", (...args) => got.push(withoutOffset(args)[0]));
    const parts = [0, 1, 2].map((i) => Buffer.alloc(900_000, i));
    const [answer] = [await a.timeout(WAIT).emitWithAck("broadcast", "big", ...parts)];
    assert.equal(answer?.error?.code, "too_large", JSON.stringify(answer));
    await a.timeout(WAIT).emitWithAck("broadcast", "small", Buffer.alloc(900_000, 7));
    await until(() => got.length === 1, "the small broadcast");
    assert.deepEqual(got, ["small"]);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test("auth over max_auth_bytes is refused with too_large", async () => {
  const s = client("/", { auth: { room: fresh("big-auth"), blob: "x".repeat(20_000) } });
  try {
    const err = await within(new Promise((resolve) => s.once("connect_error", resolve)), "connect_error");
    assert.equal(err.data?.code, "too_large", JSON.stringify(err));
  } finally {
    s.disconnect();
  }
});

test("a namespace outside the app's pattern is an invalid namespace", async () => {
  const path = "/apps/scoped/socket.io/";
  const bad = client("/nope", { path });
  const err = await within(
    new Promise((resolve) => bad.once("connect_error", resolve)),
    "connect_error",
  );
  assert.equal(err.message, "Invalid namespace");
  bad.disconnect();
  const good = client("/allowed-42", { path });
  try {
    await connected(good);
    assert.equal((await good.timeout(WAIT).emitWithAck("whoami")).room, "/allowed-42");
  } finally {
    good.disconnect();
  }
});

test("a handler's rejection is a connect_error with its message", async () => {
  const path = "/apps/chat/socket.io/";
  const refused = client("/", { path, auth: { room: fresh("chat") } });
  const err = await within(
    new Promise((resolve) => refused.once("connect_error", resolve)),
    "connect_error",
  );
  assert.match(err.message, /user/);
  assert.equal(err.data?.code, "rejected");
  refused.disconnect();
  const ok = client("/", { path, auth: { room: fresh("chat"), user: "ann" } });
  try {
    await connected(ok);
    const mine = once(ok, "message");
    const reply = await ok.timeout(WAIT).emitWithAck("message", { text: "hello" });
    assert.deepEqual(reply, undefined);
    const [msg] = withoutOffset(await mine);
    assert.equal(msg.text, "hello");
    assert.equal(msg.user, "ann");
    // A handler error comes back in the ack.
    const blocked = await ok.timeout(WAIT).emitWithAck("message", { text: "badword" });
    assert.equal(blocked.error.code, "rejected");
    assert.equal(blocked.error.message, "blocked");
  } finally {
    ok.disconnect();
  }
});

/** An HS256 JWT signed with the test key the node's `secured` app verifies. */
function token(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = `${b64({ alg: "HS256", typ: "JWT", kid: "k1" })}.${b64(claims)}`;
  const key = process.env.EDGEROOM_TEST_KEY;
  return `${signed}.${createHmac("sha256", key).update(signed).digest("base64url")}`;
}

const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;

async function connectError(s) {
  try {
    return await within(new Promise((resolve) => s.once("connect_error", resolve)), "connect_error");
  } finally {
    s.disconnect();
  }
}

test("auth.token: refused without a valid one; a capability missing is forbidden", async () => {
  const path = "/apps/secured/socket.io/";
  const room = fresh("secured");
  let err = await connectError(client("/", { path, auth: { room, user: "ann" } }));
  assert.equal(err.data?.code, "unauthorized", JSON.stringify(err));
  const forged = token({ sub: "ann" }).slice(0, -4) + "AAAA";
  err = await connectError(client("/", { path, auth: { room, token: forged } }));
  assert.equal(err.data?.code, "bad_token", JSON.stringify(err));
  err = await connectError(client("/", { path, auth: { room, token: token({ sub: "a", exp: inSeconds(-5) }) } }));
  assert.equal(err.data?.code, "token_expired", JSON.stringify(err));

  const caps = [{ rooms: ["public:*"], allow: ["join"] }];
  const reader = token({ sub: "reader", exp: inSeconds(600), caps });
  err = await connectError(client("/", { path, auth: { room: "private", token: reader } }));
  assert.equal(err.data?.code, "forbidden", JSON.stringify(err));
  const s = client("/", { path, auth: { room: fresh("public:r"), token: reader } });
  try {
    await connected(s);
    const reply = await s.timeout(WAIT).emitWithAck("message", { text: "hi" });
    assert.equal(reply.error?.code, "forbidden", JSON.stringify(reply));
  } finally {
    s.disconnect();
  }
});

test("auth.token: the handler sees the token's user, not a claimed one", async () => {
  const path = "/apps/secured/socket.io/";
  const s = client("/", { path, auth: { room: fresh("secured"), user: "admin", token: token({ sub: "ann" }) } });
  try {
    await connected(s);
    const mine = once(s, "message");
    await s.timeout(WAIT).emitWithAck("message", { text: "who am I" });
    const [msg] = withoutOffset(await mine);
    assert.equal(msg.user, "ann");
  } finally {
    s.disconnect();
  }
});

test("auth.token: a namespace is disconnected at expiry unless refreshed first", async () => {
  const path = "/apps/secured/socket.io/";
  const room = fresh("secured");
  const lapsing = client("/", { path, auth: { room, token: token({ sub: "ann", exp: inSeconds(2) }) } });
  const fresh_ = client("/", { path, auth: { room, token: token({ sub: "bob", exp: inSeconds(2) }) } });
  try {
    await connected(lapsing);
    await connected(fresh_);
    const stolen = await fresh_.timeout(WAIT).emitWithAck("edgeroom:authenticate", token({ sub: "eve" }));
    assert.equal(stolen.error?.code, "bad_token", JSON.stringify(stolen));
    const ok = await fresh_.timeout(WAIT).emitWithAck("edgeroom:authenticate", token({ sub: "bob", exp: inSeconds(600) }));
    assert.deepEqual(ok, { ok: true });
    const expired = once(lapsing, "edgeroom:error");
    const gone = once(lapsing, "disconnect");
    assert.equal((await expired)[0].code, "token_expired");
    assert.equal((await gone)[0], "io server disconnect");
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(fresh_.connected, "the refreshed namespace stays");
    const reply = await fresh_.timeout(WAIT).emitWithAck("message", { text: "still here" });
    assert.equal(reply, undefined);
  } finally {
    lapsing.disconnect();
    fresh_.disconnect();
  }
});

test("presence and room state through reserved events, on request", async () => {
  const path = "/apps/counter/socket.io/";
  const room = fresh("count");
  const a = client("/", { path, auth: { room, presence: true, state: true } });
  const plain = client("/", { path, auth: { room }, autoConnect: false });
  let plainReserved = 0;
  plain.onAny((event) => event.startsWith("edgeroom:") && plainReserved++);
  try {
    const snapshot = once(a, "edgeroom:presence");
    const initial = once(a, "edgeroom:state");
    await connected(a);
    const [p] = await snapshot;
    assert.equal(p.snapshot, true);
    assert.ok(p.joined.some((j) => j.id === a.id));
    assert.deepEqual((await initial)[0], {});
    const joined = once(a, "edgeroom:presence");
    plain.connect();
    await connected(plain);
    assert.ok((await joined)[0].joined.some((j) => j.id === plain.id));
    // After the snapshot, what changed: JSON Patch operations, not the whole document.
    const changed = once(a, "edgeroom:state-patch");
    assert.deepEqual(await plain.timeout(WAIT).emitWithAck("incr", { by: 2 }), { count: 2 });
    const [ops] = await changed;
    assert.ok(Array.isArray(ops), JSON.stringify(ops));
    assert.deepEqual({ path: ops.at(-1).path, value: ops.at(-1).value }, { path: "/count", value: 2 }, JSON.stringify(ops));
    const left = once(a, "edgeroom:presence");
    const plainId = plain.id;
    plain.disconnect();
    assert.deepEqual((await left)[0].left, [plainId]);
    assert.equal(plainReserved, 0);
  } finally {
    a.disconnect();
    plain.disconnect();
  }
});

test("native-protocol and Socket.IO clients in one room see each other", async () => {
  const room = fresh("/mixed");
  const s = client(room);
  await connected(s);
  const ws = new WebSocket(URL.replace("http", "ws") + "/v1/ws?app=echo");
  const frames = [];
  const waiters = [];
  ws.on("message", (data) => {
    const f = JSON.parse(data.toString());
    frames.push(f);
    waiters.splice(0).forEach((w) => w());
  });
  const frame = (pred, what) =>
    within(
      (async () => {
        for (;;) {
          const f = frames.find(pred);
          if (f) return f;
          await new Promise((r) => waiters.push(r));
        }
      })(),
      what,
    );
  try {
    await within(new Promise((r) => ws.once("open", r)), "native open");
    ws.send(JSON.stringify({ type: "join", room, ref: 1 }));
    await frame((f) => f.type === "reply" && f.ref === 1 && f.ok, "join reply");
    const seen = once(s, "broadcast");
    ws.send(JSON.stringify({ type: "emit", room, event: "broadcast", data: { from: "native" }, ref: 2 }));
    assert.deepEqual(withoutOffset(await seen), [{ from: "native" }]);
    await s.timeout(WAIT).emitWithAck("broadcast", { from: "socket.io" }, 7);
    const ev = await frame((f) => f.type === "event" && f.event === "broadcast", "native event");
    assert.deepEqual(ev.args, [{ from: "socket.io" }, 7]);
    assert.equal(ev.from, s.id);
  } finally {
    ws.close();
    s.disconnect();
  }
});

test("malformed raw HTTP requests get Engine.IO errors and harm nothing", async () => {
  const base = `${URL}/socket.io/`;
  const expect = async (res, status, code) => {
    assert.equal(res.status, status);
    if (code !== undefined) assert.equal((await res.json()).code, code);
  };
  await expect(await fetch(`${base}?EIO=3&transport=polling`), 400, 5);
  await expect(await fetch(`${base}?transport=polling`), 400, 5);
  await expect(await fetch(`${base}?EIO=4&transport=carrier-pigeon`), 400, 0);
  await expect(await fetch(`${base}?EIO=4`), 400, 0);
  await expect(await fetch(`${base}?EIO=4&transport=polling&sid=nope`), 400, 1);
  await expect(await fetch(`${base}?EIO=4&transport=polling`, { method: "POST", body: "4x" }), 400, 2);
  await expect(await fetch(`${base}?EIO=4&transport=websocket`), 400, 3);
  await expect(await fetch(`${URL}/apps/nope/socket.io/?EIO=4&transport=polling`), 404, 4);

  const open = async () => {
    const res = await fetch(`${base}?EIO=4&transport=polling`);
    assert.equal(res.status, 200);
    const body = await res.text();
    assert.equal(body[0], "0");
    return JSON.parse(body.slice(1)).sid;
  };
  const post = (sid, body) =>
    fetch(`${base}?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body });
  const get = (sid) => fetch(`${base}?EIO=4&transport=polling&sid=${sid}`);

  // An undecodable payload closes that session.
  let sid = await open();
  await expect(await post(sid, "zzz"), 400);
  await expect(await get(sid), 400, 1);
  // Over maxPayload: 413.
  sid = await open();
  await expect(await post(sid, "4" + "x".repeat(1_100_000)), 413);
  // A broken Socket.IO packet, and an attachment count that does not add up, close it.
  for (const bad of ["42{}", "4abc", '451-["x",{"_placeholder":true,"num":3}]\x1ebAQ==']) {
    sid = await open();
    assert.equal(await (await post(sid, "40")).text(), "ok");
    const ready = await (await get(sid)).text();
    assert.match(ready, /^40\{"sid"/);
    await post(sid, bad);
    const after = await get(sid);
    assert.ok(after.status === 400 || (await after.text()).endsWith("1"), `session survived ${bad}`);
  }
  // A flood of tiny polls for sessions that do not exist.
  const flood = await Promise.all(
    Array.from({ length: 300 }, (_, i) => fetch(`${base}?EIO=4&transport=polling&sid=x${i}`)),
  );
  assert.ok(flood.every((r) => r.status === 400));
  // Overlapping polls close the session.
  sid = await open();
  const first = get(sid);
  await new Promise((r) => setTimeout(r, 50));
  await expect(await get(sid), 400);
  assert.equal(await (await first).text(), "1");

  // The node still serves everyone, and it counted what it refused.
  const s = client("/");
  try {
    await connected(s);
    assert.equal(await s.timeout(WAIT).emitWithAck("echo", "still here"), "still here");
  } finally {
    s.disconnect();
  }
  const metrics = await (await fetch(`${URL}/metrics`)).text();
  assert.match(metrics, /kind="engineio_1"\} [1-9]/);
  assert.match(metrics, /kind="socketio_bad_packet"\} [1-9]/);
});
