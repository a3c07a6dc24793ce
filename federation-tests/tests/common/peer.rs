//! The hostile-peer harness: a scripted federation server for tests.
//!
//! A [`Peer`] is a small homeserver of its own: an ed25519 signing key (ruma's signatures
//! module), an HTTPS listener on `ip:8448` with a certificate from the test CA (so Myelin,
//! which trusts that CA, fetches its keys from `/_matrix/key/v2/server` like any server's),
//! and an in-memory store of the one room it takes part in. The test decides everything else:
//!
//! - it joins a room on a Myelin through `make_join` / `send_join` ([`Peer::join`]), so it is a
//!   member server that Myelin sends transactions to;
//! - it builds and signs the PDUs the test chooses ([`Peer::build`] with an [`EventSpec`]):
//!   valid ones, or forks with chosen `prev_events`, wrong `auth_events`, any `depth` or
//!   `origin_server_ts`, content tampered after signing, or signed with another key;
//! - it pushes them in `/send` transactions ([`Peer::send_pdus`]) and makes any other
//!   request signed with `X-Matrix` ([`Peer::request`]);
//! - it answers what Myelin asks of it from its store: `/event`, `/state_ids`, `/event_auth`,
//!   `get_missing_events` (which it can refuse to fill, [`PeerState::serve_missing_events`]),
//!   and records every `/send` it receives, answering the first one with an error if told to
//!   ([`PeerState::refuse_first_txn`]).
//!
//! It checks nothing it receives: it is a test double, not a server.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, RoomVersionId, ServerName, UserId};
use serde_json::{Value, json};

use super::{FedServer, ca, enc, init_crypto, send};

/// What the peer holds and how it behaves; tests read and change it through [`Peer::state`].
#[derive(Default)]
pub struct PeerState {
    /// Every PDU the peer holds (from `send_join`, built by the test, or received), by id.
    pub events: HashMap<String, Value>,
    /// The room the peer takes part in.
    pub room_id: Option<String>,
    /// Its room version.
    pub room_version: Option<String>,
    /// Its room version's rules.
    pub rules: Option<RoomVersionRules>,
    /// The room's state as the peer sees it (used for `auth_events` and `/state_ids`).
    pub state: BTreeMap<(String, String), String>,
    /// The prev events of the next event built without explicit ones.
    pub latest: Vec<String>,
    /// Every `/send` attempt received: (transaction id, event ids of its PDUs).
    pub txns: Vec<(String, Vec<String>)>,
    /// When set, the first transaction received (and every retry of it, same id, up to
    /// `refuse_attempts`) is answered with this status and an error body (`M_LIMIT_EXCEEDED`
    /// for 429, `M_BAD_JSON` otherwise).
    pub refuse_first_txn: Option<u16>,
    /// How many attempts of the refused transaction are refused (`None`: all).
    pub refuse_attempts: Option<usize>,
    /// The transaction id refused under `refuse_first_txn`.
    pub refused_txn: Option<String>,
    /// Whether `get_missing_events` is answered from the store (true) or with no events.
    pub serve_missing_events: bool,
    /// Entries that replace the peer's state in its `send_join` answers (as a resident of a
    /// room it created with [`Peer::create_room`]): a hostile resident's forged state.
    pub join_answer_state: BTreeMap<(String, String), String>,
    /// As a policy server (`POST /_matrix/policy/v1/sign`): events whose `content.body`
    /// contains this are refused (400 `M_FORBIDDEN`) instead of signed.
    pub policy_refuse_body: Option<String>,
    /// How many events the peer was asked to sign as a policy server.
    pub policy_requests: usize,
}

struct Inner {
    name: String,
    key: Ed25519KeyPair,
    /// The `ed25519:policy_server` key it signs with as a room's policy server.
    policy_key: Ed25519KeyPair,
    state: Mutex<PeerState>,
}

/// A scripted federation server on `ip:8448`.
pub struct Peer {
    /// Its IP address.
    pub ip: String,
    inner: Arc<Inner>,
    handle: axum_server::Handle<SocketAddr>,
    https: reqwest::Client,
}

/// A PDU the peer built: its event id and its JSON as sent over federation.
#[derive(Clone, Debug)]
pub struct Built {
    /// `$…` event id (reference hash).
    pub id: String,
    /// The PDU.
    pub json: Value,
}

/// The fields of an event to build; what is left `None` is filled in from the peer's view of
/// the room (prev events: its latest event; auth events: from its state; depth: one more than
/// the deepest prev event; timestamp: now; sender: the peer's user).
#[derive(Clone, Debug, Default)]
pub struct EventSpec {
    /// Event type.
    pub kind: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Content.
    pub content: Value,
    /// Sender (default `@mallory:<peer>`).
    pub sender: Option<String>,
    /// `prev_events`.
    pub prev_events: Option<Vec<String>>,
    /// `auth_events`.
    pub auth_events: Option<Vec<String>>,
    /// `depth`.
    pub depth: Option<i64>,
    /// `origin_server_ts`.
    pub origin_server_ts: Option<u64>,
}

impl EventSpec {
    /// A text message.
    pub fn message(body: &str) -> Self {
        Self { kind: "m.room.message".into(), content: json!({ "msgtype": "m.text", "body": body }), ..Self::default() }
    }

    /// A state event.
    pub fn state(kind: &str, state_key: &str, content: Value) -> Self {
        Self { kind: kind.into(), state_key: Some(state_key.into()), content, ..Self::default() }
    }

    /// With these prev events.
    pub fn prev(mut self, prev: &[&str]) -> Self {
        self.prev_events = Some(prev.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// With this depth.
    pub fn depth(mut self, depth: i64) -> Self {
        self.depth = Some(depth);
        self
    }

    /// From this sender.
    pub fn sender(mut self, sender: &str) -> Self {
        self.sender = Some(sender.to_owned());
        self
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn event_id_of(rules: &RoomVersionRules, pdu: &Value) -> Option<String> {
    let mut object: CanonicalJsonObject = serde_json::from_value(pdu.clone()).ok()?;
    object.remove("unsigned");
    object.remove("event_id");
    ruma::signatures::reference_hash(&object, rules).ok().map(|h| format!("${h}"))
}

fn error(status: u16, errcode: &str, message: &str) -> Response {
    (StatusCode::from_u16(status).expect("status"), axum::Json(json!({ "errcode": errcode, "error": message })))
        .into_response()
}

impl Peer {
    /// Starts a peer on `ip` (server name `ip:8448`) with a fresh signing key.
    pub async fn start(ip: &str) -> Self {
        init_crypto();
        let der = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&der, "peer".into()).expect("key");
        let policy_der = Ed25519KeyPair::generate();
        let policy_key = Ed25519KeyPair::from_der(&policy_der, "policy_server".into()).expect("key");
        let inner =
            Arc::new(Inner { name: format!("{ip}:8448"), key, policy_key, state: Mutex::new(PeerState::default()) });
        let app = Router::new()
            .route("/_matrix/key/v2/server", get(keys))
            .route("/_matrix/federation/v1/send/{txn}", put(receive_txn))
            .route("/_matrix/federation/v1/event/{id}", get(event))
            .route("/_matrix/federation/v1/state_ids/{room}", get(state_ids))
            .route("/_matrix/federation/v1/event_auth/{room}/{id}", get(event_auth))
            .route("/_matrix/federation/v1/get_missing_events/{room}", post(missing_events))
            .route("/_matrix/federation/v1/make_join/{room}/{user}", get(make_join))
            .route("/_matrix/federation/v2/send_join/{room}/{id}", put(send_join))
            .route("/_matrix/policy/v1/sign", post(policy_sign))
            .fallback(|| async { error(404, "M_UNRECOGNIZED", "not implemented by the test peer") })
            .with_state(inner.clone());
        let (cert, key) = ca().issue(ip);
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.expect("peer TLS");
        let addr: SocketAddr = format!("{ip}:8448").parse().expect("addr");
        let handle = axum_server::Handle::<SocketAddr>::new();
        let server = axum_server::bind_rustls(addr, tls).handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        handle.listening().await.expect("peer listening");
        let pem = std::fs::read(ca().pem()).expect("ca");
        let https = reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .expect("client");
        Self { ip: ip.to_owned(), inner, handle, https }
    }

    /// `ip:8448`.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// The public key of its `ed25519:policy_server` key (unpadded base64), for `m.room.policy`.
    pub fn policy_public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.inner.policy_key.public_key())
    }

    /// Signs `event` as the room's policy server would (its redacted form, `ed25519:policy_server`).
    pub fn policy_signature(&self, event: &Value) -> String {
        policy_signature_of(&self.inner, event).expect("policy signature")
    }

    /// `object` signed with its `ed25519:policy_server` key as it is (a third-party invitation's
    /// `signed` block, when the test names that key in an `m.room.third_party_invite`).
    pub fn sign_with_policy_key(&self, object: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(object).expect("canonical JSON");
        ruma::signatures::sign_json(&self.inner.name, &self.inner.policy_key, &mut object).expect("sign");
        serde_json::to_value(object).expect("json")
    }

    /// `@local:ip:8448`.
    pub fn user_id(&self, local: &str) -> String {
        format!("@{local}:{}", self.inner.name)
    }

    /// The peer's store and behaviour switches.
    pub fn state(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's rules (after [`Peer::join`]).
    pub fn rules(&self) -> RoomVersionRules {
        self.state().rules.clone().expect("the peer has joined a room")
    }

    /// A request to `dest` signed with the peer's key: (status, JSON body).
    pub async fn request(&self, dest: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body.as_ref().map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        let origin = ServerName::parse(&self.inner.name).expect("name");
        let destination = ServerName::parse(dest).expect("name");
        let r = http::Request::builder().method(method).uri(path).body(bytes.as_slice()).expect("req");
        let x = XMatrix::sign_http_request(&r, XMatrixSigningInput::new(origin, destination, &self.inner.key))
            .expect("sign");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .https
            .request(method, format!("https://{dest}{path}"))
            .header("authorization", http::HeaderValue::from(&x));
        if body.is_some() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        send(req).await
    }

    /// Pushes PDUs to `dest` in one `/send` transaction.
    pub async fn send_pdus(&self, dest: &FedServer, pdus: &[&Built]) -> (u16, Value) {
        let body = json!({
            "origin": self.inner.name,
            "origin_server_ts": now_ms(),
            "pdus": pdus.iter().map(|b| b.json.clone()).collect::<Vec<_>>(),
        });
        let txn = format!("peer{}", rand::random::<u64>());
        self.request(&dest.name(), "PUT", &format!("/_matrix/federation/v1/send/{txn}"), Some(body)).await
    }

    /// Joins `room_id` on `via` as `@local:<peer>` (make_join + send_join); the room's state and
    /// auth chain from the answer fill the peer's store. Panics on failure.
    pub async fn join(&self, via: &FedServer, room_id: &str, local: &str) -> Built {
        let user = self.user_id(local);
        let vers: Vec<String> = (1..=12).map(|v| format!("ver={v}")).collect();
        let (s, template) = self
            .request(
                &via.name(),
                "GET",
                &format!("/_matrix/federation/v1/make_join/{}/{}?{}", enc(room_id), enc(&user), vers.join("&")),
                None,
            )
            .await;
        assert_eq!(s, 200, "make_join: {template}");
        let version = RoomVersionId::try_from(template["room_version"].as_str().expect("room_version")).expect("v");
        let rules = version.rules().expect("known room version");
        let mut event = template["event"].clone();
        event["origin_server_ts"] = json!(now_ms());
        let join = self.sign(&rules, event);
        let (s, answer) = self
            .request(
                &via.name(),
                "PUT",
                &format!("/_matrix/federation/v2/send_join/{}/{}", enc(room_id), enc(&join.id)),
                Some(join.json.clone()),
            )
            .await;
        assert_eq!(s, 200, "send_join: {answer}");
        let mut st = self.state();
        for pdu in answer["auth_chain"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(answer["state"].as_array().into_iter().flatten())
        {
            let id = event_id_of(&rules, pdu).expect("event id");
            st.events.insert(id, pdu.clone());
        }
        for pdu in answer["state"].as_array().into_iter().flatten() {
            let id = event_id_of(&rules, pdu).expect("event id");
            st.state.insert(
                (pdu["type"].as_str().unwrap_or("").to_owned(), pdu["state_key"].as_str().unwrap_or("").to_owned()),
                id,
            );
        }
        st.room_id = Some(room_id.to_owned());
        st.room_version = Some(version.to_string());
        st.rules = Some(rules);
        drop(st);
        self.advance(&join);
        join
    }

    /// Creates a public room hosted by the peer (room version `version`, 1 to 11) with
    /// `@mallory:<peer>` as its creator (power level 100): create, join, power levels, join
    /// rules. Other servers join it through the peer's `make_join` / `send_join`, whose answer
    /// is the peer's state (with [`PeerState::join_answer_state`] in place). Returns the room id.
    pub fn create_room(&self, version: &str) -> String {
        let rules = RoomVersionId::try_from(version).expect("version").rules().expect("known room version");
        let room_id = format!("!peer{}:{}", rand::random::<u32>(), self.inner.name);
        {
            let mut st = self.state();
            st.room_id = Some(room_id.clone());
            st.room_version = Some(version.to_owned());
            st.rules = Some(rules);
        }
        let mallory = self.user_id("mallory");
        let mut create = json!({ "room_version": version });
        if !self.rules().authorization.use_room_create_sender {
            create["creator"] = json!(mallory);
        }
        for spec in [
            EventSpec::state("m.room.create", "", create),
            EventSpec::state("m.room.member", &mallory, json!({ "membership": "join" })),
            EventSpec::state("m.room.power_levels", "", json!({ "users": { mallory.clone(): 100 } })),
            EventSpec::state("m.room.join_rules", "", json!({ "join_rule": "public" })),
        ] {
            let ev = self.build(spec);
            self.advance(&ev);
        }
        room_id
    }

    /// Hashes and signs `event` with the peer's key.
    pub fn sign(&self, rules: &RoomVersionRules, event: Value) -> Built {
        self.sign_with(rules, event, &self.inner.key)
    }

    /// Hashes and signs `event` with `key` (e.g. a key the peer never published).
    pub fn sign_with(&self, rules: &RoomVersionRules, event: Value, key: &Ed25519KeyPair) -> Built {
        let mut object: CanonicalJsonObject = serde_json::from_value(event).expect("canonical JSON");
        for k in ["event_id", "hashes", "signatures", "unsigned"] {
            object.remove(k);
        }
        ruma::signatures::hash_and_sign_event(&self.inner.name, key, &mut object, &rules.redaction).expect("sign");
        let id = format!("${}", ruma::signatures::reference_hash(&object, rules).expect("hash"));
        Built { id, json: serde_json::to_value(&object).expect("json") }
    }

    /// Builds and signs an event of the peer's room; it is stored (so the peer serves it on
    /// `/event`) but does not move the peer's view on ([`Peer::advance`] does).
    pub fn build(&self, spec: EventSpec) -> Built {
        let (rules, event) = {
            let st = self.state();
            let rules = st.rules.clone().expect("the peer has joined a room");
            let room_id = st.room_id.clone().expect("room");
            let sender = spec.sender.clone().unwrap_or_else(|| self.user_id("mallory"));
            let prev = spec.prev_events.clone().unwrap_or_else(|| st.latest.clone());
            let depth = spec.depth.unwrap_or_else(|| {
                prev.iter().filter_map(|p| st.events.get(p)).filter_map(|e| e["depth"].as_i64()).max().unwrap_or(0) + 1
            });
            let auth = spec.auth_events.clone().unwrap_or_else(|| {
                let raw = serde_json::value::to_raw_value(&spec.content).expect("raw");
                let sender_id = UserId::parse(&sender).expect("sender");
                ruma::state_res::auth_types_for_event(
                    &TimelineEventType::from(spec.kind.as_str()),
                    &sender_id,
                    spec.state_key.as_deref(),
                    &raw,
                    &rules.authorization,
                )
                .expect("auth types")
                .into_iter()
                .filter_map(|(t, k)| st.state.get(&(t.to_string(), k)).cloned())
                .collect()
            });
            let mut event = json!({
                "type": spec.kind,
                "room_id": room_id,
                "sender": sender,
                "content": spec.content,
                "origin_server_ts": spec.origin_server_ts.unwrap_or_else(now_ms),
                "depth": depth,
                "prev_events": prev,
                "auth_events": auth,
            });
            if let Some(k) = &spec.state_key {
                event["state_key"] = json!(k);
            }
            (rules, event)
        };
        let built = self.sign(&rules, event);
        self.state().events.insert(built.id.clone(), built.json.clone());
        built
    }

    /// Makes `ev` the peer's latest event (and applies it to the peer's state).
    pub fn advance(&self, ev: &Built) {
        let mut st = self.state();
        apply(&mut st, &ev.id, &ev.json);
    }

    /// Stops the listener.
    pub fn stop(&self) {
        self.handle.shutdown();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Stores a PDU and moves the peer's view on to it.
fn apply(st: &mut PeerState, id: &str, pdu: &Value) {
    st.events.insert(id.to_owned(), pdu.clone());
    st.latest = vec![id.to_owned()];
    if let Some(k) = pdu["state_key"].as_str() {
        st.state.insert((pdu["type"].as_str().unwrap_or("").to_owned(), k.to_owned()), id.to_owned());
    }
}

/// The auth chain of `ids` in the peer's store (not including them).
fn auth_closure(st: &PeerState, ids: &[String]) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: Vec<String> = ids
        .iter()
        .filter_map(|id| st.events.get(id))
        .flat_map(|e| e["auth_events"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    while let Some(id) = frontier.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(e) = st.events.get(&id) {
            frontier.extend(
                e["auth_events"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)),
            );
        }
    }
    seen.into_iter().collect()
}

fn policy_signature_of(inner: &Inner, event: &Value) -> Option<String> {
    let rules = inner.state.lock().unwrap_or_else(|e| e.into_inner()).rules.clone()?;
    let object: CanonicalJsonObject = serde_json::from_value(event.clone()).ok()?;
    let mut redacted = ruma::canonical_json::redact(object, &rules.redaction, None).ok()?;
    redacted.remove("signatures");
    ruma::signatures::sign_json(&inner.name, &inner.policy_key, &mut redacted).ok()?;
    let signed = serde_json::to_value(redacted).ok()?;
    signed["signatures"][&inner.name]["ed25519:policy_server"].as_str().map(str::to_owned)
}

/// `POST /_matrix/policy/v1/sign`: signs every event, unless its body contains the refused text.
async fn policy_sign(State(inner): State<Arc<Inner>>, axum::Json(event): axum::Json<Value>) -> Response {
    let refuse = {
        let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.policy_requests += 1;
        st.policy_refuse_body.clone()
    };
    if let Some(text) = refuse
        && event["content"]["body"].as_str().is_some_and(|b| b.contains(&text))
    {
        return error(400, "M_FORBIDDEN", "this event looks like spam");
    }
    match policy_signature_of(&inner, &event) {
        Some(sig) => axum::Json(json!({ inner.name.clone(): { "ed25519:policy_server": sig } })).into_response(),
        None => error(400, "M_BAD_JSON", "cannot sign this"),
    }
}

async fn keys(State(inner): State<Arc<Inner>>) -> Response {
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(inner.key.public_key());
    let doc = json!({
        "server_name": inner.name,
        "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        "verify_keys": { "ed25519:peer": { "key": public } },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(doc).expect("canonical");
    ruma::signatures::sign_json(&inner.name, &inner.key, &mut object).expect("sign");
    axum::Json(serde_json::to_value(object).expect("json")).into_response()
}

async fn receive_txn(State(inner): State<Arc<Inner>>, Path(txn): Path<String>, body: axum::Json<Value>) -> Response {
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let rules = st.rules.clone();
    let pdus: Vec<Value> = body["pdus"].as_array().cloned().unwrap_or_default();
    let ids: Vec<String> =
        pdus.iter().map(|p| rules.as_ref().and_then(|r| event_id_of(r, p)).unwrap_or_default()).collect();
    st.txns.push((txn.clone(), ids.clone()));
    if let Some(status) = st.refuse_first_txn {
        let refused = st.refused_txn.get_or_insert_with(|| txn.clone()).clone();
        let attempts = st.txns.iter().filter(|(t, _)| *t == refused).count();
        if refused == txn && st.refuse_attempts.is_none_or(|n| attempts <= n) {
            let errcode = if status == 429 { "M_LIMIT_EXCEEDED" } else { "M_BAD_JSON" };
            return error(status, errcode, "refused by the test peer");
        }
    }
    for (id, pdu) in ids.iter().zip(&pdus) {
        if !id.is_empty() {
            apply(&mut st, id, pdu);
        }
    }
    axum::Json(json!({ "pdus": {} })).into_response()
}

async fn event(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    match st.events.get(&id) {
        Some(pdu) => {
            axum::Json(json!({ "origin": inner.name, "origin_server_ts": now_ms(), "pdus": [pdu] })).into_response()
        }
        None => error(404, "M_NOT_FOUND", "unknown event"),
    }
}

/// The peer's current state, whatever event is asked about: a test that needs the state at
/// a given event sets [`PeerState::state`] to it.
async fn state_ids(State(inner): State<Arc<Inner>>, Query(_q): Query<HashMap<String, String>>) -> Response {
    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let ids: Vec<String> = st.state.values().cloned().collect();
    let chain = auth_closure(&st, &ids);
    axum::Json(json!({ "pdu_ids": ids, "auth_chain_ids": chain })).into_response()
}

async fn event_auth(State(inner): State<Arc<Inner>>, Path((_room, id)): Path<(String, String)>) -> Response {
    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let chain: Vec<Value> = auth_closure(&st, &[id]).iter().filter_map(|i| st.events.get(i).cloned()).collect();
    axum::Json(json!({ "auth_chain": chain })).into_response()
}

async fn missing_events(
    State(inner): State<Arc<Inner>>,
    Path(_room): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    if !st.serve_missing_events {
        return axum::Json(json!({ "events": [] })).into_response();
    }
    let earliest: HashSet<String> = body["earliest_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    let mut out = Vec::new();
    let mut seen = earliest.clone();
    let mut frontier: Vec<String> = body["latest_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|id| st.events.get(id))
        .flat_map(|e| e["prev_events"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    while let Some(id) = frontier.pop() {
        if out.len() >= limit || !seen.insert(id.clone()) {
            continue;
        }
        if let Some(e) = st.events.get(&id) {
            frontier.extend(
                e["prev_events"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)),
            );
            out.push(e.clone());
        }
    }
    out.sort_by_key(|e| e["depth"].as_i64().unwrap_or(0));
    axum::Json(json!({ "events": out })).into_response()
}

/// `make_join` as a resident of the peer's room: a join template on the peer's latest event.
async fn make_join(
    State(inner): State<Arc<Inner>>,
    Path((room, user)): Path<(String, String)>,
    Query(_q): Query<Vec<(String, String)>>,
) -> Response {
    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(rules), Some(version)) = (st.rules.clone(), st.room_version.clone()) else {
        return error(404, "M_NOT_FOUND", "no room");
    };
    let Ok(user_id) = UserId::parse(&user) else { return error(400, "M_INVALID_PARAM", "bad user id") };
    let content = json!({ "membership": "join" });
    let raw = serde_json::value::to_raw_value(&content).expect("raw");
    let auth: Vec<String> = ruma::state_res::auth_types_for_event(
        &TimelineEventType::RoomMember,
        &user_id,
        Some(user.as_str()),
        &raw,
        &rules.authorization,
    )
    .expect("auth types")
    .into_iter()
    .filter_map(|(t, k)| st.state.get(&(t.to_string(), k)).cloned())
    .collect();
    let depth =
        st.latest.iter().filter_map(|p| st.events.get(p)).filter_map(|e| e["depth"].as_i64()).max().unwrap_or(0) + 1;
    let event = json!({
        "type": "m.room.member",
        "room_id": room,
        "sender": user,
        "state_key": user,
        "content": content,
        "origin": inner.name,
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": st.latest,
        "auth_events": auth,
    });
    axum::Json(json!({ "room_version": version, "event": event })).into_response()
}

/// `send_join` (v2) as a resident: answers the peer's state before the join, with
/// [`PeerState::join_answer_state`] replacing entries, and the auth chain of it and the join;
/// then the join becomes the peer's latest event. It checks nothing.
async fn send_join(
    State(inner): State<Arc<Inner>>,
    Path((_room, _id)): Path<(String, String)>,
    body: axum::Json<Value>,
) -> Response {
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rules) = st.rules.clone() else { return error(404, "M_NOT_FOUND", "no room") };
    let Some(id) = event_id_of(&rules, &body) else { return error(400, "M_BAD_JSON", "bad event") };
    let mut state = st.state.clone();
    state.extend(st.join_answer_state.clone());
    let ids: Vec<String> = state.values().cloned().collect();
    st.events.insert(id.clone(), body.0.clone());
    let mut with_join = ids.clone();
    with_join.push(id.clone());
    let chain: Vec<Value> = auth_closure(&st, &with_join).iter().filter_map(|i| st.events.get(i).cloned()).collect();
    let state_pdus: Vec<Value> = ids.iter().filter_map(|i| st.events.get(i).cloned()).collect();
    apply(&mut st, &id, &body);
    axum::Json(json!({
        "origin": inner.name,
        "state": state_pdus,
        "auth_chain": chain,
        "event": body.0,
        "members_omitted": false,
    }))
    .into_response()
}
