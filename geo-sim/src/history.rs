//! The recorded history of a run: one JSON object per line, every client operation and
//! every fault, stamped in milliseconds since the run started by the one clock of the
//! process that recorded it. The checker reads nothing else, so a history can be
//! checked again offline (`geo-sim check`).

use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `client` is connected to `node` as session `session` (its `welcome`).
    Connect {
        client: String,
        node: String,
        session: String,
    },
    /// `client` became a member of `room` (a fresh join, not a resume): it is owed
    /// what is sent from now on, not before.
    Join { client: String, room: String },
    /// `client` left `room` on purpose: it is owed nothing sent after this.
    Leave { client: String, room: String },
    /// `client`'s connection went away, noticed now; `why`: `edge` (the edge closed or
    /// broke it), `silent` (nothing heard for too long), `churn`, `reset`.
    Drop {
        client: String,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// `client` is a member again after a drop, on `node`.
    Resume {
        client: String,
        room: String,
        node: String,
    },
    /// `client` sent message number `n` of its own to `room`.
    Send {
        client: String,
        room: String,
        n: u64,
    },
    /// The node acknowledged `client`'s message `n` (`ok`): it must not be lost.
    Ack {
        client: String,
        room: String,
        n: u64,
    },
    /// The node answered `client`'s message `n` with an error (`code`): not sent.
    Refused {
        client: String,
        room: String,
        n: u64,
        code: String,
    },
    /// `client` received `from`'s message `n` in `room`.
    Deliver {
        client: String,
        room: String,
        from: String,
        n: u64,
    },
    /// The room told `client` exactly how many events it could not have (a history gap).
    Gap {
        client: String,
        room: String,
        missed: u64,
    },
    /// `client` asked for an increment of `by` (positive) to `room`'s counter; `id`
    /// pairs it with its acknowledgement.
    Increment {
        client: String,
        room: String,
        id: u64,
        by: u64,
    },
    /// The increment `id` of `client` was acknowledged: it must be counted.
    IncrementAcked {
        client: String,
        room: String,
        id: u64,
    },
    /// After the run settled: `room`'s counter as `node` has it.
    CounterRead {
        room: String,
        node: String,
        value: i64,
    },
    /// After the run settled: a digest of `room`'s document on `node`, and when it last
    /// changed there.
    Document {
        room: String,
        node: String,
        digest: String,
        changed_ms: u64,
    },
    /// After the presence grace period: who `node` says is in `room`.
    Presence {
        room: String,
        node: String,
        members: Vec<String>,
    },
    /// `node`'s control plane applied `index` (entry digest `digest`).
    Applied {
        node: String,
        index: u64,
        digest: String,
    },
    /// `node` says the control plane's leader is `leader` (none: it knows of none).
    Leader {
        node: String,
        leader: Option<String>,
        term: u64,
    },
    /// A control-plane write (a deploy) through `via`, and how it went.
    ControlWrite {
        via: String,
        what: String,
        ok: bool,
        took_ms: u64,
    },
    /// After `after` healed, every replica of `room` held every change any replica
    /// had when it healed, `took_ms` later (none: not within the patience).
    Converged {
        room: String,
        after: String,
        took_ms: Option<u64>,
    },
    /// `node`'s process panicked (its log says where and what), whether or not it
    /// went on serving: found in the logs when the run ends.
    Panicked { node: String, what: String },
    /// `node`'s process ended though no fault stopped it (`status`: how), found when
    /// geo-sim last steered it or when the run ends.
    Exited { node: String, status: String },
    /// The run stopped before its end: geo-sim could not go on (`why`).
    Aborted { why: String },
    /// A run phase began: `arrival`, `calibration`, `run`, `settle`.
    Phase { name: String },
    /// A fault began (`what` says which, e.g. `kill us-east-1`).
    FaultStart { what: String },
    /// A fault ended.
    FaultEnd { what: String },
}

/// A history file's records, in file order; a line that does not parse is an error
/// naming it.
pub fn read(input: impl BufRead) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("history line {}: {e}", i + 1))?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_one_line_of_json_each() {
        let r = Record {
            t_ms: 12,
            op: Op::Deliver {
                client: "u2".into(),
                room: "lobby".into(),
                from: "u1".into(),
                n: 3,
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"t_ms":12,"op":"deliver","client":"u2","room":"lobby","from":"u1","n":3}"#
        );
        let back = read(format!("{line}\n\n{line}\n").as_bytes()).unwrap();
        assert_eq!(back, vec![r.clone(), r]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = read("{\"t_ms\":1,\"op\":\"fault_start\",\"what\":\"x\"}\n{nope\n".as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
