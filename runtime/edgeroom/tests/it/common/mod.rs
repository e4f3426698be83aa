//! Test support: a real node on an ephemeral loopback port with the example handlers
//! deployed, and a native-protocol WebSocket client.
#![allow(dead_code)]

pub mod fleet;

use std::path::PathBuf;
use std::time::Duration;

use edgeroom::{NodeConfig, RunningNode};
use edgeroom_proto::ids::{AppName, NodeId};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const FIXTURE: &[u8] = include_bytes!(concat!(
    env!("EDGEROOM_FIXTURES_DIR"),
    "/sandbox_fixture.wasm"
));

/// How long a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestNode {
    pub running: Option<RunningNode>,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Compiled handlers are cached across tests (compiling is the slow part).
pub fn compile_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compiled")
}

pub fn config(dir: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId::new("t1").unwrap(), dir.to_path_buf());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.dev = true;
    c.region = "test-region".into();
    c.compile_cache_dir = Some(compile_cache());
    c.sandbox.max_instances = 64;
    c
}

impl TestNode {
    /// A dev-mode node with echo, chat, counter and the sandbox fixture deployed.
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        tweak(&mut c);
        let running = edgeroom::start(c).await.unwrap();
        let addr = running.addr;
        for (name, wasm) in edgeroom::examples::ALL
            .iter()
            .copied()
            .chain([("fixture", FIXTURE)])
        {
            running
                .node
                .gateway
                .apps
                .deploy(&AppName::new(name).unwrap(), wasm.to_vec())
                .await
                .unwrap();
        }
        TestNode {
            running: Some(running),
            addr,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self, app: &str) -> Client {
        Client::connect(self.addr, app, "json").await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn room(&self, app: &str, room: &str) -> Value {
        let url = self.url(&format!("/v1/apps/{app}/rooms/{}", urlencode(room)));
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
        self.dir
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of a metric line `name{labels} value` (labels matched as given).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// The HS256 secret tests sign client tokens with, under key id `k1`.
pub const TEST_KEY: &str = "the first test secret, 32+ bytes long";

/// An HS256 token signed with `secret` under key id `kid`.
pub fn sign_token(kid: &str, secret: &str, claims: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token of user `sub`, valid for an hour, signed with [`TEST_KEY`].
pub fn user_token(sub: &str) -> String {
    sign_token("k1", TEST_KEY, json!({"sub": sub, "exp": now_s() + 3600}))
}

/// Set an app's `auth` settings through the admin API of the node at `addr`.
pub async fn configure_auth(addr: std::net::SocketAddr, app: &str, auth: Value) -> Value {
    let r = reqwest::Client::new()
        .put(format!("http://{addr}/v1/apps/{app}/config"))
        .json(&json!({ "auth": auth }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Let `app` verify tokens signed with [`TEST_KEY`] (anonymous clients still allowed).
pub async fn add_test_key(addr: std::net::SocketAddr, app: &str) {
    let key = json!({"kid": "k1", "alg": "HS256", "key": TEST_KEY});
    configure_auth(addr, app, json!({"keys": [key], "anonymous": true})).await;
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_ref: u64,
    /// Frames read while waiting for something else.
    pub backlog: Vec<Value>,
    msgpack: bool,
    /// Each room's state as this client has it: its last `state`, plus the patches since.
    pub states: std::collections::BTreeMap<String, Value>,
    /// Bytes of the messages received so far (text or binary payloads).
    pub bytes_in: usize,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr, app: &str, format: &str) -> Client {
        Self::connect_with(addr, &format!("app={app}&format={format}")).await
    }

    /// Connect with the whole query string given.
    pub async fn connect_with(addr: std::net::SocketAddr, query: &str) -> Client {
        let format = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("format="))
            .unwrap_or("json");
        let url = format!("ws://{addr}/v1/ws?{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_ref: 0,
            backlog: Vec::new(),
            msgpack: format == "msgpack",
            states: Default::default(),
            bytes_in: 0,
        };
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        c
    }

    /// Connect as user `sub` (a token signed with [`TEST_KEY`]).
    pub async fn connect_as(addr: std::net::SocketAddr, app: &str, sub: &str) -> Client {
        let token = user_token(sub);
        Self::connect_with(addr, &format!("app={app}&token={token}")).await
    }

    pub fn session(&self) -> String {
        self.welcome["session"].as_str().unwrap().to_owned()
    }

    pub fn token(&self) -> String {
        self.welcome["resume_token"].as_str().unwrap().to_owned()
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next frame, as JSON (MessagePack frames are converted, binary as {"$bin": [..]}).
    pub async fn recv(&mut self) -> Value {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Value {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
            {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => return json!({"type": "closed", "reason": null}),
            };
            self.bytes_in += msg.len();
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Binary(b) => {
                    return msgpack_to_json(rmpv::decode::read_value(&mut &b[..]).unwrap());
                }
                Message::Close(f) => {
                    let code = f.as_ref().map(|f| u16::from(f.code));
                    let reason = f.map(|f| f.reason.to_string());
                    return json!({"type": "closed", "reason": reason, "code": code});
                }
                _ => continue,
            }
        }
    }

    /// The next frame (or close) straight from the wire, with a timeout; `None` on timeout.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        tokio::time::timeout(wait, self.recv_wire()).await.ok()
    }

    /// Send `frame` with a fresh `ref` and wait for its reply; other frames go to the backlog.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        let r = self.next_ref;
        frame["ref"] = json!(r);
        if self.msgpack {
            let mut buf = Vec::new();
            rmpv::encode::write_value(&mut buf, &json_to_msgpack(&frame)).unwrap();
            self.ws.send(Message::Binary(buf.into())).await.unwrap();
        } else {
            self.send(frame).await;
        }
        self.reply_to(r).await
    }

    async fn reply_to(&mut self, r: u64) -> Value {
        let f = self.reply_or_close(r).await;
        assert_ne!(
            f["type"], "closed",
            "connection closed while waiting for reply {r}: {f}"
        );
        f
    }

    /// The reply to `r`, or the close frame if the connection closed first.
    async fn reply_or_close(&mut self, r: u64) -> Value {
        loop {
            let f = self.recv_wire().await;
            if (f["type"] == "reply" && f["ref"] == json!(r)) || f["type"] == "closed" {
                return f;
            }
            self.backlog.push(f);
        }
    }

    /// Like [`Client::request`], but `None` if the connection closes before the reply.
    pub async fn try_request(&mut self, mut frame: Value) -> Option<Value> {
        self.next_ref += 1;
        let r = self.next_ref;
        frame["ref"] = json!(r);
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        let f = self.reply_or_close(r).await;
        (f["type"] == "reply").then_some(f)
    }

    pub async fn join(&mut self, room: &str, auth: Value) -> Value {
        self.request(json!({"type": "join", "room": room, "auth": auth}))
            .await
    }

    pub async fn emit(&mut self, room: &str, event: &str, data: Value) -> Value {
        self.request(json!({"type": "emit", "room": room, "event": event, "data": data}))
            .await
    }

    /// The next frame of `type` (others are skipped, not kept).
    /// Follow a `state` or `state_patch` frame: the room's state as this client has it
    /// now (`None` for any other frame). A patch must apply to what the client has.
    pub fn apply_state(&mut self, f: &Value) -> Option<Value> {
        let room = f["room"].as_str()?.to_owned();
        match f["type"].as_str()? {
            "state" => {
                self.states.insert(room.clone(), f["state"].clone());
            }
            "state_patch" => {
                let patch: json_patch::Patch = serde_json::from_value(f["patch"].clone())
                    .unwrap_or_else(|e| panic!("not a JSON Patch: {e}: {f}"));
                let doc = self
                    .states
                    .get_mut(&room)
                    .unwrap_or_else(|| panic!("a patch before any state: {f}"));
                json_patch::patch(doc, &patch)
                    .unwrap_or_else(|e| panic!("patch does not apply: {e}: {f}"));
            }
            _ => return None,
        }
        self.states.get(&room).cloned()
    }

    /// The room's state after the next `state` or `state_patch` frame.
    pub async fn next_state(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            assert_ne!(f["type"], "closed", "closed while waiting for state: {f}");
            if let Some(state) = self.apply_state(&f) {
                return state;
            }
        }
    }

    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return f;
            }
            assert_ne!(f["type"], "closed", "closed while waiting for {ty}: {f}");
        }
    }

    /// The `i` of the data of the next `n` events (the benchmarks' and tests' numbered
    /// broadcasts), and the cursor after the last one.
    pub async fn numbered(&mut self, n: usize) -> (Vec<i64>, String) {
        let mut got = Vec::new();
        let mut cursor = String::new();
        while got.len() < n {
            let f = self.next_of("event").await;
            got.push(f["data"]["i"].as_i64().unwrap());
            cursor = f["cursor"].as_str().unwrap().to_owned();
        }
        (got, cursor)
    }

    /// The `i` of every event until the server closes the connection (its node is
    /// going away), and the cursor of the last one.
    pub async fn numbered_until_closed(&mut self) -> (Vec<i64>, String) {
        let (mut got, mut cursor) = (Vec::new(), String::new());
        loop {
            let f = self.recv().await;
            match f["type"].as_str() {
                Some("event") => {
                    got.push(f["data"]["i"].as_i64().unwrap());
                    cursor = f["cursor"].as_str().unwrap().to_owned();
                }
                Some("closed") => return (got, cursor),
                _ => {}
            }
        }
    }

    /// Drop the TCP connection without a close handshake (a network failure).
    pub fn abort(self) {
        drop(self.ws.into_inner());
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub fn json_to_msgpack(v: &Value) -> rmpv::Value {
    use rmpv::Value as M;
    match v {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => n
            .as_i64()
            .map(M::from)
            .or_else(|| n.as_u64().map(M::from))
            .unwrap_or_else(|| M::F64(n.as_f64().unwrap())),
        Value::String(s) => M::String(s.clone().into()),
        Value::Array(a) => M::Array(a.iter().map(json_to_msgpack).collect()),
        Value::Object(o) if o.len() == 1 && o.contains_key("$bin") => M::Binary(
            o["$bin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect(),
        ),
        Value::Object(o) => M::Map(
            o.iter()
                .map(|(k, v)| (M::String(k.clone().into()), json_to_msgpack(v)))
                .collect(),
        ),
    }
}

pub fn msgpack_to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => i
            .as_i64()
            .map(|x| json!(x))
            .or_else(|| i.as_u64().map(|x| json!(x)))
            .unwrap(),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.into_str().unwrap()),
        M::Binary(b) => json!({"$bin": b}),
        M::Array(a) => Value::Array(a.into_iter().map(msgpack_to_json).collect()),
        M::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), msgpack_to_json(v)))
                .collect(),
        ),
        M::Ext(..) => panic!("ext"),
    }
}

/// A handler that imports the filesystem and clocks, which the sandbox refuses.
pub const FORBIDDEN: &[u8] = include_bytes!(concat!(
    env!("EDGEROOM_FIXTURES_DIR"),
    "/forbidden_fixture.wasm"
));

/// The third-party clients' whole run, generously: they take seconds.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(240);

/// A directory under `runtime/edgeroom/tests/`.
pub fn tests_dir(sub: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

/// Run a third-party client's test program; its output is shown (also when it hangs
/// and is killed), and it must succeed.
pub async fn run_client(mut cmd: tokio::process::Command, what: &str) {
    use tokio::io::AsyncReadExt;
    cmd.kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {what}: {e} (./test.sh installs it)"));
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = {
        let run = async {
            let (_, _, status) = tokio::join!(
                out.read_to_end(&mut stdout),
                err.read_to_end(&mut stderr),
                child.wait()
            );
            status
        };
        tokio::time::timeout(CLIENT_TIMEOUT, run).await
    };
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = status
        .unwrap_or_else(|_| {
            panic!("{what} did not finish in {CLIENT_TIMEOUT:?} (its output so far is above)")
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed:\n{stdout}\n{stderr}");
}
