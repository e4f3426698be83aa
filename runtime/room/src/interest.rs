//! Interest routing: which nodes have local members in which rooms, and where a
//! room's message goes.
//!
//! Each node announces the rooms it has members in (a full list when a peer connects,
//! then changes). A message is delivered locally at once and sent once per other
//! interested region, to one relay node there, which fans it out inside its region:
//! never one cross-region copy per subscriber. Within the origin's own region it goes to
//! every interested node directly. A node declared dead loses its interests at once.
//! Sans-IO: fed announcements, membership changes and verdicts; answers queries;
//! `replicate` drives it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use edgeroom_proto::ids::{AppName, NodeId, RoomId};

/// A room, cluster-wide.
pub type RoomRef = (AppName, RoomId);

/// When a node's first member of a room joined, by its wall clock (ms since the
/// epoch): a peer that learns of it later owes it what it sent since (see
/// `Interest::apply`).
pub type Since = u64;

/// What a node tells its peers about its rooms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Announce {
    /// Every room this node has members in (replaces what was known).
    Full(Vec<(RoomRef, Since)>),
    Joined(RoomRef, Since),
    Left(RoomRef),
}

#[derive(Debug, Default)]
pub struct Interest {
    /// room → nodes (other than this one) with members there.
    rooms: HashMap<RoomRef, BTreeSet<NodeId>>,
    /// node → its region, for choosing one relay per region.
    regions: BTreeMap<NodeId, String>,
    /// Rooms with members on this node: how many, and since when.
    local: HashMap<RoomRef, (usize, Since)>,
}

impl Interest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn or update where a node is.
    pub fn set_region(&mut self, node: &NodeId, region: &str) {
        self.regions.insert(node.clone(), region.to_string());
    }

    /// A peer's announcement. Returns the rooms it now has members in that it had none
    /// in before and that have members here too, with since when: their replicas greet
    /// it (`Hello`), so two nodes whose first members join at once still learn of each
    /// other, and owe it what they sent since (the news took a while to come).
    pub fn apply(&mut self, from: &NodeId, announce: Announce) -> Vec<(RoomRef, Since)> {
        let (rooms, had) = match announce {
            Announce::Full(rooms) => {
                let had: BTreeSet<RoomRef> = self
                    .rooms
                    .iter()
                    .filter(|(_, nodes)| nodes.contains(from))
                    .map(|(room, _)| room.clone())
                    .collect();
                self.forget(from);
                (rooms, had)
            }
            Announce::Joined(room, since) => (vec![(room, since)], BTreeSet::new()),
            Announce::Left(room) => {
                if let Some(nodes) = self.rooms.get_mut(&room) {
                    nodes.remove(from);
                    if nodes.is_empty() {
                        self.rooms.remove(&room);
                    }
                }
                return Vec::new();
            }
        };
        let mut shared = Vec::new();
        for (room, since) in rooms {
            let added = self
                .rooms
                .entry(room.clone())
                .or_default()
                .insert(from.clone());
            if added && !had.contains(&room) && self.local.contains_key(&room) {
                shared.push((room, since));
            }
        }
        shared
    }

    /// A node died or left: it is interested in nothing.
    pub fn forget(&mut self, node: &NodeId) {
        self.rooms.retain(|_, nodes| {
            nodes.remove(node);
            !nodes.is_empty()
        });
    }

    /// A local member joined `room` at `now` (wall clock); returns the announcement to
    /// send when it is the first one here.
    pub fn local_join(&mut self, room: &RoomRef, now: Since) -> Option<Announce> {
        let (n, since) = self.local.entry(room.clone()).or_insert((0, now));
        *n += 1;
        (*n == 1).then(|| Announce::Joined(room.clone(), *since))
    }

    /// A local member left `room`; returns the announcement when it was the last one.
    pub fn local_leave(&mut self, room: &RoomRef) -> Option<Announce> {
        let (n, _) = self.local.get_mut(room)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.local.remove(room);
        Some(Announce::Left(room.clone()))
    }

    /// Whether this node has members in `room`.
    pub fn is_local(&self, room: &RoomRef) -> bool {
        self.local.contains_key(room)
    }

    /// Every other node with members in `room`.
    pub fn nodes(&self, room: &RoomRef) -> Vec<NodeId> {
        self.rooms
            .get(room)
            .map_or_else(Vec::new, |nodes| nodes.iter().cloned().collect())
    }

    pub fn region_of(&self, node: &NodeId) -> Option<&str> {
        self.regions.get(node).map(String::as_str)
    }

    /// What to tell a peer that just connected.
    pub fn full(&self) -> Announce {
        let mut rooms: Vec<(RoomRef, Since)> = self
            .local
            .iter()
            .map(|(room, (_, since))| (room.clone(), *since))
            .collect();
        rooms.sort();
        Announce::Full(rooms)
    }

    /// Where a message of `room` that originated here goes: every interested node in
    /// `my_region`, and one relay (the lowest id) in each other interested region.
    pub fn targets(&self, room: &RoomRef, my_region: &str) -> Vec<NodeId> {
        let Some(nodes) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut relays: BTreeMap<&str, &NodeId> = BTreeMap::new();
        let mut out = Vec::new();
        for node in nodes {
            let region = self.regions.get(node).map_or("", String::as_str);
            if region == my_region {
                out.push(node.clone());
            } else {
                relays.entry(region).or_insert(node);
            }
        }
        out.extend(relays.into_values().cloned());
        out
    }

    /// Where a relay passes on a message it received from another region: the other
    /// interested nodes of its own region (never back across regions).
    pub fn fan_out(&self, room: &RoomRef, my_region: &str, from: &NodeId) -> Vec<NodeId> {
        self.rooms.get(room).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .filter(|n| {
                    *n != from && self.regions.get(*n).map(String::as_str) == Some(my_region)
                })
                .cloned()
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn room(r: &str) -> RoomRef {
        (AppName::new("chat").unwrap(), RoomId::new(r).unwrap())
    }

    /// Two nodes in each of three regions.
    fn fleet() -> Interest {
        let mut i = Interest::new();
        for (n, r) in [
            ("use-1", "us-east"),
            ("use-2", "us-east"),
            ("euw-1", "eu-west"),
            ("euw-2", "eu-west"),
            ("aps-1", "ap-south"),
            ("aps-2", "ap-south"),
        ] {
            i.set_region(&node(n), r);
        }
        i
    }

    #[test]
    fn one_copy_per_remote_region_and_every_local_node() {
        let mut i = fleet();
        for n in ["use-2", "euw-1", "euw-2", "aps-2"] {
            i.apply(&node(n), Announce::Joined(room("lobby"), 0));
        }
        let mut t = i.targets(&room("lobby"), "us-east");
        t.sort();
        assert_eq!(t, [node("aps-2"), node("euw-1"), node("use-2")]);
        // The eu-west relay passes it to its neighbour only.
        assert_eq!(
            i.fan_out(&room("lobby"), "eu-west", &node("euw-1")),
            [node("euw-2")]
        );
        assert!(i.targets(&room("empty"), "us-east").is_empty());
    }

    #[test]
    fn leaving_full_lists_and_death_update_interest() {
        let mut i = fleet();
        i.apply(
            &node("euw-1"),
            Announce::Full(vec![(room("a"), 0), (room("b"), 0)]),
        );
        i.apply(&node("euw-1"), Announce::Left(room("a")));
        assert!(i.targets(&room("a"), "us-east").is_empty());
        assert_eq!(i.targets(&room("b"), "us-east"), [node("euw-1")]);
        // A new full list replaces the old one.
        i.apply(&node("euw-1"), Announce::Full(vec![(room("c"), 0)]));
        assert!(i.targets(&room("b"), "us-east").is_empty());
        // Dead: nothing goes there, and eu-west's other node becomes the relay.
        i.apply(&node("euw-2"), Announce::Joined(room("c"), 0));
        i.forget(&node("euw-1"));
        assert_eq!(i.targets(&room("c"), "us-east"), [node("euw-2")]);
    }

    #[test]
    fn a_peer_newly_in_a_room_that_has_members_here_is_to_be_greeted() {
        let mut i = fleet();
        i.local_join(&room("a"), 1);
        i.local_join(&room("b"), 2);
        let peer = node("euw-1");
        assert_eq!(
            i.apply(&peer, Announce::Joined(room("a"), 7)),
            [(room("a"), 7)]
        );
        // Nothing here in "z"; "a" is not news.
        assert!(i.apply(&peer, Announce::Joined(room("z"), 8)).is_empty());
        assert!(i.apply(&peer, Announce::Joined(room("a"), 7)).is_empty());
        // A reconnection's full list greets only what changed...
        let full = Announce::Full(vec![(room("a"), 7), (room("b"), 9), (room("z"), 8)]);
        assert_eq!(i.apply(&peer, full.clone()), [(room("b"), 9)]);
        // ...and after the peer was declared dead, everything shared again.
        i.forget(&peer);
        assert_eq!(i.apply(&peer, full), [(room("a"), 7), (room("b"), 9)]);
        assert!(i.apply(&peer, Announce::Left(room("a"))).is_empty());
        assert_eq!(i.nodes(&room("b")), [peer]);
        assert!(i.nodes(&room("a")).is_empty());
    }

    #[test]
    fn local_members_are_announced_on_first_join_and_last_leave() {
        let mut i = fleet();
        assert_eq!(
            i.local_join(&room("x"), 5),
            Some(Announce::Joined(room("x"), 5))
        );
        assert_eq!(i.local_join(&room("x"), 6), None);
        assert_eq!(i.local_leave(&room("x")), None);
        // Since its first member joined.
        assert_eq!(i.full(), Announce::Full(vec![(room("x"), 5)]));
        assert_eq!(i.local_leave(&room("x")), Some(Announce::Left(room("x"))));
        assert_eq!(i.local_leave(&room("x")), None);
        assert_eq!(i.full(), Announce::Full(vec![]));
    }
}
