//! Room versions this server creates and processes.

use ruma::RoomVersionId;
use ruma::room_version_rules::RoomVersionRules;

/// Room versions offered in `/capabilities` and accepted by `/createRoom` and federation.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["6", "7", "8", "9", "10", "11", "12"];

/// Parses and checks a room version; `M_UNSUPPORTED_ROOM_VERSION` if we do not support it.
pub fn parse(version: &str) -> crate::error::Result<RoomVersionId> {
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(crate::error::Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        ));
    }
    RoomVersionId::try_from(version).map_err(|e| crate::error::Error::bad_json(e.to_string()))
}

/// The rules for a supported version.
pub fn rules(version: &RoomVersionId) -> crate::error::Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        crate::error::Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            "Unsupported room version",
        )
    })
}
