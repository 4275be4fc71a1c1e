//! JSON: reading fields of `shmemctl --json` output, failing the test when one is missing.

use serde_json::Value;

/// `value[key]`, failing the test if it is missing.
pub fn json_field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .get(key)
        .unwrap_or_else(|| panic!("JSON has no key {key:?}: {value}"))
}

pub fn json_u64(value: &Value, key: &str) -> u64 {
    json_field(value, key)
        .as_u64()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not an unsigned integer: {value}"))
}

pub fn json_str<'a>(value: &'a Value, key: &str) -> &'a str {
    json_field(value, key)
        .as_str()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not a string: {value}"))
}

pub fn json_array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    json_field(value, key)
        .as_array()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not an array: {value}"))
}

/// The channel named `name` in a `list --json` array.
pub fn find_channel<'a>(channels: &'a [Value], name: &str) -> Option<&'a Value> {
    channels.iter().find(|c| c["name"] == name)
}
