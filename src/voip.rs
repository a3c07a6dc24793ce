//! Credentials for TURN servers, which relay voice and video calls between clients that cannot
//! reach each other directly (`GET /voip/turnServer`).
//!
//! With a shared secret, credentials follow the TURN REST API scheme that coturn implements
//! (`use-auth-secret`): the username is `<expiry unix seconds>:<user id>` and the password is
//! base64(HMAC-SHA1(secret, username)), so the TURN server checks them without asking us and
//! refuses them once expired. Written here because no maintained crate does this one formula.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ruma::UserId;

use crate::config::VoipConfig;

/// What a client needs to use the TURN servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// TURN username.
    pub username: String,
    /// TURN password.
    pub password: String,
    /// The servers.
    pub uris: Vec<String>,
    /// How long the credentials are valid.
    pub ttl: Duration,
}

/// The credentials for `user_id` at `now_secs` (unix time), or `None` when no TURN server is
/// configured.
pub fn turn_credentials(config: &VoipConfig, user_id: &UserId, now_secs: u64) -> Option<TurnCredentials> {
    if config.turn_uris.is_empty() {
        return None;
    }
    let ttl = Duration::from_millis(config.turn_user_lifetime_ms);
    let (username, password) = match (&config.turn_shared_secret, &config.turn_username, &config.turn_password) {
        (Some(secret), _, _) => {
            let username = format!("{}:{user_id}", now_secs + ttl.as_secs());
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).ok()?;
            mac.update(username.as_bytes());
            let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            (username, password)
        }
        (None, Some(user), Some(password)) => (user.clone(), password.clone()),
        _ => return None,
    };
    Some(TurnCredentials { username, password, uris: config.turn_uris.clone(), ttl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_credentials_follow_the_turn_rest_scheme() {
        let config = VoipConfig {
            turn_uris: vec!["turn:turn.example.org".into()],
            turn_shared_secret: Some("s3cret".into()),
            ..VoipConfig::default()
        };
        let user = UserId::parse("@alice:test").unwrap();
        let creds = turn_credentials(&config, &user, 1_796_266_797).unwrap();
        assert_eq!(creds.username, "1796270397:@alice:test");
        // openssl dgst -sha1 -hmac s3cret -binary | base64, of the username.
        assert_eq!(creds.password, "TZ9AjoTapYCKFKSzempNFsIWRB4=");
        assert_eq!(creds.ttl, Duration::from_secs(3600));
        assert!(turn_credentials(&VoipConfig::default(), &user, 0).is_none());
    }
}
