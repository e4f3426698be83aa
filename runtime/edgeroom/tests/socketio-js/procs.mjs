// A cluster of `edgeroom serve` processes the way an operator runs one: each node its
// own process, config and data directory; stopped with SIGTERM (a drain) or SIGKILL,
// and started again from the same directory. The Rust side (runtime/edgeroom/tests/it/cli.rs, or
// bench/restart-failover.sh) writes the certificates and configs and passes them in:
//   EDGEROOM_BIN      the edgeroom binary
//   EDGEROOM_CONFIGS  node.toml paths, comma-separated
//   EDGEROOM_URLS     each node's client URL, same order
//   EDGEROOM_NAMES    each node's id, same order
//   EDGEROOM_KEY      an admin key
//   EDGEROOM_ECHO     the echo component (wasm) to deploy as app `echo`
import { spawn } from "node:child_process";
import fs from "node:fs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Cluster {
  constructor(env = process.env) {
    this.bin = env.EDGEROOM_BIN;
    this.configs = (env.EDGEROOM_CONFIGS ?? "").split(",").filter(Boolean);
    this.urls = (env.EDGEROOM_URLS ?? "").split(",").filter(Boolean);
    this.names = (env.EDGEROOM_NAMES ?? "").split(",").filter(Boolean);
    this.key = env.EDGEROOM_KEY;
    this.echo = env.EDGEROOM_ECHO;
    if (!this.bin || this.configs.length < 3 || this.urls.length !== this.configs.length) {
      throw new Error("EDGEROOM_BIN, EDGEROOM_CONFIGS and EDGEROOM_URLS must describe the cluster");
    }
    this.procs = [];
    this.logs = this.configs.map(() => []);
  }

  get size() {
    return this.configs.length;
  }

  /** Start node `i`'s process (again, from the same data directory). */
  start(i) {
    const p = spawn(this.bin, ["serve", "--config", this.configs[i]], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    p.stderr.on("data", (d) => {
      const log = this.logs[i];
      log.push(d.toString());
      if (log.length > 200) log.shift();
    });
    this.procs[i] = p;
    return p;
  }

  /** Stop node `i` with `signal` and wait until the process is gone. */
  async stop(i, signal = "SIGTERM") {
    const p = this.procs[i];
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", (code, sig) => r({ code, sig })));
    p.kill(signal);
    const how = await exited;
    this.procs[i] = null;
    return how;
  }

  async stopAll() {
    await Promise.all(this.procs.map((_, i) => this.stop(i, "SIGKILL")));
  }

  async request(i, method, path, body) {
    const r = await fetch(`${this.urls[i]}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.key}` },
      body,
      signal: AbortSignal.timeout(5_000),
    });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: r.status, json, text };
  }

  async get(i, path) {
    try {
      return await this.request(i, "GET", path);
    } catch {
      return { status: 0, json: null, text: "" };
    }
  }

  /** Wait until `check()` is true, polling. */
  async until(check, what, ms = 60_000, every = 50) {
    const deadline = Date.now() + ms;
    for (;;) {
      if (await check()) return;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${this.tail()}`);
      await sleep(every);
    }
  }

  async healthy(i, ms = 60_000) {
    await this.until(async () => (await this.get(i, "/healthz")).status === 200, `${this.names[i]} healthy`, ms);
  }

  /** Whether node `i` sees every node alive. */
  async allAlive(i) {
    const c = (await this.get(i, "/v1/cluster")).json;
    return !!c?.nodes && c.nodes.length === this.size && c.nodes.every((n) => n.alive);
  }

  /** Every process started, a leader elected, `echo` deployed and live everywhere. */
  async up() {
    for (let i = 0; i < this.size; i++) this.start(i);
    for (let i = 0; i < this.size; i++) await this.healthy(i);
    await this.until(async () => (await this.get(0, "/v1/cluster")).json?.cluster?.leader, "a leader");
    const wasm = fs.readFileSync(this.echo);
    await this.until(async () => {
      try {
        return (await this.request(0, "PUT", "/v1/apps/echo/handler", wasm)).status === 200;
      } catch {
        return false;
      }
    }, "a deploy");
    for (let i = 0; i < this.size; i++) {
      await this.until(async () => (await this.get(i, "/v1/apps/echo")).json?.version >= 1, `echo on ${this.names[i]}`);
      await this.until(() => this.allAlive(i), `${this.names[i]} sees everyone`);
    }
  }

  /** The room as node `i` shows it. */
  async room(i, room) {
    return (await this.get(i, `/v1/apps/echo/rooms/${encodeURIComponent(room)}`)).json;
  }

  /** The last lines each node wrote to stderr (for a failure message). */
  tail() {
    return this.logs
      .map((l, i) => `--- ${this.names[i]}\n${l.join("").split("\n").slice(-30).join("\n")}`)
      .join("\n");
  }
}
