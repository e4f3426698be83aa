//! The checker: what a history says happened, against what Edgeroom promises.
//!
//! In Jepsen's terms, per room:
//! - **lost**: a message acknowledged to its sender and never delivered to a member that
//!   was in the room when it was sent and stayed (or resumed after a drop);
//! - **duplicated**: delivered to the same member more than once;
//! - **unexpected**: delivered, never sent;
//! - **out of order**: delivered after a later message of the same sender — unless the
//!   earlier one was never acknowledged and its sender connected again between the two
//!   sends: an unacknowledged send is indeterminate (as in Jepsen, it may take effect
//!   any time later), and no client promise orders it before what the client sends on
//!   a new connection (a Socket.IO client does not send it again; a native one sends it
//!   again with its id, and it lands in order). Those are counted apart
//!   (`reordered_unacknowledged`);
//! - **skipped**: numbers a member jumped over between two deliveries from one sender
//!   (sent, never delivered to it; the acknowledged ones among them are also lost).
//!
//! And after the run settles: every node's counter equals the acknowledged increments
//! (plus at most the unacknowledged ones, which may have landed); every replica's
//! document is the same; nobody is listed present who is not a member; every node's
//! control plane applied the same entry at every index and never went back. And no
//! node panicked, even where it went on serving.
//!
//! Pure: a history in, a [`Report`] out. Violations come sorted by time, each with the
//! records around it, so the earliest counter-example is first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::history::{Op, Record};

/// Records shown on each side of a violation.
const CONTEXT: usize = 5;

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub counts: Counts,
    /// Per room, when its documents last changed on any replica (all of them equal).
    pub converged_ms: BTreeMap<String, u64>,
    /// Every violation, earliest first.
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub acknowledged: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub out_of_order: u64,
    pub skipped: u64,
    /// Events rooms told members they could not have (history gaps, reported honestly).
    pub reported_missing: u64,
    /// Unacknowledged messages delivered after a later one their sender sent on a new
    /// connection (see the module's doc: not a violation).
    pub reordered_unacknowledged: u64,
}

/// One broken promise: what, when, and the history around it.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: Kind,
    pub t_ms: u64,
    pub what: String,
    pub around: Vec<Record>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Lost,
    Duplicated,
    Unexpected,
    OutOfOrder,
    Counter,
    Diverged,
    Ghost,
    ControlPlane,
    Panic,
    /// A node's process ended though no fault stopped it.
    Exited,
    /// The run stopped before its end.
    Aborted,
}

/// A message: its room, sender and the sender's number for it.
type MsgId = (String, String, u64);

/// A client's membership of a room, as the history tells it.
#[derive(Debug, Default)]
struct Membership {
    /// When it last joined afresh (not a resume).
    joined: Option<u64>,
    /// When it left on purpose.
    left: Option<u64>,
    /// Whether it is connected at the end (no drop without a later resume).
    connected: bool,
}

/// Check a history.
pub fn check(history: &[Record]) -> Report {
    let mut counts = Counts::default();
    let mut found: Vec<(Kind, usize, String)> = Vec::new();

    let mut members: BTreeMap<(String, String), Membership> = BTreeMap::new();
    let mut sent: HashMap<MsgId, (u64, usize)> = HashMap::new();
    let mut acked: BTreeMap<MsgId, usize> = BTreeMap::new();
    let mut delivered: HashMap<(String, MsgId), usize> = HashMap::new();
    // Per (receiver, room, sender): the highest number delivered so far.
    let mut highest: HashMap<(String, String, String), u64> = HashMap::new();
    let mut increments: HashMap<(String, String, u64), (String, u64)> = HashMap::new();
    let mut counted: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // room -> (acked, unacked)
    let mut acked_increments: BTreeSet<(String, String, u64)> = BTreeSet::new();
    let mut reads: Vec<(usize, String, String, i64)> = Vec::new();
    let mut documents: BTreeMap<String, Vec<(usize, String, String, u64)>> = BTreeMap::new();
    let mut presence: Vec<(usize, String, String, Vec<String>)> = Vec::new();
    let mut applied: BTreeMap<u64, (String, String, usize)> = BTreeMap::new();
    let mut applied_upto: HashMap<String, u64> = HashMap::new();
    // Per client, when it connected (each connection, first and later).
    let mut connects: HashMap<String, Vec<u64>> = HashMap::new();
    // Deliveries after a later message of the sender, judged once acks are all known:
    // (record, receiver, message, the later number delivered before it).
    let mut overtaken: Vec<(usize, String, MsgId, u64)> = Vec::new();

    for (i, r) in history.iter().enumerate() {
        match &r.op {
            Op::Join { client, room } => {
                // A fresh join (the first, or after a resume failed) owes the member
                // only what is sent from now on.
                let m = members.entry((client.clone(), room.clone())).or_default();
                m.joined = Some(r.t_ms);
                m.left = None;
                m.connected = true;
            }
            Op::Leave { client, room } => {
                let m = members.entry((client.clone(), room.clone())).or_default();
                m.left = Some(r.t_ms);
                m.connected = false;
            }
            Op::Drop { client, room, .. } => {
                members
                    .entry((client.clone(), room.clone()))
                    .or_default()
                    .connected = false;
            }
            Op::Resume { client, room, .. } => {
                members
                    .entry((client.clone(), room.clone()))
                    .or_default()
                    .connected = true;
            }
            Op::Send { client, room, n } => {
                counts.sent += 1;
                sent.entry((room.clone(), client.clone(), *n))
                    .or_insert((r.t_ms, i));
            }
            Op::Ack { client, room, n } => {
                if acked
                    .insert((room.clone(), client.clone(), *n), i)
                    .is_none()
                {
                    counts.acknowledged += 1;
                }
            }
            Op::Deliver {
                client,
                room,
                from,
                n,
            } => {
                counts.delivered += 1;
                let id = (room.clone(), from.clone(), *n);
                if !sent.contains_key(&id) {
                    counts.unexpected += 1;
                    found.push((
                        Kind::Unexpected,
                        i,
                        format!("{client} got {from}'s message {n} in {room}, never sent"),
                    ));
                }
                if delivered.insert((client.clone(), id.clone()), i).is_some() {
                    counts.duplicated += 1;
                    found.push((
                        Kind::Duplicated,
                        i,
                        format!("{client} got {from}'s message {n} in {room} again"),
                    ));
                    continue;
                }
                let top = highest
                    .entry((client.clone(), room.clone(), from.clone()))
                    .or_insert(0);
                if *n < *top {
                    overtaken.push((i, client.clone(), id, *top));
                } else {
                    // Numbers jumped over that were sent: skipped by this member.
                    counts.skipped += (*top + 1..*n)
                        .filter(|k| sent.contains_key(&(room.clone(), from.clone(), *k)))
                        .filter(|k| {
                            !delivered
                                .contains_key(&(client.clone(), (room.clone(), from.clone(), *k)))
                        })
                        .count() as u64;
                    *top = *n;
                }
            }
            Op::Gap { missed, .. } => counts.reported_missing += missed,
            Op::Increment {
                client,
                room,
                id,
                by,
            } => {
                increments.insert((client.clone(), room.clone(), *id), (room.clone(), *by));
                counted.entry(room.clone()).or_default().1 += by;
            }
            Op::IncrementAcked { client, room, id } => {
                let key = (client.clone(), room.clone(), *id);
                if let Some((room, by)) = increments.get(&key)
                    && acked_increments.insert(key)
                {
                    let c = counted.entry(room.clone()).or_default();
                    c.0 += by;
                    c.1 -= by;
                }
            }
            Op::CounterRead { room, node, value } => {
                reads.push((i, room.clone(), node.clone(), *value));
            }
            Op::Document {
                room,
                node,
                digest,
                changed_ms,
            } => documents.entry(room.clone()).or_default().push((
                i,
                node.clone(),
                digest.clone(),
                *changed_ms,
            )),
            Op::Presence {
                room,
                node,
                members,
            } => presence.push((i, room.clone(), node.clone(), members.clone())),
            Op::Applied {
                node,
                index,
                digest,
            } => {
                let upto = applied_upto.entry(node.clone()).or_insert(0);
                if *index <= *upto && *upto > 0 {
                    found.push((
                        Kind::ControlPlane,
                        i,
                        format!("{node} applied index {index} after {upto}"),
                    ));
                }
                *upto = (*upto).max(*index);
                match applied.get(index) {
                    Some((other, theirs, _)) if theirs != digest => found.push((
                        Kind::ControlPlane,
                        i,
                        format!(
                            "{node} applied {digest} at index {index}, {other} applied {theirs}"
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        applied.insert(*index, (node.clone(), digest.clone(), i));
                    }
                }
            }
            Op::Panicked { node, what } => {
                found.push((Kind::Panic, i, format!("{node} panicked at {what}")));
            }
            Op::Exited { node, status } => {
                let what = format!("{node}'s process ended on its own ({status})");
                found.push((Kind::Exited, i, what));
            }
            Op::Aborted { why } => {
                found.push((Kind::Aborted, i, format!("the run stopped early: {why}")));
            }
            Op::Connect { client, .. } => connects.entry(client.clone()).or_default().push(r.t_ms),
            Op::Refused { .. }
            | Op::Leader { .. }
            | Op::ControlWrite { .. }
            | Op::Converged { .. }
            | Op::Phase { .. }
            | Op::FaultStart { .. }
            | Op::FaultEnd { .. } => {}
        }
    }

    for (i, client, (room, from, n), top) in overtaken {
        let send_at = |k: u64| sent.get(&(room.clone(), from.clone(), k)).map(|s| s.0);
        let (early, late) = (send_at(n).unwrap_or(0), send_at(top).unwrap_or(0));
        let reconnected = connects
            .get(&from)
            .is_some_and(|ts| ts.iter().any(|&t| t > early && t <= late));
        let unacked = !acked.contains_key(&(room.clone(), from.clone(), n));
        if unacked && reconnected {
            counts.reordered_unacknowledged += 1;
            continue;
        }
        counts.out_of_order += 1;
        found.push((
            Kind::OutOfOrder,
            i,
            format!("{client} got {from}'s message {n} in {room} after {top}"),
        ));
    }

    // Lost: acknowledged, owed to a member that stayed, never delivered to it.
    for ((room, from, n), &ack_at) in &acked {
        let Some(&(sent_at, _)) = sent.get(&(room.clone(), from.clone(), *n)) else {
            continue;
        };
        for ((client, r), m) in &members {
            let owed = r == room
                && client != from
                && m.joined.is_some_and(|j| j <= sent_at)
                && m.left.is_none()
                && m.connected;
            let id = (room.clone(), from.clone(), *n);
            if owed && !delivered.contains_key(&(client.clone(), id)) {
                counts.lost += 1;
                found.push((
                    Kind::Lost,
                    ack_at,
                    format!(
                        "{from}'s message {n} in {room} was acknowledged, {client} never got it"
                    ),
                ));
            }
        }
    }

    for (i, room, node, value) in &reads {
        let (acked, unacked) = counted.get(room).copied().unwrap_or_default();
        let in_range = u64::try_from(*value).is_ok_and(|v| v >= acked && v <= acked + unacked);
        if !in_range {
            found.push((
                Kind::Counter,
                *i,
                format!(
                    "{node} counts {value} in {room}; acknowledged {acked} (+ up to {unacked} unacknowledged)"
                ),
            ));
        }
    }
    let mut first_read: BTreeMap<&String, &(usize, String, String, i64)> = BTreeMap::new();
    for read in &reads {
        let first = *first_read.entry(&read.1).or_insert(read);
        if first.3 != read.3 {
            found.push((
                Kind::Counter,
                read.0,
                format!(
                    "{}: {} counts {}, {} counts {}",
                    read.1, first.2, first.3, read.2, read.3
                ),
            ));
        }
    }

    let mut converged_ms = BTreeMap::new();
    for (room, docs) in &documents {
        if let Some(first) = docs.first() {
            match docs.iter().find(|d| d.2 != first.2) {
                Some(other) => found.push((
                    Kind::Diverged,
                    other.0,
                    format!(
                        "{room}'s document differs: {} has {}, {} has {}",
                        first.1, first.2, other.1, other.2
                    ),
                )),
                None => {
                    converged_ms.insert(room.clone(), docs.iter().map(|d| d.3).max().unwrap_or(0));
                }
            }
        }
    }

    for (i, room, node, listed) in &presence {
        for client in listed {
            let member = members
                .get(&(client.clone(), room.clone()))
                .is_some_and(|m| m.left.is_none() && m.connected);
            if !member {
                found.push((
                    Kind::Ghost,
                    *i,
                    format!("{node} lists {client} in {room}, which is not a member"),
                ));
            }
        }
    }

    found.sort_by_key(|(kind, i, _)| (history[*i].t_ms, *i, *kind));
    let violations: Vec<Violation> = found
        .into_iter()
        .map(|(kind, i, what)| Violation {
            kind,
            t_ms: history[i].t_ms,
            what,
            around: history[i.saturating_sub(CONTEXT)..(i + CONTEXT + 1).min(history.len())]
                .to_vec(),
        })
        .collect();
    Report {
        verdict: if violations.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        counts,
        converged_ms,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_ms: u64, op: Op) -> Record {
        Record { t_ms, op }
    }
    fn join(t: u64, c: &str) -> Record {
        at(
            t,
            Op::Join {
                client: c.into(),
                room: "r".into(),
            },
        )
    }
    fn send(t: u64, c: &str, n: u64) -> Vec<Record> {
        let (client, room) = (c.to_string(), "r".to_string());
        vec![
            at(
                t,
                Op::Send {
                    client: client.clone(),
                    room: room.clone(),
                    n,
                },
            ),
            at(t + 1, Op::Ack { client, room, n }),
        ]
    }
    fn connect(c: &str) -> Op {
        Op::Connect {
            client: c.into(),
            node: "n1".into(),
            session: "s".into(),
        }
    }
    fn deliver(t: u64, to: &str, from: &str, n: u64) -> Record {
        at(
            t,
            Op::Deliver {
                client: to.into(),
                room: "r".into(),
                from: from.into(),
                n,
            },
        )
    }

    /// Two members; a sends 1..=3 and b gets each once, in order.
    fn clean() -> Vec<Record> {
        let mut h = vec![join(0, "a"), join(1, "b")];
        for n in 1..=3 {
            h.extend(send(10 * n, "a", n));
            h.push(deliver(10 * n + 5, "b", "a", n));
        }
        h
    }

    fn kinds(r: &Report) -> Vec<Kind> {
        r.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check(&clean());
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.violations);
        assert_eq!(r.counts.acknowledged, 3);
        assert_eq!(r.counts.delivered, 3);
        assert_eq!(r.counts.lost, 0);
    }

    #[test]
    fn a_planted_loss_is_caught_with_its_context() {
        let mut h = clean();
        h.retain(|r| !matches!(&r.op, Op::Deliver { n: 2, .. }));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![Kind::Lost]);
        assert_eq!(r.counts.lost, 1);
        assert_eq!(r.counts.skipped, 1);
        assert!(r.violations[0].what.contains("message 2"));
        assert!(!r.violations[0].around.is_empty());
    }

    #[test]
    fn a_member_that_left_or_never_came_back_is_owed_nothing() {
        let mut h = clean();
        h.retain(|r| !matches!(&r.op, Op::Deliver { n: 3, .. }));
        let drop = at(
            25,
            Op::Drop {
                client: "b".into(),
                room: "r".into(),
                why: None,
            },
        );
        let mut gone = h.clone();
        gone.push(drop.clone());
        assert_eq!(check(&gone).verdict, Verdict::Pass);
        // Back after the drop: message 3 is owed again.
        let mut back = gone;
        back.push(at(
            40,
            Op::Resume {
                client: "b".into(),
                room: "r".into(),
                node: "n2".into(),
            },
        ));
        assert_eq!(kinds(&check(&back)), vec![Kind::Lost]);
        // A member that joined after the send is not owed it.
        let mut late = clean();
        late.push(join(100, "c"));
        assert_eq!(check(&late).verdict, Verdict::Pass);
    }

    #[test]
    fn a_fresh_join_after_a_drop_is_owed_only_what_follows_it() {
        let mut h = vec![join(0, "a"), join(1, "b")];
        h.push(at(
            5,
            Op::Drop {
                client: "b".into(),
                room: "r".into(),
                why: Some("edge".into()),
            },
        ));
        h.extend(send(10, "a", 1));
        // Its resume failed: it joined afresh.
        h.push(join(20, "b"));
        h.extend(send(30, "a", 2));
        let mut got = h.clone();
        got.push(deliver(35, "b", "a", 2));
        assert_eq!(
            check(&got).verdict,
            Verdict::Pass,
            "message 1 is not owed to b"
        );
        let r = check(&h);
        assert_eq!(kinds(&r), vec![Kind::Lost]);
        assert!(
            r.violations[0].what.contains("message 2"),
            "{}",
            r.violations[0].what
        );
    }

    #[test]
    fn duplicates_unexpected_and_reordering_are_caught() {
        let mut h = clean();
        h.push(deliver(50, "b", "a", 2));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![Kind::Duplicated]);

        let mut h = clean();
        h.push(deliver(50, "b", "a", 9));
        assert_eq!(kinds(&check(&h)), vec![Kind::Unexpected]);

        let mut h = vec![join(0, "a"), join(1, "b")];
        h.extend(send(10, "a", 1));
        h.extend(send(20, "a", 2));
        h.push(deliver(30, "b", "a", 2));
        h.push(deliver(31, "b", "a", 1));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![Kind::OutOfOrder]);
        assert_eq!(r.counts.out_of_order, 1);

        // Never acknowledged, but sent on the same connection as the later one: its
        // order was promised.
        let mut h = vec![join(0, "a"), join(1, "b")];
        h.push(at(2, connect("a")));
        h.push(send(10, "a", 1).remove(0));
        h.extend(send(20, "a", 2));
        h.push(deliver(30, "b", "a", 2));
        h.push(deliver(31, "b", "a", 1));
        assert_eq!(kinds(&check(&h)), vec![Kind::OutOfOrder]);
    }

    /// An unacknowledged message whose sender connected again before its next one is
    /// indeterminate: landing after that one is counted, not a violation. Acknowledged,
    /// it would be.
    #[test]
    fn an_unacknowledged_message_overtaken_across_a_reconnection_is_no_violation() {
        let history = |ack_first: bool| {
            let mut h = vec![join(0, "a"), join(1, "b"), at(2, connect("a"))];
            let mut first = send(10, "a", 1);
            if !ack_first {
                first.pop();
            }
            h.extend(first);
            h.push(at(15, connect("a")));
            h.extend(send(20, "a", 2));
            h.push(deliver(30, "b", "a", 2));
            h.push(deliver(31, "b", "a", 1));
            h
        };
        let r = check(&history(false));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(
            (r.counts.out_of_order, r.counts.reordered_unacknowledged),
            (0, 1)
        );
        assert_eq!(kinds(&check(&history(true))), vec![Kind::OutOfOrder]);
    }

    #[test]
    fn counters_must_hold_the_acknowledged_increments_everywhere() {
        let inc = |t, id, by| {
            at(
                t,
                Op::Increment {
                    client: "a".into(),
                    room: "c".into(),
                    id,
                    by,
                },
            )
        };
        let ack = |t, id| {
            at(
                t,
                Op::IncrementAcked {
                    client: "a".into(),
                    room: "c".into(),
                    id,
                },
            )
        };
        let read = |node: &str, value| {
            at(
                100,
                Op::CounterRead {
                    room: "c".into(),
                    node: node.into(),
                    value,
                },
            )
        };
        // Two acknowledged (1 + 2), one not (4): 3..=7 is honest, equal everywhere.
        let base = vec![
            inc(1, 1, 1),
            ack(2, 1),
            inc(3, 2, 2),
            ack(4, 2),
            inc(5, 3, 4),
        ];
        let with = |reads: Vec<Record>| {
            let mut h = base.clone();
            h.extend(reads);
            check(&h)
        };
        assert_eq!(
            with(vec![read("n1", 3), read("n2", 3)]).verdict,
            Verdict::Pass
        );
        assert_eq!(
            with(vec![read("n1", 7), read("n2", 7)]).verdict,
            Verdict::Pass
        );
        assert_eq!(kinds(&with(vec![read("n1", 2)])), vec![Kind::Counter]);
        assert_eq!(kinds(&with(vec![read("n1", 8)])), vec![Kind::Counter]);
        assert_eq!(
            kinds(&with(vec![read("n1", 3), read("n2", 7)])),
            vec![Kind::Counter]
        );
    }

    #[test]
    fn diverged_documents_ghosts_and_control_plane_forks_are_caught() {
        let doc = |node: &str, digest: &str, changed_ms| {
            at(
                200,
                Op::Document {
                    room: "r".into(),
                    node: node.into(),
                    digest: digest.into(),
                    changed_ms,
                },
            )
        };
        let mut h = clean();
        h.extend([doc("n1", "x", 150), doc("n2", "x", 170)]);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(r.converged_ms.get("r"), Some(&170));
        h.push(doc("n3", "y", 160));
        assert_eq!(kinds(&check(&h)), vec![Kind::Diverged]);

        let listed = |members: &[&str]| {
            at(
                300,
                Op::Presence {
                    room: "r".into(),
                    node: "n1".into(),
                    members: members.iter().map(|m| m.to_string()).collect(),
                },
            )
        };
        let mut h = clean();
        h.push(at(
            250,
            Op::Leave {
                client: "a".into(),
                room: "r".into(),
            },
        ));
        h.push(listed(&["b"]));
        assert_eq!(check(&h).verdict, Verdict::Pass);
        h.push(listed(&["a", "b"]));
        assert_eq!(kinds(&check(&h)), vec![Kind::Ghost]);

        let applied = |t, node: &str, index, digest: &str| {
            at(
                t,
                Op::Applied {
                    node: node.into(),
                    index,
                    digest: digest.into(),
                },
            )
        };
        let ok = vec![
            applied(1, "n1", 1, "a"),
            applied(2, "n2", 1, "a"),
            applied(3, "n1", 2, "b"),
        ];
        assert_eq!(check(&ok).verdict, Verdict::Pass);
        let mut fork = ok.clone();
        fork.push(applied(4, "n2", 2, "c"));
        assert_eq!(kinds(&check(&fork)), vec![Kind::ControlPlane]);
        let mut back = ok;
        back.push(applied(5, "n1", 1, "a"));
        assert_eq!(kinds(&check(&back)), vec![Kind::ControlPlane]);

        let mut h = clean();
        h.push(at(
            300,
            Op::Panicked {
                node: "n1".into(),
                what: "core.rs:292:9: sequence numbers only grow per origin".into(),
            },
        ));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![Kind::Panic]);
        assert!(
            r.violations[0]
                .what
                .contains("n1 panicked at core.rs:292:9")
        );

        let mut h = clean();
        h.push(at(
            300,
            Op::Exited {
                node: "n2".into(),
                status: "signal: 9 (SIGKILL)".into(),
            },
        ));
        h.push(at(
            301,
            Op::Aborted {
                why: "n2 exited on its own".into(),
            },
        ));
        assert_eq!(kinds(&check(&h)), vec![Kind::Exited, Kind::Aborted]);
    }

    #[test]
    fn violations_come_earliest_first() {
        let mut h = clean();
        h.push(deliver(90, "b", "a", 9));
        h.push(deliver(95, "b", "a", 1));
        h.retain(|r| !matches!(&r.op, Op::Deliver { n: 2, .. }));
        let r = check(&h);
        let times: Vec<u64> = r.violations.iter().map(|v| v.t_ms).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
        assert_eq!(r.violations[0].kind, Kind::Lost);
    }
}
