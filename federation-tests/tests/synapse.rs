//! Interop with a real Synapse (1.163): a Myelin user joins a room hosted on Synapse, a Synapse
//! user joins a room hosted on Myelin, and messages go both ways in the same order on both.
//!
//! Synapse runs from the cached virtualenv of `common/synapse.rs` (`$HOME/.cache/myelin-synapse-venv`,
//! `pip install matrix-synapse[postgres]==1.163.*`). Synapse listens on 127.0.0.12:8448 (HTTPS with a
//! certificate from the test CA, server name `127.0.0.12:8448`), Myelin on 127.0.0.11:8448.
//! Set `SKIP_SYNAPSE_TESTS=1` to skip it where PyPI is unreachable.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::synapse::{SynapseServer, skip, venv};
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const SYNAPSE_IP: &str = "127.0.0.12";
const MYELIN_IP: &str = "127.0.0.11";

async fn wait_message(c: &Client, room: &str, body: &str) -> Duration {
    let body = body.to_owned();
    wait_until(T, &format!("{body} on {}", c.user_id), || {
        let body = body.clone();
        async move { c.messages(room).await.contains(&body) }
    })
    .await
}

/// Alternating causally ordered messages; both sides must show the same sequence.
async fn converse(x: &Client, y: &Client, room: &str, tag: &str, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let (from, to) = if i % 2 == 0 { (x, y) } else { (y, x) };
        let text = format!("{tag} {i} from {}", from.user_id);
        let t = Instant::now();
        from.say(room, &text).await;
        wait_message(to, room, &text).await;
        latencies.push(t.elapsed());
        expected.push(text);
    }
    for c in [x, y] {
        let got: Vec<String> = c.messages(room).await.into_iter().filter(|m| m.starts_with(tag)).collect();
        assert_eq!(got, expected, "order of {tag} messages on {}", c.user_id);
    }
    latencies
}

#[tokio::test]
async fn synapse_interop_joins_and_messages_both_ways() {
    if skip() {
        eprintln!("SKIP_SYNAPSE_TESTS=1: skipping the Synapse interop test");
        return;
    }
    let synapse = SynapseServer::start(SYNAPSE_IP).await;
    let myelin = FedServer::start(MYELIN_IP).await;
    let sam = synapse.register("sam").await;
    let alice = myelin.register("alice").await;
    for (user, name) in [(&sam, "Sam Synapse"), (&alice, "Alice Myelin")] {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&user.user_id));
        let (s, b) = user.put(&path, json!({ "displayname": name })).await;
        assert_eq!(s, 200, "set displayname: {b}");
    }
    // Profiles across: each server asks the other's over federation (query/profile).
    let (s, b) = alice.get(&format!("/_matrix/client/v3/profile/{}", enc(&sam.user_id))).await;
    assert_eq!(s, 200, "Myelin asking Synapse for a profile: {b}");
    assert_eq!(b["displayname"], "Sam Synapse");
    let (s, b) = sam.get(&format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id))).await;
    assert_eq!(s, 200, "Synapse asking Myelin for a profile: {b}");
    assert_eq!(b["displayname"], "Alice Myelin");

    // 1. A Myelin user joins a room hosted on Synapse.
    let (s, b) =
        sam.post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "on synapse" })).await;
    assert_eq!(s, 200, "Synapse createRoom: {b}");
    let room_s = b["room_id"].as_str().expect("room").to_owned();
    let t = Instant::now();
    let (s, b) = alice.join_via(&room_s, &synapse.name()).await;
    assert_eq!(s, 200, "Myelin user joining a Synapse room: {b}\nsynapse log tail:\n{}", tail(&synapse.log()));
    report(&format!("join latency (Myelin user -> room on Synapse): {} ms", t.elapsed().as_millis()));
    wait_until(T, "alice joined, seen by Synapse", || async {
        sam.membership(&room_s, &alice.user_id).await.as_deref() == Some("join")
    })
    .await;
    let lat1 = converse(&sam, &alice, &room_s, "s-room", 10).await;

    // 2. A Synapse user joins a room hosted on Myelin.
    let room_m = alice.create_public_room().await;
    let t = Instant::now();
    let (s, b) = sam.join_via(&room_m, &myelin.name()).await;
    assert_eq!(s, 200, "Synapse user joining a Myelin room: {b}\nmyelin log tail:\n{}", tail(&myelin.log()));
    report(&format!("join latency (Synapse user -> room on Myelin): {} ms", t.elapsed().as_millis()));
    wait_until(T, "sam joined, seen by Myelin", || async {
        alice.membership(&room_m, &sam.user_id).await.as_deref() == Some("join")
    })
    .await;
    let lat2 = converse(&alice, &sam, &room_m, "m-room", 10).await;
    // The Synapse user is in Alice's directory now, under the name of his member event.
    let (s, b) = alice.post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "sam syn" })).await;
    assert_eq!(s, 200, "user directory: {b}");
    assert_eq!(b["results"], json!([{ "user_id": sam.user_id, "display_name": "Sam Synapse" }]));
    let all: Vec<Duration> = lat1.into_iter().chain(lat2).collect();
    report(&format!(
        "Myelin<->Synapse message latency (n={}): p50 {:.0} ms, p99 {:.0} ms",
        all.len(),
        percentile(&all, 50.0),
        percentile(&all, 99.0)
    ));

    // 3. Backfill from Synapse: a Myelin user joins a Synapse room with history and pages back
    // with /messages to its creation; Myelin fetches the history with /backfill and shows it
    // in Synapse's order, each event once.
    let (s, b) = sam.post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "history" })).await;
    assert_eq!(s, 200, "Synapse createRoom: {b}");
    let room_h = b["room_id"].as_str().expect("room").to_owned();
    let n = 60;
    for i in 0..n {
        sam.say(&room_h, &format!("old {i}")).await;
    }
    let (s, b) = alice.join_via(&room_h, &synapse.name()).await;
    assert_eq!(s, 200, "join: {b}");
    let (s, first) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {first}");
    let joined = &first["rooms"]["join"][&room_h]["timeline"];
    let mut from = joined["prev_batch"].as_str().expect("prev_batch").to_owned();
    let mut history: Vec<Value> = Vec::new();
    let t = Instant::now();
    loop {
        let (s, b) = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20&from={}", enc(&room_h), enc(&from)))
            .await;
        assert_eq!(s, 200, "messages: {b}");
        history.extend(b["chunk"].as_array().cloned().unwrap_or_default());
        match b["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    report(&format!(
        "backfill from Synapse: {} events paged back in pages of 20 in {} ms",
        history.len(),
        t.elapsed().as_millis()
    ));
    history.reverse();
    let ids = |evs: &[Value]| -> Vec<String> {
        evs.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
    };
    let mut alice_ids = ids(&history);
    alice_ids.extend(ids(joined["events"].as_array().map(Vec::as_slice).unwrap_or_default()));
    let sam_ids = ids(&sam.timeline(&room_h).await);
    assert_eq!(
        alice_ids,
        sam_ids,
        "Myelin shows Synapse's history, in Synapse's order\nmyelin log tail:\n{}",
        tail(&myelin.log())
    );
    let bodies: Vec<&str> = history.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("old {i}")).collect();
    assert_eq!(bodies, expected.iter().map(String::as_str).collect::<Vec<_>>());

    // 4. Knocking across: a Myelin user knocks on a Synapse room (make_knock / send_knock on
    // Synapse), sees it under rooms.knock with the room's stripped state, is invited by the
    // Synapse user and joins.
    let (s, b) = sam
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "name": "knock on synapse", "initial_state": [
                { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }
            ] }),
        )
        .await;
    assert_eq!(s, 200, "Synapse createRoom: {b}");
    let room_k = b["room_id"].as_str().expect("room").to_owned();
    let t = Instant::now();
    let (s, b) =
        alice.post(&format!("/_matrix/client/v3/knock/{}?via={}", enc(&room_k), enc(&synapse.name())), json!({})).await;
    assert_eq!(s, 200, "knock on a Synapse room: {b}\nmyelin log tail:\n{}", tail(&myelin.log()));
    report(&format!("knock round trip (Myelin user -> room on Synapse): {} ms", t.elapsed().as_millis()));
    let (s, sync) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {sync}");
    let knock_state = sync["rooms"]["knock"][&room_k]["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        knock_state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "knock on synapse"),
        "stripped state from Synapse: {knock_state:?}"
    );
    wait_until(T, "the knock, seen by Synapse", || async {
        sam.membership(&room_k, &alice.user_id).await.as_deref() == Some("knock")
    })
    .await;
    let (s, b) = sam
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_k)), json!({ "user_id": alice.user_id }))
        .await;
    assert_eq!(s, 200, "Synapse invite after the knock: {b}");
    let rk = room_k.clone();
    sync_until(&alice, T, "the invite from Synapse", |s| !s["rooms"]["invite"][&rk].is_null()).await;
    let (s, b) = alice.post(&format!("/_matrix/client/v3/join/{}", enc(&room_k)), json!({})).await;
    assert_eq!(s, 200, "join after the invite: {b}");
    wait_until(T, "alice joined, seen by Synapse", || async {
        sam.membership(&room_k, &alice.user_id).await.as_deref() == Some("join")
    })
    .await;

    // Typing and receipts both ways (in the Myelin-hosted room).
    for (from, to) in [(&alice, &sam), (&sam, &alice)] {
        let (s, b) = from
            .put(
                &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room_m), enc(&from.user_id)),
                json!({ "typing": true, "timeout": 30000 }),
            )
            .await;
        assert_eq!(s, 200, "typing: {b}");
        sync_until(to, T, &format!("{} typing", from.user_id), |b| sees_typing(b, &room_m, &from.user_id)).await;
        let text = format!("receipt target from {}", to.user_id);
        let event_id = to.say(&room_m, &text).await;
        wait_message(from, &room_m, &text).await;
        let (s, b) = from
            .post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_m), enc(&event_id)), json!({}))
            .await;
        assert_eq!(s, 200, "receipt: {b}");
        sync_until(to, T, &format!("{}'s receipt", from.user_id), |b| {
            sees_receipt(b, &room_m, &event_id, &from.user_id)
        })
        .await;
    }

    // End-to-end encryption both ways: matrix-nio (Olm/Megolm) users on Myelin and Synapse in an
    // encrypted room hosted on Myelin; keys queried and claimed over federation, the room key
    // sent as a to-device message, each client decrypts the other's message.
    let python = test_support::nio_python();
    let out = tokio::process::Command::new(python)
        .arg(workspace_root().join("tests/nio/e2ee.py"))
        .arg(myelin.url())
        .arg(synapse.url())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("nio e2ee timed out").expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio e2ee Myelin<->Synapse failed:\n{}\n{stdout}\nmyelin log tail:\n{}\nsynapse log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&myelin.log()),
        tail(&synapse.log())
    );
    let decrypted = stdout.lines().filter(|l| l.contains("\"decrypted\"")).count();
    assert_eq!(decrypted, 2, "both directions decrypted: {stdout}");
    report("e2ee: matrix-nio Olm/Megolm round trip Myelin <-> Synapse: ok");
    let _: Value = json!(null);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Invites of several users of a server that is already in a private room on the other server,
/// both directions (issue 16): Synapse invites Myelin users into its room once Myelin is in it
/// (Myelin takes the invite into the room's state at once, or promotes it when Synapse's
/// transaction brings it), and Myelin invites Synapse users likewise. Each invited user joins
/// without naming a server; afterwards both servers report the same state.
#[tokio::test]
async fn synapse_invites_of_several_users_both_directions() {
    if skip() {
        eprintln!("SKIP_SYNAPSE_TESTS=1: skipping the Synapse interop test");
        return;
    }
    let synapse = SynapseServer::start("127.0.0.22").await;
    let myelin = FedServer::start("127.0.0.21").await;
    let sam = synapse.register("sam").await;
    let sue = synapse.register("sue").await;
    let sid = synapse.register("sid").await;
    let alice = myelin.register("alice").await;
    let bob = myelin.register("bob").await;
    let dave = myelin.register("dave").await;

    let on_synapse = sam.create_private_room().await;
    for guest in [&alice, &bob, &dave] {
        sam.invite_and_join(guest, &on_synapse).await;
    }
    let on_myelin = alice.create_private_room().await;
    for guest in [&sam, &sue, &sid] {
        alice.invite_and_join(guest, &on_myelin).await;
    }
    for (room, host, other) in [(&on_synapse, &sam, &alice), (&on_myelin, &alice, &sam)] {
        host.say(room, "all here").await;
        wait_message(other, room, "all here").await;
        wait_until(T, "the same state on both servers", || async { host.state(room).await == other.state(room).await })
            .await;
    }
}

/// Runs a test on SQLite and on PostgreSQL for Myelin, each on its own (Synapse, Myelin) pair
/// of addresses (Synapse itself always uses SQLite).
macro_rules! both_backends {
    ($name:ident, $sqlite:expr, $postgres:expr) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite, $sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres, $postgres).await
            }
        }
    };
}

/// The room's DAG as a server's SQLite database holds it, one line per event in arrival order
/// (id, depth, type/state_key, sender, prev events, outlier/rejected), then its forward
/// extremities: printed when the two servers disagree, so the report shows where they forked.
/// Synapse and Myelin name their tables and columns differently (`synapse` picks the schema).
fn dag_from_sqlite(db: &std::path::Path, room: &str, synapse: bool) -> String {
    let script = r#"
import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
room, synapse = sys.argv[2], sys.argv[3] == "1"
if synapse:
    q = """select e.event_id, e.depth, e.type, s.state_key, e.sender, e.outlier, r.reason
           from events e left join state_events s on s.event_id = e.event_id
           left join rejections r on r.event_id = e.event_id
           where e.room_id = ? order by e.stream_ordering"""
    ext = "select event_id from event_forward_extremities where room_id = ?"
else:
    q = """select event_id, topological_ordering, event_type, state_key, sender, outlier,
           case when rejected != 0 then 'rejected' end
           from events where room_id = ? order by stream_ordering"""
    ext = "select event_id from forward_extremities where room_id = ?"
for (eid, depth, ty, sk, sender, outlier, rej) in db.execute(q, (room,)).fetchall():
    prevs = [p for (p,) in db.execute("select prev_event_id from event_edges where event_id = ?", (eid,))]
    line = f"  {eid} depth={depth} {ty}/{sk!r} by {sender} prev={prevs}"
    if outlier: line += " OUTLIER"
    if rej: line += f" REJECTED({rej})"
    print(line)
print("  forward extremities:", [e for (e,) in db.execute(ext, (room,))])
"#;
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .arg(db)
        .arg(room)
        .arg(if synapse { "1" } else { "0" })
        .output();
    match out {
        Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("(could not read {}: {e})", db.display()),
    }
}

/// How many of the room's events in Synapse's database have more than one prev event: merges of
/// branches that grew at the same time on both servers.
fn synapse_merges(synapse: &SynapseServer, room: &str) -> usize {
    let script = r#"
import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(db.execute("""select count(*) from (select g.event_id from event_edges g
    join events e on e.event_id = g.event_id where e.room_id = ?
    group by g.event_id having count(*) > 1)""", (sys.argv[2],)).fetchone()[0])
"#;
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .arg(synapse.dir.join("homeserver.db"))
        .arg(room)
        .output()
        .expect("python");
    assert!(out.status.success(), "reading Synapse's DAG: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

/// Waits until both users report the same `/state` of `room`; on timeout panics with exactly
/// which (type, state_key) entries differ, the events behind them as each server serves them,
/// and both DAGs (Myelin's only on SQLite).
async fn wait_same_state(
    what: &str,
    room: &str,
    on_synapse: &Client,
    on_myelin: &Client,
    synapse: &SynapseServer,
    myelin: &FedServer,
    backend: Backend,
) -> Duration {
    let start = Instant::now();
    let (mut s_state, mut m_state);
    loop {
        (s_state, m_state) = tokio::join!(on_synapse.state(room), on_myelin.state(room));
        if s_state == m_state {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys: std::collections::BTreeSet<(String, String)> =
        s_state.iter().chain(&m_state).map(|(t, k, _)| (t.clone(), k.clone())).collect();
    let find = |st: &[(String, String, String)], t: &str, k: &str| {
        st.iter().find(|e| e.0 == t && e.1 == k).map(|e| e.2.clone())
    };
    let mut report = format!("{what}: Synapse and Myelin report different /state of {room}\n");
    for (t, k) in keys {
        let (se, me) = (find(&s_state, &t, &k), find(&m_state, &t, &k));
        if se == me {
            continue;
        }
        report.push_str(&format!("  ({t}, {k:?}): Synapse {se:?}, Myelin {me:?}\n"));
        for id in [&se, &me].into_iter().flatten() {
            for (side, c) in [("Synapse", on_synapse), ("Myelin", on_myelin)] {
                let (s, ev) = c.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id))).await;
                let ev = if s == 200 {
                    json!({ "sender": ev["sender"], "content": ev["content"], "ts": ev["origin_server_ts"] })
                } else {
                    json!({ "status": s })
                };
                report.push_str(&format!("      {id} on {side}: {ev}\n"));
            }
        }
    }
    report.push_str("Synapse DAG:\n");
    report.push_str(&dag_from_sqlite(&synapse.dir.join("homeserver.db"), room, true));
    if backend == Backend::Sqlite {
        report.push_str("Myelin DAG:\n");
        report.push_str(&dag_from_sqlite(&myelin.data_dir().join("myelin.db"), room, false));
    }
    report.push_str(&format!("myelin log tail:\n{}", tail(&myelin.log())));
    panic!("{report}");
}

/// One side of a room in the race: its admin (power 100), an extra user who leaves and joins
/// again, one who is banned by the other side, and the server name to join through.
struct Side<'a> {
    admin: &'a Client,
    extra: &'a Client,
    victim: &'a Client,
    /// The room's server name when this side is remote (joins go through it), None on the host.
    via: Option<String>,
}

impl Side<'_> {
    /// (Re)joins `user` to `room`, through the host when this side is remote.
    async fn join(&self, user: &Client, room: &str) -> (u16, Value) {
        match &self.via {
            Some(via) => user.join_via(room, via).await,
            None => user.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await,
        }
    }

    /// This side's moves in `round`, one after another: topic, name, power levels (raising this
    /// side's extra user, from this server's current view of them), then a membership change:
    /// round 0 the extra user leaves and `other_victim` is banned, round 1 the extra user joins
    /// again, round 2 the extra user leaves once more.
    async fn moves(&self, room: &str, tag: &str, round: i64, other_victim: &Client) -> Vec<(String, u16, Value)> {
        let state = |kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room));
        let (leave_path, ban_path) = (
            format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            format!("/_matrix/client/v3/rooms/{}/ban", enc(room)),
        );
        let mut out = Vec::new();
        let (s, b) = self.admin.put(&state("m.room.topic"), json!({ "topic": format!("{tag} {round}") })).await;
        out.push(("topic".to_owned(), s, b));
        let (s, b) = self.admin.put(&state("m.room.name"), json!({ "name": format!("{tag} {round}") })).await;
        out.push(("name".to_owned(), s, b));
        let (s, mut power) = self.admin.get(&state("m.room.power_levels")).await;
        assert_eq!(s, 200, "{tag}: power levels: {power}");
        power["users"][&self.extra.user_id] = json!(10 + round);
        let (s, b) = self.admin.put(&state("m.room.power_levels"), power).await;
        out.push(("power levels".to_owned(), s, b));
        let (what, (s, b)) = match round {
            0 => {
                let leave = self.extra.post(&leave_path, json!({}));
                let ban = self.admin.post(&ban_path, json!({ "user_id": other_victim.user_id, "reason": "race" }));
                let (l, b) = tokio::join!(leave, ban);
                out.push(("leave".to_owned(), l.0, l.1));
                ("ban", b)
            }
            1 => ("rejoin", self.join(self.extra, room).await),
            _ => ("leave again", self.extra.post(&leave_path, json!({})).await),
        };
        out.push((what.to_owned(), s, b));
        out.into_iter().map(|(w, s, b)| (format!("{tag} round {round}: {w}"), s, b)).collect()
    }
}

/// Concurrent state changes from both sides (issue 16): a room hosted on Synapse and a room
/// hosted on Myelin, each with the other side's admin at power 100 and extra users of both
/// servers. Three rounds in which both admins change topic, name and power levels at the same
/// moment, while extra users leave and rejoin and each side bans a user of the other. After the
/// race both servers must report the identical `/state`; Synapse is the reference, so a
/// difference is reported entry by entry with both DAGs.
async fn synapse_concurrent_state_changes_converge(backend: Backend, ips: (&str, &str)) {
    if skip() {
        eprintln!("SKIP_SYNAPSE_TESTS=1: skipping the Synapse interop test");
        return;
    }
    let started = Instant::now();
    let (synapse, myelin) = tokio::join!(SynapseServer::start(ips.0), FedServer::start_on(ips.1, backend));
    let sam = synapse.register("sam").await;
    let sue = synapse.register("sue").await;
    let sid = synapse.register("sid").await;
    let alice = myelin.register("alice").await;
    let amy = myelin.register("amy").await;
    let abe = myelin.register("abe").await;
    let s_side = |via| Side { admin: &sam, extra: &sue, victim: &sid, via };
    let m_side = |via| Side { admin: &alice, extra: &amy, victim: &abe, via };

    for (host, guest) in [(s_side(None), m_side(Some(synapse.name()))), (m_side(None), s_side(Some(myelin.name())))] {
        let (s, b) = host
            .admin
            .post(
                "/_matrix/client/v3/createRoom",
                json!({
                    "preset": "public_chat",
                    "name": "race",
                    // Room version 12 (both servers' default): the creator has unbounded
                    // power and must not be listed in `users`.
                    "power_level_content_override": {
                        "users": { guest.admin.user_id.clone(): 100 }
                    },
                }),
            )
            .await;
        assert_eq!(s, 200, "createRoom on {}: {b}", host.admin.user_id);
        let room = b["room_id"].as_str().expect("room_id").to_owned();
        let via = guest.via.clone().expect("the guest side joins through the host");
        for user in [guest.admin, guest.extra, guest.victim] {
            user.join_via_seen_by(&room, &via, host.admin).await;
        }
        for user in [host.extra, host.victim] {
            let (s, b) = host.join(user, &room).await;
            assert_eq!(s, 200, "local join: {b}");
        }
        let (on_synapse, on_myelin, hosted) = if host.admin.user_id == sam.user_id {
            (host.admin, guest.admin, "Synapse")
        } else {
            (guest.admin, host.admin, "Myelin")
        };
        wait_same_state(
            &format!("room on {hosted}, before the race"),
            &room,
            on_synapse,
            on_myelin,
            &synapse,
            &myelin,
            backend,
        )
        .await;

        let race = Instant::now();
        for round in 0..3 {
            let (a, b) = tokio::join!(
                host.moves(&room, "host", round, guest.victim),
                guest.moves(&room, "guest", round, host.victim)
            );
            for (what, s, body) in a.into_iter().chain(b) {
                assert_eq!(s, 200, "room on {hosted}: {what}: {body}");
            }
        }
        let quiet = wait_same_state(
            &format!("room on {hosted}, after the race"),
            &room,
            on_synapse,
            on_myelin,
            &synapse,
            &myelin,
            backend,
        )
        .await;
        let rounds = race.elapsed() - quiet;
        // The race really raced: Synapse holds events merging two branches.
        let merges = synapse_merges(&synapse, &room);
        assert!(merges > 0, "room on {hosted}: no fork in Synapse's DAG; the two sides did not race");
        report(&format!(
            "race with Synapse ({backend:?}, room on {hosted}): 3 concurrent rounds in {} ms, {merges} merge events in Synapse's DAG, same /state {} ms after",
            rounds.as_millis(),
            quiet.as_millis()
        ));
        // Both admins speak after the race: each server's next event merges its extremities,
        // and the state stays the same on both.
        let last_h = host.admin.say(&room, "after the race (host)").await;
        let last_g = guest.admin.say(&room, "after the race (guest)").await;
        for c in [host.admin, guest.admin] {
            wait_until(T, "both last messages on both servers", || async {
                let ids = c.event_ids(&room).await;
                ids.contains(&last_h) && ids.contains(&last_g)
            })
            .await;
        }
        wait_same_state(
            &format!("room on {hosted}, after the merge"),
            &room,
            on_synapse,
            on_myelin,
            &synapse,
            &myelin,
            backend,
        )
        .await;
        for (user, membership) in
            [(guest.victim, "ban"), (host.victim, "ban"), (guest.extra, "leave"), (host.extra, "leave")]
        {
            assert_eq!(
                host.admin.membership(&room, &user.user_id).await.as_deref(),
                Some(membership),
                "room on {hosted}: {}",
                user.user_id
            );
        }
    }
    report(&format!("race with Synapse ({backend:?}): both rooms in {} ms", started.elapsed().as_millis()));
}
both_backends!(synapse_concurrent_state_changes_converge, ("127.0.0.32", "127.0.0.31"), ("127.0.0.42", "127.0.0.41"));
