//! Randomised tests of every decoder that takes bytes from the network: many inputs
//! built from the protocols' own alphabet (type digits, separators, brackets, quotes,
//! placeholders), plus mutations of valid packets. Nothing may panic, and whatever
//! decodes must encode back to something that decodes the same.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::engineio::session::{Session, Timing, Transport};
use super::{engineio, native, socketio};

/// Pieces that make decoders take their less common paths.
const PIECES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "9",
    "b",
    "-",
    "/",
    ",",
    "[",
    "]",
    "{",
    "}",
    "\"",
    ":",
    "\\",
    "\u{1e}",
    "probe",
    "abc",
    "é",
    "😀",
    "null",
    "true",
    "12",
    "99999999999999999999",
    "\"x\"",
    "\"message\"",
    "\"connect\"",
    "{\"_placeholder\":true,\"num\":0}",
    "{\"_placeholder\":true,\"num\":7}",
    "AQID",
    "====",
    "/custom,",
    "42[\"e\",1]",
    "451-[\"e\",{\"_placeholder\":true,\"num\":0}]",
    "{\"type\":\"emit\"",
    "\"room\":\"r\"",
    "\"ref\":1",
    "\"data\":",
    "}",
];

const VALID: &[&str] = &[
    // Socket.IO packets as the Socket.IO decoder sees them...
    "0",
    "0/custom,{\"token\":\"1\"}",
    "2[\"message\",1,\"2\",{\"3\":[true]}]",
    "212[\"m\"]",
    "52-[\"m\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
    "3/admin,13[\"bar\"]",
    "1/admin,",
    // ...and inside Engine.IO messages, as the Engine.IO decoder sees them.
    "40",
    "40/custom,{\"token\":\"1\"}",
    "42[\"message\",1,\"2\",{\"3\":[true]}]",
    "4212[\"m\"]",
    "452-[\"m\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
    "43/admin,13[\"bar\"]",
    "4hello\u{1e}bAQIDBA==\u{1e}3\u{1e}6",
    "{\"type\":\"emit\",\"room\":\"r\",\"event\":\"e\",\"data\":[1],\"ref\":1}",
];

fn random_input(rng: &mut StdRng) -> String {
    if rng.random_bool(0.3) {
        // Mutate a valid input: cut it, or splice a piece in.
        let mut s: Vec<char> = VALID[rng.random_range(0..VALID.len())].chars().collect();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..=s.len());
            if rng.random_bool(0.5) {
                s.truncate(at);
            } else {
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                s.splice(at..at, piece.chars());
            }
        }
        return s.into_iter().collect();
    }
    (0..rng.random_range(0..12))
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

#[test]
fn decoders_never_panic_and_round_trip() {
    let mut rng = StdRng::seed_from_u64(0xed6e_7007);
    let timing = Timing {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
    };
    let now = Instant::now();
    let mut decoded = 0;
    let mut events = 0;
    for _ in 0..50_000 {
        let input = random_input(&mut rng);

        if let Ok(packets) = engineio::decode_payload(&input) {
            let again = engineio::decode_payload(&engineio::encode_payload(&packets));
            assert_eq!(again.as_ref(), Ok(&packets), "{input:?}");
        }
        let mut session = Session::new(now, timing, Transport::Polling);
        let _ = session.on_post(&input, now);
        let _ = session.on_probe(&input);
        let _ = session.on_ws_text(&input, now);

        if let Ok(p) = socketio::decode(&input) {
            decoded += 1;
            assert_eq!(socketio::decode(&socketio::encode(&p)), Ok(p), "{input:?}");
        }
        let mut r = socketio::Reassembly::default();
        if r.text(&input).is_ok() {
            for _ in 0..rng.random_range(0..3) {
                let _ = r.binary(vec![1, 2, 3].into());
            }
        }
        if let Ok(Some((p, _))) = socketio::Reassembly::default().text(&input)
            && p.kind == socketio::Kind::Event
            && let Some(data) = &p.data
            && let Ok((_, payload)) = socketio::split_event(data, Vec::new())
        {
            events += 1;
            let _ = payload.validate();
            let _ = socketio::event_data("e", &payload, Some("n1:1"));
            let _ = socketio::ack_data(&payload);
        }

        let _ = native::decode_text(&input, 64 * 1024);
        let _ = native::decode_binary(input.as_bytes(), 64 * 1024);
    }
    // The generator must reach past the first byte of the Socket.IO decoder.
    assert!(decoded > 1_000, "only {decoded} inputs decoded");
    assert!(events > 50, "only {events} events split");
    eprintln!("{decoded} Socket.IO packets decoded, {events} events split");
}
