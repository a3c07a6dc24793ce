//! Server ACLs (`m.room.server_acl`): whether a server may take part in a room.

use ruma::{RoomId, ServerName};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::rooms::Rooms;

impl Rooms {
    /// Whether `server` may take part in the room under its `m.room.server_acl`.
    pub async fn server_allowed(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        let Some(acl) = self.current_state_event(room_id, "m.room.server_acl", "").await? else { return Ok(true) };
        Ok(acl_allows(&acl.content(), server.as_str()))
    }

    /// Fails with 403 when the ACL denies `server`.
    pub async fn require_server_allowed(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        if self.server_allowed(room_id, server).await? {
            Ok(())
        } else {
            Err(Error::forbidden(format!("Server {server} is denied by the room's server ACL")))
        }
    }
}

/// `m.room.server_acl` evaluation (spec: "Server Access Control Lists").
pub fn acl_allows(content: &Value, server: &str) -> bool {
    let host = match server.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => server,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let allow_ip = content["allow_ip_literals"].as_bool().unwrap_or(true);
    if !allow_ip && host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let list = |k: &str| -> Vec<String> {
        content[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    };
    if list("deny").iter().any(|g| glob(g, host)) {
        return false;
    }
    list("allow").iter().any(|g| glob(g, host))
}

fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
