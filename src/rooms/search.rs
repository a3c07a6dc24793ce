//! Server-side search of room events (`POST /search`, category `room_events`): the messages,
//! room names and topics of the rooms the user is joined to that contain every word of the
//! search term (as a word prefix, case-insensitive, like the user directory), newest first,
//! subject to the request's filter and to history visibility. Encrypted rooms' messages are
//! ciphertext to the server and are never found.
//!
//! No full-text index is kept: the database narrows candidates with `LIKE` on the stored JSON
//! (every word as a substring), newest first in batches, and the words are then matched on the
//! searched fields. A scan reads at most [`MAX_SCANNED`] candidate rows; when it stops
//! early it still hands back a `next_batch`, so a client paging on sees everything. `rank`
//! ordering sorts each page by relevance (the share of the text's words the term matched);
//! pages follow one another newest first either way.
//!
//! `count` is the number of matches the user may see among the newest [`MAX_SCANNED`]
//! candidates, counted after word matching, the filter and history visibility: a count of the
//! rows `LIKE` selects would reveal words of messages the user may not see (sent before a
//! `joined`-visibility join, or while away) one prefix at a time. The first page counts in its
//! own scan; a later page scans from the newest again to count.

use ruma::UserId;

use super::Rooms;
use super::filter::EventFilter;
use super::user_directory::words;
use crate::error::Result;
use crate::storage::rooms::StoredEvent;
use crate::storage::timeline::SearchCandidates;

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
    /// How many events the user may see match, among the newest [`MAX_SCANNED`] candidates (so
    /// a lower bound when there are more).
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

        // What the count and the scan read: the LIKE patterns narrow the rows, the words decide.
        let patterns: Vec<String> = terms.iter().map(|t| format!("%{t}%")).collect();
        let mut types: Vec<&str> = q.keys.iter().map(|k| k.event_type()).collect();
        types.dedup();
        let candidates = SearchCandidates { rooms: &rooms, types: &types, patterns: &patterns };
        let scan = |below: i64, keep: usize, stop_when_kept: bool| Scan {
            rooms: self,
            user,
            q,
            terms: &terms,
            candidates,
            below,
            keep,
            stop_when_kept,
        };
        // The count is of the events the user may see, never of what the database holds: a
        // count of rows before history visibility would let a user test words of messages sent
        // before they joined (or while they were away) one prefix at a time. The first page's
        // scan counts as it goes; a later page counts from the newest again.
        let (found, count) = match q.before {
            None => {
                let found = scan(i64::MAX, limit, false).run().await?;
                let count = found.matched;
                (found, count)
            }
            Some(before) => {
                let count = scan(i64::MAX, 0, false).run().await?.matched;
                (scan(before, limit, true).run().await?, count)
            }
        };
        let next_batch = if found.matched > found.kept.len() {
            found.kept.last().map(|(_, ev)| ev.stream)
        } else {
            (!found.exhausted).then_some(found.cursor)
        };
        let mut results = found.kept;
        if q.order_by_rank {
            results.sort_by(|(a, _), (b, _)| b.total_cmp(a));
        }
        Ok(SearchPage { results, next_batch, count: count as i64, highlights: terms })
    }
}

/// One scan of search candidates, newest first from below a stream position, reading at most
/// [`MAX_SCANNED`] rows.
struct Scan<'a> {
    rooms: &'a Rooms,
    user: &'a UserId,
    q: &'a SearchQuery,
    terms: &'a [String],
    candidates: SearchCandidates<'a>,
    below: i64,
    /// Matches to keep (the page).
    keep: usize,
    /// Stop once `keep` matches are kept (a later page); otherwise read on to count.
    stop_when_kept: bool,
}

/// What a [`Scan`] found.
struct Found {
    /// The first `keep` matches, newest first, with their rank.
    kept: Vec<(f64, StoredEvent)>,
    /// How many matches the user may see it read in all.
    matched: usize,
    /// Whether the candidates ran out (nothing below `cursor`).
    exhausted: bool,
    /// The position of the last row read, or of the last match kept when it stopped there.
    cursor: i64,
}

impl Scan<'_> {
    async fn run(self) -> Result<Found> {
        let mut found = Found { kept: Vec::new(), matched: 0, exhausted: false, cursor: self.below };
        let mut scanned = 0;
        let mut vis = super::read::VisibilityMemo::new(self.user, Some("join"));
        'scan: while scanned < MAX_SCANNED {
            let rows = self.rooms.db.search_candidates(self.candidates, found.cursor, BATCH).await?;
            found.exhausted = (rows.len() as i64) < BATCH;
            for ev in rows {
                scanned += 1;
                found.cursor = ev.stream;
                let kind = ev.pdu.fields.kind.to_string();
                let Some(key) = self.q.keys.iter().find(|k| k.event_type() == kind) else { continue };
                let content = ev.pdu.content();
                let Some(text) = content.get(key.field()).and_then(|v| v.as_str()) else { continue };
                let Some(rank) = relevance(self.terms, text) else { continue };
                if !self.q.filter.matches(&ev) || !vis.check(self.rooms, &ev).await? {
                    continue;
                }
                found.matched += 1;
                if found.kept.len() < self.keep {
                    found.kept.push((rank, ev));
                    if self.stop_when_kept && found.kept.len() == self.keep {
                        found.exhausted = false;
                        break 'scan;
                    }
                }
            }
            if found.exhausted {
                break;
            }
        }
        Ok(found)
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
