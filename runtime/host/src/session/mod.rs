//! Client sessions: who a connection is, which rooms it is in, and how it comes back.
//!
//! A session outlives its connection: when the socket drops, the session stays
//! resumable for the resume window ([`Sessions`]), and its rooms keep its place (for
//! the presence grace) and its missed events (for the history window).

pub mod token;

use std::collections::{BTreeMap, HashMap};
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

enum Entry {
    Attached {
        kill: Arc<KillSwitch>,
        user: Option<UserId>,
    },
    Detached {
        app: AppName,
        rooms: SessionRooms,
        since_ms: u64,
        user: Option<UserId>,
    },
}

impl Entry {
    fn user(&self) -> Option<&UserId> {
        match self {
            Entry::Attached { user, .. } | Entry::Detached { user, .. } => user.as_ref(),
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
}

/// Every session of this node, live or resumable.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<ConnId, Entry>>,
    detached: Notify,
}

impl Sessions {
    /// A connection holds the session now. `user`: the identity its credential proved,
    /// which a resume of the session must prove again.
    pub fn attach(&self, conn: ConnId, kill: Arc<KillSwitch>, user: Option<UserId>) {
        self.map.lock().insert(conn, Entry::Attached { kill, user });
    }

    /// The connection dropped; the session can be resumed for a while.
    pub fn detach(&self, conn: ConnId, app: AppName, rooms: SessionRooms, now_ms: u64) {
        let mut map = self.map.lock();
        let user = map.get(&conn).and_then(Entry::user).cloned();
        map.insert(
            conn,
            Entry::Detached {
                app,
                rooms,
                since_ms: now_ms,
                user,
            },
        );
        drop(map);
        self.detached.notify_waiters();
    }

    /// The session ended for good.
    pub fn end(&self, conn: &ConnId) {
        self.map.lock().remove(conn);
        self.detached.notify_waiters();
    }

    /// Take a session over for a resume by a connection whose credential names `user`.
    /// A session still attached to an older connection (which may not know yet that it
    /// is dead) is cut off first. A session opened by a verified user is taken only by
    /// that user.
    pub async fn take(
        &self,
        conn: &ConnId,
        app: &AppName,
        user: Option<&UserId>,
        wait: Duration,
    ) -> Result<SessionRooms, ResumeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.detached.notified();
            {
                let mut map = self.map.lock();
                let entry = map.get(conn);
                if let Some(owner) = entry.and_then(Entry::user)
                    && Some(owner) != user
                {
                    return Err(ResumeError::OtherUser);
                }
                match entry {
                    None => return Err(ResumeError::Gone),
                    Some(Entry::Detached { app: a, .. }) if a != app => {
                        return Err(ResumeError::WrongApp);
                    }
                    Some(Entry::Detached { .. }) => {
                        if let Some(Entry::Detached { rooms, .. }) = map.remove(conn) {
                            return Ok(rooms);
                        }
                    }
                    Some(Entry::Attached { kill, .. }) => kill.kill(Disconnect::ResumedElsewhere),
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ResumeError::Busy);
            }
        }
    }

    /// Remove the sessions detached for longer than `window_ms`, returning their rooms.
    pub fn expire(&self, now_ms: u64, window_ms: u64) -> Vec<(ConnId, AppName, SessionRooms)> {
        let mut map = self.map.lock();
        let old: Vec<ConnId> = map
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Detached { since_ms, .. } if now_ms.saturating_sub(*since_ms) >= window_ms))
            .map(|(c, _)| c.clone())
            .collect();
        old.into_iter()
            .filter_map(|c| match map.remove(&c) {
                Some(Entry::Detached { app, rooms, .. }) => Some((c, app, rooms)),
                _ => None,
            })
            .collect()
    }

    /// Sessions known now (live and resumable).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resume_takes_a_detached_session_once() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let mut rooms = SessionRooms::new();
        rooms.insert(RoomId::new("r").unwrap(), JoinAuth::anonymous("null"));
        s.detach(c.clone(), app.clone(), rooms.clone(), 0);
        assert_eq!(
            s.take(&c, &AppName::new("b").unwrap(), None, Duration::ZERO)
                .await,
            Err(ResumeError::WrongApp)
        );
        assert_eq!(s.take(&c, &app, None, Duration::ZERO).await.unwrap(), rooms);
        assert_eq!(
            s.take(&c, &app, None, Duration::ZERO).await,
            Err(ResumeError::Gone)
        );
    }

    #[tokio::test]
    async fn resume_cuts_off_a_lingering_connection() {
        let s = Arc::new(Sessions::default());
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let kill = Arc::new(KillSwitch::default());
        s.attach(c.clone(), kill.clone(), None);
        let (s2, c2, app2) = (s.clone(), c.clone(), app.clone());
        // The old connection notices the kill and detaches.
        tokio::spawn(async move {
            kill.killed().await;
            s2.detach(c2, app2, SessionRooms::new(), 5);
        });
        assert!(s.take(&c, &app, None, Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn a_verified_users_session_is_taken_only_by_that_user() {
        let s = Sessions::default();
        let app = AppName::new("a").unwrap();
        let c = ConnId::from_trusted("c".into());
        let alice = UserId::new("alice").unwrap();
        let kill = Arc::new(KillSwitch::default());
        s.attach(c.clone(), kill.clone(), Some(alice.clone()));
        for thief in [None, Some(UserId::new("mallory").unwrap())] {
            assert_eq!(
                s.take(&c, &app, thief.as_ref(), Duration::ZERO).await,
                Err(ResumeError::OtherUser)
            );
        }
        assert!(
            kill.reason().is_none(),
            "the live connection was not cut off"
        );
        s.detach(c.clone(), app.clone(), SessionRooms::new(), 5);
        assert_eq!(
            s.take(&c, &app, None, Duration::ZERO).await,
            Err(ResumeError::OtherUser),
            "the identity outlives the connection"
        );
        assert!(s.take(&c, &app, Some(&alice), Duration::ZERO).await.is_ok());
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
