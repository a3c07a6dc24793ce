//! The server's ed25519 signing keys: created on first start, loaded on every start.
//!
//! The key file holds one line per key, `ed25519 <version> <base64 PKCS#8>`; the first line is
//! the current key, later lines are old keys kept so that their signatures stay verifiable.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ruma::signatures::Ed25519KeyPair;

use crate::accounts::random_alpha;

/// The signing key pair in use and the public halves of retired keys.
pub struct SigningKeys {
    /// The current key.
    pub current: Ed25519KeyPair,
    /// Retired keys: `(key id, unpadded base64 public key)`.
    pub old: Vec<(String, String)>,
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
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [alg, version, der] = parts[..] else {
                bail!("{}: line {}: expected `ed25519 <version> <key>`", path.display(), n + 1);
            };
            if alg != "ed25519" {
                bail!("{}: line {}: unsupported algorithm {alg}", path.display(), n + 1);
            }
            let der =
                STANDARD.decode(der).with_context(|| format!("{}: line {}: bad base64", path.display(), n + 1))?;
            let pair = Ed25519KeyPair::from_der(&der, version.to_owned())
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), n + 1))?;
            keys.push(pair);
        }
        let mut keys = keys.into_iter();
        let current = keys.next().with_context(|| format!("{}: no key", path.display()))?;
        let old = keys.map(|k| (format!("ed25519:{}", k.version()), STANDARD_NO_PAD.encode(k.public_key()))).collect();
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

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
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
