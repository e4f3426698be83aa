//! Peer frames: a 4-byte big-endian length, then one postcard-encoded message.
//!
//! The codec is sans-IO (it works on a `BytesMut`), so tests and the fuzzer feed it bytes
//! directly; `FrameTx`/`FrameRx` put it on a QUIC stream. Every stream has a size limit:
//! a longer frame is an error before its body is read, and the caller drops the peer.

use std::marker::PhantomData;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream broke, or the length prefix exceeds the limit.
    #[error("peer stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable peer frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// A message to send encodes longer than the stream's limit. Nothing was written:
    /// the stream goes on, and the caller decides what becomes of the message.
    #[error("a {len}-byte message is over this stream's {max}-byte frame limit")]
    TooLarge { len: usize, max: usize },
}

/// Length-delimited postcard messages of type `T`, at most `max` bytes each.
pub struct FrameCodec<T> {
    length: LengthDelimitedCodec,
    max: usize,
    _message: PhantomData<fn() -> T>,
}

impl<T> FrameCodec<T> {
    pub fn new(max: usize) -> Self {
        Self {
            length: LengthDelimitedCodec::builder()
                .max_frame_length(max)
                .new_codec(),
            max,
            _message: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Decoder for FrameCodec<T> {
    type Item = T;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        match self.length.decode(src)? {
            Some(body) => Ok(Some(postcard::from_bytes(&body)?)),
            None => Ok(None),
        }
    }
}

impl<T: Serialize> Encoder<&T> for FrameCodec<T> {
    type Error = FrameError;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = postcard::to_stdvec(item)?;
        if body.len() > self.max {
            return Err(FrameError::TooLarge {
                len: body.len(),
                max: self.max,
            });
        }
        self.length.encode(bytes::Bytes::from(body), dst)?;
        Ok(())
    }
}

/// The sending half of a peer stream.
pub type FrameTx<T> = FramedWrite<quinn::SendStream, FrameCodec<T>>;
/// The receiving half of a peer stream.
pub type FrameRx<T> = FramedRead<quinn::RecvStream, FrameCodec<T>>;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u64),
        Text { room: String, body: Vec<u8> },
    }

    fn encode(msg: &Msg) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::<Msg>::new(1024).encode(msg, &mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trips_and_waits_for_whole_frames() {
        let msgs = [
            Msg::Ping(7),
            Msg::Text {
                room: "lobby".into(),
                body: vec![0, 255, 1],
            },
        ];
        let mut wire = BytesMut::new();
        for m in &msgs {
            wire.extend_from_slice(&encode(m));
        }
        let mut codec = FrameCodec::<Msg>::new(1024);
        // Byte by byte: nothing decodes before its frame is complete.
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            if let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn oversized_frame_is_refused_from_its_length() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(1025u32).to_be_bytes());
        let err = FrameCodec::<Msg>::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_anything_is_written() {
        let mut codec = FrameCodec::<Msg>::new(1024);
        let mut buf = BytesMut::new();
        let big = Msg::Text {
            room: "lobby".into(),
            body: vec![7; 2000],
        };
        let err = codec.encode(&big, &mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 1024, .. }),
            "{err}"
        );
        assert!(buf.is_empty());
        // The codec goes on with the next message.
        codec.encode(&Msg::Ping(1), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Msg::Ping(1)));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(&[9, 9, 9]);
        let err = FrameCodec::<Msg>::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    /// Random and mutated input never panics, and whatever decodes survives a round trip.
    #[test]
    fn random_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let valid = encode(&Msg::Text {
            room: "r".into(),
            body: vec![1, 2, 3],
        });
        for _ in 0..20_000 {
            let mut input = if rng.random_bool(0.5) {
                valid.clone()
            } else {
                let len = rng.random_range(0..40);
                BytesMut::from(&(0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>()[..])
            };
            for _ in 0..rng.random_range(0..4) {
                if !input.is_empty() {
                    let i = rng.random_range(0..input.len());
                    input[i] = rng.random();
                }
            }
            let mut codec = FrameCodec::<Msg>::new(64);
            while let Ok(Some(msg)) = codec.decode(&mut input) {
                let mut again = encode(&msg);
                assert_eq!(codec.decode(&mut again).unwrap(), Some(msg));
            }
        }
    }
}
