//! `chat`: a moderated chat room.
//!
//! - a member's name is its verified identity (the `sub` of its token) when it has
//!   one; an anonymous client (where the app allows those) names itself in `auth.user`.
//!   The presence is `{user, verified}`. The first *verified* user to join a room owns
//!   it (state `owner`): a name in `auth` proves nothing, so it never owns or moderates;
//! - `message {text}`: refused with `blocked` when the text holds a word of the room's
//!   blocklist (state `blocklist`, default `["badword"]`), with `rate limited` past 5
//!   messages per second per member; otherwise `message {user, text, ts}` goes to every
//!   member (the sender too) and is kept in state `messages` (the last 100);
//! - `kick {user, reason?}`, by the owner only (checked against the sender's verified
//!   identity): every connection named that user leaves the room, wherever in the
//!   cluster it is connected; the reply is `{kicked: n}`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use edgeroom_sdk::{Args, Event, Handler, room, state};
use serde_json::json;

const MAX_PER_SECOND: usize = 5;
const KEEP: u32 = 100;

thread_local! {
    // Send times of each member's recent messages. Memory, not state: a rate limit
    // need not survive an instance restart.
    static SENT: RefCell<HashMap<String, VecDeque<u64>>> = RefCell::new(HashMap::new());
}

struct Chat;

fn rate_limited(conn: &str, now: u64) -> bool {
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        let times = s.entry(conn.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= 1000)
        {
            times.pop_front();
        }
        if times.len() >= MAX_PER_SECOND {
            return true;
        }
        times.push_back(now);
        false
    })
}

fn blocked(text: &str) -> bool {
    let blocklist: Vec<String> =
        state::get("blocklist").unwrap_or_else(|| vec!["badword".to_owned()]);
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .any(|w| blocklist.iter().any(|b| b.eq_ignore_ascii_case(w)))
}

impl Handler for Chat {
    fn on_join(conn: String, auth: serde_json::Value) -> Result<(), String> {
        let verified = room::user(&conn);
        let claimed = auth
            .get("user")
            .and_then(|u| u.as_str())
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        let user = verified
            .clone()
            .or(claimed)
            .ok_or("a token or auth.user is required to join a chat room")?;
        if let Some(me) = &verified
            && state::get::<String>("owner").is_none()
        {
            state::put("owner", me)?;
        }
        room::set_presence(
            &conn,
            &json!({ "user": user, "verified": verified.is_some() }),
        )
    }

    fn on_message(ev: Event) -> Result<Option<Args>, String> {
        match ev.name.as_str() {
            "message" => message(ev),
            "kick" => kick(ev),
            other => Err(format!("unknown event {other:?}")),
        }
    }

    fn on_leave(conn: String) {
        SENT.with(|s| s.borrow_mut().remove(&conn));
    }
}

fn user_of(conn: &str) -> Option<String> {
    room::presence(conn)?.get("user")?.as_str().map(str::to_owned)
}

fn kick(ev: Event) -> Result<Option<Args>, String> {
    let me = room::user(&ev.conn);
    if me.is_none() || me != state::get::<String>("owner") {
        return Err("only the room's owner can kick".into());
    }
    let order: serde_json::Value = ev.args.parse(0)?;
    let user = order
        .get("user")
        .and_then(|u| u.as_str())
        .ok_or("kick needs a user")?;
    let reason = order
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("kicked by the room's owner");
    let mut kicked = 0;
    for m in room::members() {
        if m.presence.get("user").and_then(|u| u.as_str()) == Some(user) {
            room::kick(&m.conn, reason);
            kicked += 1;
        }
    }
    if kicked == 0 {
        return Err(format!("{user} is not in this room"));
    }
    Ok(Some(Args::json(&json!({ "kicked": kicked }))))
}

fn message(ev: Event) -> Result<Option<Args>, String> {
    let msg: serde_json::Value = ev.args.parse(0)?;
    let text = msg
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or("message needs a text")?;
    if blocked(text) {
        return Err("blocked".into());
    }
    let now = room::now_ms();
    if rate_limited(&ev.conn, now) {
        return Err("rate limited".into());
    }
    let out = json!({ "user": user_of(&ev.conn).unwrap_or_default(), "text": text, "ts": now });
    room::broadcast("message", &Args::json(&out));
    let mut len = state::push("messages", &out)?;
    while len > KEEP {
        state::delete("messages/0")?;
        len -= 1;
    }
    Ok(Some(Args::new()))
}

edgeroom_sdk::export_handler!(Chat);
