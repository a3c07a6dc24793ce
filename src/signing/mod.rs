//! The server's ed25519 signing keys: created on first start, loaded on every start.
//!
//! The key file holds one line per key, `ed25519 <version> <base64 PKCS#8> [<retired_ms>]`; the
//! first line is the current key, later lines are retired keys kept so that their signatures stay
//! verifiable. `<retired_ms>` (milliseconds since the epoch) is when a retired key stopped being
//! used; it is published as the key's `expired_ts`, so that peers accept its signatures on events
//! made before that time and no later. A retired key written without it (files from before the
//! field existed, or hand-edited ones) takes the key file's modification time: a fixed value
//! (the file is not rewritten), and the time of the edit that retired the key when the operator
//! rotated by adding a line. The rotation procedure is in docs/federation-keys.md.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ruma::signatures::Ed25519KeyPair;

use crate::ids::random_alpha;

/// The signing key pair in use and the public halves of retired keys.
pub struct SigningKeys {
    /// The current key.
    pub current: Ed25519KeyPair,
    /// Retired keys.
    pub old: Vec<RetiredKey>,
}

/// The public half of a retired key and when it was retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
    /// When it was retired (ms since the epoch): its `expired_ts`.
    pub expired_ts: i64,
}

impl SigningKeys {
    /// Loads `path`, creating it with a fresh key if it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            let der = Ed25519KeyPair::generate();
            let version = random_alpha(6);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            write_private(path, &format!("ed25519 {version} {}\n", STANDARD.encode(&der[..])))?;
            tracing::info!(key_id = %format!("ed25519:{version}"), path = %path.display(), "generated signing key");
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let modified_ms = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self::parse(&text, modified_ms).with_context(|| format!("{}", path.display()))
    }

    /// Parses the key file's text; `default_retired_ms` is the `expired_ts` of retired keys
    /// written without one.
    pub fn parse(text: &str, default_retired_ms: i64) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (alg, version, der, retired) = match parts[..] {
                [alg, version, der] => (alg, version, der, None),
                [alg, version, der, retired] => (alg, version, der, Some(retired)),
                _ => bail!("line {}: expected `ed25519 <version> <key> [<retired_ms>]`", n + 1),
            };
            if alg != "ed25519" {
                bail!("line {}: unsupported algorithm {alg}", n + 1);
            }
            let retired = match retired {
                None => None,
                Some(r) => Some(r.parse::<i64>().ok().filter(|r| *r >= 0).with_context(|| {
                    format!("line {}: the 4th field (retired at) must be milliseconds since the epoch", n + 1)
                })?),
            };
            let der = STANDARD.decode(der).with_context(|| format!("line {}: bad base64", n + 1))?;
            let pair = Ed25519KeyPair::from_der(&der, version.to_owned())
                .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
            keys.push((pair, retired));
        }
        let mut keys = keys.into_iter();
        let (current, _) = keys.next().context("no key")?;
        let old = keys
            .map(|(k, retired)| RetiredKey {
                key_id: format!("ed25519:{}", k.version()),
                public_key: STANDARD_NO_PAD.encode(k.public_key()),
                expired_ts: retired.unwrap_or(default_retired_ms),
            })
            .collect();
        Ok(Self { current, old })
    }

    /// `ed25519:<version>` of the current key.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.current.version())
    }

    /// Unpadded base64 public key of the current key.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.current.public_key())
    }
}

/// Writes a new key file readable by its owner only (fails if `path` exists).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(version: &str, retired: Option<i64>) -> String {
        let der = Ed25519KeyPair::generate();
        match retired {
            Some(r) => format!("ed25519 {version} {} {r}\n", STANDARD.encode(&der[..])),
            None => format!("ed25519 {version} {}\n", STANDARD.encode(&der[..])),
        }
    }

    #[test]
    fn retired_keys_take_their_recorded_time_or_the_default() {
        let text = format!("{}{}{}", line("new", None), line("mid", Some(1_700_000_000_000)), line("old", None));
        let keys = SigningKeys::parse(&text, 42).expect("parses");
        assert_eq!(keys.key_id(), "ed25519:new");
        let old: Vec<(&str, i64)> = keys.old.iter().map(|k| (k.key_id.as_str(), k.expired_ts)).collect();
        assert_eq!(old, [("ed25519:mid", 1_700_000_000_000), ("ed25519:old", 42)]);
    }

    #[test]
    fn a_bad_retired_time_is_refused() {
        let text = format!("{}ed25519 old {} soon\n", line("new", None), "AAAA");
        let err = SigningKeys::parse(&text, 0).err().expect("refused").to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
