//! How many handler instances may be live, on the node and per app: one app's rooms
//! cannot take every slot of the pool from the others. A live instance holds a
//! [`Permit`]; dropping it gives the slot back.
//!
//! An empty room keeps its instance a while (warm for the next member). When a cap is
//! reached those are the first to go: the refused room calls for a [`Reclaim`], every
//! empty room in its scope drops its instance, and the room waits a moment for a slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

/// A call for empty rooms to drop their instances: those of `app`, or of every app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaim {
    /// Counts calls, so that each one is seen as a change.
    pub calls: u64,
    /// `None`: the node's cap was reached; any app's idle instance will do.
    pub app: Option<String>,
}

impl Reclaim {
    /// Whether an empty room of `app` should drop its instance for this call.
    pub fn applies_to(&self, app: &str) -> bool {
        self.calls > 0 && self.app.as_deref().is_none_or(|a| a == app)
    }
}

/// Which cap refused an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every instance the node may hold is live.
    Node,
    /// The app holds all the instances one app may.
    App,
}

impl Refused {
    /// Label for metrics.
    pub fn scope(self) -> &'static str {
        match self {
            Refused::Node => "node",
            Refused::App => "app",
        }
    }
}

#[derive(Default)]
struct Used {
    node: u32,
    per_app: HashMap<String, u32>,
}

/// The node's instance budget.
pub struct Instances {
    node_cap: u32,
    app_cap: u32,
    used: Mutex<Used>,
    reclaim: watch::Sender<Reclaim>,
    /// Woken when a permit is given back.
    released: Notify,
}

/// One live instance's claim on the budget.
pub struct Permit {
    of: Arc<Instances>,
    app: String,
}

impl Instances {
    pub fn new(node_cap: u32, app_cap: u32) -> Arc<Self> {
        Arc::new(Self {
            node_cap: node_cap.max(1),
            app_cap: app_cap.clamp(1, node_cap.max(1)),
            used: Mutex::new(Used::default()),
            reclaim: watch::Sender::new(Reclaim::default()),
            released: Notify::new(),
        })
    }

    /// Calls for idle instances to be dropped, for a room to watch.
    pub fn reclaims(&self) -> watch::Receiver<Reclaim> {
        self.reclaim.subscribe()
    }

    /// A slot for one more instance of `app`; when a cap refuses it, calls idle
    /// instances in (see the module) and waits up to `wait` for one to be given back.
    pub async fn take_waiting(
        self: &Arc<Self>,
        app: &str,
        wait: Duration,
    ) -> Result<Permit, Refused> {
        let refused = match self.take(app) {
            Ok(p) => return Ok(p),
            Err(r) => r,
        };
        self.reclaim.send_modify(|r| {
            r.calls += 1;
            r.app = (refused == Refused::App).then(|| app.to_owned());
        });
        // Each permit given back wakes the waiters; the first to take it keeps it.
        let given_back = tokio::time::timeout(wait, async {
            loop {
                let released = self.released.notified();
                if let Ok(p) = self.take(app) {
                    return p;
                }
                released.await;
            }
        });
        match given_back.await {
            Ok(p) => Ok(p),
            // Still short when the wait ends: refused by whichever cap holds now.
            Err(_) => self.take(app),
        }
    }

    /// A slot for one more instance of `app`, if both caps allow it.
    pub fn take(self: &Arc<Self>, app: &str) -> Result<Permit, Refused> {
        let mut used = self.used.lock();
        if used.node >= self.node_cap {
            return Err(Refused::Node);
        }
        let of_app = used.per_app.get(app).copied().unwrap_or(0);
        if of_app >= self.app_cap {
            return Err(Refused::App);
        }
        used.node += 1;
        used.per_app.insert(app.to_owned(), of_app + 1);
        Ok(Permit {
            of: self.clone(),
            app: app.to_owned(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.of.used.lock();
        debug_assert!(used.node > 0, "a permit outlived its count");
        used.node = used.node.saturating_sub(1);
        if let Some(n) = used.per_app.get_mut(&self.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                used.per_app.remove(&self.app);
            }
        }
        drop(used);
        self.of.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_at_its_cap_leaves_room_for_the_others() {
        let budget = Instances::new(4, 3);
        let a: Vec<Permit> = (0..3).map(|_| budget.take("a").unwrap()).collect();
        assert_eq!(budget.take("a").err(), Some(Refused::App));
        let b = budget.take("b").unwrap();
        assert_eq!(budget.take("c").err(), Some(Refused::Node));
        drop(a);
        let _again: Vec<Permit> = (0..3).map(|_| budget.take("c").unwrap()).collect();
        assert_eq!(budget.take("a").err(), Some(Refused::Node));
        drop(b);
        assert!(budget.take("a").is_ok());
    }

    #[tokio::test]
    async fn a_refused_room_calls_idle_instances_in_and_gets_the_first_one_back() {
        let budget = Instances::new(4, 2);
        let mut idle: Vec<Permit> = (0..2).map(|_| budget.take("a").unwrap()).collect();
        let mut calls = budget.reclaims();
        let wanting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take_waiting("a", Duration::from_secs(5)).await }
        });
        calls.changed().await.unwrap();
        let call = calls.borrow_and_update().clone();
        assert!(call.applies_to("a") && !call.applies_to("b"), "{call:?}");
        idle.pop();
        let _got = wanting
            .await
            .unwrap()
            .expect("the slot given back goes to the waiting room");
        // Nothing given back within the wait: refused.
        let refused = budget.take_waiting("a", Duration::from_millis(50)).await;
        assert_eq!(refused.err(), Some(Refused::App));
        // At the node's cap the call is for every app.
        let _b: Vec<Permit> = (0..2).map(|_| budget.take("b").unwrap()).collect();
        let refused = budget.take_waiting("c", Duration::from_millis(50)).await;
        assert_eq!(refused.err(), Some(Refused::Node));
        assert!(calls.borrow_and_update().applies_to("b"));
    }
}
