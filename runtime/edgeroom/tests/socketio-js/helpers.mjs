// What the socket.io-client test files share: waiting with a deadline for events and
// connections, and a round-robin load balancer.
import http from "node:http";
import net from "node:net";

export const WAIT = 10_000;

export function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `check` every 20 ms until it holds; fail after `ms`, and stop polling then. */
export async function until(check, what, ms = WAIT) {
  let waiting = true;
  try {
    await within(
      (async () => {
        while (waiting && !check()) await new Promise((r) => setTimeout(r, 20));
      })(),
      what,
      ms,
    );
  } finally {
    waiting = false;
  }
}

export function once(socket, event) {
  return within(new Promise((resolve) => socket.once(event, (...args) => resolve(args))), event);
}

export async function connected(socket) {
  if (socket.connected) return;
  await within(
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    }),
    "connect",
  );
}

/**
 * A round-robin balancer with no stickiness: each HTTP request and each WebSocket
 * upgrade goes to the next node; a node that refuses the connection (it is down) is
 * skipped for the next one, as a load balancer's health check would.
 */
export function balancer(targets) {
  let next = 0;
  const hits = targets.map(() => 0);
  const pick = () => {
    const i = next++ % targets.length;
    return [i, new URL(targets[i])];
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const attempt = (left) => {
        const [i, t] = pick();
        const up = http.request(
          { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers, agent: false },
          (r) => {
            hits[i]++;
            res.writeHead(r.statusCode, r.headers);
            r.pipe(res);
          },
        );
        up.on("error", () => {
          if (left > 1) return attempt(left - 1);
          res.writeHead(502);
          res.end();
        });
        up.end(body);
      };
      attempt(targets.length);
    });
  });
  server.on("upgrade", (req, socket, head) => {
    const attempt = (left) => {
      const [i, t] = pick();
      let connected = false;
      const up = net.connect(Number(t.port), t.hostname, () => {
        connected = true;
        hits[i]++;
        let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let k = 0; k < req.rawHeaders.length; k += 2) raw += `${req.rawHeaders[k]}: ${req.rawHeaders[k + 1]}\r\n`;
        up.write(raw + "\r\n");
        up.write(head);
        socket.pipe(up).pipe(socket);
      });
      up.on("error", () => {
        if (left > 1 && !connected) return attempt(left - 1);
        socket.destroy();
      });
      socket.on("error", () => up.destroy());
    };
    attempt(targets.length);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${server.address().port}`, hits, server })),
  );
}
