//! A room's replica in a cluster: what it tells the room's other replicas, and what it
//! does with what they tell it. Sans-IO: it is fed messages, verdicts and the time
//! ([`Ctx`]), changes the room's [`World`] and returns [`Effect`]s (messages to send,
//! interest to announce) for the room actor to carry out.
//!
//! Every node with members in a room runs the room (its own actor, handler instance,
//! log and document) and talks to the others through `room::replicate`:
//!
//! - **Events.** What this node's handler sends is delivered here at once, then
//!   forwarded (one copy per interested region). What arrives from a peer goes through
//!   `edgeroom_room::order::Inbound`: per-origin FIFO, duplicates dropped, gaps held and then
//!   repaired from the origin's log (`Repair`/`Repaired`), or skipped with a notice that
//!   counts exactly the events lost. A lost last event leaves no gap to see (a relayed
//!   copy goes down with a relay's link): once its events fall quiet, an origin says
//!   how far they go (`Tail`). A replica picks up an origin where the origin's
//!   hello says (`Hello::next`: what it sends from then on is owed here), never at
//!   whatever arrives first; the origin keeps that point until it hears the replica
//!   went away, so a hello lost with a link loses nothing. Remote events enter this replica's log, so a client
//!   resumes here from a cursor another node gave it.
//! - **Numbering.** A room takes a fresh run of sequence numbers each time it loads
//!   (`room::runs`), so numbers only grow per origin however nodes restart or their
//!   clocks step, and a new run is never a gap.
//! - **State.** A call's Automerge changes go to every other replica as they are
//!   (`Changes`), which answers with what it applied and its heads (`Applied`). A
//!   replica passes what peers sent it to those not known to have it a second later
//!   (for one its origin could not reach), and catches up by the Automerge sync
//!   protocol when it meets a peer (hello) or a change waited a moment in vain for
//!   what it depends on. (The sync protocol after every change, relayed by every
//!   replica, cost a conversation between every pair of replicas per change: half of
//!   a busy node.) A conversation starts from the heads both were last known to hold
//!   and ends once it has caught up; changes made meanwhile go as changes.
//! - **Presence.** Each node owns its members' entries. `Hello` carries them all (a
//!   replica greets a node that newly has members in the room, and every peer after a
//!   reconnection; the greeted one answers), `Presence` the changes; a node declared
//!   dead loses its entries on every other node.
//! - **Adoption.** A client that resumes here as a member another node held waits
//!   until every live peer has said what it has for it (`Backfill`/`Backfilled`), at
//!   most `adopt_patience`; then it gets what any of them had, once and in order, and
//!   an exact count of what nobody had (`room::catchup`).
//! - **Confirmed replies.** The answer to an emit goes out once another replica holds
//!   what the call produced — its events (the replicas the origin sends to directly
//!   say how far they got, `Got`) and its change to the document (`Applied`, or the
//!   sync protocol's shared heads) — so a crash of this node cannot take back what a client was told
//!   is done. Members here get the events at once. A room no other node has answers at
//!   once; so does one whose other replicas all left, or died while this node still
//!   hears a majority (a node cut off holds its answers: it is about to send its
//!   clients away, and they retry elsewhere).
//! - **Idempotency across replicas.** An emit with an id is remembered by every replica
//!   (`Handled`), and each event it causes carries its key: a retry that lands on
//!   another replica gets the first answer, and an event a replica already has under
//!   another origin (the emit ran twice, on both sides of a partition) is passed over.
//!   The replicas of the origin's region (and one cut off) withhold such events until
//!   the origin says another region holds them (`Confirmed`): the region may go down whole
//!   before another holds them, and the retry elsewhere must be the only copy seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{ChangeHash, sync};
use tokio::sync::oneshot;

use super::outbox::Link;
use super::outbox::Outbound;
use super::replicate::{self, Relay};
use super::world::{Outgoing, RemoteMember, World};
use edgeroom_proto::ids::{ConnId, NodeId, RoomId, Seq, UserId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::ServerFrame;
use edgeroom_proto::payload::Payload;
use edgeroom_proto::{Cursor, ErrorCode, ProtoError};
use edgeroom_room::core::{LogEntry, Sequenced, Target};
use edgeroom_room::interest::RoomRef;
use edgeroom_room::order::{Ask, Inbound, Received};
use edgeroom_room::state::Base;

pub type Replicator = replicate::Replicator<RoomMsg>;

/// How long a gap waits for the missing events before the origin is asked for them
/// (and how often an origin whose start is unknown is asked for its hello).
const REPAIR_PATIENCE: Duration = Duration::from_millis(300);
/// How long changes wait in the document for ones they depend on before this replica
/// catches up with their sender by a sync. What they wait for is on its way from its
/// own origin, which sends it again after `RECHECK_AFTER` if it is not confirmed: the
/// sync is a fallback. At 300 ms (the events' patience), a loaded fleet whose
/// deliveries took longer started a sync for most changes, which loaded it further:
/// after a region came back, 400 sync messages a second until the run ended.
const LACKING_PATIENCE: Duration = Duration::from_millis(1_500);
/// How long after sending its changes a replica checks that every peer said it holds
/// them (see `Replica::recheck`).
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// The hashes kept of each call whose changes wait for that check (its last ones:
/// they depend on its earlier ones, and a peer given only those catches up by a
/// sync); how many calls wait is `Bounds::rechecked_calls`.
const UNCONFIRMED_HASHES: usize = 16;
/// How long an idempotent emit's event is withheld from the members here at most
/// (see `Replica::withhold`): past this it goes to them unconfirmed. The word takes a
/// round trip to the nearest other region; later, the origin or its links are in
/// trouble, and a duplicate after a retry elsewhere is the lesser harm than members
/// hearing nothing from that origin for long (a client's liveness check is seconds).
const WITHHELD_PATIENCE: Duration = Duration::from_secs(2);
/// How long after its last event an origin tells the other replicas how far its events
/// go, and when it says so again (in case that word was lost too).
const TELL_TAIL_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];
/// How often a held answer is checked against the ancestry of peers' heads, at most:
/// a fallback, for a change a peer took by a relay or a sync (its `Applied` names the
/// change exactly).
const ANCESTRY_EVERY: Duration = Duration::from_secs(1);
/// Bytes of changes sent as they are, at most; more go by the sync protocol.
const CHANGES_PART: usize = 1 << 20;
/// Hashes a sync state remembers as sent to its peer, at most (see `offer`): 32 KiB
/// per room and peer. They are trimmed only as the peer's sync messages come in, and
/// once a conversation has ended none do; past the bound they are forgotten.
const SENT_HASHES_MAX: usize = 1_024;
/// Payload bytes per backfill message, at most (well below the frame limit).
const BACKFILL_PART: usize = 1 << 20;
/// Bytes of member records per hello message, at most: a room's members go in parts
/// (`HelloPart`s, then the `Hello`) well below the frame limit.
const HELLO_PART: usize = 1 << 20;
/// Members a replica buffers from one peer's hello parts, at most.
const HELLO_PARTS_MAX_MEMBERS: usize = 1_000_000;

/// One event on the wire between replicas.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WireEvent {
    pub origin: NodeId,
    pub seq: Seq,
    pub target: Target,
    pub event: String,
    pub json: String,
    pub binaries: Vec<bytes::Bytes>,
    pub from: Option<ConnId>,
    /// See `LogEntry::key`.
    pub key: Option<String>,
}

impl WireEvent {
    pub fn new(e: &LogEntry) -> Self {
        Self {
            origin: e.origin.clone(),
            seq: e.seq,
            target: e.target.clone(),
            event: e.event.clone(),
            json: e.payload.json.clone(),
            binaries: e.payload.binaries.clone(),
            from: e.from.clone(),
            key: e.key.clone(),
        }
    }

    /// As this replica logs it, stamped with this node's time: a log's age is always
    /// reckoned by the clock of the node that keeps it, so skewed clocks cannot make a
    /// replica expire history early.
    pub fn into_sequenced(self, at_ms: u64) -> Sequenced {
        Sequenced {
            origin: self.origin,
            seq: self.seq,
            at_ms,
            target: self.target,
            event: self.event,
            payload: Payload {
                json: self.json,
                binaries: self.binaries,
            },
            from: self.from,
            key: self.key,
        }
    }

    fn to_entry(&self, room: &RoomId, at_ms: u64) -> Arc<LogEntry> {
        Arc::new(LogEntry::new(
            room.clone(),
            self.clone().into_sequenced(at_ms),
            String::new(),
        ))
    }
}

/// What replicas of a room tell each other.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum RoomMsg {
    Event(WireEvent),
    /// The sender has (or again reaches) a replica: all its members; the first of its
    /// events owed to the receiver (its next number when it learned the receiver has
    /// members, kept until it hears otherwise); and the number its next event will get.
    /// A receiver that has not started with the sender starts at `first` and asks for
    /// what lies before `next`; one that has asks for what it lacks before `next` (the
    /// tail of a partition is no gap until something follows it). Resets the
    /// receiver's state sync with it; `reply` asks for a hello back.
    Hello {
        members: Vec<(ConnId, RemoteMember)>,
        first: Seq,
        next: Seq,
        reply: bool,
        /// Nonzero: more members came first, in `HelloPart`s of this id.
        parts: u64,
    },
    /// Members of the hello that follows (too many for one message), in order.
    HelloPart {
        id: u64,
        members: Vec<(ConnId, RemoteMember)>,
    },
    /// Members the sender took on (joined, changed presence, or moved to it) or lost.
    Presence {
        joined: Vec<(ConnId, RemoteMember)>,
        left: Vec<ConnId>,
    },
    /// Send me every event in your log after this cursor, and what you know of this
    /// member: it is moving here.
    Backfill {
        after: Cursor,
        conn: ConnId,
    },
    /// The answer for the member moving, in log order, in parts of at most
    /// `BACKFILL_PART` bytes of payload; the last part carries the member's record, if
    /// the sender knows it, and how far the sender had got with every origin.
    Backfilled {
        conn: ConnId,
        events: Vec<WireEvent>,
        last: bool,
        member: Option<RemoteMember>,
        head: Cursor,
    },
    /// A handler on the sender's node kicked this member, which the receiver holds.
    Kick {
        conn: ConnId,
        reason: String,
    },
    /// An Automerge sync message: how replicas catch up when they meet (hello) or a
    /// change came without what it depends on. On the sender's document's base (see
    /// `Rebase`): a replica on another base does not take it in.
    Sync(Base, Vec<u8>),
    /// Automerge changes, encoded: the sender's own after a call changed the document,
    /// or, a moment later, what it took in from others (for replicas their origin could
    /// not reach). Answered with `Applied`. On the sender's base, as `Sync`.
    Changes(Base, Vec<Vec<u8>>),
    /// The sender's whole document, on a newer base than the receiver's (a compacted
    /// copy, and what was written to it since): the receiver rebases onto it, doing
    /// its own writes the copy lacks again (`edgeroom_room::state::rebase`).
    Rebase(Vec<u8>),
    /// The sender's document is on this base, older than the receiver's: send it a
    /// `Rebase`.
    Behind(Base),
    /// `origin`'s events here go up to `upto` (it fell quiet): what a replica lacks of
    /// them it asks `origin` for. Relayed like the events.
    Tail {
        origin: NodeId,
        upto: Seq,
    },
    /// The sender (a change's origin) has not heard that `to` holds these of its
    /// changes: the receiver, which holds them, offers them to `to`.
    PassOn {
        to: NodeId,
        changes: Vec<ChangeHash>,
    },
    /// The sender took in `Changes`: which of them it holds now (one missing what it
    /// depends on waits), and its heads.
    Applied {
        held: Vec<ChangeHash>,
        heads: Vec<ChangeHash>,
    },
    /// Ask the receiver (the origin) for its events `from..=to`.
    Repair {
        from: Seq,
        to: Seq,
    },
    /// The answer: what it still has, and the first number it can still give.
    Repaired {
        events: Vec<WireEvent>,
        first_available: Seq,
    },
    /// The room is not loaded on the sender: no members, no log, no numbering.
    Unloaded,
    /// "Say hello to me": the sender has no members here to greet the receiver with,
    /// but it heard from the receiver's replica before it lost touch.
    AskHello,
    /// The sender (which the receiver sends its events to directly) has every event of
    /// the receiver's up to `upto`.
    Got {
        upto: Seq,
    },
    /// An idempotent emit was handled with success: its key, and its reply.
    Handled {
        key: String,
        reply: Option<(String, Vec<bytes::Bytes>)>,
    },
    /// `origin` was declared dead: send me its events your log holds after `after`
    /// (it may have reached some replicas and not others before it died).
    Orphaned {
        origin: NodeId,
        after: Seq,
    },
    /// The answer: what the sender has of `origin`'s events after the asked point, in
    /// parts under the frame limit; `last` on the last.
    Orphans {
        origin: NodeId,
        events: Vec<WireEvent>,
        last: bool,
    },
    /// To the replicas of the sender's region: its events up to `upto` are confirmed
    /// (held in another region when the room has one), so those of its idempotent
    /// emits they withhold go to their members (see `Replica::withhold`).
    Confirmed {
        upto: Seq,
    },
}

impl RoomMsg {
    /// Whether taking this in reads or replaces the room's document (or may start a
    /// sync conversation): document changes that came before it are taken in first.
    fn reads_document(&self) -> bool {
        matches!(
            self,
            RoomMsg::Sync(..)
                | RoomMsg::Changes(..)
                | RoomMsg::Rebase(_)
                | RoomMsg::Behind(_)
                | RoomMsg::Hello { .. }
        )
    }
}

impl Relay for RoomMsg {
    fn relayed(&self) -> bool {
        matches!(self, RoomMsg::Event(_) | RoomMsg::Tail { .. })
    }

    fn kind(&self) -> &'static str {
        match self {
            RoomMsg::Event(_) => "event",
            RoomMsg::Hello { .. } => "hello",
            RoomMsg::HelloPart { .. } => "hello_part",
            RoomMsg::Presence { .. } => "presence",
            RoomMsg::Backfill { .. } => "backfill",
            RoomMsg::Backfilled { .. } => "backfilled",
            RoomMsg::Kick { .. } => "kick",
            RoomMsg::Sync(..) => "sync",
            RoomMsg::Changes(..) => "changes",
            RoomMsg::Rebase(_) => "rebase",
            RoomMsg::Behind(_) => "behind",
            RoomMsg::Tail { .. } => "tail",
            RoomMsg::Applied { .. } => "applied",
            RoomMsg::PassOn { .. } => "pass_on",
            RoomMsg::Repair { .. } => "repair",
            RoomMsg::Repaired { .. } => "repaired",
            RoomMsg::Unloaded => "unloaded",
            RoomMsg::AskHello => "ask_hello",
            RoomMsg::Got { .. } => "got",
            RoomMsg::Handled { .. } => "handled",
            RoomMsg::Orphaned { .. } => "orphaned",
            RoomMsg::Orphans { .. } => "orphans",
            RoomMsg::Confirmed { .. } => "confirmed",
        }
    }
}

/// Events in parts that stay well under the frame limit (`BACKFILL_PART` bytes of
/// payload, about), in order; at least one part, maybe empty.
fn event_parts(events: &[Arc<LogEntry>]) -> Vec<Vec<WireEvent>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for e in events {
        if bytes >= BACKFILL_PART {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += e.payload.json.len()
            + e.event.len()
            + e.payload
                .binaries
                .iter()
                .map(bytes::Bytes::len)
                .sum::<usize>();
        if let Some(part) = parts.last_mut() {
            part.push(WireEvent::new(e));
        }
    }
    parts
}

/// A room's member records in parts of at most `HELLO_PART` bytes (about), in order;
/// at least one part, maybe empty.
fn split_members(members: Vec<(ConnId, RemoteMember)>) -> Vec<Vec<(ConnId, RemoteMember)>> {
    const RECORD: usize = 64;
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for (conn, m) in members {
        let size = RECORD + conn.as_str().len() + m.auth.json.len() + m.presence.len();
        if bytes > 0 && bytes + size > HELLO_PART {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push((conn, m));
        }
    }
    parts
}

/// What a replica is fed, one step at a time (see [`Replica::handle`]).
pub enum Input {
    /// A member joined here (the first makes this node one of the room's replicas).
    MemberJoined,
    /// A member left here.
    MemberLeft,
    /// The room's handler finished a call: send what it produced to the other replicas.
    Flush,
    /// The answer to `conn`'s emit, to go out with the call's events once another
    /// replica holds what the call produced (before the call's `Flush`).
    Reply { conn: ConnId, frame: ServerFrame },
    /// Messages from peers' replicas of the room, in the order they came (whatever
    /// was waiting: their document changes are taken in together).
    Receive(Vec<(NodeId, RoomMsg)>),
    /// Time passed: gaps to repair, origins to ask where they start.
    Tick,
    /// The document's history outweighs its content: compact it, if every replica
    /// holds what this one does and this node is the one to (see `rebase`).
    Compact,
    /// A client resumed here as a member another node held.
    Adopt(Box<Adoption>),
    /// A retry of the idempotent emit with this key was answered here from what this
    /// replica remembers of the first run: its events are withheld here no longer.
    Answered(String),
    /// Take on the members whose adoption has its history in (or waited long enough).
    SettleDue,
    /// `node` newly has members in this room, its first joined this long ago.
    PeerJoined(NodeId, Duration),
    /// This node's link to `node` came (back) up.
    PeerUp(NodeId),
    /// `node` was declared dead.
    PeerDown(NodeId),
}

/// What a replica asks the room actor to do.
#[derive(Debug)]
pub enum Effect {
    /// Send to one peer's replica.
    Send(NodeId, RoomMsg),
    /// Send to every node that wants the room's messages (the mesh picks relays).
    Publish(RoomMsg),
    /// This node has (`true`) or no longer has one more reason to want the room's
    /// messages (a member, or a member being adopted).
    Interest(bool),
    /// An adoption is over: the member is this room's now; answer its client.
    Adopted(Settled),
    /// An adoption found no replica that knew the member; answer its client.
    /// An adoption ended without the member; answer its client (`NotMember` or
    /// `Refused`).
    Declined(oneshot::Sender<super::AdoptOutcome>, super::AdoptOutcome),
}

/// What a replica may ask of the mesh.
pub trait Peers {
    /// Other nodes with members in this room.
    fn interested(&self) -> Vec<NodeId>;
    /// Other nodes alive now.
    fn alive(&self) -> Vec<NodeId>;
    /// Whether this node hears too few of its cluster to serve (the minority side).
    fn cut_off(&self) -> bool;
    /// The region `node` is in, if known.
    fn region_of(&self, node: &NodeId) -> Option<String>;
}

/// One step's inputs (the time, the mesh) and outputs (effects).
pub struct Ctx<'a> {
    pub now: Instant,
    pub now_ms: u64,
    pub peers: &'a dyn Peers,
    pub out: Vec<Effect>,
}

impl<'a> Ctx<'a> {
    pub fn new(now: Instant, now_ms: u64, peers: &'a dyn Peers) -> Self {
        Self {
            now,
            now_ms,
            peers,
            out: Vec::new(),
        }
    }

    fn send(&mut self, node: &NodeId, msg: RoomMsg) {
        self.out.push(Effect::Send(node.clone(), msg));
    }
}

/// A member whose client resumed here while another node held it: it waits for the
/// other replicas' history (or `adopt_patience`) before the room takes it on.
pub struct Adoption {
    pub conn: ConnId,
    pub link: Link,
    pub cursor: Option<Cursor>,
    /// Who the resuming connection proved to be (see `RoomCmd::Adopt`).
    pub user: Option<UserId>,
    pub done: oneshot::Sender<super::AdoptOutcome>,
    /// The member as the replicas that answered described it (the latest claim).
    record: Option<RemoteMember>,
    /// The history the other replicas sent for this member.
    backlog: Vec<WireEvent>,
    /// How far the replicas that answered had got, per origin.
    heads: Vec<Cursor>,
    waiting: HashSet<NodeId>,
    /// Set when the replica takes it on (the sans-IO core reads no clock).
    deadline: Option<Instant>,
}

impl Adoption {
    pub fn new(
        conn: ConnId,
        link: Link,
        cursor: Option<Cursor>,
        user: Option<UserId>,
        done: oneshot::Sender<super::AdoptOutcome>,
    ) -> Self {
        Self {
            conn,
            link,
            cursor,
            user,
            done,
            record: None,
            backlog: Vec::new(),
            heads: Vec::new(),
            waiting: HashSet::new(),
            deadline: None,
        }
    }

    fn request(&self) -> RoomMsg {
        RoomMsg::Backfill {
            after: self.cursor.clone().unwrap_or_default(),
            conn: self.conn.clone(),
        }
    }
}

/// A member the room took on: the answer to give its client, and the auth it joined
/// with.
#[derive(Debug)]
pub struct Settled {
    pub done: oneshot::Sender<super::AdoptOutcome>,
    pub auth: JoinAuth,
}

pub struct Replica {
    room: RoomRef,
    inbound: Inbound<WireEvent>,
    sync: HashMap<NodeId, sync::State>,
    adoptions: Vec<Adoption>,
    adopt_patience: Duration,
    /// Per peer, the first of this node's events owed to its replica (see `Hello`).
    owed: HashMap<NodeId, Seq>,
    /// Nodes whose replica of the room this one has heard from, kept when they are
    /// declared dead: one may hold events or changes that never crossed (a partition
    /// cut them off), whether or not it still has members, so it is greeted again when
    /// its link is back.
    known: HashSet<NodeId>,
    /// Origins declared dead whose events the other replicas were asked for: the
    /// peers still to answer, and until when they are waited for. What nobody has is
    /// given up after.
    orphans: HashMap<NodeId, (HashSet<NodeId>, Instant)>,
    /// What calls produced that waits for another replica to hold it, in call order.
    pending: std::collections::VecDeque<Pending>,
    /// The answer to the call being flushed next.
    answer: Option<(ConnId, ServerFrame)>,
    /// Per peer this node sends its events to directly, how far it has them.
    acked: HashMap<NodeId, Seq>,
    max_pending: usize,
    /// Events withheld per origin at most (`Bounds::held_per_origin`).
    max_withheld: usize,
    rechecked_calls: usize,
    /// This replica's own changes as sent, each call's with when to check that every
    /// peer holds them (see `recheck`); bounded by `rechecked_calls` and
    /// `UNCONFIRMED_HASHES`.
    unconfirmed: std::collections::VecDeque<(Instant, Vec<ChangeHash>)>,
    /// Peers whose changes wait in the document for changes it lacks, and when this
    /// replica catches up with them if those have not come by then (see `take`).
    lacking: Option<(Instant, HashSet<NodeId>)>,
    /// The document's heads when this replica last sent its changes or took in
    /// others': a call's own changes are those beyond (unknown until the first call).
    sent_heads: Option<Vec<ChangeHash>>,
    /// Per peer, changes it is known to hold: its last heads and what it said it
    /// applied that a held answer waits for (those this document knows). A call's
    /// change is confirmed when it is among them (or, on ticks, their ancestors).
    confirmed: HashMap<NodeId, Vec<ChangeHash>>,
    /// When held answers are next checked against peers' ancestry (`ANCESTRY_EVERY`).
    ancestry_at: Option<Instant>,
    /// This node's last event here and when it was sent, until the others were told
    /// how far its events go (`told` times: see `TELL_TAIL_AFTER`).
    tail: Option<Tail>,
    /// Per peer, the hello it is sending in parts: its id and the members so far.
    hello_parts: HashMap<NodeId, (u64, Vec<(ConnId, RemoteMember)>)>,
    /// Per origin, the first event owed to this replica's members when it greeted it
    /// after the replica had had no members (it stopped following the room), where
    /// that lies past what the replica had: those before were sent meanwhile. They go
    /// to its log, for resumes, but not to members who joined since, save those it
    /// adopted that had not seen them (`resumed`).
    unowed: HashMap<NodeId, Seq>,
    /// Origins whose events this replica stopped following (its last member left, or
    /// it was greeted with none), until they greet it again with members here.
    emptied: HashSet<NodeId>,
    /// Members this replica adopted, with how far their history went when it did.
    /// An `unowed` event is still theirs if they had not seen it: they were members
    /// all along, elsewhere (one sent just before they moved here may arrive after).
    /// At most one per member here: pruned as members leave.
    resumed: HashMap<ConnId, Cursor>,
    /// Per origin, its idempotent emits' events (and those behind them) kept from the
    /// members here until it confirms them (see `withhold`).
    withheld: HashMap<NodeId, Withheld>,
    /// This node's last event here of an idempotent emit (the replicas of its region
    /// withhold those until told), and how far they were last told its events are
    /// held (`Confirmed`, sent as a step ends).
    keyed_upto: Option<Seq>,
    confirmed_sent: Option<Seq>,
    /// The base of the room's document (read from it on first use; see `rebase`).
    base: Option<Base>,
    /// Per peer on another base: the base this replica last told it about (sent its
    /// document for, or said it is behind on), so each is said once per link.
    told_base: HashMap<NodeId, Base>,
    /// The id of this node's last hello sent in parts.
    hellos: u64,
}

struct Tail {
    upto: Seq,
    since: Instant,
    told: usize,
}

/// An origin's events withheld from the members here (see `Replica::withhold`).
#[derive(Default)]
struct Withheld {
    /// How far the origin said its events are confirmed (or they were found held by
    /// a replica that had shown them).
    confirmed: Option<Seq>,
    /// In the origin's order, each with when it came.
    events: std::collections::VecDeque<(Seq, WireEvent, Instant)>,
}

impl Withheld {
    fn confirms(&self, seq: Seq) -> bool {
        self.confirmed.is_some_and(|c| seq <= c)
    }
}

/// What a call produced that waits until its effects are on another replica too: the
/// events it caused that members here get only then (those of an idempotent emit, and
/// any behind them), and its answer.
struct Pending {
    events: Vec<Arc<LogEntry>>,
    /// The members attached when the events were held: those who come later get them
    /// in their catch-up from the log.
    targets: HashSet<ConnId>,
    reply: Option<(ConnId, ServerFrame)>,
    /// The call's last event, if it caused any.
    upto: Option<Seq>,
    /// The document's heads after the call, if the call changed it.
    heads: Vec<automerge::ChangeHash>,
}

/// What a replica holds at most (from the node's `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// How long an adoption waits for the other replicas' history.
    pub adopt_patience: Duration,
    /// See `Limits::held_per_origin`.
    pub held_per_origin: usize,
    /// Answers held for another replica to hold their change (`Limits::unconfirmed_replies`).
    pub max_pending: usize,
    /// Calls whose changes are checked again (`Limits::rechecked_calls`).
    pub rechecked_calls: usize,
}

impl Replica {
    pub fn new(room: RoomRef, bounds: Bounds) -> Self {
        Self {
            room,
            inbound: Inbound::new(REPAIR_PATIENCE, bounds.held_per_origin),
            sync: HashMap::new(),
            adoptions: Vec::new(),
            adopt_patience: bounds.adopt_patience,
            owed: HashMap::new(),
            known: HashSet::new(),
            orphans: HashMap::new(),
            pending: std::collections::VecDeque::new(),
            answer: None,
            acked: HashMap::new(),
            max_pending: bounds.max_pending,
            max_withheld: bounds.held_per_origin,
            rechecked_calls: bounds.rechecked_calls,
            unconfirmed: std::collections::VecDeque::new(),
            lacking: None,
            sent_heads: None,
            confirmed: HashMap::new(),
            ancestry_at: None,
            hello_parts: HashMap::new(),
            unowed: HashMap::new(),
            emptied: HashSet::new(),
            resumed: HashMap::new(),
            withheld: HashMap::new(),
            keyed_upto: None,
            confirmed_sent: None,
            base: None,
            told_base: HashMap::new(),
            hellos: 0,
            tail: None,
        }
    }

    pub fn room(&self) -> &RoomRef {
        &self.room
    }

    /// Whether the room can take another emit: its answers waiting for confirmation
    /// are fewer than the bound (else replication is far behind: the client retries).
    pub fn accepts_emits(&self) -> bool {
        self.pending.len() < self.max_pending
    }

    /// `conn` was just given what the log holds after its cursor (it joined, came back,
    /// or was adopted): held events are in there, so it is not sent them again.
    pub fn replayed(&mut self, conn: &ConnId) {
        for p in &mut self.pending {
            p.targets.remove(conn);
        }
    }

    /// Whether the next call's events must wait, for members here, until another
    /// replica holds them: an idempotent emit's (a client may retry it elsewhere, and
    /// a member must not see it twice), and any call's while earlier ones wait (this
    /// node's own events reach its members in their order; other nodes' do not wait).
    pub fn holds_events(&self, idempotent: bool) -> bool {
        idempotent || self.pending.iter().any(|p| !p.events.is_empty())
    }

    /// One step: `input` changes the replica and the room's `World`; what the actor
    /// must do about it (send, publish, announce interest, answer clients) is pushed
    /// to `ctx.out`. The one entry point: everything a replica does starts here.
    pub fn handle(&mut self, w: &mut World, input: Input, ctx: &mut Ctx) {
        match input {
            Input::MemberJoined => self.member_joined(ctx),
            Input::MemberLeft => self.member_left(w, ctx),
            Input::Flush => self.flush(w, ctx),
            Input::Reply { conn, frame } => self.reply(conn, frame),
            Input::Receive(msgs) => self.receive_all(w, msgs, ctx),
            Input::Tick => self.poll(w, ctx),
            Input::Compact => self.compact(w, ctx),
            Input::Adopt(a) => self.adopt(w, *a, ctx),
            Input::SettleDue => self.settle_due(w, ctx),
            Input::PeerJoined(node, ago) => self.peer_joined(w, &node, ago, ctx),
            Input::PeerUp(node) => self.peer_up(w, &node, ctx),
            Input::PeerDown(node) => self.peer_down(w, &node, ctx),
            Input::Answered(key) => self.answered(w, &key, ctx),
        }
        self.confirm(w, ctx);
    }

    /// Tell the replicas of this node's region how far its events are held by a
    /// replica that counts (`holds_for`), while that leaves idempotent emits' events
    /// they withhold. The events alone decide it, not the answers (which may wait for
    /// the document too): a duplicate is an event shown twice.
    fn confirm(&mut self, w: &World, ctx: &mut Ctx) {
        if self.keyed_upto <= self.confirmed_sent {
            return;
        }
        let held = {
            let counts = Self::holds_for(w, ctx);
            self.acked
                .iter()
                .filter(|(n, _)| counts(n))
                .map(|(_, a)| *a)
                .max()
        };
        if held <= self.confirmed_sent {
            return;
        }
        let Some(upto) = held else { return };
        self.confirmed_sent = held;
        let home = Some(w.place.region.clone());
        for node in ctx.peers.interested() {
            if ctx.peers.region_of(&node) == home {
                ctx.send(&node, RoomMsg::Confirmed { upto });
            }
        }
    }

    /// Which replicas' holding something counts for this node's answers and its
    /// neighbours' withheld events: one in another region when the room has one (a
    /// region can go down whole), else any other.
    fn holds_for<'a>(w: &World, ctx: &'a Ctx) -> impl Fn(&NodeId) -> bool + 'a {
        let home = Some(w.place.region.clone());
        let elsewhere = ctx
            .peers
            .interested()
            .iter()
            .any(|n| ctx.peers.region_of(n) != home);
        move |n: &NodeId| !elsewhere || ctx.peers.region_of(n) != home
    }

    fn settle_due(&mut self, w: &mut World, ctx: &mut Ctx) {
        for a in self.adoptions_due(ctx) {
            match self.settle(w, a, ctx) {
                Ok(settled) => ctx.out.push(Effect::Adopted(settled)),
                Err((a, why)) => ctx.out.push(Effect::Declined(a.done, why)),
            }
        }
    }

    /// A member joined here. The first one makes this node a replica: its peers learn
    /// that from its interest and greet it (`peer_up`), it answers with its own hello.
    fn member_joined(&mut self, ctx: &mut Ctx) {
        ctx.out.push(Effect::Interest(true));
    }

    fn member_left(&mut self, w: &World, ctx: &mut Ctx) {
        ctx.out.push(Effect::Interest(false));
        self.resumed.retain(|conn, _| w.core.member(conn).is_some());
        if w.core.members().is_empty() {
            let me = w.core.origin();
            let origins = w.core.head().iter().map(|(o, _)| o).filter(|o| *o != me);
            self.emptied.extend(origins.cloned());
        }
    }

    fn hello(&mut self, w: &mut World, node: &NodeId, reply: bool, ctx: &mut Ctx) {
        let mut parts = split_members(w.local_records());
        let members = parts.pop().unwrap_or_default();
        let id = match parts.is_empty() {
            true => 0,
            false => {
                self.hellos += 1;
                self.hellos
            }
        };
        for members in parts {
            ctx.send(node, RoomMsg::HelloPart { id, members });
        }
        let next = w.core.next_seq();
        let first = *self.owed.entry(node.clone()).or_insert(next);
        ctx.send(
            node,
            RoomMsg::Hello {
                members,
                first,
                next,
                reply,
                parts: id,
            },
        );
        self.sync_with(w, node, true, "hello", ctx);
    }

    /// Send what the last call produced to the other replicas.
    fn flush(&mut self, w: &mut World, ctx: &mut Ctx) {
        let Some(out) = w.outgoing.as_mut().map(std::mem::take) else {
            return;
        };
        let Outgoing {
            events,
            joined,
            left,
            state,
            kicks,
            handled,
        } = out;
        let upto = events.last().map(|e| e.seq);
        let keyed = events
            .iter()
            .filter(|e| e.key.is_some())
            .map(|e| e.seq)
            .max();
        self.keyed_upto = self.keyed_upto.max(keyed);
        self.hold(w, upto, state, ctx);
        if let Some(upto) = upto {
            let since = ctx.now;
            self.tail = Some(Tail {
                upto,
                since,
                told: 0,
            });
        }
        for e in events {
            ctx.out
                .push(Effect::Publish(RoomMsg::Event(WireEvent::new(&e))));
        }
        // After the events: a replica of this region that answers a retry from it has
        // them already (see `answered`).
        for (key, reply) in handled {
            let reply = reply.map(|p| (p.json, p.binaries));
            ctx.out
                .push(Effect::Publish(RoomMsg::Handled { key, reply }));
        }
        if !joined.is_empty() || !left.is_empty() {
            ctx.out
                .push(Effect::Publish(RoomMsg::Presence { joined, left }));
        }
        if state {
            self.send_changes(w, ctx);
        }
        // After the call's events, so a kicked member gets those sent straight to it.
        for (node, conn, reason) in kicks {
            ctx.send(&node, RoomMsg::Kick { conn, reason });
        }
    }

    /// The answer to the emit whose call just ran: it goes with that call's effects
    /// when they are flushed.
    fn reply(&mut self, conn: ConnId, frame: ServerFrame) {
        debug_assert!(self.answer.is_none(), "one answer per call");
        self.answer = Some((conn, frame));
    }

    /// What the call just flushed holds back (its held events, its answer) waits until
    /// another replica holds its effects — at once if no other node has the room.
    fn hold(&mut self, w: &mut World, upto: Option<Seq>, changed: bool, ctx: &Ctx) {
        let events = w.held.take().unwrap_or_default();
        let reply = self.answer.take();
        if events.is_empty() && reply.is_none() {
            return;
        }
        let heads = if changed { w.doc.heads() } else { Vec::new() };
        let targets = match events.is_empty() {
            true => HashSet::new(),
            false => w.links.keys().cloned().collect(),
        };
        self.pending.push_back(Pending {
            events,
            targets,
            reply,
            upto,
            heads,
        });
        match self.alone(ctx) {
            true => self.release_all(w),
            false => self.release(w, ctx),
        }
    }

    /// No other replica can confirm anything: none has the room, and this node is not
    /// the one cut off (then the others are likely alive with members, out of reach).
    fn alone(&self, ctx: &Ctx) -> bool {
        ctx.peers.interested().is_empty() && !ctx.peers.cut_off()
    }

    /// What a pending call held goes out: its events to the members here, then its
    /// answer.
    fn send_out(w: &mut World, p: Pending) {
        for e in &p.events {
            w.deliver_among(e, &p.targets);
        }
        if let Some((conn, frame)) = p.reply {
            w.push(&conn, Outbound::frame(frame));
        }
    }

    /// Send the answers whose calls' effects another replica now holds, in call order:
    /// a replica in another region when the room has one (a region can go down whole),
    /// else any other. A call's change is held by a peer when the peer names it (its
    /// `Applied`, or the heads a sync conversation left both holding).
    fn release(&mut self, w: &mut World, ctx: &Ctx) {
        self.release_confirmed(w, ctx, false);
    }

    /// `release`; `thorough` also counts a call's change held when it is an ancestor of
    /// what a peer names (it came by a relay or a sync, not with an `Applied`): on
    /// ticks, at most every `ANCESTRY_EVERY`, since even walking back only through
    /// the changes made since costs a lookup each.
    fn release_confirmed(&mut self, w: &mut World, ctx: &Ctx, thorough: bool) {
        if self.pending.is_empty() {
            return;
        }
        let thorough = thorough && self.ancestry_at.is_none_or(|at| ctx.now >= at);
        if thorough {
            self.ancestry_at = Some(ctx.now + ANCESTRY_EVERY);
        }
        let counts = Self::holds_for(w, ctx);
        while let Some(p) = self.pending.front() {
            let events = p
                .upto
                .is_none_or(|s| self.acked.iter().any(|(n, a)| *a >= s && counts(n)));
            if !events {
                return;
            }
            let mut holds = |theirs: &[ChangeHash]| {
                p.heads.iter().all(|h| theirs.contains(h))
                    // Empty heads hold nothing (and would make the walk pointless).
                    || (thorough && !theirs.is_empty() && w.doc.covered(&p.heads, theirs))
            };
            let doc = p.heads.is_empty()
                || self
                    .sync
                    .iter()
                    .any(|(n, st)| counts(n) && holds(&st.shared_heads))
                || self
                    .confirmed
                    .iter()
                    .any(|(n, theirs)| counts(n) && holds(theirs));
            if !doc {
                return;
            }
            if let Some(p) = self.pending.pop_front() {
                Self::send_out(w, p);
            }
        }
    }

    /// Send every answer held, confirmed or not: no other replica is left to hold
    /// them (they left the room, or died while this node still hears a majority).
    fn release_all(&mut self, w: &mut World) {
        for p in std::mem::take(&mut self.pending) {
            Self::send_out(w, p);
        }
    }

    /// A peer's changes came in: members get the state. Passing them on is their
    /// origin's business (`recheck`).
    fn took_in(&mut self, w: &mut World) {
        w.doc_received();
        self.sent_heads = Some(w.doc.heads());
    }

    /// Send this replica's changes since it last sent (a call's) to every other.
    /// Before the first, a sync conversation with each: what is new is not known.
    fn send_changes(&mut self, w: &mut World, ctx: &mut Ctx) {
        let heads = w.doc.heads();
        let mut hashes: Vec<ChangeHash> = match self.sent_heads.replace(heads.clone()) {
            Some(since) => {
                let changes = w.doc.hashed_changes_since(&since);
                for node in ctx.peers.interested() {
                    self.offer(w, &node, &changes, ctx);
                }
                changes.iter().map(|(h, _)| *h).collect()
            }
            None => {
                self.sync_all(w, "first", ctx);
                // Its own changes are unknown: its heads, which depend on them, stand
                // for them (a peer given only those catches up by a sync).
                heads
            }
        };
        if !hashes.is_empty() && !ctx.peers.interested().is_empty() {
            if self.unconfirmed.len() >= self.rechecked_calls {
                // Not checked, then: a peer that lacks them catches up when a later
                // change needs them, or by a sync when it meets this node again.
                self.unconfirmed.pop_front();
                w.metrics.changes_unchecked.inc();
            }
            hashes.drain(..hashes.len().saturating_sub(UNCONFIRMED_HASHES));
            self.unconfirmed
                .push_back((ctx.now + RECHECK_AFTER, hashes));
        }
    }

    /// This replica's own changes sent `RECHECK_AFTER` ago that a peer has not said it
    /// holds go to it again, and through a peer that holds them (the link from here may
    /// be cut one way). Only their origin does this: when every replica passed on what
    /// it took in, a busy room cost a message between every pair of replicas each
    /// second, two thirds of all messages between nodes.
    fn recheck(&mut self, w: &mut World, ctx: &mut Ctx) {
        let mut due = Vec::new();
        while let Some((at, _)) = self.unconfirmed.front()
            && ctx.now >= *at
        {
            if let Some((_, hashes)) = self.unconfirmed.pop_front() {
                due.extend(hashes);
            }
        }
        if due.is_empty() {
            return;
        }
        let (mut holding, mut lacking) = (Vec::new(), Vec::new());
        for node in ctx.peers.interested() {
            let sync = self.sync.get(&node).map(|st| st.shared_heads.as_slice());
            let holds = [self.confirmed.get(&node).map(Vec::as_slice), sync]
                .into_iter()
                .flatten()
                .any(|theirs| !theirs.is_empty() && w.doc.covered(&due, theirs));
            match holds {
                true => holding.push(node),
                false => lacking.push(node),
            }
        }
        if lacking.is_empty() {
            return;
        }
        let changes = w.doc.changes_by_hash(&due);
        for node in lacking {
            self.offer(w, &node, &changes, ctx);
            if let Some(via) = holding.first() {
                let changes = due.clone();
                ctx.send(via, RoomMsg::PassOn { to: node, changes });
            }
        }
    }

    /// Offer every other replica what it lacks of the document.
    fn sync_all(&mut self, w: &mut World, why: &'static str, ctx: &mut Ctx) {
        for node in ctx.peers.interested() {
            self.sync_with(w, &node, false, why, ctx);
        }
    }

    /// Say the next thing of the sync conversation with `node`, if there is one;
    /// `afresh` starts the conversation over (a hello, or this replica lacks what a
    /// change depends on: what was said before may be lost). `why` is counted
    /// (`edgeroom_state_syncs`).
    fn sync_with(
        &mut self,
        w: &mut World,
        node: &NodeId,
        afresh: bool,
        why: &'static str,
        ctx: &mut Ctx,
    ) {
        w.metrics
            .state_syncs
            .get_or_create(&crate::metrics::KindLabel { kind: why.into() })
            .inc();
        self.say_sync(w, node, afresh, true, ctx);
    }

    /// As `sync_with`; `news` as in `RoomDoc::sync_message` (an answer to a message
    /// that brought nothing says something only if there is something to say).
    fn say_sync(&mut self, w: &mut World, node: &NodeId, afresh: bool, news: bool, ctx: &mut Ctx) {
        let state = self.sync.entry(node.clone()).or_default();
        if afresh {
            // Over from what both were last known to hold (what Automerge keeps of a
            // sync state across sessions): from nothing, each side's first message
            // covered the whole history, and the conversations after hellos took most
            // of a busy node's CPU. A peer that lost some of it answers with a reset.
            let shared = std::mem::take(&mut state.shared_heads);
            *state = sync::State::new();
            state.shared_heads = shared;
        }
        if let Some(msg) = w.doc.sync_message(state, news) {
            let base = self.base_of(w).clone();
            ctx.send(node, RoomMsg::Sync(base, msg));
        }
    }

    /// Send `changes` to `node` as they are, or, past `CHANGES_PART`, by the sync
    /// protocol (which sends only what the peer lacks).
    fn offer(
        &mut self,
        w: &mut World,
        node: &NodeId,
        changes: &[(ChangeHash, Vec<u8>)],
        ctx: &mut Ctx,
    ) {
        let bytes: usize = changes.iter().map(|(_, c)| c.len()).sum();
        if bytes > CHANGES_PART {
            self.sync_with(w, node, false, "large", ctx);
        } else if !changes.is_empty() {
            // A sync conversation under way need not send them again: it would never
            // end while the room is busy (every step would carry the newest changes).
            if let Some(state) = self.sync.get_mut(node)
                && state.their_heads.is_some()
            {
                if state.sent_hashes.len() + changes.len() > SENT_HASHES_MAX {
                    // Trimmed only as the peer's heads come in; forgetting is safe
                    // (the protocol then sends some changes twice).
                    state.sent_hashes.clear();
                }
                state.sent_hashes.extend(changes.iter().map(|(h, _)| *h));
            }
            let base = self.base_of(w).clone();
            let changes = changes.iter().map(|(_, c)| c.clone()).collect();
            ctx.send(node, RoomMsg::Changes(base, changes));
        }
    }

    /// Peers' messages in the order they came. The document changes among them are
    /// taken in with one Automerge call (see `RoomDoc::apply_groups`), ahead of the
    /// messages about events and members that came between them, which do not read
    /// the document; never ahead of one that reads or replaces it.
    fn receive_all(&mut self, w: &mut World, msgs: Vec<(NodeId, RoomMsg)>, ctx: &mut Ctx) {
        let mut msgs = msgs.into_iter();
        loop {
            let base = self.base_of(w).clone();
            let (mut changes, mut between, mut barrier) = (Vec::new(), Vec::new(), None);
            for (from, msg) in msgs.by_ref() {
                match msg {
                    RoomMsg::Changes(b, c) if b == base => changes.push((from, c)),
                    m if m.reads_document() => {
                        barrier = Some((from, m));
                        break;
                    }
                    m => between.push((from, m)),
                }
            }
            self.take_changes(w, changes, ctx);
            for (from, msg) in between.into_iter().chain(barrier) {
                self.receive(w, from, msg, ctx);
            }
            if msgs.len() == 0 {
                break;
            }
        }
    }

    /// A message from another replica.
    fn receive(&mut self, w: &mut World, from: NodeId, msg: RoomMsg, ctx: &mut Ctx) {
        match &msg {
            RoomMsg::Unloaded => self.known.remove(&from),
            _ => self.known.insert(from.clone()),
        };
        let had = self.inbound.delivered(&from);
        // A hello starts over (a link came back): what was said before may be lost.
        let again = matches!(msg, RoomMsg::Hello { .. });
        self.take(w, &from, msg, ctx);
        // The sender sent its own events here directly: say how far this replica has
        // them, so it can answer its clients.
        let has = self.inbound.delivered(&from);
        if let Some(upto) = has
            && (has != had || again)
        {
            ctx.send(&from, RoomMsg::Got { upto });
        }
    }

    /// Peers' `Changes` on this replica's base, taken in together; each sender is
    /// told which of its changes this replica holds now (`Applied`).
    fn take_changes(&mut self, w: &mut World, changes: Vec<(NodeId, Vec<Vec<u8>>)>, ctx: &mut Ctx) {
        if changes.is_empty() {
            return;
        }
        let groups: Vec<&[Vec<u8>]> = changes.iter().map(|(_, c)| c.as_slice()).collect();
        let (changed, results) = w.doc.apply_groups(&groups);
        if changed {
            self.took_in(w);
        }
        let mut applied: Vec<(NodeId, Vec<ChangeHash>)> = Vec::new();
        for ((from, sent), result) in changes.into_iter().zip(results) {
            self.known.insert(from.clone());
            let held = match result {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(peer = %from, room = %self.room.1, "bad changes: {e}");
                    continue;
                }
            };
            if held.len() < sent.len() {
                // Some wait for changes this replica lacks. Those are most likely on
                // their way from their own origin (every replica sends its changes to
                // every other): catch up with the sender only if they have not come
                // a moment later.
                let (_, peers) = self
                    .lacking
                    .get_or_insert_with(|| (ctx.now + LACKING_PATIENCE, HashSet::new()));
                peers.insert(from.clone());
            }
            match applied.iter_mut().find(|(n, _)| *n == from) {
                Some((_, all)) => all.extend(held),
                None => applied.push((from, held)),
            }
        }
        if applied.is_empty() {
            return;
        }
        let heads = w.doc.heads();
        for (from, held) in applied {
            let heads = heads.clone();
            ctx.send(&from, RoomMsg::Applied { held, heads });
        }
    }

    fn take(&mut self, w: &mut World, from: &NodeId, msg: RoomMsg, ctx: &mut Ctx) {
        let from = from.clone();
        match msg {
            RoomMsg::Event(e) => self.take_event(w, e, ctx),
            RoomMsg::HelloPart { id, members } => {
                let buffered = self.hello_parts.entry(from).or_default();
                if buffered.0 != id {
                    // A new hello: the parts of an earlier one (its link broke) go.
                    *buffered = (id, Vec::new());
                }
                if buffered.1.len() + members.len() <= HELLO_PARTS_MAX_MEMBERS {
                    buffered.1.extend(members);
                }
            }
            RoomMsg::Hello {
                mut members,
                first,
                next,
                reply,
                parts,
            } => {
                if let Some((id, mut before)) = self.hello_parts.remove(&from)
                    && parts != 0
                    && id == parts
                {
                    before.append(&mut members);
                    members = before;
                }
                // A link that came back may have lost what was said about bases.
                self.told_base.remove(&from);
                self.greeted(w, &from, first, next, ctx);
                let old = w.remote.remove(&from).unwrap_or_default();
                let new = self.claims(w, &from, members, ctx);
                let left = old
                    .keys()
                    .filter(|c| !new.contains_key(*c))
                    .cloned()
                    .collect();
                let joined = new
                    .iter()
                    .filter(|(c, m)| old.get(*c).map(|o| &o.presence) != Some(&m.presence))
                    .map(|(c, m)| (c.clone(), m.presence.clone()))
                    .collect();
                w.remote.insert(from.clone(), new);
                w.push_presence(joined, left);
                match reply {
                    true => self.hello(w, &from, false, ctx),
                    false => self.sync_with(w, &from, false, "hello", ctx),
                }
            }
            RoomMsg::Presence { joined, left } => {
                let joined = self.claims(w, &from, joined, ctx);
                let entries = w.remote.entry(from).or_default();
                let left: Vec<ConnId> = left
                    .into_iter()
                    .filter(|c| entries.remove(c).is_some())
                    .collect();
                let joined = joined
                    .into_iter()
                    .map(|(c, m)| {
                        let presence = m.presence.clone();
                        entries.insert(c.clone(), m);
                        (c, presence)
                    })
                    .collect();
                w.push_presence(joined, left);
            }
            RoomMsg::Kick { conn, reason } => {
                // The actor carries it out after this message, as after a call.
                if w.core.member(&conn).is_some() {
                    w.kicks.push((conn, reason));
                }
            }
            RoomMsg::Backfill { after, conn } => self.backfill(w, &from, &after, conn, ctx),
            RoomMsg::Backfilled {
                conn,
                events,
                last,
                member,
                head,
            } => {
                let adoption = self.adoptions.iter_mut().find(|a| a.conn == conn);
                if let Some(a) = adoption {
                    // Kept for this member's catch-up: the room's log may start later
                    // than its cursor (it loaded after the member's last event).
                    a.backlog.extend(events.iter().cloned());
                    if last {
                        a.waiting.remove(&from);
                        a.heads.push(head);
                    }
                    if let Some(m) = member
                        && a.record.as_ref().is_none_or(|r| r.claim < m.claim)
                    {
                        a.record = Some(m);
                    }
                }
                for e in events {
                    self.take_event(w, e, ctx);
                }
            }
            RoomMsg::Sync(base, _) | RoomMsg::Changes(base, _) if base != *self.base_of(w) => {
                self.other_base(w, &from, base, ctx);
            }
            RoomMsg::Behind(base) => self.other_base(w, &from, base, ctx),
            RoomMsg::Rebase(doc) => self.rebase(w, &from, &doc, ctx),
            RoomMsg::Sync(_, bytes) => {
                let state = self.sync.entry(from.clone()).or_default();
                match w.doc.receive_sync(state, &bytes) {
                    Ok(changed) => {
                        // Answer: the protocol is a conversation.
                        self.say_sync(w, &from, false, changed, ctx);
                        if changed {
                            self.took_in(w);
                        }
                        self.release(w, ctx);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %from, room = %self.room.1, "bad sync message: {e}");
                        self.sync.remove(&from);
                    }
                }
            }
            RoomMsg::Changes(_, changes) => self.take_changes(w, vec![(from, changes)], ctx),
            RoomMsg::Applied { held, heads } => {
                let waited: HashSet<ChangeHash> = self
                    .pending
                    .iter()
                    .flat_map(|p| p.heads.iter().copied())
                    .collect();
                let known: Vec<ChangeHash> = heads.into_iter().filter(|h| w.doc.knows(h)).collect();
                // Held by both: a sync conversation with the peer starts from there
                // (see `sync_with`), and a held answer is checked against them. Left
                // as the last conversation ended, they fell behind by every change
                // since, and each check read all of those out of the document.
                if !known.is_empty()
                    && let Some(state) = self.sync.get_mut(&from)
                {
                    state.shared_heads.clone_from(&known);
                }
                let theirs = self.confirmed.entry(from).or_default();
                // Changes go to a peer in order and are applied only after what they
                // depend on: held ones stay known while an answer waits for them.
                theirs.retain(|h| waited.contains(h));
                theirs.extend(held.into_iter().filter(|h| waited.contains(h)));
                theirs.extend(known);
                theirs.sort_unstable();
                theirs.dedup();
                self.release(w, ctx);
            }
            RoomMsg::Repair { from: first, to } => {
                let (events, first_available) = w.core.own_range(first, to);
                // In parts under the frame limit; each says where the origin's events
                // start (taken once).
                for events in event_parts(&events) {
                    ctx.send(
                        &from,
                        RoomMsg::Repaired {
                            events,
                            first_available,
                        },
                    );
                }
            }
            RoomMsg::Repaired {
                events,
                first_available,
            } => {
                let (ready, skipped) = self.inbound.skip_to(&from, first_available);
                self.deliver(w, &from, ready, skipped, ctx);
                for e in events {
                    self.take_event(w, e, ctx);
                }
            }
            RoomMsg::AskHello => self.hello(w, &from, false, ctx),
            RoomMsg::PassOn { to, changes } => {
                if ctx.peers.interested().contains(&to) {
                    let changes = w.doc.changes_by_hash(&changes);
                    self.offer(w, &to, &changes, ctx);
                }
            }
            RoomMsg::Tail { origin, upto } => {
                if origin != *w.core.origin() {
                    self.inbound.heard(&origin, upto, ctx.now);
                }
            }
            RoomMsg::Got { upto } => {
                let a = self.acked.entry(from).or_default();
                *a = (*a).max(upto);
                self.release(w, ctx);
            }
            RoomMsg::Orphaned { origin, after } => {
                let parts = event_parts(&w.core.origin_after(&origin, after));
                let n = parts.len();
                for (i, events) in parts.into_iter().enumerate() {
                    let origin = origin.clone();
                    let last = i + 1 == n;
                    ctx.send(
                        &from,
                        RoomMsg::Orphans {
                            origin,
                            events,
                            last,
                        },
                    );
                }
            }
            RoomMsg::Orphans {
                origin,
                events,
                last,
            } => {
                for e in events.into_iter().filter(|e| e.origin == origin) {
                    // One withheld here: the sender showed it, so it is no longer the
                    // dead origin's alone (and maybe confirmed, unheard here).
                    let withheld = self
                        .withheld
                        .get(&origin)
                        .is_some_and(|h| h.events.iter().any(|(s, ..)| *s == e.seq));
                    match withheld {
                        true => self.vouch(w, &origin, e.seq, ctx),
                        false => self.take_event(w, e, ctx),
                    }
                }
                if !last {
                    return;
                }
                let done = self.orphans.get_mut(&origin).is_some_and(|(waiting, _)| {
                    waiting.remove(&from);
                    waiting.is_empty()
                });
                if done {
                    self.orphans.remove(&origin);
                    let (ready, skipped) = self.inbound.give_up(&origin);
                    self.deliver(w, &origin, ready, skipped, ctx);
                }
            }
            RoomMsg::Handled { key, reply } => {
                let reply = reply.map(|(json, binaries)| Payload { json, binaries });
                w.core.remember(key, ctx.now_ms, Ok(reply));
            }
            RoomMsg::Confirmed { upto } => self.vouch(w, &from, upto, ctx),
            RoomMsg::Unloaded => {
                // It has nothing more to say: what is held from it goes out.
                let (ready, skipped) = self.inbound.give_up(&from);
                self.deliver(w, &from, ready, skipped, ctx);
            }
        }
    }

    /// `from`'s hello says what it owes this replica from `first` on, and that its
    /// next event is `next`: whatever of that did not come (lost with a link) is asked
    /// for.
    fn greeted(&mut self, w: &mut World, from: &NodeId, first: Seq, next: Seq, ctx: &mut Ctx) {
        let lacking = match self.inbound.delivered(from) {
            None => {
                self.start(w, from, first, ctx);
                self.inbound.delivered(from).map_or(first, Seq::next)
            }
            Some(d) => match next.run == d.run {
                true => {
                    // Greeted while memberless (the room is loaded without members):
                    // what comes before members do is not theirs either.
                    let had_none = match w.core.members().is_empty() {
                        true => {
                            self.emptied.insert(from.clone());
                            true
                        }
                        false => self.emptied.remove(from),
                    };
                    if had_none && first.run == d.run && first > d.next() {
                        self.unowed.insert(from.clone(), first);
                    }
                    d.next()
                }
                false => Seq::first(next.run),
            },
        };
        let to = next.prev();
        if to.n >= 1 && to.run == lacking.run && to >= lacking {
            ctx.send(from, RoomMsg::Repair { from: lacking, to });
        }
    }

    /// Everything in the log after `after`, and what this node knows of `conn`.
    fn backfill(&mut self, w: &World, to: &NodeId, after: &Cursor, conn: ConnId, ctx: &mut Ctx) {
        let parts = event_parts(&w.core.replay_all(after));
        let mut member = match w.core.member(&conn) {
            Some(m) => Some(m.into()),
            None => w
                .remote
                .values()
                .find_map(|m| m.get(&conn).cloned())
                .or_else(|| w.departed.get(&conn).map(|(m, _)| m.clone())),
        };
        let n = parts.len();
        for (i, events) in parts.into_iter().enumerate() {
            let last = i + 1 == n;
            let msg = RoomMsg::Backfilled {
                conn: conn.clone(),
                events,
                last,
                member: if last { member.take() } else { None },
                head: if last {
                    w.core.head().clone()
                } else {
                    Cursor::default()
                },
            };
            ctx.send(to, msg);
        }
    }

    /// Start taking `origin`'s events at `first` (it said so, or a member's history
    /// starts there): nothing before is owed here. Its events relayed by other
    /// replicas may have come already, from earlier still: it starts there instead,
    /// and what lies between them and `first` is repaired, not marked as never owed
    /// (the log would take it twice).
    fn start(&mut self, w: &mut World, origin: &NodeId, first: Seq, ctx: &Ctx) {
        let ready = self.inbound.start(origin, first);
        let start = ready.first().map_or(first, |(_, s, _)| (*s).min(first));
        self.deliver(w, origin, ready, 0, ctx);
        w.core.mark_start(origin, start);
    }

    fn take_event(&mut self, w: &mut World, e: WireEvent, ctx: &Ctx) {
        let origin = e.origin.clone();
        if origin == *w.core.origin() {
            return;
        }
        match self.inbound.receive(&origin, e.seq, e, ctx.now) {
            Received::Deliver(ready) => self.deliver(w, &origin, ready, 0, ctx),
            Received::Duplicate | Received::Held | Received::Overflow => {}
        }
    }

    fn deliver(
        &mut self,
        w: &mut World,
        origin: &NodeId,
        ready: Vec<(NodeId, Seq, WireEvent)>,
        skipped: u64,
        ctx: &Ctx,
    ) {
        if skipped > 0 {
            let frame = ServerFrame::Error {
                error: ProtoError::new(
                    ErrorCode::HistoryGap,
                    format!("{skipped} events from node {origin} were lost"),
                ),
                room: Some(w.place.room.clone()),
            };
            w.push_all(&frame, None);
        }
        debug_assert!(
            ready.iter().all(|(o, ..)| o == origin)
                && ready.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "one origin's events are delivered in its order"
        );
        for (_, seq, e) in ready {
            if let Some(e) = self.withhold(w, origin, seq, e, ctx) {
                self.show(w, origin, seq, e, ctx.now_ms);
            }
        }
    }

    /// Whether the members here must wait for `origin`'s word before they see its
    /// idempotent emits' events: when it is in this node's region (a region that goes
    /// down whole takes both, and the emit's retry elsewhere would run it again after
    /// members here saw it: a duplicate once they resume), or this node is cut off
    /// (its members are about to move). A replica in another region holds the event
    /// through a region's loss, and one that has it passes a rerun of the emit over.
    fn waits_for(w: &World, origin: &NodeId, ctx: &Ctx) -> bool {
        ctx.peers.region_of(origin).as_deref() == Some(w.place.region.as_str())
            || ctx.peers.cut_off()
    }

    /// `origin`'s next event, given back if the members here may see it now; else it
    /// is withheld until its origin confirms it (`Confirmed`), a replica that showed
    /// it is found (its origin died), a retry is answered here from memory, or
    /// `WITHHELD_PATIENCE` passed. Those behind it wait too (one origin's order).
    fn withhold(
        &mut self,
        w: &mut World,
        origin: &NodeId,
        seq: Seq,
        e: WireEvent,
        ctx: &Ctx,
    ) -> Option<WireEvent> {
        let waits = e.key.is_some() && Self::waits_for(w, origin, ctx);
        let held = self.withheld.entry(origin.clone()).or_default();
        if held.events.is_empty() && (!waits || held.confirms(seq)) {
            return Some(e);
        }
        if waits {
            withheld_count(w, "withheld", 1);
        }
        held.events.push_back((seq, e, ctx.now));
        // Bounded like the events held behind a gap: past it the oldest go unconfirmed.
        let over = held.events.len().saturating_sub(self.max_withheld);
        self.release_withheld(w, origin, over, ctx);
        None
    }

    /// Show the members here what may go of `origin`'s withheld events, from the
    /// front: confirmed, not an idempotent emit's, waited `WITHHELD_PATIENCE`, or
    /// among the `force` oldest.
    fn release_withheld(&mut self, w: &mut World, origin: &NodeId, force: usize, ctx: &Ctx) {
        let waits = Self::waits_for(w, origin, ctx);
        let Some(held) = self.withheld.get_mut(origin) else {
            return;
        };
        let (mut out, mut unconfirmed) = (Vec::new(), 0);
        while let Some((seq, e, since)) = held.events.front() {
            let free = e.key.is_none() || !waits || held.confirms(*seq);
            if !free && out.len() >= force && ctx.now < *since + WITHHELD_PATIENCE {
                break;
            }
            unconfirmed += u64::from(!free);
            out.extend(held.events.pop_front());
        }
        withheld_count(w, "unconfirmed", unconfirmed);
        for (seq, e, _) in out {
            self.show(w, origin, seq, e, ctx.now_ms);
        }
    }

    /// A retry of the emit `key` was answered here from memory: what this replica
    /// withholds of its first run (and what came before it from the same origin)
    /// goes to the members, since its sender was told it is done.
    fn answered(&mut self, w: &mut World, key: &str, ctx: &Ctx) {
        let prefix = format!("{key}#");
        let found: Vec<(NodeId, Seq)> =
            self.withheld
                .iter()
                .filter_map(|(origin, held)| {
                    let (seq, ..) =
                        held.events.iter().rev().find(|(_, e, _)| {
                            e.key.as_ref().is_some_and(|k| k.starts_with(&prefix))
                        })?;
                    Some((origin.clone(), *seq))
                })
                .collect();
        for (origin, seq) in found {
            self.vouch(w, &origin, seq, ctx);
        }
    }

    /// `origin`'s events up to `seq` are known to be confirmed or held elsewhere.
    fn vouch(&mut self, w: &mut World, origin: &NodeId, seq: Seq, ctx: &Ctx) {
        let held = self.withheld.entry(origin.clone()).or_default();
        held.confirmed = held.confirmed.max(Some(seq));
        self.release_withheld(w, origin, 0, ctx);
    }

    /// Give one event of `origin` to the members here and keep it in the log.
    fn show(&mut self, w: &mut World, origin: &NodeId, seq: Seq, e: WireEvent, now_ms: u64) {
        if let Some(key) = &e.key {
            if w.core.remembered(key).is_some() {
                // This replica has the event already, from the same emit run
                // elsewhere (a retry on the other side of a partition).
                w.core.pass(&e.origin, e.seq);
                return;
            }
            // Its first run, withheld here, never reaches the members: this one did.
            let mut superseded = 0;
            for held in self.withheld.values_mut() {
                let before = held.events.len();
                held.events
                    .retain(|(_, other, _)| other.key.as_ref() != Some(key));
                superseded += (before - held.events.len()) as u64;
            }
            withheld_count(w, "superseded", superseded);
            w.core.remember(key.clone(), now_ms, Ok(None));
        }
        let entry = w.core.append(e.into_sequenced(now_ms));
        if self.unowed.get(origin).is_some_and(|first| seq < *first) {
            let owed: HashSet<ConnId> = self
                .resumed
                .iter()
                .filter(|(_, seen)| !seen.covers(origin, seq))
                .map(|(conn, _)| conn.clone())
                .collect();
            if !owed.is_empty() {
                w.deliver_among(&entry, &owed);
            }
            return;
        }
        // At once, even while this node's own wait: its cursor stops before them.
        w.deliver(&entry);
    }

    /// Ask origins for the events of gaps that stayed open too long, and for the
    /// hello of those whose messages wait for one.
    fn poll(&mut self, w: &mut World, ctx: &mut Ctx) {
        self.recheck(w, ctx);
        if let Some((at, peers)) = self.lacking.take() {
            match ctx.now >= at {
                true if w.doc.waiting() => {
                    for peer in peers {
                        self.sync_with(w, &peer, true, "lacking", ctx);
                    }
                }
                true => {}
                false => self.lacking = Some((at, peers)),
            }
        }
        let overdue: Vec<NodeId> = self
            .orphans
            .iter()
            .filter(|(_, (_, until))| ctx.now >= *until)
            .map(|(o, _)| o.clone())
            .collect();
        for origin in overdue {
            self.orphans.remove(&origin);
            let (ready, skipped) = self.inbound.give_up(&origin);
            self.deliver(w, &origin, ready, skipped, ctx);
        }
        if !self.pending.is_empty() && self.alone(ctx) {
            self.release_all(w);
        }
        let withheld: Vec<NodeId> = self
            .withheld
            .iter()
            .filter(|(_, h)| !h.events.is_empty())
            .map(|(o, _)| o.clone())
            .collect();
        for origin in withheld {
            self.release_withheld(w, &origin, 0, ctx);
        }
        self.release_confirmed(w, ctx, true);
        self.tell_tail(w, ctx);
        for ask in self.inbound.poll(ctx.now) {
            match ask {
                Ask::Repair { origin, from, to } => {
                    ctx.send(&origin, RoomMsg::Repair { from, to });
                }
                Ask::Start { origin } => self.hello(w, &origin, true, ctx),
            }
        }
    }

    /// Once this node's events here fall quiet, tell the other replicas how far they
    /// go: one lost on its way (a relay's link died with it in flight) has no later
    /// event to show the gap.
    fn tell_tail(&mut self, w: &World, ctx: &mut Ctx) {
        let Some(t) = &mut self.tail else { return };
        let Some(after) = TELL_TAIL_AFTER.get(t.told) else {
            self.tail = None;
            return;
        };
        if ctx.now.saturating_duration_since(t.since) < *after {
            return;
        }
        t.told += 1;
        let (origin, upto) = (w.core.origin().clone(), t.upto);
        ctx.out
            .push(Effect::Publish(RoomMsg::Tail { origin, upto }));
    }

    /// Members another node says it holds. A member held by two nodes belongs to the
    /// one whose client came last (`outranks`): the other is ignored where it arrives
    /// second; a member this node held and lost that way leaves here without a word to
    /// anyone (it did not leave the room).
    fn claims(
        &mut self,
        w: &mut World,
        from: &NodeId,
        members: Vec<(ConnId, RemoteMember)>,
        ctx: &mut Ctx,
    ) -> BTreeMap<ConnId, RemoteMember> {
        let me = w.core.origin().clone();
        let mut out = BTreeMap::new();
        for (conn, m) in members {
            if let Some(local) = w.core.member(&conn) {
                if !outranks((m.token, m.claim, from), (local.token, local.claim, &me)) {
                    continue;
                }
                w.links.remove(&conn);
                w.core.leave(&conn);
                self.member_left(w, ctx);
            }
            let newer_elsewhere = w.remote.iter().any(|(node, others)| {
                node != from
                    && others.get(&conn).is_some_and(|o| {
                        outranks((o.token, o.claim, node), (m.token, m.claim, from))
                    })
            });
            if newer_elsewhere {
                continue;
            }
            for (node, others) in w.remote.iter_mut() {
                if node != from {
                    others.remove(&conn);
                }
            }
            w.departed.remove(&conn);
            out.insert(conn, m);
        }
        debug_assert!(
            out.keys().all(|c| w.core.member(c).is_none()
                && w.remote
                    .iter()
                    .all(|(n, o)| n == from || !o.contains_key(c))),
            "a member is held by one node: the one whose claim won"
        );
        out
    }

    /// A client resumed here as a member another node held: ask every live peer for
    /// the history after its cursor, and hold the member until they all answered.
    fn adopt(&mut self, w: &mut World, mut a: Adoption, ctx: &mut Ctx) {
        // Counted as interest while it waits, so the peers' messages keep coming.
        ctx.out.push(Effect::Interest(true));
        if w.core.members().is_empty() && self.adoptions.is_empty() {
            for node in ctx.peers.interested() {
                self.hello(w, &node, true, ctx);
            }
        }
        // Every live peer may hold some of its history (a replica with no members
        // left keeps its log until it unloads; one without the room says so).
        let peers = ctx.peers.alive();
        for node in &peers {
            ctx.send(node, a.request());
        }
        a.waiting = peers.into_iter().collect();
        a.deadline = Some(ctx.now + self.adopt_patience);
        self.adoptions.push(a);
    }

    /// Adoptions whose history is in (or that waited long enough).
    fn adoptions_due(&mut self, ctx: &mut Ctx) -> Vec<Adoption> {
        let now = ctx.now;
        if !self.adoptions.is_empty() {
            // A peer that stopped answering heartbeats is not waited for.
            let alive: HashSet<NodeId> = ctx.peers.alive().into_iter().collect();
            for a in &mut self.adoptions {
                a.waiting.retain(|n| alive.contains(n));
            }
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.adoptions)
            .into_iter()
            .partition(|a| a.waiting.is_empty() || a.deadline.is_none_or(|d| now >= d));
        self.adoptions = waiting;
        for a in &due {
            if !a.waiting.is_empty() {
                tracing::warn!(room = %self.room.1, conn = %a.conn, unanswered = ?a.waiting,
                    "adopting a member without every peer's history");
            }
            ctx.out.push(Effect::Interest(false));
        }
        due
    }

    /// Take on a member whose adoption is due: as the member the other nodes
    /// described (auth, presence), without calling on-join again (the handler accepted
    /// it once); it gets everything after its cursor that a replica had, then goes
    /// live. `Err`: no replica knows the member.
    fn settle(
        &mut self,
        w: &mut World,
        mut a: Adoption,
        ctx: &mut Ctx,
    ) -> Result<Settled, (Box<Adoption>, super::AdoptOutcome)> {
        // A member that joined as a verified user is that user's alone to take over,
        // and only with its session's newest token (an older one was captured, or
        // spent).
        let newest = w
            .remote
            .values()
            .filter_map(|m| m.get(&a.conn))
            .chain(a.record.iter())
            .chain(w.departed.get(&a.conn).map(|(m, _)| m))
            .max_by_key(|r| r.claim);
        if let Some(r) = newest {
            let owner = r.auth.user.as_ref();
            let stale = a.link.token.is_some_and(|t| r.token >= t);
            if stale || (owner.is_some() && owner != a.user.as_ref()) {
                return Err((Box::new(a), super::AdoptOutcome::Refused));
            }
        }
        // Every record of the member anyone gave: the newest claim describes it, and
        // this node's claim goes one past it.
        let mut records: Vec<RemoteMember> = w
            .remote
            .values_mut()
            .filter_map(|m| m.remove(&a.conn))
            .collect();
        records.extend(a.record.take());
        records.extend(w.departed.remove(&a.conn).map(|(m, _)| m));
        let Some(record) = records.into_iter().max_by_key(|r| r.claim) else {
            return Err((Box::new(a), super::AdoptOutcome::NotMember));
        };
        let conn = a.conn.clone();
        // Origins this replica has not started with (none said where, or they are
        // gone) start where the member's history does.
        let me = w.core.origin().clone();
        let mut firsts: BTreeMap<NodeId, Seq> = BTreeMap::new();
        if let Some(c) = &a.cursor {
            for (origin, seq) in c.iter() {
                firsts.insert(origin.clone(), seq.next());
            }
        }
        for e in &a.backlog {
            let first = firsts.entry(e.origin.clone()).or_insert(e.seq);
            *first = (*first).min(e.seq);
        }
        for (origin, first) in firsts {
            if origin != me && self.inbound.delivered(&origin).is_none() {
                self.start(w, &origin, first, ctx);
            }
        }
        let before = w.core.head().clone();
        w.core.join(
            conn.clone(),
            record.auth.clone(),
            record.claim.saturating_add(1),
        );
        w.core
            .set_token(&conn, a.link.token.unwrap_or(record.token));
        w.core.set_presence(&conn, record.presence.clone());
        w.presence_changed(vec![(conn.clone(), record.presence.clone())], vec![]);
        let cursor = a.cursor.clone().unwrap_or(before);
        let room = w.place.room.clone();
        let others = a
            .backlog
            .iter()
            .map(|e| e.to_entry(&room, ctx.now_ms))
            .collect();
        let heads: Vec<&Cursor> = a.heads.iter().collect();
        let catch_up = w.core.catch_up(&conn, &cursor, others, &heads);
        self.resumed.insert(conn.clone(), catch_up.reached.clone());
        self.member_joined(ctx);
        // It may have seen more of some origin than this replica has delivered yet:
        // those come live, and must not come twice; and until this replica catches up,
        // the cursors it is handed must not forget them (`LogEntry::at_least`).
        if !w.core.head().dominates(&catch_up.reached) {
            w.floors.insert(conn.clone(), catch_up.reached.clone());
        }
        w.links.insert(conn.clone(), a.link);
        self.replayed(&conn);
        w.send_replay(&conn, catch_up);
        w.send_snapshot(&conn);
        Ok(Settled {
            done: a.done,
            auth: record.auth,
        })
    }

    /// `node` just got members in this room (a fresh replica there, or one this node
    /// had forgotten), the first `ago`: what it is owed starts with what this node
    /// sent since, and it is greeted. The news took a while to come, and an event sent
    /// meanwhile came after that member's join: it is the member's, as it would be
    /// from a single server.
    fn peer_joined(&mut self, w: &mut World, node: &NodeId, ago: Duration, ctx: &mut Ctx) {
        let since = ctx.now_ms.saturating_sub(ago.as_millis() as u64);
        let first = w.core.own_since(since).unwrap_or_else(|| w.core.next_seq());
        self.owed.insert(node.clone(), first);
        self.peer_up(w, node, ctx);
    }

    /// This node's link to `node` came (back) up: start over with it if it has
    /// members here. If it has none but its replica spoke to this one before, it may
    /// still hold what never crossed (a partition cut it off, and its members left
    /// meanwhile): it is asked for its hello, which says how far its events go (what is
    /// missing here is repaired) and starts a fresh state sync both ways.
    fn peer_up(&mut self, w: &mut World, node: &NodeId, ctx: &mut Ctx) {
        self.inbound.revived(node);
        self.orphans.remove(node);
        if ctx.peers.interested().contains(node) {
            self.hello(w, node, true, ctx);
        } else if self.known.contains(node) {
            ctx.send(node, RoomMsg::AskHello);
        }
        // A request may have been lost with the old link.
        for a in &self.adoptions {
            if a.waiting.contains(node) {
                ctx.send(node, a.request());
            }
        }
    }

    /// `node` was declared dead: its members vanish here, and what it never sent will
    /// not come.
    fn peer_down(&mut self, w: &mut World, node: &NodeId, ctx: &mut Ctx) {
        self.sync.remove(node);
        self.confirmed.remove(node);
        self.owed.remove(node);
        self.acked.remove(node);
        for a in &mut self.adoptions {
            a.waiting.remove(node);
        }
        if let Some(gone) = w.remote.remove(node) {
            let left = gone.keys().cloned().collect();
            let now = ctx.now_ms;
            w.departed
                .extend(gone.into_iter().map(|(c, m)| (c, (m, now))));
            w.push_presence(vec![], left);
        }
        // What it sent some replicas and not this one comes from them: ask every live
        // peer before giving the rest up (at most `adopt_patience`).
        let peers: HashSet<NodeId> = ctx
            .peers
            .alive()
            .into_iter()
            .filter(|n| n != node)
            .collect();
        // Ask from before what is withheld here too: a replica that showed it says so.
        let withheld = self.withheld.get(node).and_then(|h| h.events.front());
        let after = match (self.inbound.delivered(node), withheld) {
            (Some(d), Some((first, ..))) => Some(d.min(first.prev())),
            (d, _) => d,
        };
        match after {
            Some(after) if !peers.is_empty() => {
                for p in &peers {
                    let origin = node.clone();
                    ctx.send(p, RoomMsg::Orphaned { origin, after });
                }
                self.orphans
                    .insert(node.clone(), (peers, ctx.now + self.adopt_patience));
            }
            _ => {
                let (ready, skipped) = self.inbound.give_up(node);
                self.deliver(w, node, ready, skipped, ctx);
            }
        }
        // The same for its changes to the document: they are passed on by their origin
        // only, so what it sent some replicas and not this one comes by a sync.
        self.sync_all(w, "peer_down", ctx);
    }
}

/// Count `n` withheld events of `kind` (`edgeroom_events_withheld`).
fn withheld_count(w: &World, kind: &str, n: u64) {
    if n > 0 {
        w.metrics
            .events_withheld
            .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
            .inc_by(n);
    }
}

/// Whether one node's record of a member (its session's token generation, its claim,
/// the node) outranks another's. The newer token first: a client whose room resume
/// failed joins afresh (claim 1) on a session it resumed, with a newer token than the
/// member it left behind, which must not win by a greater node id (its client was
/// then left connected, and refused, with no member). Then the claim (a resume here
/// counts one more), then the node id. No clocks are compared.
fn outranks(a: (u64, u64, &NodeId), b: (u64, u64, &NodeId)) -> bool {
    a > b
}

/// A peer's message for a room that is not loaded here: a repair request gets "nothing
/// left before now" (the log went with the room), a history request or a hello "I have
/// nothing", the rest is moot.
pub(super) fn unloaded(msg: RoomMsg) -> Option<RoomMsg> {
    match msg {
        RoomMsg::Repair { to, .. } => Some(RoomMsg::Repaired {
            events: Vec::new(),
            first_available: to.next(),
        }),
        RoomMsg::Backfill { conn, .. } => Some(RoomMsg::Backfilled {
            conn,
            events: Vec::new(),
            last: true,
            member: None,
            head: Cursor::default(),
        }),
        RoomMsg::Hello { .. } | RoomMsg::AskHello => Some(RoomMsg::Unloaded),
        RoomMsg::Orphaned { origin, .. } => Some(RoomMsg::Orphans {
            origin,
            events: Vec::new(),
            last: true,
        }),
        _ => None,
    }
}

mod rebase;
#[cfg(test)]
mod tests;
