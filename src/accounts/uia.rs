//! User-Interactive Authentication (spec: client-server API, "User-interactive authentication API").
//!
//! A session lives in the database so that any process can continue it. The first request
//! without `auth` gets 401 with the flows and a new session id; a request whose `auth` completes
//! a stage is checked, the stage recorded, and the request proceeds once a whole flow is done.
//! Like Synapse, a first request that already carries a valid `m.login.dummy` (matrix-nio does
//! this when registering) completes without a round trip.

use ruma::api::client::uiaa::AuthData;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::Accounts;
use crate::error::{Error, Result};
use crate::ids::random_alpha;
use crate::storage::now_ms;

/// Stage names.
pub const DUMMY: &str = "m.login.dummy";
/// Registration token stage.
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
/// Password stage.
pub const PASSWORD: &str = "m.login.password";

const SESSION_LIFETIME_MS: i64 = 30 * 60 * 1000;

/// What a UIA-protected request needs.
pub struct UiaRequest<'a> {
    /// Acceptable flows, each a list of stages.
    pub flows: Vec<Vec<&'static str>>,
    /// The authenticated user, for password stages (None for registration).
    pub user_id: Option<&'a ruma::UserId>,
    /// Names the protected operation, so a session cannot be replayed for another one.
    pub operation: &'a str,
}

impl Accounts {
    /// Runs one UIA step; `Ok(())` once a flow is complete, otherwise the 401 to send.
    pub async fn check_uia(&self, auth: Option<&AuthData>, req: UiaRequest<'_>) -> Result<()> {
        let user_key = req.user_id.map(|u| u.to_string());
        let (session_id, mut completed) = match auth.and_then(|a| a.session()) {
            Some(session) => match self.db.get_uia_session(session).await? {
                Some((user, op, completed, created))
                    if user == user_key && op == req.operation && now_ms() - created < SESSION_LIFETIME_MS =>
                {
                    (session.to_owned(), serde_json::from_str::<Vec<String>>(&completed)?)
                }
                _ => {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_UNKNOWN",
                        "Unknown or expired UIA session",
                    ));
                }
            },
            None => (random_alpha(24), Vec::new()),
        };

        let Some(auth) = auth else {
            self.db.put_uia_session(&session_id, user_key.as_deref(), req.operation, "[]").await?;
            return Err(uia_response(&req, &session_id, &completed, None));
        };

        let stage = auth.auth_type().map(|t| t.to_string());
        let stage_error = match stage.as_deref() {
            None => None,
            Some(s) if !req.flows.iter().any(|f| f.contains(&s)) => {
                Some(Error::new(http::StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", format!("Unsupported auth stage {s}")))
            }
            Some(_) => self.check_stage(auth, &req).await.err(),
        };
        match (stage_error, stage) {
            (Some(err), _) => {
                self.db
                    .put_uia_session(
                        &session_id,
                        user_key.as_deref(),
                        req.operation,
                        &serde_json::to_string(&completed)?,
                    )
                    .await?;
                return Err(uia_response(&req, &session_id, &completed, Some(err)));
            }
            (None, Some(stage)) if !completed.contains(&stage) => completed.push(stage),
            _ => {}
        }
        if req.flows.iter().any(|flow| flow.iter().all(|s| completed.iter().any(|c| c == s))) {
            self.db.delete_uia_session(&session_id).await?;
            return Ok(());
        }
        self.db
            .put_uia_session(&session_id, user_key.as_deref(), req.operation, &serde_json::to_string(&completed)?)
            .await?;
        Err(uia_response(&req, &session_id, &completed, None))
    }

    /// Whether `token` is one of `registration.tokens` (compared in constant time).
    fn configured_registration_token(&self, token: &str) -> bool {
        self.config.registration.tokens.iter().any(|valid| bool::from(valid.as_bytes().ct_eq(token.as_bytes())))
    }

    /// Whether `token` would be accepted: one of `registration.tokens`, or one made with the
    /// admin API that has uses left and has not expired.
    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self.configured_registration_token(token) || self.db.registration_token_usable(token).await?)
    }

    async fn check_stage(&self, auth: &AuthData, req: &UiaRequest<'_>) -> Result<()> {
        match auth {
            AuthData::Dummy(_) => Ok(()),
            AuthData::RegistrationToken(t) => {
                // The registration completes in this request (the flow has this one stage), so
                // an admin-made token's use is counted now, atomically against its limit.
                if self.configured_registration_token(&t.token) || self.db.use_registration_token(&t.token).await? {
                    Ok(())
                } else {
                    Err(Error::new(http::StatusCode::UNAUTHORIZED, "M_FORBIDDEN", "Invalid registration token"))
                }
            }
            AuthData::Password(p) => {
                let Some(user_id) = req.user_id else {
                    return Err(Error::forbidden("Password authentication needs a logged-in user"));
                };
                let claimed = match &p.identifier {
                    ruma::api::client::uiaa::UserIdentifier::Matrix(m) => Some(m.user.as_str()),
                    _ => None,
                };
                if let Some(claimed) = claimed
                    && self.local_user_id(claimed)? != user_id
                {
                    return Err(Error::forbidden("Invalid username or password"));
                }
                self.check_password(user_id, &p.password).await
            }
            AuthData::EmailIdentity(e) => {
                let creds = &e.thirdparty_id_creds;
                self.email_stage_done(creds.sid.as_str(), creds.client_secret.as_str(), req.operation).await
            }
            _ => Err(Error::new(http::StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", "Unsupported auth stage")),
        }
    }
}

fn uia_response(req: &UiaRequest<'_>, session: &str, completed: &[String], err: Option<Error>) -> Error {
    let flows: Vec<Value> = req.flows.iter().map(|f| json!({ "stages": f })).collect();
    let mut body = json!({ "flows": flows, "params": {}, "session": session, "completed": completed });
    let mut status = http::StatusCode::UNAUTHORIZED;
    if let Some(err) = err {
        // Too many wrong passwords: a plain 429 with `retry_after_ms`, as Synapse answers.
        if err.status == http::StatusCode::TOO_MANY_REQUESTS {
            return err;
        }
        body["errcode"] = json!(err.errcode);
        body["error"] = json!(err.message);
        if err.status == http::StatusCode::BAD_REQUEST {
            status = err.status;
        }
    }
    let mut e = Error::new(status, "M_FORBIDDEN", "User-interactive authentication required");
    e.body = Some(body);
    e
}
