//! What geo-sim reads from the nodes themselves, over their admin API: the control
//! plane as each node sees it (leader, applied index and log digest) all run long;
//! after a heal, how long until every replica of each room holds every change any
//! replica had when it healed; and once the run settles, each replica's document,
//! counter and presence. All of it goes to the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use crate::history::Op;
use crate::plan::App;
use crate::recorder::Recorder;

/// How often the control plane is polled.
const CONTROL_EVERY: Duration = Duration::from_millis(500);
/// How often replicas are asked whether they caught up, after a heal.
const CONVERGE_EVERY: Duration = Duration::from_millis(100);
/// How long a heal may take to converge before it is reported as not converged.
const CONVERGE_PATIENCE: Duration = Duration::from_secs(30);

/// A node as the observer reaches it.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub url: String,
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let get = async { http.get(url).send().await.ok()?.text().await.ok() };
    let text = timeout(Duration::from_secs(2), get).await.ok()??;
    serde_json::from_str(&text).ok()
}

/// Poll every node's `/v1/cluster` until `stop`; record each change of leader, and
/// each new applied index with its log digest.
pub async fn control_plane(
    http: reqwest::Client,
    nodes: Vec<Target>,
    recorder: Recorder,
    mut stop: watch::Receiver<bool>,
) {
    let mut leaders: HashMap<String, (Option<String>, u64)> = HashMap::new();
    let mut applied: HashMap<String, u64> = HashMap::new();
    let http = &http;
    loop {
        let polls = nodes.iter().map(|n| async move {
            let answer = get_json(http, &format!("{}/v1/cluster", n.url)).await;
            (n, answer)
        });
        for (n, answer) in futures_util::future::join_all(polls).await {
            let Some(c) = answer.as_ref().map(|a| &a["cluster"]) else {
                continue;
            };
            let leader = c["leader"].as_str().map(str::to_owned);
            let term = c["term"].as_u64().unwrap_or(0);
            if leaders.get(&n.node) != Some(&(leader.clone(), term)) {
                leaders.insert(n.node.clone(), (leader.clone(), term));
                recorder.record(Op::Leader {
                    node: n.node.clone(),
                    leader,
                    term,
                });
            }
            if let (Some(index), Some(digest)) =
                (c["applied_index"].as_u64(), c["applied_digest"].as_str())
                && applied.get(&n.node) != Some(&index)
            {
                applied.insert(n.node.clone(), index);
                recorder.record(Op::Applied {
                    node: n.node.clone(),
                    index,
                    digest: digest.to_string(),
                });
            }
        }
        tokio::select! {
            () = sleep(CONTROL_EVERY) => {}
            () = crate::user::until(&mut stop) => return,
        }
    }
}

/// This node's replica of a room (`None`: not loaded there, or no answer).
async fn replica(
    http: &reqwest::Client,
    node: &Target,
    app: App,
    room: &str,
    has: Option<&[String]>,
) -> Option<serde_json::Value> {
    let mut url = format!("{}/v1/apps/{}/rooms/{room}?local=1", node.url, app.name());
    if let Some(has) = has {
        url.push_str("&has=");
        url.push_str(&has.join(","));
    }
    let v = get_json(http, &url).await?;
    v["heads"].is_array().then_some(v)
}

fn heads(view: &serde_json::Value) -> BTreeSet<String> {
    view["heads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect()
}

/// After `after` healed (at `healed`): for every room, the time until every replica
/// holds every change any replica had at the heal. Every replica of every room is
/// asked at once, every [`CONVERGE_EVERY`]. Recorded per room.
pub async fn convergence(
    http: reqwest::Client,
    nodes: Vec<Target>,
    rooms: Vec<(String, App)>,
    after: String,
    healed: Instant,
    recorder: Recorder,
) {
    let http = &http;
    let asks = rooms.iter().flat_map(|(room, app)| {
        nodes.iter().map(move |n| async move {
            (room.clone(), *app, replica(http, n, *app, room, None).await)
        })
    });
    let mut waiting: BTreeMap<String, (App, BTreeSet<String>)> = BTreeMap::new();
    for (room, app, view) in futures_util::future::join_all(asks).await {
        if let Some(v) = view {
            waiting
                .entry(room)
                .or_insert((app, BTreeSet::new()))
                .1
                .extend(heads(&v));
        }
    }
    let waiting: BTreeMap<String, (App, Vec<String>)> = waiting
        .into_iter()
        .filter(|(_, (_, h))| !h.is_empty())
        .map(|(room, (app, h))| (room, (app, h.into_iter().collect())))
        .collect();
    let mut waiting = waiting;
    while !waiting.is_empty() && healed.elapsed() < CONVERGE_PATIENCE {
        let asks = waiting.iter().flat_map(|(room, (app, union))| {
            nodes.iter().map(move |n| async move {
                let v = replica(http, n, *app, room, Some(union)).await;
                // Not loaded there (or no answer): nothing to wait for on that node.
                let lacking =
                    v.is_some_and(|v| v["missing"].as_array().is_some_and(|m| !m.is_empty()));
                (room.clone(), lacking)
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        let took = healed.elapsed().as_millis() as u64;
        let lacking: BTreeSet<String> = answers
            .into_iter()
            .filter(|(_, l)| *l)
            .map(|(r, _)| r)
            .collect();
        let done: Vec<String> = waiting
            .keys()
            .filter(|r| !lacking.contains(*r))
            .cloned()
            .collect();
        for room in done {
            waiting.remove(&room);
            recorder.record(Op::Converged {
                room,
                after: after.clone(),
                took_ms: Some(took),
            });
        }
        sleep(CONVERGE_EVERY).await;
    }
    for room in waiting.into_keys() {
        recorder.record(Op::Converged {
            room,
            after: after.clone(),
            took_ms: None,
        });
    }
}

/// Once traffic has stopped: wait (up to `patience`) until every loaded replica of
/// each room has the same heads, then record each replica's document digest, counter
/// (counter rooms) and who it lists as present (by client name; a session nobody
/// connected as is listed by its id).
pub async fn final_reads(
    http: &reqwest::Client,
    nodes: &[Target],
    rooms: &[(String, App)],
    sessions: &HashMap<String, String>,
    recorder: &Recorder,
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    for (room, app) in rooms {
        let mut views: Vec<(String, serde_json::Value)>;
        let mut agreed_at = None;
        loop {
            views = Vec::new();
            for n in nodes {
                if let Some(v) = replica(http, n, *app, room, None).await {
                    views.push((n.node.clone(), v));
                }
            }
            let distinct: BTreeSet<BTreeSet<String>> = views
                .iter()
                .filter(|(node, v)| {
                    v["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["node"].as_str() == Some(node)))
                })
                .map(|(_, v)| heads(v))
                .collect();
            if distinct.len() <= 1 {
                agreed_at.get_or_insert(recorder.now_ms());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            sleep(Duration::from_millis(250)).await;
        }
        let changed_ms = agreed_at.unwrap_or_else(|| recorder.now_ms());
        for (node, v) in &views {
            // A replica none of whose members is connected to its node serves nobody:
            // it is not sent the room's changes until a member joins it (which syncs
            // it first), so only serving replicas are compared.
            let serving = v["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["node"].as_str() == Some(node)));
            let mut h: Vec<String> = heads(v).into_iter().collect();
            h.sort();
            if serving {
                recorder.record(Op::Document {
                    room: room.clone(),
                    node: node.clone(),
                    digest: hex::encode(&Sha256::digest(h.join(",").as_bytes())[..8]),
                    changed_ms,
                });
            }
            if serving && *app == App::Counter {
                recorder.record(Op::CounterRead {
                    room: room.clone(),
                    node: node.clone(),
                    value: v["state"]["count"].as_i64().unwrap_or(0),
                });
            }
            let members = v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["conn"].as_str())
                .map(|conn| {
                    sessions
                        .get(conn)
                        .cloned()
                        .unwrap_or_else(|| conn.to_string())
                })
                .collect();
            recorder.record(Op::Presence {
                room: room.clone(),
                node: node.clone(),
                members,
            });
        }
    }
}
