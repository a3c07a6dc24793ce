//! Several processes of one server on one PostgreSQL database send to other servers as one
//! (issue 21, docs/scaling.md): the federation sender runs in one process at a time under a
//! lease, and when that process is killed another takes its destinations over and delivers
//! every event exactly once (each PDU in one transaction id; a replay repeats the id).
//! Servers on `127.1.21.*`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::peer::Peer;
use common::*;
use serde_json::json;

/// The process id in the owner of lease `name` (`host/pid/random`), if any.
async fn lease_owner_pid(db_url: &str, name: &str) -> Option<u32> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("connecting to the test database");
    let row: Option<(String,)> =
        sqlx::query_as("SELECT owner FROM leases WHERE name = $1").bind(name).fetch_optional(&mut conn).await.ok()?;
    row?.0.split('/').nth(1)?.parse().ok()
}

#[tokio::test]
async fn killed_sender_is_taken_over_and_delivers_exactly_once() {
    let net = "127.1.21";
    let a = FedServer::start_on(&format!("{net}.11"), Backend::Postgres).await;
    let siblings = vec![a.start_sibling().await, a.start_sibling().await];
    let db = a.database_url().expect("PostgreSQL");
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = alice.create_public_room().await;
    peer.join(&a, &room, "mallory").await;
    let mut procs = vec![a];
    procs.extend(siblings);
    let mut clients = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let c = p.register(&format!("user{i}")).await;
        let (status, body) = c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
        assert_eq!(status, 200, "{body}");
        clients.push(c);
    }

    // Exactly one process runs the sender: the one named by the lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    let holder = loop {
        if let Some(pid) = lease_owner_pid(&db, "federation-sender").await
            && let Some(i) = procs.iter().position(|p| p.pid() == Some(pid))
        {
            break i;
        }
        assert!(Instant::now() < deadline, "no process holds the federation sender's lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Clients of every process send while the holder is killed.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().cloned().enumerate() {
        let (room, acked) = (room.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..60 {
                let answer = c
                    .try_put(
                        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}-{n}", enc(&room)),
                        json!({ "msgtype": "m.text", "body": format!("{i}-{n}") }),
                    )
                    .await;
                let Some((200, body)) = answer else {
                    assert_eq!(i, holder, "a surviving process failed a send: {answer:?}");
                    return;
                };
                acked.lock().unwrap().push(body["event_id"].as_str().expect("event_id").to_owned());
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    procs[holder].kill9();
    let killed_at = Instant::now();
    for t in tasks {
        t.await.expect("sender task");
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() > 60, "too few events sent: {}", acked.len());

    // Every acknowledged event reaches the peer, through the process that took over.
    let mut delivered_after = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered_after.is_none() {
        let received: HashSet<String> = peer.state().txns.iter().flat_map(|(_, ids)| ids.iter().cloned()).collect();
        if acked.iter().all(|id| received.contains(id)) {
            delivered_after = Some(killed_at.elapsed());
        } else {
            let missing = acked.iter().filter(|id| !received.contains(*id)).count();
            assert!(Instant::now() < deadline, "{missing} acknowledged events never reached the peer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let new_holder = lease_owner_pid(&db, "federation-sender").await.expect("a new holder");
    assert!(
        procs.iter().enumerate().any(|(i, p)| i != holder && p.pid() == Some(new_holder)),
        "the lease is not held by a surviving process"
    );

    // Exactly once: each PDU travelled in one transaction id (a replay repeats that id).
    let mut txns_of: HashMap<String, HashSet<String>> = HashMap::new();
    let mut bodies: HashMap<String, Vec<String>> = HashMap::new();
    for (txn, ids) in peer.state().txns.iter() {
        for id in ids {
            txns_of.entry(id.clone()).or_default().insert(txn.clone());
        }
        if let Some(before) = bodies.insert(txn.clone(), ids.clone()) {
            assert_eq!(&before, ids, "transaction {txn} was sent again with other PDUs");
        }
    }
    for (id, txns) in &txns_of {
        assert_eq!(txns.len(), 1, "{id} was sent in several transactions: {txns:?}");
    }
    eprintln!(
        "killed the sender's process (#{holder}) under load: {} events delivered exactly once, \
         the last {:?} after the kill",
        acked.len(),
        delivered_after.expect("set")
    );
}
