//! Media administration by the server's admins: quarantine (quarantined media is served to
//! nobody, local or remote, download or thumbnail), protection from quarantine, deleting local
//! media (one item, or by age and size) and the cache of remote media, and the media a room's
//! events reference.

use std::collections::BTreeSet;

use ruma::UserId;
use serde_json::Value;

use super::{Media, io_error};
use crate::error::{Error, Result};
pub use crate::storage::media_admin::AdminMedia;
use crate::storage::media_admin::UserMediaStats;

/// The mxc URIs a room's events reference, split by whether this server is their origin.
#[derive(Debug, Default)]
pub struct RoomMedia {
    /// `mxc://<this server>/...`
    pub local: Vec<String>,
    /// Other servers' media.
    pub remote: Vec<String>,
}

/// Splits `mxc://server/id`.
pub fn parse_mxc(uri: &str) -> Option<(&str, &str)> {
    let (server, id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    (!server.is_empty() && !id.is_empty() && !id.contains('/')).then_some((server, id))
}

/// Collects the mxc URIs of an event content: `url`, `info.thumbnail_url` and the encrypted
/// `file.url` / `info.thumbnail_file.url`, as Synapse looks for them.
fn content_mxcs(content: &Value, out: &mut BTreeSet<String>) {
    for uri in [
        &content["url"],
        &content["info"]["thumbnail_url"],
        &content["file"]["url"],
        &content["info"]["thumbnail_file"]["url"],
    ] {
        if let Some(uri) = uri.as_str().filter(|u| parse_mxc(u).is_some()) {
            out.insert(uri.to_owned());
        }
    }
}

impl Media {
    /// 404 for quarantined media: neither its content nor its thumbnails are served.
    pub(super) async fn ensure_not_quarantined(&self, origin: &str, media_id: &str) -> Result<()> {
        if self.db.media_quarantined(origin, media_id).await? {
            return Err(Error::not_found("Media not found"));
        }
        Ok(())
    }

    /// A local user's uploads.
    pub async fn user_media(&self, user: &UserId) -> Result<Vec<AdminMedia>> {
        self.db.admin_user_media(self.server_name.as_str(), user.as_str()).await
    }

    /// Quarantines (`by` the admin) or releases (`None`) `mxc://origin/media_id`.
    pub async fn set_quarantine(&self, origin: &str, media_id: &str, by: Option<&str>) -> Result<()> {
        self.db.set_media_quarantine(origin, media_id, by).await
    }

    /// Protects a local item from quarantine or lifts the protection; 404 if unknown.
    pub async fn set_protected(&self, media_id: &str, protected: bool) -> Result<()> {
        let local = self.server_name.as_str();
        if self.db.get_media(local, media_id).await?.is_none() {
            return Err(Error::not_found("Unknown media"));
        }
        self.db.set_media_protected(local, media_id, protected).await
    }

    /// Uploads per local user in `[from_ts, until_ts)`.
    pub async fn user_statistics(&self, from_ts: i64, until_ts: i64) -> Result<Vec<UserMediaStats>> {
        self.db.user_media_statistics(self.server_name.as_str(), from_ts, until_ts).await
    }

    /// Whether `server` is this server.
    pub fn is_local_server(&self, server: &str) -> bool {
        server == self.server_name.as_str()
    }

    /// Deletes one item (rows and, when nothing else uses it, the file); false if unknown.
    pub async fn delete_item(&self, origin: &str, media_id: &str) -> Result<bool> {
        let Some(unused) = self.db.delete_media_rows(origin, media_id).await? else {
            return Ok(false);
        };
        for sha in unused {
            // Content addressing shares a file between identical uploads: it goes only when no
            // row names it any more.
            match self.store.path_of(&sha) {
                Ok(path) => match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(e)),
                },
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(true)
    }

    /// Deletes local media created before `before_ts` and larger than `size_gt`, except what is
    /// quarantined, protected, or (with `keep_profiles`) a user's or room's avatar.
    pub async fn delete_old_local(&self, before_ts: i64, size_gt: i64, keep_profiles: bool) -> Result<Vec<String>> {
        let local = self.server_name.to_string();
        let keep: BTreeSet<String> = if keep_profiles {
            self.db
                .avatar_urls_in_use()
                .await?
                .iter()
                .filter_map(|u| parse_mxc(u).filter(|(s, _)| *s == local).map(|(_, id)| id.to_owned()))
                .collect()
        } else {
            BTreeSet::new()
        };
        let mut deleted = Vec::new();
        for media_id in self.db.old_local_media(&local, before_ts, size_gt).await? {
            if keep.contains(&media_id) {
                continue;
            }
            if self.delete_item(&local, &media_id).await? {
                deleted.push(media_id);
            }
        }
        Ok(deleted)
    }

    /// Deletes cached media of other servers fetched before `before_ts`; they are fetched
    /// again when asked for. Returns how many.
    pub async fn purge_remote_cache(&self, before_ts: i64) -> Result<usize> {
        let mut deleted = 0;
        for (origin, media_id) in self.db.old_remote_media(self.server_name.as_str(), before_ts).await? {
            if self.delete_item(&origin, &media_id).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Quarantines every upload of a local user that is not protected; returns how many.
    pub async fn quarantine_user(&self, user: &UserId, by: &UserId) -> Result<usize> {
        let local = self.server_name.as_str();
        let mut n = 0;
        for m in self.db.admin_user_media(local, user.as_str()).await? {
            if !m.safe_from_quarantine {
                self.db.set_media_quarantine(local, &m.media_id, Some(by.as_str())).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Quarantines the media a room's events reference (local and remote) that is not
    /// protected; returns how many.
    pub async fn quarantine_room(&self, room_id: &str, by: &UserId) -> Result<usize> {
        let media = self.room_media(room_id).await?;
        let mut n = 0;
        for uri in media.local.iter().chain(&media.remote) {
            let Some((origin, id)) = parse_mxc(uri) else { continue };
            if !self.db.media_protected(origin, id).await? {
                self.db.set_media_quarantine(origin, id, Some(by.as_str())).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The mxc URIs referenced by a room's events.
    pub async fn room_media(&self, room_id: &str) -> Result<RoomMedia> {
        let mut all = BTreeSet::new();
        for json in self.db.room_events_with_media(room_id).await? {
            if let Ok(event) = serde_json::from_str::<Value>(&json) {
                content_mxcs(&event["content"], &mut all);
            }
        }
        let prefix = format!("mxc://{}/", self.server_name);
        let (local, remote) = all.into_iter().partition(|u| u.starts_with(&prefix));
        Ok(RoomMedia { local, remote })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mxcs_where_synapse_looks() {
        let mut out = BTreeSet::new();
        content_mxcs(
            &serde_json::json!({
                "url": "mxc://a/1",
                "info": { "thumbnail_url": "mxc://b/2", "thumbnail_file": { "url": "mxc://a/4" } },
                "file": { "url": "mxc://a/3" },
                "body": "mxc://a/not-this",
            }),
            &mut out,
        );
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["mxc://a/1", "mxc://a/3", "mxc://a/4", "mxc://b/2"]);
        assert_eq!(parse_mxc("mxc://s/id"), Some(("s", "id")));
        assert_eq!(parse_mxc("mxc://s/"), None);
        assert_eq!(parse_mxc("https://s/id"), None);
    }
}
