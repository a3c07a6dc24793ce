//! Shadow bans (Synapse's, set with `/_synapse/admin/v1/users/{userId}/shadow_ban`): a
//! shadow-banned local user is answered as if what they did worked, but their events other
//! than their own membership, their invites (also those of `createRoom`) and their typing
//! notifications are dropped, so that a spammer does not learn that nobody sees them. The
//! checks of every path are here; the paths call them.

use ruma::{OwnedEventId, UserId};

use super::Rooms;
use super::build::NewEvent;
use crate::error::Result;

impl Rooms {
    /// Whether `user` is a shadow-banned local user.
    pub async fn is_shadow_banned(&self, user: &UserId) -> Result<bool> {
        if user.server_name() != self.server_name {
            return Ok(false);
        }
        self.db.is_shadow_banned(user.as_str()).await
    }

    /// The made-up event id a shadow-banned sender gets for `ev` if it is to be dropped:
    /// any event but a member event, and invites. `None`: send it.
    pub(crate) async fn shadow_banned_send(&self, sender: &UserId, ev: &NewEvent) -> Result<Option<OwnedEventId>> {
        let dropped = ev.kind != "m.room.member" || ev.content["membership"] == "invite";
        if !dropped || !self.is_shadow_banned(sender).await? {
            return Ok(None);
        }
        // Shaped like a real (room version 4+) event id, so that clients cannot tell.
        let id = format!("${}", crate::ids::random_alpha(43));
        Ok(Some(OwnedEventId::try_from(id).expect("a valid event id")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_made_up_event_id_parses() {
        let id = format!("${}", crate::ids::random_alpha(43));
        assert!(ruma::EventId::parse(&id).is_ok());
    }
}
