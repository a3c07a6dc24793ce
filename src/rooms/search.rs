//! Server-side search of room events (`POST /search`, category `room_events`): the messages,
//! room names and topics of the rooms the user is joined to that contain every word of the
//! search term (as a word prefix, case-insensitive, like the user directory), newest first,
//! subject to the request's filter and to history visibility. Encrypted rooms' messages are
//! ciphertext to the server and are never found.
//!
//! No full-text index is kept: the database narrows candidates with `LIKE` on the stored JSON
//! (every word as a substring), newest first in batches, and the words are then matched on the
//! searched fields. A request reads at most [`MAX_SCANNED`] candidate rows; when it stops
//! early it still hands back a `next_batch`, so a client paging on sees everything. `rank`
//! ordering sorts each page by relevance (the share of the text's words the term matched);
//! pages follow one another newest first either way.

use ruma::UserId;

use super::Rooms;
use super::filter::EventFilter;
use super::user_directory::words;
use crate::error::Result;
use crate::storage::rooms::{BindValue, StoredEvent};

/// Candidate rows read per database query.
const BATCH: i64 = 100;
/// Candidate rows one request reads at most.
pub const MAX_SCANNED: usize = 1000;
/// Results per page when the filter gives no limit, and the most a page may hold.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;

/// Which field of which event type a search looks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKey {
    /// `content.body` of `m.room.message`.
    Body,
    /// `content.name` of `m.room.name`.
    Name,
    /// `content.topic` of `m.room.topic`.
    Topic,
}

impl SearchKey {
    /// The key named as in the spec (`content.body`, ...).
    pub fn parse(key: &str) -> Option<Self> {
        match key {
            "content.body" => Some(Self::Body),
            "content.name" => Some(Self::Name),
            "content.topic" => Some(Self::Topic),
            _ => None,
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::Body => "m.room.message",
            Self::Name => "m.room.name",
            Self::Topic => "m.room.topic",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Name => "name",
            Self::Topic => "topic",
        }
    }
}

/// One search request.
pub struct SearchQuery {
    pub term: String,
    pub keys: Vec<SearchKey>,
    pub filter: EventFilter,
    pub order_by_rank: bool,
    /// Continue below this stream position (from `next_batch`).
    pub before: Option<i64>,
}

/// One page of results.
pub struct SearchPage {
    /// Results with their rank, in the order asked for.
    pub results: Vec<(f64, StoredEvent)>,
    /// Where the next page starts, if there may be more.
    pub next_batch: Option<i64>,
    /// How many events may match in all (candidates before word matching: an upper bound).
    pub count: i64,
    /// The words to highlight.
    pub highlights: Vec<String>,
}

/// The share of `text`'s words that the terms match, or None when a term matches no word.
fn relevance(terms: &[String], text: &str) -> Option<f64> {
    let text_words = words(text);
    let mut hits = 0;
    for term in terms {
        let n = text_words.iter().filter(|w| w.starts_with(term.as_str())).count();
        if n == 0 {
            return None;
        }
        hits += n;
    }
    Some(hits as f64 / text_words.len().max(1) as f64)
}

impl Rooms {
    /// Searches the events of the rooms `user` is joined to.
    pub async fn search_events(&self, user: &UserId, q: &SearchQuery) -> Result<SearchPage> {
        let terms = words(&q.term);
        let rooms: Vec<String> = self
            .db
            .rooms_with_membership(user.as_str(), "join")
            .await?
            .into_iter()
            .filter(|r| q.filter.room_allowed(r))
            .collect();
        let limit = q.filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let empty = SearchPage { results: Vec::new(), next_batch: None, count: 0, highlights: terms.clone() };
        if terms.is_empty() || rooms.is_empty() || q.keys.is_empty() {
            return Ok(empty);
        }

        // The part of the WHERE clause shared by the count and the scan; binds from $1.
        let patterns: Vec<String> = terms.iter().map(|t| format!("%{t}%")).collect();
        let mut binds: Vec<BindValue<'_>> = rooms.iter().map(|r| BindValue::Str(r)).collect();
        let mut types: Vec<&str> = q.keys.iter().map(|k| k.event_type()).collect();
        types.dedup();
        let rooms_in = crate::storage::placeholders(1, rooms.len());
        let types_in = crate::storage::placeholders(rooms.len() + 1, types.len());
        binds.extend(types.iter().map(|t| BindValue::Str(t)));
        let mut where_ = format!(
            "WHERE room_id IN ({rooms_in}) AND event_type IN ({types_in}) AND outlier = 0 AND rejected = 0 \
             AND redacted_by IS NULL"
        );
        for p in &patterns {
            binds.push(BindValue::Str(p));
            where_.push_str(&format!(" AND LOWER(json) LIKE ${}", binds.len()));
        }
        let count = self.db.count_events(&where_, &binds).await?;

        let mut results = Vec::new();
        let mut cursor = q.before.unwrap_or(i64::MAX);
        let mut scanned = 0;
        let mut exhausted = false;
        let mut vis = super::read::VisibilityMemo::new(user, Some("join"));
        'scan: while scanned < MAX_SCANNED {
            let mut page_binds = binds.clone();
            page_binds.push(BindValue::Int(cursor));
            let tail = format!(
                "{where_} AND stream_ordering < ${} ORDER BY stream_ordering DESC LIMIT {BATCH}",
                page_binds.len()
            );
            let rows = self.db.query_events(&tail, &page_binds).await?;
            exhausted = (rows.len() as i64) < BATCH;
            for ev in rows {
                scanned += 1;
                cursor = ev.stream;
                let kind = ev.pdu.fields.kind.to_string();
                let Some(key) = q.keys.iter().find(|k| k.event_type() == kind) else { continue };
                let content = ev.pdu.content();
                let Some(text) = content.get(key.field()).and_then(|v| v.as_str()) else { continue };
                let Some(rank) = relevance(&terms, text) else { continue };
                if !q.filter.matches(&ev) || !vis.check(self, &ev).await? {
                    continue;
                }
                results.push((rank, ev));
                if results.len() == limit {
                    exhausted = false;
                    break 'scan;
                }
            }
            if exhausted {
                break;
            }
        }
        if q.order_by_rank {
            results.sort_by(|(a, _), (b, _)| b.total_cmp(a));
        }
        Ok(SearchPage { results, next_batch: (!exhausted).then_some(cursor), count, highlights: terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_must_begin_a_word_of_the_text() {
        let t = |term: &str, text: &str| relevance(&words(term), text);
        assert_eq!(t("lunch", "Lunch at noon?"), Some(1.0 / 3.0));
        assert_eq!(t("lun noo", "Lunch at noon?"), Some(2.0 / 3.0));
        assert_eq!(t("unch", "Lunch at noon?"), None);
        assert_eq!(t("lunch dinner", "Lunch at noon?"), None);
        assert!(t("cat", "cat") > t("cat", "a cat sat"));
    }
}
