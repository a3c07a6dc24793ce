//! Identifiers this server mints: the random parts of room ids, device ids, transaction and
//! session ids and key versions.
//!
//! Several layers mint ids (accounts, the signing key, the room engine, to-device delivery), so
//! the one generator lives at the bottom rather than in any of them.

use rand::Rng;

/// A random string of `len` characters from `[A-Za-z]`.
pub fn random_alpha(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// The server part of a user id (`@a:b:8448` → `b:8448`).
pub fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map(|(_, s)| s).unwrap_or("")
}
