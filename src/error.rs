//! The one error type of the server and its mapping to Matrix error responses.
//!
//! Every layer returns [`Error`]; the HTTP layer turns it into `{"errcode", "error"}` with the
//! status the spec gives for that errcode. Internal failures are logged with their cause and
//! reach the client only as `M_UNKNOWN` so that no database detail leaks.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure that can be shown to a Matrix client or peer server.
#[derive(Debug)]
pub struct Error {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// The Matrix `errcode`, e.g. `M_FORBIDDEN`.
    pub errcode: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra top-level fields merged into the body (`soft_logout`, `retry_after_ms`, ...).
    pub extra: Map<String, Value>,
    /// A complete body that replaces the errcode body (User-Interactive Auth answers).
    pub body: Option<Value>,
}

impl Error {
    /// An error with the given status, errcode and message.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self { status, errcode, message: message.into(), extra: Map::new(), body: None }
    }

    /// Adds one extra field to the error body.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", msg)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", msg)
    }
    /// 400 `M_BAD_JSON`: the body is JSON but not of the expected shape.
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", msg)
    }
    /// 400 `M_NOT_JSON`: the body is not JSON at all.
    pub fn not_json(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", msg)
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", msg)
    }
    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", msg)
    }
    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "Missing access token")
    }
    /// 401 `M_UNKNOWN_TOKEN`, with `soft_logout` as the spec requires.
    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown or expired access token")
            .with("soft_logout", Value::Bool(soft_logout))
    }
    /// 401 `M_USER_LOCKED` with `soft_logout: true`: the account is locked by an administrator
    /// (the client keeps its session and may log in again once it is unlocked).
    pub fn user_locked() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_USER_LOCKED", "This account has been locked")
            .with("soft_logout", Value::Bool(true))
    }
    /// 403 `M_USER_SUSPENDED`: a suspended account may read but not do this.
    pub fn user_suspended() -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_USER_SUSPENDED", "This account is suspended and cannot do this")
    }
    /// 404 or 405 `M_UNRECOGNIZED`: the server does not know this endpoint or method.
    pub fn unrecognized(status: StatusCode) -> Self {
        Self::new(status, "M_UNRECOGNIZED", "Unrecognized request")
    }
    /// 413 `M_TOO_LARGE`.
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", msg)
    }
    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests")
            .with("retry_after_ms", json!(retry_after_ms))
    }
    /// 400 `M_USER_IN_USE`.
    pub fn user_in_use() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken")
    }
    /// 400 `M_INVALID_USERNAME`.
    pub fn invalid_username(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", msg)
    }
    /// 401 `M_UNAUTHORIZED` (federation signatures).
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", msg)
    }
    /// 500 `M_UNKNOWN`; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error")
    }

    /// The JSON body this error is sent as.
    pub fn to_json(&self) -> Value {
        if let Some(body) = &self.body {
            return body.clone();
        }
        let mut map = Map::new();
        map.insert("errcode".into(), Value::String(self.errcode.into()));
        map.insert("error".into(), Value::String(self.message.clone()));
        map.extend(self.extra.clone());
        Value::Object(map)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.errcode, self.message)
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.to_json())).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The client may still be sending; ask it to stop rather than reset the socket.
            res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        res
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::internal(format!("json: {e}"))
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}
