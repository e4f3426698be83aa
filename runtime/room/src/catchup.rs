//! What a member coming back gets: the events it missed that some replica still has,
//! once each and in per-origin order, and an exact count of those nobody has.
//!
//! Pure: fed the events known (this replica's log, and what other replicas sent for
//! the member), the positions known to have been reached (cursors that say "numbers up
//! to here were used"), and how far this replica has delivered (what lies beyond comes
//! live). Because numbers are dense within a run (see [`Seq`]), a number between two
//! used ones that no source has is an event that was lost: it is counted. What lies
//! between the end of one run and the start of the next is nothing anyone can know,
//! and is never counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::log::LogEntry;
use edgeroom_proto::Cursor;
use edgeroom_proto::ids::{ConnId, NodeId, Seq};

/// The catch-up for one member.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// For the member, oldest first, per origin in sequence order.
    pub events: Vec<Arc<LogEntry>>,
    /// Events after the member's cursor that were used and that no source has.
    pub missing: u64,
    /// The member's cursor once it has these events: its own, with what only the
    /// others had. What it covers is not to be sent to the member again, nor forgotten
    /// by a cursor handed to it later (see `LogEntry::at_least`).
    pub reached: Cursor,
}

/// The catch-up after `cursor` for `conn`.
///
/// - `local`: this replica's log after the cursor, in log order.
/// - `others`: what other replicas sent for the member: any order, duplicates and
///   events the log has allowed.
/// - `used`: cursors of positions known to have been reached (a replica's head, what
///   its log evicted).
/// - `upto`: what this replica has delivered; later events reach the member live, so
///   they are neither given nor counted here.
///
/// Events only the others have go first (copied, each with the member's own cursor
/// after it, since this room's log never held them), then the log's in log order with
/// the cursors they were logged with. An origin whose events from the others fall
/// between its logged ones (this replica skipped a gap another one could fill) goes
/// first as a whole, in sequence order, so no cursor handed out covers an event the
/// member has not been given yet.
pub fn catch_up(
    conn: &ConnId,
    cursor: &Cursor,
    local: Vec<Arc<LogEntry>>,
    others: Vec<Arc<LogEntry>>,
    used: &[&Cursor],
    upto: &Cursor,
) -> CatchUp {
    let wanted = |e: &LogEntry| {
        upto.seen(&e.origin).is_some_and(|bound| e.seq <= bound) && !cursor.covers(&e.origin, e.seq)
    };
    let local: Vec<Arc<LogEntry>> = local.into_iter().filter(|e| wanted(e)).collect();
    let mut have: HashMap<NodeId, BTreeSet<Seq>> = HashMap::new();
    for e in &local {
        have.entry(e.origin.clone()).or_default().insert(e.seq);
    }
    // Per origin, what only the others have.
    let mut early: HashMap<NodeId, BTreeMap<Seq, Arc<LogEntry>>> = HashMap::new();
    for e in others.into_iter().filter(|e| wanted(e)) {
        if have.get(&e.origin).is_some_and(|h| h.contains(&e.seq)) {
            continue;
        }
        early
            .entry(e.origin.clone())
            .or_default()
            .entry(e.seq)
            .or_insert(e);
    }
    let mut missing = 0;
    for (origin, bound) in upto.iter() {
        let mut all = have.get(origin).cloned().unwrap_or_default();
        all.extend(
            early
                .get(origin)
                .into_iter()
                .flat_map(|m| m.keys().copied()),
        );
        let markers = used.iter().filter_map(|c| c.seen(origin)).chain([bound]);
        missing += lost(cursor.seen(origin), &all, markers, bound);
    }
    // Origins whose early events interleave with the logged ones go first whole.
    let mixed: BTreeSet<NodeId> = early
        .iter()
        .filter(|(origin, m)| {
            let first_logged = have.get(*origin).and_then(|h| h.first().copied());
            let last_early = m.keys().next_back().copied();
            matches!((first_logged, last_early), (Some(f), Some(l)) if l > f)
        })
        .map(|(o, _)| o.clone())
        .collect();
    let mut late = Vec::new();
    for e in local {
        match mixed.contains(&e.origin) {
            true => {
                early.entry(e.origin.clone()).or_default().insert(e.seq, e);
            }
            false => late.push(e),
        }
    }
    let mut at = cursor.clone();
    let mut events: Vec<Arc<LogEntry>> = interleave(conn, early)
        .into_iter()
        .map(|e| {
            at.advance(&e.origin, e.seq);
            Arc::new(e.with_cursor(at.to_string()))
        })
        .collect();
    events.extend(
        late.into_iter()
            .filter(|e| e.target.includes(conn))
            .map(|e| e.at_least(&at)),
    );
    // An emit retried on another node while its first node was cut off ran on both:
    // the same event under two origins, with one key. The member gets it once (a
    // replica that has one does not deliver the other live either).
    let mut keys = HashSet::new();
    events.retain(|e| e.key.as_ref().is_none_or(|k| keys.insert(k.clone())));
    CatchUp {
        events,
        missing,
        reached: at,
    }
}

/// Used numbers in `(after, bound]` that are not in `have` (all of which lie there).
/// Without `after` (the member saw nothing of this origin), only holes between the
/// events known are counted.
fn lost(
    after: Option<Seq>,
    have: &BTreeSet<Seq>,
    markers: impl Iterator<Item = Seq>,
    bound: Seq,
) -> u64 {
    // Per run, the highest number known to have been used (at most `bound`).
    let mut top: BTreeMap<u64, u64> = BTreeMap::new();
    for s in have.iter().copied().chain(markers.map(|m| m.min(bound))) {
        let t = top.entry(s.run).or_default();
        *t = (*t).max(s.n);
    }
    let mut used = 0;
    match after {
        Some(after) => {
            for (&run, &n) in top.range(after.run..) {
                used += match run == after.run {
                    true => n.saturating_sub(after.n),
                    false => n,
                };
            }
        }
        None => {
            // From the first event known of each run to its highest.
            for (&run, &n) in &top {
                if let Some(first) = have
                    .range(Seq::new(run, 0)..=Seq::new(run, u64::MAX))
                    .next()
                {
                    used += n - first.n + 1;
                }
            }
        }
    }
    let counted = have
        .iter()
        .filter(|s| after.is_none_or(|a| **s > a))
        .count() as u64;
    debug_assert!(used >= counted, "every event known is a used number");
    used.saturating_sub(counted)
}

/// Each origin's events in sequence order; origins interleaved by when they were
/// sent (their clocks may disagree: that moves only the interleaving).
fn interleave(
    conn: &ConnId,
    by_origin: HashMap<NodeId, BTreeMap<Seq, Arc<LogEntry>>>,
) -> Vec<Arc<LogEntry>> {
    let mut runs: Vec<std::vec::IntoIter<Arc<LogEntry>>> = by_origin
        .into_values()
        .map(|m| {
            m.into_values()
                .filter(|e| e.target.includes(conn))
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let mut heads: Vec<Option<Arc<LogEntry>>> = runs.iter_mut().map(Iterator::next).collect();
    let mut out = Vec::new();
    while let Some(i) = (0..heads.len())
        .filter(|&i| heads[i].is_some())
        .min_by_key(|&i| heads[i].as_ref().map(|e| (e.at_ms, e.origin.clone())))
    {
        if let Some(e) = heads[i].take() {
            out.push(e);
        }
        heads[i] = runs[i].next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Sequenced, Target};
    use edgeroom_proto::ids::RoomId;
    use edgeroom_proto::payload::Payload;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn ev(origin: &str, run: u64, n: u64, at_ms: u64) -> Arc<LogEntry> {
        ev_for(origin, run, n, at_ms, Target::All)
    }

    fn ev_for(origin: &str, run: u64, n: u64, at_ms: u64, target: Target) -> Arc<LogEntry> {
        Arc::new(LogEntry::new(
            RoomId::new("r").unwrap(),
            Sequenced {
                origin: node(origin),
                seq: Seq::new(run, n),
                at_ms,
                target,
                event: format!("{origin}{run}.{n}"),
                payload: Payload::empty(),
                from: None,
                key: None,
            },
            String::new(),
        ))
    }

    fn cursor(s: &str) -> Cursor {
        s.parse().unwrap()
    }

    fn names(c: &CatchUp) -> Vec<String> {
        c.events.iter().map(|e| e.event.clone()).collect()
    }

    fn me() -> ConnId {
        ConnId::from_trusted("me".into())
    }

    #[test]
    fn gives_what_it_missed_once_in_order() {
        let others = vec![
            ev("a", 1, 3, 30),
            ev("a", 1, 2, 20),
            ev("b", 1, 1, 25),
            ev("a", 1, 2, 20), // from a second source
            ev("a", 1, 1, 10), // seen already
        ];
        let c = catch_up(
            &me(),
            &cursor("a:1.1"),
            vec![],
            others,
            &[],
            &cursor("a:1.3,b:1.1"),
        );
        assert_eq!(names(&c), ["a1.2", "b1.1", "a1.3"]);
        assert_eq!(c.missing, 0);
        // Each carries the member's cursor after it.
        assert_eq!(c.events[1].cursor, "a:1.2,b:1.1");
    }

    /// The log's events carry the log's cursors, which may lack what only the others
    /// had, and what the member had seen elsewhere: handed to the member, they carry
    /// both, so a resume with the last cursor it got does not get them again.
    #[test]
    fn cursors_handed_out_never_forget_what_the_member_has() {
        let logged = |origin: &str, n: u64, log_cursor: &str| {
            Arc::new(ev(origin, 1, n, n * 10).with_cursor(log_cursor.into()))
        };
        // Logged before this replica had a's 2, which only the others have.
        let local = vec![logged("b", 1, "a:1.1,b:1.1"), logged("b", 2, "a:1.1,b:1.2")];
        let c = catch_up(
            &me(),
            &cursor("a:1.1,c:1.7"),
            local,
            vec![ev("a", 1, 2, 5)],
            &[],
            &cursor("a:1.2,b:1.2"),
        );
        assert_eq!(names(&c), ["a1.2", "b1.1", "b1.2"]);
        for e in &c.events {
            let at = cursor(&e.cursor);
            assert!(at.covers(&node("a"), Seq::new(1, 2)), "{}", e.cursor);
            assert!(at.covers(&node("c"), Seq::new(1, 7)), "{}", e.cursor);
        }
        assert_eq!(c.events[2].cursor, "a:1.2,b:1.2,c:1.7");
        assert_eq!(c.reached, cursor("a:1.2,c:1.7"));
    }

    /// An emit retried on another node ran on both: one event under two origins with
    /// the same key. The member gets it once.
    #[test]
    fn an_event_under_two_origins_with_one_key_is_given_once() {
        let keyed = |origin: &str, n: u64, key: &str| {
            let mut e = ev(origin, 1, n, n * 10).with_cursor(String::new());
            e.key = Some(key.into());
            Arc::new(e)
        };
        let c = catch_up(
            &me(),
            &cursor("a:1.1,b:1.1"),
            vec![keyed("b", 2, "u/5#0")],
            vec![keyed("a", 2, "u/5#0"), ev("a", 1, 3, 30)],
            &[],
            &cursor("a:1.3,b:1.2"),
        );
        assert_eq!(names(&c), ["a1.2", "a1.3"]);
        assert_eq!(c.reached, cursor("a:1.3,b:1.1"));
    }

    #[test]
    fn what_only_others_have_goes_before_the_log() {
        // This replica's log starts at a:1.4; the others have 1.2 and 1.3.
        let local = vec![ev("b", 2, 1, 5), ev("a", 1, 4, 40)];
        let others = vec![ev("a", 1, 3, 30), ev("a", 1, 2, 20), ev("a", 1, 4, 40)];
        let upto = cursor("a:1.4,b:2.1");
        let c = catch_up(&me(), &cursor("a:1.1"), local, others, &[], &upto);
        assert_eq!(names(&c), ["a1.2", "a1.3", "b2.1", "a1.4"]);
        assert_eq!(c.missing, 0);
    }

    #[test]
    fn an_origin_whose_gap_another_replica_fills_goes_first_whole() {
        // This replica skipped a:1.3 (lost to it); another replica has it.
        let local = vec![ev("a", 1, 2, 20), ev("b", 1, 1, 25), ev("a", 1, 4, 40)];
        let others = vec![ev("a", 1, 3, 30)];
        let upto = cursor("a:1.4,b:1.1");
        let c = catch_up(&me(), &cursor("a:1.1"), local, others, &[], &upto);
        assert_eq!(names(&c), ["a1.2", "a1.3", "a1.4", "b1.1"]);
        assert_eq!(c.missing, 0);
    }

    #[test]
    fn counts_what_nobody_has_in_a_run() {
        // The replica's log starts at a:1.40 (it loaded late); nobody else answered.
        let known: Vec<_> = (40..=45).map(|n| ev("a", 1, n, n)).collect();
        let c = catch_up(
            &me(),
            &cursor("a:1.12"),
            known,
            vec![],
            &[],
            &cursor("a:1.45"),
        );
        assert_eq!(c.events.len(), 6);
        assert_eq!(c.missing, 27, "1.13 to 1.39");
    }

    #[test]
    fn a_new_run_is_never_a_gap() {
        // The origin restarted: run 1 ended somewhere after 1.5, run 9 began.
        let known = vec![ev("a", 9, 1, 50), ev("a", 9, 2, 51)];
        let c = catch_up(
            &me(),
            &cursor("a:1.5"),
            known,
            vec![],
            &[],
            &cursor("a:9.2"),
        );
        assert_eq!((c.events.len(), c.missing), (2, 0));
        // But a run known to have gone further than the member saw counts.
        let known = vec![ev("a", 9, 1, 50)];
        let head = cursor("a:1.8");
        let c = catch_up(
            &me(),
            &cursor("a:1.5"),
            vec![],
            known,
            &[&head],
            &cursor("a:9.1"),
        );
        assert_eq!(c.missing, 3, "1.6 to 1.8 were used, nobody has them");
    }

    #[test]
    fn later_events_come_live_and_are_not_counted() {
        let known = vec![ev("a", 1, 2, 1), ev("a", 1, 3, 2), ev("a", 1, 9, 3)];
        let head = cursor("a:1.20");
        let c = catch_up(
            &me(),
            &cursor("a:1.1"),
            known,
            vec![],
            &[&head],
            &cursor("a:1.3"),
        );
        assert_eq!(
            (names(&c), c.missing),
            (vec!["a1.2".into(), "a1.3".into()], 0)
        );
    }

    #[test]
    fn events_for_others_count_as_had_but_are_not_given() {
        let other = ConnId::from_trusted("other".into());
        let known = vec![
            ev_for("a", 1, 2, 1, Target::Only(other.clone())),
            ev_for("a", 1, 3, 2, Target::AllExcept(me())),
            ev("a", 1, 4, 3),
        ];
        let c = catch_up(
            &me(),
            &cursor("a:1.1"),
            known,
            vec![],
            &[],
            &cursor("a:1.4"),
        );
        assert_eq!((names(&c), c.missing), (vec!["a1.4".into()], 0));
    }

    #[test]
    fn an_origin_it_never_saw_counts_only_holes_between_known_events() {
        let known = vec![ev("b", 3, 10, 1), ev("b", 3, 14, 2)];
        let c = catch_up(
            &me(),
            &cursor("a:1.1"),
            vec![],
            known,
            &[],
            &cursor("a:1.1,b:3.14"),
        );
        assert_eq!((c.events.len(), c.missing), (2, 3));
    }
}
