//! TCP_NODELAY for the database connections.
//!
//! sqlx 0.9.0 stopped disabling Nagle's algorithm on its TCP sockets (sqlx issue #4335; the fix
//! is merged upstream but not released). A statement whose messages leave in two writes then
//! waits for the server's delayed ACK, 40 ms on Linux: the event writer's multi-row inserts of
//! 35 events took 43 ms each against 0.5 ms for 15, and PostgreSQL send throughput was capped
//! near 700 messages/s with the CPU idle. sqlx gives no access to its sockets, so after each new
//! connection this finds the process's TCP sockets whose peer is the database server and sets
//! the option on them (setting it again on older ones changes nothing).

use std::net::SocketAddr;

/// The addresses the database URL's host resolves to, or none for a Unix socket or a URL
/// without a host (nothing to do there).
pub async fn database_peers(url: &str) -> Vec<SocketAddr> {
    let Ok(parsed) = url::Url::parse(url) else { return Vec::new() };
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else { return Vec::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = parsed.port().unwrap_or(5432);
    match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Sets TCP_NODELAY on every socket of this process connected to one of `peers`.
#[cfg(target_os = "linux")]
pub fn set_on_connections_to(peers: &[SocketAddr]) {
    use std::os::fd::{BorrowedFd, RawFd};
    if peers.is_empty() {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        // Only sockets: the link of a socket's fd reads `socket:[inode]`.
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the fd is open (just listed) and only borrowed for two socket-option calls; if
        // another thread closed it and the number was reused meanwhile, the peer check below
        // runs on the new socket, and setting TCP_NODELAY on a socket to the database is harmless.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let to_database = sock.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| peers.contains(&a));
        if to_database && let Err(e) = sock.set_tcp_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on a database connection");
        }
    }
}

/// Elsewhere the connections keep the system's default.
#[cfg(not(target_os = "linux"))]
pub fn set_on_connections_to(_peers: &[SocketAddr]) {}
