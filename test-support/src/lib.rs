//! What the workspace's test crates (`tests/`, `federation-tests`, `sdk-tests`, `bench`'s smoke
//! test) share: the `myelin` binary they start, built once and only when stale, the
//! percent-encoding of path segments, waiting for a started server's port, the matrix-nio
//! virtualenv's Python, the one HTTP client of the tests ([`http`]) and the identity server of
//! the third-party invite tests ([`identity`]), and the test servers' PostgreSQL databases ([`pg`]).
//! Its dependencies are the test crates' own, with the same features, so depending on it
//! compiles nothing new.

pub mod http;
pub mod identity;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The newest modification time under `dir` (recursively).
fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let t = if path.is_dir() {
                newest_mtime(&path)
            } else {
                entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::SystemTime::UNIX_EPOCH)
            };
            newest = newest.max(t);
        }
    }
    newest
}

/// Whether `bin` was built after every source it depends on was last changed. Under
/// `cargo test --workspace` the binary was just built (with the workspace's unified features);
/// rebuilding it with `cargo build -p myelin` would compile the crate again for nothing.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return false };
    let root = workspace_root();
    ["src", "migrations"].iter().all(|d| newest_mtime(&root.join(d)) <= built)
        && std::fs::metadata(root.join("Cargo.toml")).and_then(|m| m.modified()).is_ok_and(|t| t <= built)
}

/// The debug `myelin` binary, built once per test process unless a fresh one is already there.
pub fn myelin_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("myelin");
        if is_fresh(&bin) {
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "myelin", "--bin", "myelin"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build -p myelin");
        assert!(status.success(), "cargo build -p myelin failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Percent-encodes one path segment (a room id, user id or alias): everything but RFC 3986's
/// unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Python of the matrix-nio virtualenv (with matrix-nio and PyNaCl), which
/// `tests/nio/setup-venv.sh` creates once under a file lock and every test process shares.
pub fn nio_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(workspace_root().join("tests/nio/setup-venv.sh"))
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running tests/nio/setup-venv.sh");
            assert!(out.status.success(), "tests/nio/setup-venv.sh failed ({})", out.status);
            let python = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim());
            assert!(python.exists(), "no python at {}", python.display());
            python
        })
        .clone()
}

/// Waits until something accepts TCP connections on loopback `port` (a server a test started):
/// true once it does, false after `timeout`. `check` runs between attempts, for example to
/// panic with its log when the process that should listen has exited.
pub fn listening(port: u16, timeout: Duration, mut check: impl FnMut()) -> bool {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        check();
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn enc_keeps_only_unreserved_characters() {
        assert_eq!(super::enc("!a:b.c"), "%21a%3Ab.c");
        assert_eq!(super::enc("#x y+z"), "%23x%20y%2Bz");
        assert_eq!(super::enc("@u_-.~"), "%40u_-.~");
    }
}
