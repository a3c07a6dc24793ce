//! Sync tokens: one position per stream, `s<events>_<typing>_<receipts>_<account data>_<to-device>_<presence>_<device lists>`.
//!
//! The events position comes first and is prefixed with `s` because `/messages` and
//! `/members?at=` accept sync tokens by reading that leading number
//! ([`stream_of_token`]). Positions missing at the end of a token (tokens
//! written before a stream existed) read as 0, which means "send everything of that stream".

use crate::error::{Error, Result};

/// A position in every sync stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncToken {
    /// Room events (`events` counter).
    pub events: i64,
    /// Typing notifications (in-memory serial of this process, see `sync::typing`).
    pub typing: i64,
    /// Receipts.
    pub receipts: i64,
    /// Account data.
    pub account_data: i64,
    /// To-device messages.
    pub to_device: i64,
    /// Presence.
    pub presence: i64,
    /// Device list changes (end-to-end encryption; see `sync::e2ee`).
    pub device_lists: i64,
}

/// The event stream position (a `/messages` pagination token also starts so) at the start of a sync token (`s<stream>...`).
pub fn stream_of_token(token: &str) -> Option<i64> {
    let rest = token.strip_prefix('s')?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl SyncToken {
    /// Every position at least as far as in `other` (a client's token never moves backwards).
    pub fn at_least(self, other: SyncToken) -> Self {
        SyncToken {
            events: self.events.max(other.events),
            typing: self.typing.max(other.typing),
            receipts: self.receipts.max(other.receipts),
            account_data: self.account_data.max(other.account_data),
            to_device: self.to_device.max(other.to_device),
            presence: self.presence.max(other.presence),
            device_lists: self.device_lists.max(other.device_lists),
        }
    }

    /// Parses a token; any malformed part is `M_INVALID_PARAM`.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param("Invalid sync token");
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = [0i64; 7];
        for (i, part) in rest.split('_').enumerate() {
            let slot = parts.get_mut(i).ok_or_else(bad)?;
            *slot = part.parse().map_err(|_| bad())?;
            if *slot < 0 {
                return Err(bad());
            }
        }
        let [events, typing, receipts, account_data, to_device, presence, device_lists] = parts;
        Ok(Self { events, typing, receipts, account_data, to_device, presence, device_lists })
    }

    /// A `since` token: None for a token of Synapse's shape (more positions than ours, or its
    /// multi-writer `m…` form), held by a client of a server imported with `myelin
    /// import-synapse`. Its positions mean nothing here, so that client is answered as at its
    /// first sync (every room afresh, timelines limited) instead of an error it would retry
    /// forever. Any other token must parse.
    pub fn parse_since(token: &str) -> Result<Option<Self>> {
        match Self::parse(token) {
            Ok(t) => Ok(Some(t)),
            Err(_) if is_synapse_token(token) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The token text.
    pub fn to_token(&self) -> String {
        format!(
            "s{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.typing,
            self.receipts,
            self.account_data,
            self.to_device,
            self.presence,
            self.device_lists
        )
    }
}

/// `s1_2_…` with more than seven positions, or `m…~…` (Synapse's stream tokens).
fn is_synapse_token(token: &str) -> bool {
    let digits_or_sep = |c: char| c.is_ascii_digit() || "_~.-".contains(c);
    match token.as_bytes().first() {
        Some(b's') => token.split('_').count() > 7 && token[1..].chars().all(digits_or_sep),
        Some(b'm') => token.contains('~') && token[1..].chars().all(digits_or_sep),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = SyncToken {
            events: 120,
            typing: 4,
            receipts: 7,
            account_data: 2,
            to_device: 9,
            presence: 3,
            device_lists: 0,
        };
        assert_eq!(t.to_token(), "s120_4_7_2_9_3_0");
        assert_eq!(SyncToken::parse(&t.to_token()).unwrap(), t);
        assert_eq!(stream_of_token(&t.to_token()), Some(120));
    }

    #[test]
    fn short_and_bad_tokens() {
        assert_eq!(SyncToken::parse("s5").unwrap(), SyncToken { events: 5, ..Default::default() });
        for bad in ["", "t5_3", "s", "sx", "s1_2_3_4_5_6_7_8", "s-1", "s1__2"] {
            assert!(SyncToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn synapse_tokens_start_afresh() {
        for synapse in ["s72594_4483_1934_0_0_0_0_0_0_0_0", "m1~2.3_4_5_6_7_8_9_10_11_12"] {
            assert_eq!(SyncToken::parse_since(synapse).unwrap(), None, "{synapse}");
        }
        assert!(SyncToken::parse_since("s1_2_3_4_5_6_7").unwrap().is_some());
        for bad in ["sx_1_2_3_4_5_6_7_8", "t1_2_3_4_5_6_7_8_9", "sx"] {
            assert!(SyncToken::parse_since(bad).is_err(), "{bad}");
        }
    }
}
