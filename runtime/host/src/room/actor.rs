//! The room actor: a task that owns one room and handles its commands one at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::journal;
use super::outbox::{Link, Outbound};
use super::replica::{
    Adoption, Bounds, Ctx, Effect, Input, Peers, Replica, Replicator, RoomMsg, Settled,
};
use super::replicate::PeerMsg;
use super::world::{EmitResult, Outgoing, Place, World};
use super::{
    AdoptOutcome, JoinOutcome, MemberView, ReattachOutcome, RoomCmd, RoomKey, RoomView, Rooms,
};
use crate::apps::LiveRx;
use edgeroom_proto::ids::{ConnId, NodeId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::{Ref, ServerFrame};
use edgeroom_proto::{Cursor, ErrorCode, ProtoError};
use edgeroom_room::core::LogEntry;
use edgeroom_room::core::{LogLimits, RoomCore};
use edgeroom_room::interest::RoomRef;
use edgeroom_room::state::RoomDoc;
use edgeroom_sandbox::{Call, Failure, Returned, Slot};

/// Kicks that cause kicks are followed this many rounds deep, no more.
const MAX_KICK_ROUNDS: usize = 8;
/// A standalone room's saved document is compacted once it is over twice its content
/// plus this: compaction costs about one pass over the content, and saves (where it
/// is checked) come only after `limits.state_append_bytes` of changes.
const COMPACT_SLACK: usize = 4096;
/// Peers' messages waiting in a room's inbox taken in together, at most. Not a limit
/// on anything a peer holds (the inbox is `limits.room_inbox`): it keeps one turn of
/// the actor short, so its timers and repairs are not put off behind a full inbox.
const PEER_BATCH: usize = 64;
/// Unsaved document changes are written at most this often.
const SAVE_EVERY_MS: u64 = 1000;

struct Actor {
    rooms: Arc<Rooms>,
    key: RoomKey,
    live: LiveRx<World>,
    slot: Slot<World>,
    timer_at: Option<Instant>,
    /// On a standalone node: what of the room is in its journal already.
    journal: Option<journal::Journaled>,
    empty_since_ms: Option<u64>,
    last_save_ms: u64,
    /// A replicated room's document outweighs its content: its replicas should compact
    /// it together.
    compact_wanted: bool,
    /// In a cluster: this room's part in replication.
    replica: Option<Replica>,
    /// The history bytes last added to the node's `history_bytes` gauge.
    history_bytes: usize,
    /// The room's count of idempotency ids dropped over their caps, as last added to
    /// `edgeroom_idempotency_ids_dropped`.
    ids_dropped: u64,
    /// Bytes of changes appended since the last whole save, and that save's size.
    appended_bytes: usize,
    saved_bytes: usize,
}

pub(super) fn spawn(
    rooms: Arc<Rooms>,
    key: RoomKey,
    live: LiveRx<World>,
    rx: mpsc::Receiver<RoomCmd>,
) {
    tokio::spawn(async move {
        let env = rooms.env();
        let (store, runs) = (env.store.clone(), env.runs.clone());
        let (app, room) = (key.app.clone(), key.room.clone());
        // A standalone room keeps a journal beside its document (a replicated one
        // gets its history and members back from its other replicas).
        let standalone = env.replicator.is_none();
        let loaded = tokio::task::spawn_blocking(move || {
            let journal = match standalone {
                true => store.room_journal(&app, &room).map(Some),
                false => Ok(None),
            };
            (store.load_room(&app, &room), runs.first_seq(), journal)
        })
        .await;
        let (loaded, journal) = match loaded {
            Ok((saved, first, Ok(journal))) => (Ok((saved, first)), journal),
            Ok((saved, first, Err(e))) => {
                tracing::error!(room = %key.room, "could not read the room's journal, starting without it: {e:#}");
                (Ok((saved, first)), Some(crate::store::Journal::default()))
            }
            Err(e) => (Err(e), None),
        };
        let (saved, first_seq) = match loaded {
            Ok((saved, Ok(first_seq))) => (Ok(saved), first_seq),
            Ok((_, Err(e))) => {
                // Without a fresh run its numbers could repeat old ones: not served.
                tracing::error!(room = %key.room, "no sequence run for the room, not loading it: {e:#}");
                return;
            }
            Err(e) => (Err(e), edgeroom_proto::ids::Seq::default()),
        };
        let mut doc = match saved {
            Ok(Ok(Some(bytes))) => RoomDoc::load(&bytes).unwrap_or_else(|e| {
                tracing::error!(room = %key.room, "saved room document unreadable, starting empty: {e}");
                RoomDoc::new()
            }),
            Ok(Ok(None)) => RoomDoc::new(),
            Ok(Err(e)) => {
                tracing::error!(room = %key.room, "could not load room document, starting empty: {e:#}");
                RoomDoc::new()
            }
            Err(e) => {
                tracing::error!(room = %key.room, "room load task failed: {e}");
                RoomDoc::new()
            }
        };
        if env.replicator.is_some() {
            // Writes go to the other replicas with what they did, to be done again on
            // a compacted copy (see `replica::rebase`).
            doc.tag_writes(env.node.as_str());
        }
        let limits = LogLimits {
            max_age_ms: env.limits.history_ms,
            max_events: env.limits.history_max_events,
            max_bytes: env.limits.history_max_bytes,
            max_ids: env.limits.idempotency_max_ids,
            max_ids_bytes: env.limits.idempotency_max_bytes,
        };
        if first_seq.n == 0 {
            tracing::error!(room = %key.room, "room load task failed");
            return;
        }
        let bounds = Bounds {
            adopt_patience: Duration::from_millis(env.limits.adopt_patience_ms),
            held_per_origin: env.limits.held_per_origin,
            max_pending: env.limits.unconfirmed_replies,
            rechecked_calls: env.limits.rechecked_calls,
        };
        let replica = env.replicator.as_ref().map(|_| {
            let room = (key.app.clone(), key.room.clone());
            Replica::new(room, bounds)
        });
        let mut core = RoomCore::new(env.node.clone(), key.room.clone(), first_seq, limits);
        let now = journal::Now {
            mono_ms: env.clock.mono_ms(),
            wall_ms: env.clock.wall_ms(),
        };
        let journaled = journal.map(|j| restore(&mut core, j, now, &env.node, first_seq));
        let place = Place {
            app: key.app.to_string(),
            room: key.room.clone(),
            node: env.node.to_string(),
            region: env.region.clone(),
        };
        let mut world = World::new(place, core, doc, env.metrics.clone());
        world.max_event_bytes = env.limits.max_event_bytes;
        world.max_presence_bytes = env.limits.max_presence_bytes;
        world.min_timer_ms = env.limits.min_timer_ms;
        world.log_lines_per_sec = env.limits.handler_log_lines_per_sec;
        world.max_state_bytes = env.limits.state_max_bytes;
        world.count_state_bytes();
        if replica.is_some() {
            world.outgoing = Some(Outgoing::default());
        }
        let slot = Slot::new(world, key.app.as_str(), &env.sandbox);
        env.metrics.rooms.inc();
        let (journal, timer_wall) = journaled.unzip();
        // A timer set before the restart fires when it was due (at once if overdue).
        let timer_at = timer_wall
            .flatten()
            .map(|at: u64| env.clock.now() + Duration::from_millis(at.saturating_sub(now.wall_ms)));
        let actor = Actor {
            rooms: rooms.clone(),
            key,
            live,
            slot,
            timer_at,
            journal,
            empty_since_ms: None,
            last_save_ms: env.clock.mono_ms(),
            compact_wanted: false,
            replica,
            history_bytes: 0,
            ids_dropped: 0,
            appended_bytes: 0,
            saved_bytes: 0,
        };
        actor.run(rx).await;
        rooms.env().metrics.rooms.dec();
    });
}

/// Put a standalone room's journal back into its core: its events in order, its
/// idempotency answers, its members (detached: their connections went with the node).
/// Returns what is journaled already and the pending timer (wall ms).
fn restore(
    core: &mut RoomCore<EmitResult>,
    j: crate::store::Journal,
    now: journal::Now,
    node: &NodeId,
    first_seq: edgeroom_proto::ids::Seq,
) -> (journal::Journaled, Option<u64>) {
    for bytes in &j.events {
        match journal::decode_event(bytes, now) {
            Some(e) => {
                core.restore(e);
            }
            None => {
                tracing::warn!(room = %core.room(), "an event in the room's journal is unreadable; skipped")
            }
        }
    }
    for (id, bytes) in j.ids {
        if let Some((at_ms, answer)) = journal::decode_answer(&bytes, now) {
            core.remember(id, at_ms, answer);
        }
    }
    let mut members = std::collections::BTreeSet::new();
    for (conn, bytes) in j.members {
        // Written by this node from its own session ids.
        let conn = ConnId::from_trusted(conn);
        let Some(auth) = journal::decode_member(&bytes) else {
            continue;
        };
        core.restore_member(conn.clone(), auth, now.mono_ms);
        members.insert(conn);
    }
    let journaled = journal::Journaled::new(node.clone(), first_seq, members, j.timer);
    (journaled, j.timer)
}

/// What a room's replica sees of the mesh.
struct PeerView<'a> {
    rep: &'a Replicator,
    room: &'a RoomRef,
}

impl Peers for PeerView<'_> {
    fn interested(&self) -> Vec<NodeId> {
        self.rep.interested(self.room)
    }

    fn alive(&self) -> Vec<NodeId> {
        self.rep.alive_peers()
    }

    fn cut_off(&self) -> bool {
        self.rep.cut_off()
    }

    fn region_of(&self, node: &NodeId) -> Option<String> {
        self.rep.region_of(node)
    }
}

impl Actor {
    fn world(&mut self) -> &mut World {
        self.slot.world()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = self.rooms.env().shutdown.clone();
        if *shutdown.borrow_and_update() {
            return;
        }
        let mut repairs = tokio::time::interval(Duration::from_millis(100));
        repairs.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reclaims = self.rooms.env().sandbox.reclaims();
        loop {
            let timer = self.timer_at;
            tokio::select! {
                _ = repairs.tick(), if self.replica.is_some() => {
                    self.replicate(Input::Tick);
                    if self.adopt_due() {
                        self.after_call().await;
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(RoomCmd::Peer { from, msg }) => self.take_inbox_from_peers(from, msg, &mut rx).await,
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = housekeeping.tick() => {
                    if self.housekeep().await && self.rooms.retire(&self.key, &rx) {
                        break;
                    }
                }
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
                // Another room was refused an instance: an empty room gives its own back.
                Ok(()) = reclaims.changed() => {
                    let call = reclaims.borrow_and_update().applies_to(self.key.app.as_str());
                    if call && self.world().core.is_empty() && self.slot.live().is_some() {
                        self.slot.unload(&self.rooms.env().sandbox);
                    }
                }
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    self.timer_at = None;
                    self.world().current = None;
                    self.call(Call::Timer).await.ok();
                    self.after_call().await;
                }
            }
            self.count_history();
            self.count_ids_dropped();
        }
        self.rooms
            .env()
            .metrics
            .history_bytes
            .dec_by(self.history_bytes as i64);
        // Stopping: anything that slipped in is told to retry against a fresh actor.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                RoomCmd::Join { done, .. } => drop(done.send(JoinOutcome::Retry)),
                RoomCmd::Reattach { done, .. } => drop(done.send(ReattachOutcome::Retry)),
                RoomCmd::Adopt { done, .. } => drop(done.send(AdoptOutcome::Retry)),
                _ => {}
            }
        }
        self.save().await;
        self.slot.unload(&self.rooms.env().sandbox);
    }

    /// Brings the node's gauge of history bytes up to date with this room's log.
    fn count_history(&mut self) {
        let now = self.world().core.log_bytes();
        if now != self.history_bytes {
            let gauge = &self.rooms.env().metrics.history_bytes;
            gauge.inc_by(now as i64 - self.history_bytes as i64);
            self.history_bytes = now;
        }
    }

    /// Adds the idempotency ids this room dropped over their caps to the node's count.
    fn count_ids_dropped(&mut self) {
        let now = self.world().core.ids_dropped();
        if now > self.ids_dropped {
            let counter = &self.rooms.env().metrics.idempotency_ids_dropped;
            counter.inc_by(now - self.ids_dropped);
            self.ids_dropped = now;
        }
    }

    /// One handler call with the live version. `Ok(None)`: no handler is deployed.
    async fn call(&mut self, call: Call<'_>) -> Result<Option<Returned>, Failure> {
        let Some(live) = self.live.borrow_and_update().clone() else {
            return Ok(None);
        };
        let clock = &self.rooms.env().clock;
        let (now_ms, wall_ms) = (clock.mono_ms(), clock.wall_ms());
        let idempotent = self.world().call_key.is_some();
        let hold = self
            .replica
            .as_ref()
            .is_some_and(|r| r.holds_events(idempotent));
        let w = self.world();
        (w.now_ms, w.wall_ms) = (now_ms, wall_ms);
        if hold {
            w.held.get_or_insert_with(Vec::new);
        }
        let sandbox = self.rooms.env().sandbox.clone();
        let result = self.slot.call(&sandbox, &live.compiled, call).await;
        // A refused instance is counted, not logged: under a flood it would be every call.
        if let Err(f) = &result
            && !matches!(f, Failure::Busy(_))
        {
            tracing::warn!(app = %self.key.app, room = %self.key.room, kind = f.kind(), "handler call failed: {}", f.message());
        }
        result.map(Some)
    }

    /// Answer an emit. In a cluster an answer waits until another replica holds what
    /// the call produced (see `replica`); an error without a ref is no answer and goes
    /// out at once.
    fn reply(&mut self, conn: &ConnId, r#ref: Option<Ref>, result: EmitResult) {
        let room = self.key.room.clone();
        match (r#ref, result) {
            (Some(r#ref), result) if self.replica.is_some() => {
                let frame = ServerFrame::Reply { r#ref, result };
                self.replicate(Input::Reply {
                    conn: conn.clone(),
                    frame,
                });
            }
            (r, result) => self.answer_now(conn, &room, r, result),
        }
    }

    fn answer_now(
        &mut self,
        conn: &ConnId,
        room: &edgeroom_proto::ids::RoomId,
        r#ref: Option<Ref>,
        result: EmitResult,
    ) {
        let room = room.clone();
        let w = self.world();
        match (r#ref, result) {
            (Some(r#ref), result) => {
                w.push(conn, Outbound::frame(ServerFrame::Reply { r#ref, result }))
            }
            (None, Err(error)) => w.push(
                conn,
                Outbound::frame(ServerFrame::Error {
                    error,
                    room: Some(room),
                }),
            ),
            (None, Ok(_)) => {}
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join {
                conn,
                auth,
                link,
                r#ref,
                resume_from,
                done,
            } => {
                let outcome = self.join(conn, auth, link, r#ref, resume_from).await;
                let _ = done.send(outcome);
                self.after_call().await;
            }
            RoomCmd::Leave { conn, r#ref, done } => {
                if self.world().core.member(&conn).is_none() {
                    let _ = done.send(false);
                    return;
                }
                // Answered at once, not held for another replica's confirmation like an
                // emit's answer: once the member is gone there is no link to release it to.
                let room = self.key.room.clone();
                self.answer_now(&conn, &room, r#ref, Ok(None));
                self.remove_member(&conn).await;
                let _ = done.send(true);
                self.after_call().await;
            }
            RoomCmd::Emit {
                conn,
                outbox,
                event,
                payload,
                r#ref,
                id,
            } => {
                if self.world().core.member(&conn).is_none() {
                    let error = ProtoError::new(
                        ErrorCode::NotJoined,
                        format!("not a member of {}", self.key.room),
                    );
                    let frame = match r#ref {
                        Some(r#ref) => ServerFrame::Reply {
                            r#ref,
                            result: Err(error),
                        },
                        None => ServerFrame::Error {
                            error,
                            room: Some(self.key.room.clone()),
                        },
                    };
                    let _ = outbox.frame(frame);
                    return;
                }
                self.emit(conn, event, payload, r#ref, id).await;
                self.after_call().await;
            }
            RoomCmd::Detach { conn, outbox } => {
                let now = self.rooms.env().clock.mono_ms();
                let w = self.world();
                if w.links.get(&conn).is_some_and(|l| l.outbox.same(&outbox)) {
                    w.links.remove(&conn);
                    let shown = w.shown();
                    w.core.detach(&conn, now, None, &shown);
                }
            }
            RoomCmd::Reattach {
                conn,
                link,
                cursor,
                done,
            } => {
                let outcome = self.reattach(conn, link, cursor);
                let _ = done.send(outcome);
            }
            RoomCmd::Adopt {
                conn,
                link,
                cursor,
                user,
                done,
            } => {
                if let Some(m) = self.world().core.member(&conn) {
                    let stale = link.token.is_some_and(|t| m.token >= t);
                    if stale || (m.auth.user.is_some() && m.auth.user != user) {
                        let _ = done.send(AdoptOutcome::Refused);
                        return;
                    }
                    let auth = Some(m.auth.clone());
                    let outcome = match (self.reattach(conn, link, cursor), auth) {
                        (ReattachOutcome::Reattached, Some(auth)) => AdoptOutcome::Adopted { auth },
                        _ => AdoptOutcome::NotMember,
                    };
                    let _ = done.send(outcome);
                    return;
                }
                if self.replica.is_none() {
                    let _ = done.send(AdoptOutcome::NotMember);
                    return;
                }
                let adoption = Adoption::new(conn, link, cursor, user, done);
                self.replicate(Input::Adopt(Box::new(adoption)));
                if self.adopt_due() {
                    self.after_call().await;
                }
            }
            RoomCmd::End { conn } => {
                if self.world().core.member(&conn).is_some() {
                    self.remove_member(&conn).await;
                    self.after_call().await;
                }
            }
            RoomCmd::History { conn, after, done } => {
                let core = &self.world().core;
                let read = core.member(&conn).map(|_| core.replay_for(&conn, &after));
                let _ = done.send(read);
            }
            RoomCmd::Inspect { has, done } => {
                let view = self.view(has);
                let _ = done.send(view);
            }
            RoomCmd::Peer { from, msg } => self.take_from_peers(vec![(from, msg)]).await,
            RoomCmd::PeerUp(node) => {
                self.replicate(Input::PeerUp(node));
            }
            RoomCmd::PeerJoined(node, since) => {
                // How long ago, by this node's clock (a clock ahead of this one says
                // "just now").
                let ago = self.rooms.env().clock.wall_ms().saturating_sub(since);
                self.replicate(Input::PeerJoined(node, Duration::from_millis(ago)));
            }
            RoomCmd::PeerDown(node) => {
                if self.replicate(Input::PeerDown(node)).is_some() {
                    self.adopt_due();
                    self.after_call().await;
                }
            }
        }
    }

    async fn join(
        &mut self,
        conn: ConnId,
        auth: JoinAuth,
        link: Link,
        r#ref: Option<Ref>,
        resume_from: Option<Cursor>,
    ) -> JoinOutcome {
        let room = self.key.room.clone();
        let refuse = |error: ProtoError| {
            let frame = match &r#ref {
                Some(r) => ServerFrame::Reply {
                    r#ref: r.clone(),
                    result: Err(error),
                },
                None => ServerFrame::Error {
                    error,
                    room: Some(room.clone()),
                },
            };
            let _ = link.outbox.frame(frame);
            JoinOutcome::Refused
        };
        let max_auth = self.rooms.env().limits.max_auth_bytes;
        if auth.size() > max_auth {
            self.rooms
                .env()
                .metrics
                .bad_frame(ErrorCode::TooLarge.as_str());
            return refuse(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "auth of {} bytes is over the {max_auth}-byte limit",
                    auth.size()
                ),
            ));
        }
        if self.world().core.member(&conn).is_some() {
            return refuse(ProtoError::new(
                ErrorCode::AlreadyJoined,
                format!("already a member of {}", self.key.room),
            ));
        }
        // A member before on-join runs, so the handler can set its presence; told to
        // others only once the join is accepted.
        self.world().core.join(conn.clone(), auth.clone(), 1);
        self.world()
            .core
            .set_token(&conn, link.token.unwrap_or_default());
        let before = self.world().core.head().clone();
        self.world().current = Some(conn.clone());
        self.world().joining = Some(conn.clone());
        let result = self
            .call(Call::Join {
                conn: conn.as_string(),
                auth: &auth.json,
            })
            .await;
        self.world().joining = None;
        let error = match result {
            Ok(Some(Returned::Join(Ok(())))) => None,
            Ok(Some(Returned::Join(Err(msg)))) => Some(ProtoError::new(ErrorCode::Rejected, msg)),
            Ok(Some(_)) => Some(ProtoError::new(
                ErrorCode::Internal,
                "handler returned the wrong result",
            )),
            Ok(None) => Some(ProtoError::new(
                ErrorCode::NoHandler,
                format!("app {} has no handler deployed", self.key.app),
            )),
            Err(f) => Some(failed(&f)),
        };
        if let Some(error) = error {
            self.world().core.leave(&conn);
            return refuse(error);
        }
        // What on-join changed, and the member, are on disk before the join is
        // acknowledged.
        if let Some(j) = &mut self.journal {
            j.members_changed = true;
        }
        if !self.persist_changes().await {
            self.world().core.leave(&conn);
            return refuse(not_durable());
        }
        let w = self.world();
        let presence = w
            .core
            .member(&conn)
            .map(|m| m.presence.clone())
            .unwrap_or_else(|| "null".into());
        w.presence_changed(vec![(conn.clone(), presence)], vec![]);
        w.links.insert(conn.clone(), link);
        if let Some(r#ref) = r#ref {
            w.push(
                &conn,
                Outbound::frame(ServerFrame::Reply {
                    r#ref,
                    result: Ok(None),
                }),
            );
        }
        // What on-join sent the newcomer (a greeting, say) follows the reply; a returning
        // member first gets everything it missed since its cursor.
        let replay = w.core.replay_for(&conn, &resume_from.unwrap_or(before));
        if let Some(r) = &mut self.replica {
            r.replayed(&conn);
        }
        self.world().send_replay(&conn, replay);
        self.world().send_snapshot(&conn);
        self.replicate(Input::MemberJoined);
        JoinOutcome::Joined
    }

    fn reattach(&mut self, conn: ConnId, link: Link, cursor: Option<Cursor>) -> ReattachOutcome {
        let w = self.world();
        let Some(replay) = w.core.reattach(&conn, cursor.as_ref()) else {
            return ReattachOutcome::NotMember;
        };
        // The session's new token: the other replicas learn it, so an older one
        // cannot take the member over there.
        let renewed = link.token.is_some_and(|t| w.core.set_token(&conn, t));
        w.links.insert(conn.clone(), link);
        if let Some(r) = &mut self.replica {
            r.replayed(&conn);
        }
        self.world().send_replay(&conn, replay);
        self.world().send_snapshot(&conn);
        if renewed {
            self.world().member_changed(&conn);
            self.replicate(Input::Flush);
        }
        ReattachOutcome::Reattached
    }

    /// Run one step of the room's replica, then do what it asked: messages to peers,
    /// interest to announce, adopted members' clients to answer. `None` when the node
    /// is not in a cluster; else whether an adoption ended.
    fn replicate(&mut self, input: Input) -> Option<bool> {
        let rep = self.rooms.env().replicator.clone()?;
        let mut r = self.replica.take()?;
        let room = r.room().clone();
        let view = PeerView {
            rep: &rep,
            room: &room,
        };
        let clock = &self.rooms.env().clock;
        let mut ctx = Ctx::new(clock.now().into_std(), clock.mono_ms(), &view);
        r.handle(self.slot.world(), input, &mut ctx);
        let effects = std::mem::take(&mut ctx.out);
        self.replica = Some(r);
        let mut adoption_ended = false;
        for effect in effects {
            match effect {
                Effect::Send(node, msg) => {
                    let room = room.clone();
                    rep.send(&node, PeerMsg::Room { room, msg });
                }
                Effect::Publish(msg) => rep.publish(&room, msg),
                Effect::Interest(true) => rep.local_join(&room, clock.wall_ms()),
                Effect::Interest(false) => rep.local_leave(&room),
                Effect::Adopted(Settled { done, auth }) => {
                    adoption_ended = true;
                    let _ = done.send(AdoptOutcome::Adopted { auth });
                }
                Effect::Declined(done, why) => {
                    adoption_ended = true;
                    let _ = done.send(why);
                }
            }
        }
        Some(adoption_ended)
    }

    /// A peer's message, and those waiting behind it in the inbox: taken in together,
    /// their document changes cost one Automerge call (see `Input::Receive`). The
    /// first other command that was waiting is handled after them.
    async fn take_inbox_from_peers(
        &mut self,
        from: NodeId,
        msg: RoomMsg,
        rx: &mut mpsc::Receiver<RoomCmd>,
    ) {
        let mut msgs = vec![(from, msg)];
        let mut next = None;
        while msgs.len() < PEER_BATCH {
            match rx.try_recv() {
                Ok(RoomCmd::Peer { from, msg }) => msgs.push((from, msg)),
                Ok(cmd) => {
                    next = Some(cmd);
                    break;
                }
                Err(_) => break,
            }
        }
        self.take_from_peers(msgs).await;
        if let Some(cmd) = next {
            self.handle(cmd).await;
        }
    }

    async fn take_from_peers(&mut self, msgs: Vec<(NodeId, RoomMsg)>) {
        if self.replicate(Input::Receive(msgs)).is_some() {
            self.adopt_due();
            self.after_call().await;
        }
    }

    /// Take on the members whose adoption has its history in: everything after its
    /// cursor that a replica had, then live. True if any adoption ended (the caller
    /// runs `after_call` to pass the news on).
    fn adopt_due(&mut self) -> bool {
        self.replicate(Input::SettleDue).unwrap_or(false)
    }

    async fn emit(
        &mut self,
        conn: ConnId,
        event: String,
        payload: edgeroom_proto::payload::Payload,
        r#ref: Option<Ref>,
        id: Option<String>,
    ) {
        // Ids are the client's: two clients may pick the same one.
        let key = id.map(|id| format!("{conn}/{id}"));
        if let Some(key) = &key {
            let w = self.world();
            let earlier = w.core.remembered(key).cloned().or_else(|| {
                // Its first event reached this replica from the node that handled it,
                // but not (yet) its answer.
                w.core.remembered(&format!("{key}#0")).map(|_| Ok(None))
            });
            if let Some(result) = earlier {
                // Told it is done, so its events must not stay withheld here.
                self.replicate(Input::Answered(key.clone()));
                self.reply(&conn, r#ref, result);
                return;
            }
        }
        let size = event.len() + payload.size();
        let max = self.rooms.env().limits.max_event_bytes;
        if size > max {
            self.rooms
                .env()
                .metrics
                .bad_frame(ErrorCode::TooLarge.as_str());
            let error = ProtoError::new(
                ErrorCode::TooLarge,
                format!("an event of {size} bytes is over the {max}-byte limit"),
            );
            let room = self.key.room.clone();
            self.answer_now(&conn, &room, r#ref, Err(error));
            return;
        }
        if self.replica.as_ref().is_some_and(|r| !r.accepts_emits()) {
            self.rooms.env().metrics.emits_unconfirmed_refused.inc();
            let error = ProtoError::new(
                ErrorCode::Internal,
                "too many answers of this room wait for another node to confirm; try again",
            );
            let room = self.key.room.clone();
            self.answer_now(&conn, &room, r#ref, Err(error));
            return;
        }
        self.rooms.env().metrics.events.inc();
        self.world().current = Some(conn.clone());
        self.world().call_key = key.clone().map(|k| (k, 0));
        let wants_reply = r#ref.is_some();
        let result = self
            .call(Call::Message {
                conn: conn.as_string(),
                event: &event,
                payload,
                wants_reply,
            })
            .await;
        let result: EmitResult = match result {
            Ok(Some(Returned::Message(Ok(reply)))) => Ok(reply.filter(|_| wants_reply)),
            Ok(Some(Returned::Message(Err(msg)))) => Err(ProtoError::new(ErrorCode::Rejected, msg)),
            Ok(Some(_)) => Err(ProtoError::new(
                ErrorCode::Internal,
                "handler returned the wrong result",
            )),
            Ok(None) => Err(ProtoError::new(
                ErrorCode::NoHandler,
                format!("app {} has no handler deployed", self.key.app),
            )),
            Err(f) => Err(failed(&f)),
        };
        let w = self.world();
        w.call_key = None;
        let now = w.now_ms;
        if let Some(key) = &key {
            w.core.remember(key.clone(), now, result.clone());
            if let Some(j) = &mut self.journal {
                j.ids.push(key.clone());
            }
        }
        // What the call changed, and its answer for a retry, are on disk before the
        // answer goes out. An emit nobody waits on (no `ref`, no `id`: fire and forget)
        // is not acknowledged: it goes to the disk with the next write, or within a
        // second, so a flood of them costs one sync per batch, not one each.
        let waited_on = r#ref.is_some() || key.is_some();
        let result = match result {
            Ok(r) if !waited_on => Ok(r),
            Ok(_) if !self.persist_changes().await => {
                let refused = Err(not_durable());
                if let Some(key) = &key {
                    self.world()
                        .core
                        .remember(key.clone(), now, refused.clone());
                }
                refused
            }
            Ok(r) => Ok(r),
            Err(e) => {
                if waited_on {
                    self.persist_changes().await;
                }
                Err(e)
            }
        };
        let w = self.world();
        if let (Some(key), Ok(reply), Some(out)) = (key, &result, w.outgoing.as_mut()) {
            out.handled.push((key, reply.clone()));
        }
        self.reply(&conn, r#ref, result);
    }

    /// Take a member out: tell the others, then the handler.
    async fn remove_member(&mut self, conn: &ConnId) {
        let w = self.world();
        w.links.remove(conn);
        if w.core.leave(conn).is_none() {
            return;
        }
        w.presence_changed(vec![], vec![conn.clone()]);
        self.replicate(Input::MemberLeft);
        let w = self.world();
        w.current = Some(conn.clone());
        self.call(Call::Leave {
            conn: conn.as_string(),
        })
        .await
        .ok();
        if let Some(j) = &mut self.journal {
            j.members_changed = true;
        }
        self.persist_changes().await;
    }

    /// Apply what the last call asked for beyond sending: kicks, state, timers; and
    /// drop the links of members whose connection fell behind.
    async fn after_call(&mut self) {
        for _ in 0..MAX_KICK_ROUNDS {
            let kicks = std::mem::take(&mut self.world().kicks);
            if kicks.is_empty() {
                break;
            }
            for (conn, reason) in kicks {
                let room = self.key.room.clone();
                self.world()
                    .push(&conn, Outbound::frame(ServerFrame::Kicked { room, reason }));
                self.remove_member(&conn).await;
            }
        }
        self.world().kicks.clear();
        let now = self.rooms.env().clock.mono_ms();
        let w = self.world();
        // The first event each lost connection missed bounds what it was queued
        // (pushes happen in log order; the sort is stable).
        let mut lost: Vec<(ConnId, Option<std::sync::Arc<LogEntry>>)> = std::mem::take(&mut w.lost);
        lost.sort_by(|a, b| (&a.0, a.1.is_none()).cmp(&(&b.0, b.1.is_none())));
        lost.dedup_by(|later, first| later.0 == first.0);
        for (conn, lost_at) in lost {
            w.links.remove(&conn);
            let shown = w.shown();
            w.core.detach(&conn, now, lost_at.as_deref(), &shown);
        }
        if std::mem::take(&mut w.state_changed) {
            w.flush_state(None);
        }
        if let Some(ms) = w.timer.take() {
            self.timer_at =
                Some(self.rooms.env().clock.now() + Duration::from_millis(u64::from(ms)));
        }
        self.replicate(Input::Flush);
        let w = self.world();
        if !w.floors.is_empty() {
            let head = w.core.head().clone();
            w.floors.retain(|_, floor| !head.dominates(floor));
        }
    }

    /// Periodic upkeep. True when the room has been empty long enough to stop.
    async fn housekeep(&mut self) -> bool {
        let now = self.rooms.env().clock.mono_ms();
        let limits = self.rooms.env().limits.clone();
        let gone = self.world().core.expire(now, limits.presence_grace_ms);
        let window = limits.resume_window_ms;
        self.world()
            .departed
            .retain(|_, (_, since)| now.saturating_sub(*since) < window);
        for conn in gone {
            self.remove_member(&conn).await;
        }
        self.after_call().await;
        // Changes appended since the last whole save are folded into a new one once
        // they outweigh it. A replicated room appends its changes each second (its
        // other replicas, not its disk, back what it acknowledges); a whole save each
        // second was most of a loaded node's work.
        if self.replica.is_some() && self.world().doc.history() >= limits.state_compact_changes {
            self.compact_wanted = true;
        }
        if self.compact_wanted {
            self.compact_together();
        }
        let folding = |a: &Self| a.appended_bytes >= limits.state_append_bytes.max(a.saved_bytes);
        if self.replica.is_none() {
            // Changes nobody waited for (timers, leaves) go to the disk too, and what
            // the room forgot leaves it.
            self.persist_changes().await;
            self.trim_journal().await;
        } else if self.world().unsaved
            && now.saturating_sub(self.last_save_ms) >= SAVE_EVERY_MS
            && !folding(self)
            && !self.world().doc_replaced
        {
            self.append_changes().await;
        }
        if self.world().unsaved && (folding(self) || self.world().doc_replaced) {
            self.save().await;
        }
        if !self.world().core.is_empty() {
            self.empty_since_ms = None;
            return false;
        }
        let since = *self.empty_since_ms.get_or_insert(now);
        let idle = now.saturating_sub(since);
        if idle >= limits.instance_idle_ms && self.slot.live().is_some() {
            self.slot.unload(&self.rooms.env().sandbox);
        }
        if idle >= limits.room_idle_ms && self.timer_at.is_none() {
            // Saved before the actor is retired, so a successor never loads a stale copy.
            self.save().await;
            return true;
        }
        false
    }

    /// On a node no other replica backs, write what changed since the last write to
    /// the room's journal, synced: the document's changes, new events, idempotency
    /// answers, members who came or went, the timer. An acknowledged change or event
    /// survives a crash (in a cluster the answer waits for another replica instead).
    /// False if the disk refused it.
    async fn persist_changes(&mut self) -> bool {
        let Some(journal) = self.journal.as_mut() else {
            return true;
        };
        let clock = &self.rooms.env().clock;
        let now = journal::Now {
            mono_ms: clock.mono_ms(),
            wall_ms: clock.wall_ms(),
        };
        let w = self.slot.world();
        // A timer the call just asked for (not yet armed), else the armed one.
        let left = match w.timer {
            Some(ms) => Some(u64::from(ms)),
            None => self.timer_at.map(|at| {
                let left = at.saturating_duration_since(clock.now());
                u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
            }),
        };
        let timer_wall = left.map(|ms| now.wall_ms.saturating_add(ms));
        let changes = w.doc.save_incremental();
        let batch = journal.batch(w, changes, timer_wall, now);
        if batch.is_empty() {
            return true;
        }
        self.appended_bytes += batch.changes.len();
        let written = self
            .rooms
            .env()
            .journal
            .write(&self.key.app, &self.key.room, batch)
            .await;
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(room = %self.key.room, "could not write the room's journal: {e}");
                false
            }
        }
    }

    /// Drop from the journal what the room no longer keeps: events it evicted and
    /// idempotency ids it forgot.
    async fn trim_journal(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let w = self.slot.world();
        let Some((upto, ids)) = journal.take_trim(w) else {
            return;
        };
        let kept: Option<std::collections::HashSet<String>> =
            ids.then(|| w.core.remembered_ids().cloned().collect());
        let store = self.rooms.env().store.clone();
        let key = self.key.clone();
        let trimmed = tokio::task::spawn_blocking(move || {
            let keep = |id: &str| kept.as_ref().is_none_or(|k| k.contains(id));
            store.trim_room(&key.app, &key.room, upto.as_deref(), &keep)
        })
        .await;
        if let Ok(Err(e)) | Err(e) = trimmed.map_err(anyhow::Error::from) {
            tracing::warn!(room = %self.key.room, "could not trim the room's journal: {e:#}");
        }
    }

    /// Ask the replica to compact the document; once it did, it is saved again.
    fn compact_together(&mut self) {
        let base = |a: &Self| a.replica.as_ref().and_then(|r| r.base().cloned());
        let before = base(self);
        self.replicate(Input::Compact);
        if base(self) != before {
            self.compact_wanted = false;
            self.world().unsaved = true;
            self.rooms.env().metrics.state_compactions.inc();
            tracing::debug!(room = %self.key.room, "compacted the replicated room's document");
        }
    }

    /// A replicated room's changes since its last write, appended to its saved
    /// document (with other rooms' in one synced write).
    async fn append_changes(&mut self) {
        let changes = self.world().doc.save_incremental();
        self.world().unsaved = false;
        self.last_save_ms = self.rooms.env().clock.mono_ms();
        if changes.is_empty() {
            return;
        }
        self.appended_bytes += changes.len();
        let batch = crate::store::Batch {
            changes,
            ..Default::default()
        };
        let env = self.rooms.env();
        if let Err(e) = env
            .journal
            .write(&self.key.app, &self.key.room, batch)
            .await
        {
            tracing::error!(room = %self.key.room, "could not append the room's changes: {e}");
            // The next write is a whole save, which holds these changes too.
            self.world().unsaved = true;
            self.appended_bytes = usize::MAX;
        }
    }

    async fn save(&mut self) {
        if !self.world().unsaved {
            return;
        }
        self.appended_bytes = 0;
        let mut bytes = self.world().doc.save();
        // With no other replica, no one needs the history: once it outweighs the
        // content, the document is kept (and saved) without it. The content is counted
        // (O(document)) only when the running estimate says it may be so.
        let heavy = |content: usize| content.saturating_mul(2).saturating_add(COMPACT_SLACK);
        let estimate = self.world().state_bytes();
        let heavy = if bytes.len() > heavy(estimate) {
            heavy(self.world().count_state_bytes())
        } else {
            heavy(estimate)
        };
        // Replicas compact together, once they agree (see `replica::rebase`): tried
        // each second until then.
        let long = self.world().doc.history() >= self.rooms.env().limits.state_compact_changes;
        self.compact_wanted = self.replica.is_some() && (bytes.len() > heavy || long);
        if self.replica.is_none() && (bytes.len() > heavy || long) {
            match self.world().doc.compacted() {
                Ok(mut doc) => {
                    let was = bytes.len();
                    bytes = doc.save();
                    self.world().replace_doc(doc);
                    self.rooms.env().metrics.state_compactions.inc();
                    tracing::debug!(room = %self.key.room, was, now = bytes.len(), "compacted the room's document");
                }
                Err(e) => {
                    tracing::warn!(room = %self.key.room, "could not compact the room's document: {e}")
                }
            }
        }
        self.saved_bytes = bytes.len();
        self.world().unsaved = false;
        self.world().doc_replaced = false;
        self.last_save_ms = self.rooms.env().clock.mono_ms();
        let store = self.rooms.env().store.clone();
        let key = self.key.clone();
        let saved =
            tokio::task::spawn_blocking(move || store.save_room(&key.app, &key.room, &bytes)).await;
        let failed = match saved {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        tracing::error!(room = %self.key.room, "could not save room document: {failed}");
        // What changed since the last write is in no append: the next one is whole.
        self.world().unsaved = true;
        self.world().doc_replaced = true;
    }

    fn view(&mut self, has: Option<Vec<String>>) -> RoomView {
        let sha = self.slot.live().map(str::to_owned);
        let w = self.world();
        let heads = w.doc.heads().iter().map(|h| h.to_string()).collect();
        let missing = has.map(|has| w.doc.missing(&has).into_iter().map(str::to_owned).collect());
        let json = |p: &str| serde_json::from_str(p).unwrap_or(serde_json::Value::Null);
        let local = w.core.members().iter().map(|(c, m)| MemberView {
            conn: c.to_string(),
            presence: json(&m.presence),
            connected: m.detached_since_ms.is_none(),
            node: w.place.node.clone(),
        });
        let remote = w.remote.iter().flat_map(|(node, members)| {
            members.iter().map(|(c, m)| MemberView {
                conn: c.to_string(),
                presence: json(&m.presence),
                connected: true,
                node: node.to_string(),
            })
        });
        let members = local.chain(remote).collect();
        RoomView {
            app: w.place.app.clone(),
            room: w.place.room.to_string(),
            node: w.place.node.to_string(),
            members,
            state: w.doc.to_json(),
            heads,
            missing,
            cursor: w.core.head().to_string(),
            history_len: w.core.log_len(),
            handler_sha256: sha,
        }
    }
}

/// What a client is told of a handler call that failed.
/// What an emitter or joiner is told when its change could not be made durable.
fn not_durable() -> ProtoError {
    ProtoError::new(
        ErrorCode::Internal,
        "the node could not write the change to its disk",
    )
}

fn failed(f: &Failure) -> ProtoError {
    let code = match f {
        Failure::Busy(_) => ErrorCode::Overloaded,
        _ => ErrorCode::HandlerFailed,
    };
    ProtoError::new(code, f.message())
}
