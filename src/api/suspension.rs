//! What locked and suspended accounts may still do (spec v1.18, "Account locking" and
//! "Account suspension"; MSC3823 for the list), decided once for every `Ruma<T>` endpoint by
//! the extractor, so that no handler can forget it.
//!
//! A **locked** account's access tokens are refused with 401 `M_USER_LOCKED` (`soft_logout:
//! true`) everywhere except `/logout` and `/logout/all`; it cannot log in either.
//!
//! A **suspended** account keeps a read-only view: it syncs, reads history, leaves rooms and
//! declines invites, redacts its own events, manages its devices, keys, key backup, account
//! data and password, reports content. What changes rooms or what others see of it is refused
//! with 403 `M_USER_SUSPENDED`, as Synapse does: sending events (a redaction of one's own
//! event excepted), state events, creating, upgrading, joining, knocking on rooms, inviting,
//! kicking, banning and unbanning, aliases and directory visibility, profile changes, and
//! media uploads (checked by the upload handlers, which do not use `Ruma<T>`).

use std::any::{Any, TypeId};

use ruma::api::client::alias::{create_alias, delete_alias};
use ruma::api::client::directory::set_room_visibility;
use ruma::api::client::knock::knock_room;
use ruma::api::client::media::create_mxc_uri;
use ruma::api::client::membership::{
    ban_user, invite_user, join_room_by_id, join_room_by_id_or_alias, kick_user, unban_user,
};
use ruma::api::client::message::send_message_event;
use ruma::api::client::profile::{delete_profile_field, set_profile_field};
use ruma::api::client::room::{create_room, upgrade_room};
use ruma::api::client::session::{logout, logout_all};
use ruma::api::client::state::send_state_event;
use ruma::{EventId, RoomId};

use super::AppState;
use crate::accounts::Session;
use crate::error::{Error, Result};

/// Whether a locked account may call the endpoint of request type `T`: only to log out.
pub fn allowed_while_locked<T: 'static>() -> bool {
    let t = TypeId::of::<T>();
    t == TypeId::of::<logout::v3::Request>() || t == TypeId::of::<logout_all::v3::Request>()
}

/// Whether a suspended account may make this request.
pub fn allowed_while_suspended<T: 'static>(request: &T) -> bool {
    let request: &dyn Any = request;
    if let Some(send) = request.downcast_ref::<send_message_event::v3::Request>() {
        // A redaction sent through `/send` (v1.18): whose event it is, is checked by the handler.
        return send.event_type.to_string() == "m.room.redaction";
    }
    let refused = [
        TypeId::of::<send_state_event::v3::Request>(),
        TypeId::of::<create_room::v3::Request>(),
        TypeId::of::<upgrade_room::v3::Request>(),
        TypeId::of::<join_room_by_id::v3::Request>(),
        TypeId::of::<join_room_by_id_or_alias::v3::Request>(),
        TypeId::of::<knock_room::v3::Request>(),
        TypeId::of::<invite_user::v3::Request>(),
        TypeId::of::<kick_user::v3::Request>(),
        TypeId::of::<ban_user::v3::Request>(),
        TypeId::of::<unban_user::v3::Request>(),
        TypeId::of::<create_alias::v3::Request>(),
        TypeId::of::<delete_alias::v3::Request>(),
        TypeId::of::<set_room_visibility::v3::Request>(),
        TypeId::of::<set_profile_field::v3::Request>(),
        TypeId::of::<delete_profile_field::v3::Request>(),
        TypeId::of::<create_mxc_uri::v1::Request>(),
    ];
    !refused.contains(&request.type_id())
}

/// A suspended account may redact only its own events (Synapse's rule): 403
/// `M_USER_SUSPENDED` for anyone else's, and for events it cannot see.
pub async fn check_redaction(state: &AppState, session: &Session, room_id: &RoomId, target: &EventId) -> Result<()> {
    if !session.suspended {
        return Ok(());
    }
    match state.rooms.event_for(room_id, &session.user_id, target.as_str()).await {
        Ok(event) if event.pdu.fields.sender == session.user_id => Ok(()),
        Ok(_) | Err(_) => Err(Error::user_suspended()),
    }
}
