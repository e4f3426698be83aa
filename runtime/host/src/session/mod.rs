//! Client sessions: who a connection is, which rooms it is in, and how it comes back.
//!
//! A session outlives its connection: when the socket drops, the session stays
//! resumable for the resume window ([`Sessions`]), and its rooms keep its place (for
//! the presence grace) and its missed events (for the history window).

pub mod token;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::room::KillSwitch;
use edgeroom_proto::close::Disconnect;
use edgeroom_proto::ids::{AppName, ConnId, RoomId, UserId};
use edgeroom_proto::member::JoinAuth;

/// What a detached session keeps: per room, the auth it joined with.
pub type SessionRooms = BTreeMap<RoomId, JoinAuth>;

const PROBE_POLL: Duration = Duration::from_millis(25);

/// Who holds a session and which of its resume tokens is current.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// The identity its connection proved, which a resume must prove again.
    pub user: Option<UserId>,
    /// The generation of its latest resume token (see `token::Claims::generation`).
    pub generation: u64,
    /// Taken back from a standalone node's journal after a restart, which does not
    /// keep generations: any token of the session resumes it once (the next is checked).
    pub any_generation: bool,
}

enum Entry {
    Attached {
        kill: Arc<KillSwitch>,
        holder: Holder,
    },
    Detached {
        app: AppName,
        rooms: SessionRooms,
        since_ms: u64,
        holder: Holder,
    },
}

impl Entry {
    fn holder(&self) -> &Holder {
        match self {
            Entry::Attached { holder, .. } | Entry::Detached { holder, .. } => holder,
        }
    }
}

/// Why a resume failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("session is unknown or its resume window has passed")]
    Gone,
    #[error("session belongs to another app")]
    WrongApp,
    #[error("session is still held by another connection")]
    Busy,
    /// The session was opened with a token naming a user, and the resume presents no
    /// token of that user: a captured resume token alone takes nothing over.
    #[error("session belongs to another user")]
    OtherUser,
    /// The token is an older one of the session: it was resumed since.
    #[error("resume token was replaced by a newer one")]
    Stale,
    /// Another connection holds the session and its client answered a probe.
    #[error("session is live on another connection")]
    Live,
}

/// Whether a connection's client answers a probe within `wait`.
async fn answers_probe(kill: &KillSwitch, wait: Duration) -> bool {
    let before = kill.times_heard();
    kill.probe();
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(PROBE_POLL).await;
        if kill.times_heard() != before || kill.reason().is_some() {
            // Heard from, or it is closing anyway (then the loop takes it when it detaches).
            return kill.reason().is_none();
        }
    }
    false
}

/// How many resumable (detached) sessions a node keeps, and their bytes: past either,
/// the oldest is dropped (`limits.max_detached_sessions`, `detached_sessions_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct DetachedCaps {
    pub sessions: usize,
    pub bytes: usize,
}

/// A session dropped for good: its rooms, which it leaves.
pub type Ended = (ConnId, AppName, SessionRooms);

/// The table, with the detached sessions indexed oldest first and counted.
#[derive(Default)]
struct Table {
    map: HashMap<ConnId, Entry>,
    detached: BTreeSet<(u64, ConnId)>,
    detached_bytes: usize,
    /// Detached sessions dropped over the caps, for the node to end in their rooms.
    evicted: Vec<Ended>,
    evicted_total: u64,
}

/// What keeping a detached session costs: its rooms and how each was joined.
fn cost(conn: &ConnId, rooms: &SessionRooms) -> usize {
    const SESSION: usize = 128;
    const ROOM: usize = 64;
    SESSION
        + conn.as_str().len()
        + rooms
            .iter()
            .map(|(r, a)| ROOM + r.as_str().len() + a.size())
            .sum::<usize>()
}

impl Table {
    fn insert(&mut self, conn: ConnId, entry: Entry) {
        self.remove(&conn);
        if let Entry::Detached {
            since_ms, rooms, ..
        } = &entry
        {
            self.detached.insert((*since_ms, conn.clone()));
            self.detached_bytes += cost(&conn, rooms);
        }
        self.map.insert(conn, entry);
    }

    fn remove(&mut self, conn: &ConnId) -> Option<Entry> {
        let entry = self.map.remove(conn)?;
        if let Entry::Detached {
            since_ms, rooms, ..
        } = &entry
        {
            self.detached.remove(&(*since_ms, conn.clone()));
            self.detached_bytes = self.detached_bytes.saturating_sub(cost(conn, rooms));
        }
        debug_assert!(
            self.detached.len() <= self.map.len(),
            "detached sessions are sessions"
        );
        Some(entry)
    }

    /// Take out the oldest detached session.
    fn pop_oldest(&mut self) -> Option<Ended> {
        let (_, conn) = self.detached.first()?.clone();
        match self.remove(&conn)? {
            Entry::Detached { app, rooms, .. } => Some((conn, app, rooms)),
            Entry::Attached { .. } => None,
        }
    }

    /// Drop the oldest detached sessions while over `caps`.
    fn enforce(&mut self, caps: DetachedCaps) {
        while self.detached.len() > caps.sessions || self.detached_bytes > caps.bytes {
            let Some(ended) = self.pop_oldest() else {
                break;
            };
            self.evicted.push(ended);
            self.evicted_total += 1;
        }
    }
}

/// Every session of this node, live or resumable.
pub struct Sessions {
    table: Mutex<Table>,
    detached: Notify,
    /// How long a resume waits for a live-looking holder to answer a probe before it
    /// counts as gone (`limits.resume_probe_ms`).
    probe_wait: Duration,
    caps: DetachedCaps,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(
            Duration::from_millis(1500),
            DetachedCaps {
                sessions: usize::MAX,
                bytes: usize::MAX,
            },
        )
    }
}

impl Sessions {
    pub fn new(probe_wait: Duration, caps: DetachedCaps) -> Self {
        Self {
            table: Mutex::default(),
            detached: Notify::new(),
            probe_wait,
            caps,
        }
    }

    /// A connection holds the session now, with the token generation it was given.
    pub fn attach(&self, conn: ConnId, kill: Arc<KillSwitch>, holder: Holder) {
        self.table
            .lock()
            .insert(conn, Entry::Attached { kill, holder });
    }

    /// The connection dropped; the session can be resumed for a while (unless that
    /// takes the node past its caps on detached sessions: then the oldest goes).
    pub fn detach(&self, conn: ConnId, app: AppName, rooms: SessionRooms, now_ms: u64) {
        let mut table = self.table.lock();
        let holder = table
            .map
            .get(&conn)
            .map(|e| e.holder().clone())
            .unwrap_or_default();
        table.insert(
            conn,
            Entry::Detached {
                app,
                rooms,
                since_ms: now_ms,
                holder,
            },
        );
        table.enforce(self.caps);
        drop(table);
        self.detached.notify_waiters();
    }

    /// Detached sessions now, and the bytes they hold.
    pub fn detached(&self) -> (usize, usize) {
        let table = self.table.lock();
        (table.detached.len(), table.detached_bytes)
    }

    /// Detached sessions dropped over the caps since the node started.
    pub fn evicted_total(&self) -> u64 {
        self.table.lock().evicted_total
    }

    /// A session a restarted standalone node found in its rooms' journals: detached
    /// since `now_ms`, resumable for the resume window from now.
    pub fn restore(
        &self,
        conn: ConnId,
        app: AppName,
        rooms: SessionRooms,
        user: Option<UserId>,
        now_ms: u64,
    ) {
        let holder = Holder {
            user,
            generation: 0,
            any_generation: true,
        };
        let mut table = self.table.lock();
        table.insert(
            conn,
            Entry::Detached {
                app,
                rooms,
                since_ms: now_ms,
                holder,
            },
        );
        table.enforce(self.caps);
    }

    /// The session ended for good.
    pub fn end(&self, conn: &ConnId) {
        self.table.lock().remove(conn);
        self.detached.notify_waiters();
    }

    /// Take a session over for a resume with its token of `generation` by a connection
    /// whose credential names `user`. Only the session's latest token works, and a
    /// session opened by a verified user is taken only by that user. A session still
    /// attached to an older connection (which may not know yet that it is dead) is cut
    /// off first: at once when the same user asks, else only once that connection's
    /// client failed to answer a probe — a captured token cannot close a live session.
    pub async fn take(
        &self,
        conn: &ConnId,
        app: &AppName,
        user: Option<&UserId>,
        generation: u64,
        wait: Duration,
    ) -> Result<SessionRooms, ResumeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut probed = false;
        loop {
            let notified = self.detached.notified();
            let live = {
                let mut table = self.table.lock();
                let entry = table.map.get(conn);
                if let Some(h) = entry.map(Entry::holder) {
                    if h.user.is_some() && h.user.as_ref() != user {
                        return Err(ResumeError::OtherUser);
                    }
                    if !h.any_generation && h.generation != generation {
                        return Err(ResumeError::Stale);
                    }
                }
                match entry {
                    None => return Err(ResumeError::Gone),
                    Some(Entry::Detached { app: a, .. }) if a != app => {
                        return Err(ResumeError::WrongApp);
                    }
                    Some(Entry::Detached { .. }) => match table.remove(conn) {
                        Some(Entry::Detached { rooms, .. }) => return Ok(rooms),
                        _ => None,
                    },
                    Some(Entry::Attached { kill, holder }) => {
                        if holder.user.is_some() || probed {
                            kill.kill(Disconnect::ResumedElsewhere);
                            None
                        } else {
                            Some(kill.clone())
                        }
                    }
                }
            };
            if let Some(kill) = live {
                probed = true;
                if answers_probe(&kill, self.probe_wait).await {
                    return Err(ResumeError::Live);
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ResumeError::Busy);
            }
        }
    }

    /// Remove the sessions detached for longer than `window_ms`, and those dropped over
    /// the caps, returning their rooms.
    pub fn expire(&self, now_ms: u64, window_ms: u64) -> Vec<Ended> {
        let mut table = self.table.lock();
        let mut ended = std::mem::take(&mut table.evicted);
        while let Some((since, _)) = table.detached.first()
            && now_ms.saturating_sub(*since) >= window_ms
        {
            match table.pop_oldest() {
                Some(e) => ended.push(e),
                None => break,
            }
        }
        ended
    }

    /// Sessions known now (live and resumable).
    pub fn len(&self) -> usize {
        self.table.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_sessions_over_the_caps_go_oldest_first() {
        let caps = DetachedCaps {
            sessions: 3,
            bytes: usize::MAX,
        };
        let s = Sessions::new(Duration::ZERO, caps);
        let app = AppName::new("a").unwrap();
        let conn = |i: u64| ConnId::from_trusted(format!("c{i}"));
        for i in 0..5 {
            s.detach(conn(i), app.clone(), SessionRooms::new(), i);
        }
        assert_eq!(s.detached().0, 3);
        assert_eq!(s.evicted_total(), 2);
        let ended: Vec<ConnId> = s.expire(5, 1_000).into_iter().map(|e| e.0).collect();
        assert_eq!(
            ended,
            vec![conn(0), conn(1)],
            "the oldest, to leave their rooms"
        );
        assert_eq!(
            s.take(&conn(0), &app, None, 0, Duration::ZERO).await,
            Err(ResumeError::Gone)
        );
        assert!(
            s.take(&conn(4), &app, None, 0, Duration::ZERO)
                .await
                .is_ok()
        );
        // In bytes too: one session with a big room list pushes out the older ones.
        let s = Sessions::new(
            Duration::ZERO,
            DetachedCaps {
                sessions: usize::MAX,
                bytes: 10_000,
            },
        );
        let mut big = SessionRooms::new();
        big.insert(
            RoomId::new("r").unwrap(),
            JoinAuth::anonymous("x".repeat(6_000)),
        );
        s.detach(conn(1), app.clone(), big.clone(), 1);
        s.detach(conn(2), app.clone(), big, 2);
        assert_eq!(s.detached().0, 1);
        assert!(s.detached().1 <= 10_000);
        // Expiry by age goes oldest first, without scanning the live ones.
        assert_eq!(
            s.expire(3_000, 1_000).len(),
            2,
            "the evicted one and the expired one"
        );
        assert_eq!(s.detached(), (0, 0));
    }

    #[tokio::test]
    async fn resume_takes_a_detached_session_once() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let mut rooms = SessionRooms::new();
        rooms.insert(RoomId::new("r").unwrap(), JoinAuth::anonymous("null"));
        s.detach(c.clone(), app.clone(), rooms.clone(), 0);
        assert_eq!(
            s.take(&c, &AppName::new("b").unwrap(), None, 0, Duration::ZERO)
                .await,
            Err(ResumeError::WrongApp)
        );
        assert_eq!(
            s.take(&c, &app, None, 0, Duration::ZERO).await.unwrap(),
            rooms
        );
        assert_eq!(
            s.take(&c, &app, None, 0, Duration::ZERO).await,
            Err(ResumeError::Gone)
        );
    }

    #[tokio::test]
    async fn only_the_latest_token_of_a_session_resumes_it() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let holder = Holder {
            user: None,
            generation: 2,
            any_generation: false,
        };
        s.attach(c.clone(), Arc::new(KillSwitch::default()), holder);
        s.detach(c.clone(), app.clone(), SessionRooms::new(), 0);
        for old in [0, 1, 3] {
            assert_eq!(
                s.take(&c, &app, None, old, Duration::ZERO).await,
                Err(ResumeError::Stale)
            );
        }
        assert!(s.take(&c, &app, None, 2, Duration::ZERO).await.is_ok());
    }

    /// A captured token cannot close a live anonymous session: the connection is
    /// probed, and a client that answers keeps its session.
    #[tokio::test(start_paused = true)]
    async fn a_live_connection_that_answers_its_probe_is_not_taken_over() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let kill = Arc::new(KillSwitch::default());
        s.attach(c.clone(), kill.clone(), Holder::default());
        let answering = kill.clone();
        tokio::spawn(async move {
            loop {
                answering.probed().await;
                answering.heard();
            }
        });
        assert_eq!(
            s.take(&c, &app, None, 0, Duration::from_secs(3)).await,
            Err(ResumeError::Live)
        );
        assert!(kill.reason().is_none(), "the live connection was cut off");
    }

    #[tokio::test]
    async fn resume_cuts_off_a_lingering_connection() {
        let s = Arc::new(Sessions::default());
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let kill = Arc::new(KillSwitch::default());
        s.attach(c.clone(), kill.clone(), Holder::default());
        let (s2, c2, app2) = (s.clone(), c.clone(), app.clone());
        // The old connection notices the kill and detaches.
        tokio::spawn(async move {
            kill.killed().await;
            s2.detach(c2, app2, SessionRooms::new(), 5);
        });
        // It does not answer the probe (it is dead, or its client is): taken over.
        assert!(
            s.take(&c, &app, None, 0, Duration::from_secs(5))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_verified_users_session_is_taken_only_by_that_user() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let alice = UserId::new("alice").unwrap();
        let kill = Arc::new(KillSwitch::default());
        let holder = Holder {
            user: Some(alice.clone()),
            generation: 0,
            any_generation: false,
        };
        s.attach(c.clone(), kill.clone(), holder);
        for thief in [None, Some(UserId::new("mallory").unwrap())] {
            assert_eq!(
                s.take(&c, &app, thief.as_ref(), 0, Duration::ZERO).await,
                Err(ResumeError::OtherUser)
            );
        }
        assert!(
            kill.reason().is_none(),
            "the live connection was not cut off"
        );
        s.detach(c.clone(), app.clone(), SessionRooms::new(), 5);
        assert_eq!(
            s.take(&c, &app, None, 0, Duration::ZERO).await,
            Err(ResumeError::OtherUser),
            "the identity outlives the connection"
        );
        assert!(
            s.take(&c, &app, Some(&alice), 0, Duration::ZERO)
                .await
                .is_ok()
        );
    }

    #[test]
    fn expiry_removes_old_sessions() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        s.detach(
            ConnId::from_trusted("old".into()),
            app.clone(),
            SessionRooms::new(),
            0,
        );
        s.detach(
            ConnId::from_trusted("new".into()),
            app,
            SessionRooms::new(),
            900,
        );
        let gone = s.expire(1000, 500);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.as_str(), "old");
        assert_eq!(s.len(), 1);
    }
}
