//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their
//! corpora on stable: every decoder a client or a peer reaches, fed arbitrary bytes.
//! Each must return, whatever the bytes — an error value, never a panic — and what a
//! decoder accepts must encode again without one.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::credential::Verifier;
use crate::room::replica::RoomMsg;
use crate::room::replicate::PeerMsg;
use crate::session::token::TokenKey;
use edgeroom_cluster::control::network::{RaftReply, RaftRequest};
use edgeroom_proto::app::{AuthConfig, TokenAlg, TokenKey as JwtKey};
use edgeroom_proto::engineio::session::{Session, Timing, Transport};
use edgeroom_proto::{engineio, native, socketio};
use edgeroom_transport::frame::FrameCodec;

/// The largest native frame the fuzz targets let through (the node's default).
const MAX_FRAME: usize = 64 * 1024;
/// A peer frame's limit, as the room streams have it.
const MAX_PEER_FRAME: usize = 4 * 1024 * 1024;

/// What a fuzz target runs: the decoders of one protocol.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its `fuzz/fuzz_targets/` file and corpus directory.
pub const TARGETS: [(&str, Target); 7] = [
    ("native_json", native_json),
    ("native_msgpack", native_msgpack),
    ("engineio", engineio_input),
    ("socketio", socketio_input),
    ("peer_frame", peer_frame),
    ("resume_token", resume_token),
    ("jwt", jwt),
];

/// A native text frame.
pub fn native_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(frame) = native::decode_text(text, MAX_FRAME)
    {
        std::hint::black_box(frame);
    }
}

/// A native MessagePack frame.
pub fn native_msgpack(data: &[u8]) {
    if let Ok(frame) = native::decode_binary(data, MAX_FRAME) {
        std::hint::black_box(frame);
    }
}

/// An Engine.IO packet, a polling payload, and both through a session.
pub fn engineio_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = engineio::decode(text) {
        let again = engineio::encode(&p);
        std::hint::black_box(engineio::decode(&again).ok());
    }
    if let Ok(packets) = engineio::decode_payload(text) {
        std::hint::black_box(engineio::encode_payload(&packets));
    }
    let now = Instant::now();
    let timing = Timing {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
    };
    let mut polling = Session::new(now, timing, Transport::Polling);
    std::hint::black_box(polling.on_post(text, now).ok());
    let mut ws = Session::new(now, timing, Transport::WebSocket);
    std::hint::black_box(ws.on_ws_text(text, now));
}

/// A Socket.IO packet, through reassembly (a binary packet then its attachments).
pub fn socketio_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = socketio::decode(text) {
        std::hint::black_box(socketio::encode(&p));
        if let Some(d) = p.data.as_deref() {
            std::hint::black_box(socketio::split_event(d, Vec::new()).ok());
        }
    }
    let mut r = socketio::Reassembly::default();
    if let Ok(None) = r.text(text) {
        for chunk in data.chunks(7) {
            if r.binary(bytes::Bytes::copy_from_slice(chunk)).is_err() {
                break;
            }
        }
    }
}

/// What peers send: room streams and Raft requests and replies, as a stream of frames.
pub fn peer_frame(data: &[u8]) {
    fn frames<T: serde::de::DeserializeOwned>(data: &[u8]) {
        let mut codec = FrameCodec::<T>::new(MAX_PEER_FRAME);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(m)) = codec.decode(&mut buf) {
            std::hint::black_box(m);
        }
    }
    frames::<PeerMsg<RoomMsg>>(data);
    frames::<RaftRequest>(data);
    frames::<RaftReply>(data);
}

/// A resume token (native `resume`, Socket.IO `pid`).
pub fn resume_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let key = TokenKey::new(b"fuzzing key".to_vec());
        std::hint::black_box(key.verify(text).ok());
    }
}

/// A client's JWT, against an app with a key of each algorithm.
pub fn jwt(data: &[u8]) {
    static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    let v = VERIFIER.get_or_init(|| {
        let key = |kid: &str, alg, key: &str| JwtKey {
            kid: kid.into(),
            alg,
            key: key.into(),
        };
        Verifier::new(&AuthConfig {
            anonymous: None,
            keys: vec![
                key(
                    "h",
                    TokenAlg::Hs256,
                    "a fuzzing secret of at least 32 bytes",
                ),
                key("e", TokenAlg::EdDsa, ED25519_PUBLIC),
                key("p", TokenAlg::Es256, P256_PUBLIC),
            ],
        })
        .expect("the fuzzing keys parse")
    });
    if let Ok(text) = std::str::from_utf8(data) {
        std::hint::black_box(v.verify(text, 1_800_000_000_000).ok());
    }
}

const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAUiZhqCRQQInp03kPUn+DaYmyWJ6LH+OFGQUiFhL5VRc=
-----END PUBLIC KEY-----
";

const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELDvZoPABrhIhd7gHSa45CkTNujgz
uV3Qlk2Ot+Rbcjp8h0CAiTiVD3Ih/rVHvULXmj+mCZOZ+x5xy4ClKuOtYw==
-----END PUBLIC KEY-----
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target)
    }

    /// CI's fuzz smoke, on stable: every input of every committed corpus (seeds and
    /// what fuzzing runs kept) through its target. A panic fails the test.
    #[test]
    fn every_committed_corpus_input_runs_clean() {
        for (name, target) in TARGETS {
            let dir = corpus(name);
            let mut inputs = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "the {name} corpus is empty");
        }
    }

    /// Peer frames are postcard: their seeds are written from real messages.
    /// `EDGEROOM_WRITE_SEEDS=1 cargo test -p edgeroom-host write_peer_frame_seeds`.
    #[test]
    fn write_peer_frame_seeds() {
        use crate::room::replicate::PeerMsg;
        use edgeroom_cluster::control::state::Command;
        use tokio_util::codec::Encoder;
        if std::env::var_os("EDGEROOM_WRITE_SEEDS").is_none() {
            return;
        }
        fn frame<T: serde::Serialize>(m: &T) -> Vec<u8> {
            let mut buf = BytesMut::new();
            FrameCodec::<T>::new(MAX_PEER_FRAME)
                .encode(m, &mut buf)
                .expect("a seed encodes");
            buf.to_vec()
        }
        let seeds: Vec<Vec<u8>> = vec![
            frame(&PeerMsg::<RoomMsg>::Open { incarnation: 7 }),
            frame(&PeerMsg::<RoomMsg>::AskInterest),
            frame(&RaftRequest::Write(Command::InitSecret("ab".into()))),
            [
                frame(&PeerMsg::<RoomMsg>::Open { incarnation: 1 }),
                frame(&PeerMsg::<RoomMsg>::AskInterest),
            ]
            .concat(),
        ];
        let dir = corpus("peer_frame");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
}
