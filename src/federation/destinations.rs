//! The other servers we send to, as the admin API shows them: their backoff and the rooms
//! whose events they are owed. The senders in `delivery` keep these rows.

use super::Federation;
use crate::error::Result;
use crate::storage::destinations::Destination;

impl Federation {
    /// Every destination we have sent to.
    pub async fn destinations(&self) -> Result<Vec<Destination>> {
        self.db.destinations().await
    }

    /// One destination.
    pub async fn destination(&self, dest: &str) -> Result<Option<Destination>> {
        self.db.destination(dest).await
    }

    /// The rooms shared with the destination, each with our newest event in it at or before
    /// `up_to` (the destination's last successful position).
    pub async fn destination_rooms(&self, dest: &str, up_to: Option<i64>) -> Result<Vec<(String, Option<i64>)>> {
        self.db.destination_rooms(dest, up_to).await
    }

    /// Ends the destination's backoff; false when the destination is unknown. The caller wakes
    /// the senders.
    pub async fn reset_destination(&self, dest: &str) -> Result<bool> {
        self.db.reset_destination(dest).await
    }
}
