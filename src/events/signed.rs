//! Signed JSON objects (spec: "Signing JSON"): the `signatures` map that device keys,
//! cross-signing keys and events carry. ruma signs and verifies canonical JSON; these helpers
//! edit the map of objects kept as plain JSON, where signatures made by others are merged in.

use serde_json::Value;

/// Adds `signature` by `signer`/`key_id` to `object.signatures`.
pub fn add_signature(object: &mut Value, signer: &str, key_id: &str, signature: &str) {
    let Some(map) = object.as_object_mut() else { return };
    let sigs = map.entry("signatures").or_insert_with(|| Value::Object(Default::default()));
    if !sigs.is_object() {
        *sigs = Value::Object(Default::default());
    }
    let by = sigs.as_object_mut().expect("object").entry(signer).or_insert_with(|| Value::Object(Default::default()));
    if let Some(by) = by.as_object_mut() {
        by.insert(key_id.to_owned(), Value::String(signature.to_owned()));
    }
}
