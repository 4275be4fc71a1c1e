//! Channel names: 1-64 characters of `[A-Za-z0-9._-]`.

/// Longest channel name the broker accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a channel name, returning a message that says what is wrong with it.
pub fn validate_channel_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("invalid channel name \"\": a name needs 1 to 64 characters".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "invalid channel name \"{}...\": {} characters, at most {MAX_NAME_LEN} allowed",
            name.chars().take(16).collect::<String>(),
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid channel name {name:?}: character {bad:?} not allowed (use A-Z a-z 0-9 . _ -)"
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
    }
}
