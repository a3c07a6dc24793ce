//! Server-to-server transport: identity (signing keys over federation), the signed outbound
//! client with discovery and inbound request verification (the durable sender that drains the
//! outbox through it is `crate::delivery::federation`).
//!
//! Room semantics of federation (incoming PDUs, joins through other servers) live in
//! `rooms::federated`; this module only moves signed bytes between servers.

pub mod client;
pub mod destinations;
pub mod keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ruma::api::federation::authentication::XMatrix;
use ruma::{OwnedServerName, ServerName};
use serde_json::Value;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::signing::SigningKeys;
use crate::storage::Db;
use client::FedClient;
use keys::RemoteKey;

/// The federation handle.
pub struct Federation {
    db: Db,
    config: Arc<Config>,
    keys: Arc<SigningKeys>,
    server_name: OwnedServerName,
    /// The outbound HTTP client.
    pub client: FedClient,
    /// Remote servers' keys by server name; bounded and expiring, since any origin named in an
    /// `X-Matrix` header that serves a key document lands here (the database keeps them).
    key_cache: moka::sync::Cache<String, HashMap<String, RemoteKey>>,
    /// One key fetch per server at a time; an entry lives only while a fetch holds it.
    key_fetch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When we last fetched each server's keys (bounded).
    key_refetch_at: Mutex<keys::FetchLimiter>,
}

impl Federation {
    /// Builds the handle.
    pub fn new(db: Db, config: Arc<Config>, keys: Arc<SigningKeys>) -> anyhow::Result<Self> {
        let client = FedClient::new(&config.federation)?;
        Ok(Self {
            server_name: config.server_name(),
            db,
            config,
            keys,
            client,
            key_cache: keys::key_cache(),
            key_fetch_locks: Mutex::new(HashMap::new()),
            key_refetch_at: Mutex::new(keys::FetchLimiter::default()),
        })
    }

    /// Whether federation is enabled.
    pub fn enabled(&self) -> bool {
        self.config.federation.enabled
    }

    /// This server's name.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The database, for the senders in `delivery`, which keep the destinations' rows
    /// (handlers go through the methods of `destinations`).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Sends a signed request and returns the JSON body of a 2xx answer; other answers become
    /// errors carrying the remote errcode text.
    pub async fn request(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        if !self.enabled() {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        if destination == self.server_name {
            return Err(Error::internal("federation request to ourselves"));
        }
        let (status, value) = self
            .client
            .request(&self.server_name, &self.keys.current, destination, method, path_and_query, body)
            .await?;
        if status.is_success() {
            return Ok(value);
        }
        let errcode = value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
        let message = value["error"].as_str().unwrap_or("").to_owned();
        let status = if status.is_client_error() { status } else { http::StatusCode::BAD_GATEWAY };
        let code: &'static str = match errcode.as_str() {
            "M_FORBIDDEN" => "M_FORBIDDEN",
            "M_NOT_FOUND" => "M_NOT_FOUND",
            "M_UNSUPPORTED_ROOM_VERSION" => "M_UNSUPPORTED_ROOM_VERSION",
            "M_INCOMPATIBLE_ROOM_VERSION" => "M_INCOMPATIBLE_ROOM_VERSION",
            "M_UNABLE_TO_AUTHORISE_JOIN" => "M_UNABLE_TO_AUTHORISE_JOIN",
            "M_UNABLE_TO_GRANT_JOIN" => "M_UNABLE_TO_GRANT_JOIN",
            _ => "M_UNKNOWN",
        };
        Err(Error::new(status, code, format!("{destination}: {errcode}: {message}")))
    }

    /// Sends a signed GET whose answer is not JSON (media); returns status, headers and at
    /// most `limit` bytes of body.
    pub async fn get_raw(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        limit: usize,
    ) -> Result<(http::StatusCode, http::HeaderMap, bytes::Bytes)> {
        if !self.enabled() {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        if destination == self.server_name {
            return Err(Error::internal("federation request to ourselves"));
        }
        self.client.get_raw(&self.server_name, &self.keys.current, destination, path_and_query, limit).await
    }

    /// Verifies the `X-Matrix` signature of an inbound request; returns the origin.
    pub async fn verify_request(&self, parts: &http::request::Parts, body: &[u8]) -> Result<OwnedServerName> {
        if !self.enabled() {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        let unauthorized = |m: String| Error::unauthorized(m);
        let header = parts
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| XMatrix::parse(v).ok())
            .ok_or_else(|| unauthorized("Missing or invalid X-Matrix authorization".into()))?;
        if header.destination.as_deref().is_some_and(|d| d != self.server_name) {
            return Err(unauthorized("X-Matrix destination is not this server".into()));
        }
        let map = self
            // A request is signed now, so the key must be valid now.
            .key_map(&[(header.origin.to_string(), vec![header.key.to_string()])], Some(crate::storage::now_ms()))
            .await
            .map_err(|e| unauthorized(format!("Cannot fetch keys of {}: {}", header.origin, e.message)))?;
        let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| unauthorized(e.to_string()))?;
        header
            .verify_http_request(&request, &self.server_name, &map)
            .map_err(|e| unauthorized(format!("Invalid X-Matrix signature: {e}")))?;
        Ok(header.origin)
    }
}
