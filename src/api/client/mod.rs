//! Client-server API handlers, one file per area of the spec.

mod account;
mod account_data;
mod appservice;
mod backup;
mod device;
mod directory;
mod discovery;
mod keys;
mod legacy;
pub(crate) mod media;
pub mod message;
mod presence;
mod profile;
mod push;
mod receipt;
mod relations;
mod report;
mod room;
mod search;
mod session;
mod sync;
mod threepid;
mod to_device;
mod voip;

use axum::Router;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
};

use super::{AppState, RouterExt};

/// Adds every client API route.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = router
        .ruma(discovery::versions)
        .ruma(discovery::capabilities)
        .ruma(discovery::well_known_client)
        .ruma(discovery::rtc_transports)
        .ruma(appservice::ping)
        .ruma(appservice::protocols)
        .ruma(appservice::protocol)
        .ruma(appservice::location_for_protocol)
        .ruma(appservice::user_for_protocol)
        .ruma(appservice::location_for_alias)
        .ruma(appservice::user_for_user_id)
        .ruma(appservice::set_network_visibility)
        .ruma(session::login_types)
        .ruma(session::login)
        .ruma(session::logout)
        .ruma(session::logout_all)
        .ruma(session::refresh)
        .ruma(session::get_login_token)
        .ruma(voip::turn_server)
        .ruma(account::register)
        .ruma(account::available)
        .ruma(account::registration_token_validity)
        .ruma(account::whoami)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        .ruma(account::threepids)
        .ruma(threepid::register_token)
        .ruma(threepid::password_token)
        .ruma(threepid::add_token)
        .ruma(threepid::register_email_token)
        .ruma(threepid::password_email_token)
        .ruma(threepid::add_email_token)
        .ruma(threepid::add)
        .ruma(threepid::delete)
        .ruma(threepid::bind)
        .ruma(threepid::unbind)
        .ruma(account::openid_token)
        .ruma(device::list)
        .ruma(device::get)
        .ruma(device::update)
        .ruma(device::delete)
        .ruma(device::delete_many)
        .ruma(room::create)
        .ruma(room::join_by_id_or_alias)
        .ruma(room::join_by_id)
        .ruma(room::leave)
        .ruma(room::forget)
        .ruma(room::invite)
        .ruma(room::kick)
        .ruma(room::ban)
        .ruma(room::unban)
        .ruma(room::knock)
        .ruma(room::joined)
        .ruma(room::members)
        .ruma(room::joined_members_list)
        .ruma(message::send)
        .ruma(message::redact)
        .ruma(message::send_state)
        .ruma(message::get_state)
        .ruma(message::get_all_state)
        .ruma(message::get_event)
        .ruma(message::messages)
        .ruma(message::context)
        .ruma(directory::put_alias)
        .ruma(directory::get_alias_handler)
        .ruma(directory::delete_alias_handler)
        .ruma(directory::room_aliases)
        .ruma(directory::get_visibility)
        .ruma(directory::set_visibility)
        .ruma(directory::public_rooms)
        .ruma(directory::search_users_handler)
        .ruma(directory::mutual_rooms)
        .ruma(search::search)
        .ruma(room::summary)
        .ruma(report::event)
        .ruma(report::room)
        .ruma(report::user)
        .ruma(profile::delete_field)
        .ruma(profile::get)
        .ruma(profile::get_field)
        .ruma(profile::set_field)
        .ruma(push::all)
        .ruma(push::global)
        .ruma(push::get)
        .ruma(push::set)
        .ruma(push::pushers)
        .ruma(push::set_pusher)
        .ruma(push::delete)
        .ruma(push::get_enabled)
        .ruma(push::set_enabled)
        .ruma(push::get_actions)
        .ruma(push::set_actions)
        .ruma(push::notifications)
        .ruma(relations::relations::<get_relating_events::v1::Request>)
        .ruma(relations::relations::<get_relating_events_with_rel_type::v1::Request>)
        .ruma(relations::relations::<get_relating_events_with_rel_type_and_event_type::v1::Request>)
        .ruma(relations::threads)
        .ruma(relations::timestamp_to_event)
        .ruma(relations::upgrade)
        .ruma(relations::hierarchy)
        .ruma(media::create)
        .ruma(media::config)
        .ruma(media::config_legacy)
        .ruma(media::download)
        .ruma(media::download_as)
        .ruma(media::thumbnail)
        .ruma(media::preview_url)
        .ruma(media::preview_url_legacy)
        .ruma(keys::upload)
        .ruma(keys::query)
        .ruma(keys::claim)
        .ruma(keys::changes)
        .ruma(keys::device_signing_upload)
        .ruma(keys::signatures_upload)
        .ruma(backup::create_version)
        .ruma(backup::latest_version)
        .ruma(backup::get_version)
        .ruma(backup::update_version)
        .ruma(backup::delete_version)
        .ruma(backup::put_keys)
        .ruma(backup::put_room_keys)
        .ruma(backup::put_session_key)
        .ruma(backup::get_keys)
        .ruma(backup::get_room_keys)
        .ruma(backup::get_session_key)
        .ruma(backup::delete_keys)
        .ruma(backup::delete_room_keys)
        .ruma(backup::delete_session_key)
        .ruma(sync::sync)
        .ruma(legacy::initial_sync)
        .ruma(legacy::events)
        .ruma(legacy::event)
        .ruma(legacy::room_initial_sync)
        .ruma(sync::sliding_sync)
        .ruma(sync::create)
        .ruma(sync::get)
        .ruma(receipt::typing)
        .ruma(receipt::receipt)
        .ruma(receipt::read_markers)
        .ruma(account_data::set_global)
        .ruma(account_data::get_global)
        .ruma(account_data::set_room)
        .ruma(account_data::get_room)
        .ruma(account_data::tags)
        .ruma(account_data::put_tag)
        .ruma(account_data::delete_tag)
        .ruma(presence::set)
        .ruma(presence::get)
        .ruma(to_device::send);
    let router = media::upload_routes(router);
    let router = media::frozen_routes(router);
    let router = directory::extra_routes(router);
    let router = threepid::extra_routes(router);
    discovery::extra_routes(router)
}
