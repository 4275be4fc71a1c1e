//! Channel and durable consumer names: 1-64 characters of `[A-Za-z0-9._-]`, not starting with
//! `-` (it would read as an option on every command line) or `.` (hidden, and `.`/`..`).

/// Longest channel name the broker accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a channel name, returning a message that says what is wrong with it.
pub fn validate_channel_name(name: &str) -> Result<(), String> {
    validate_name("channel", name)
}

/// Checks a durable consumer name (same rules as channel names).
pub fn validate_consumer_name(name: &str) -> Result<(), String> {
    validate_name("consumer", name)
}

/// Checks a channel name restored from an older broker's fd store, which may start with `-`
/// or `.` (allowed before): such a channel keeps its name and its data.
pub fn validate_stored_channel_name(name: &str) -> Result<(), String> {
    check_alphabet("channel", name)
}

fn validate_name(what: &str, name: &str) -> Result<(), String> {
    check_alphabet(what, name)?;
    match name.chars().next() {
        Some(first @ ('-' | '.')) => Err(format!(
            "invalid {what} name {name:?}: may not start with {first:?}"
        )),
        _ => Ok(()),
    }
}

fn check_alphabet(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "invalid {what} name \"\": a name needs 1 to 64 characters"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "invalid {what} name \"{}...\": {} characters, at most {MAX_NAME_LEN} allowed",
            name.chars().take(16).collect::<String>(),
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid {what} name {name:?}: character {bad:?} not allowed (use A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(validate_channel_name("a").is_ok());
        assert!(validate_channel_name("Cam-0_front.raw").is_ok());
        assert!(validate_channel_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(validate_channel_name("").unwrap_err().contains("1 to 64"));
        assert!(validate_channel_name(&"x".repeat(65))
            .unwrap_err()
            .contains("65 characters"));
        assert!(validate_channel_name("a b").unwrap_err().contains("' '"));
        assert!(validate_channel_name("a/b").unwrap_err().contains("'/'"));
        assert!(validate_channel_name("é").is_err());
        assert!(validate_channel_name("-x")
            .unwrap_err()
            .contains("start with '-'"));
        assert!(validate_channel_name(".x")
            .unwrap_err()
            .contains("start with '.'"));
        assert!(validate_consumer_name("bad name")
            .unwrap_err()
            .starts_with("invalid consumer name"));
        assert!(validate_stored_channel_name(".legacy").is_ok());
    }
}
