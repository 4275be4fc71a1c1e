//! Human-readable byte sizes: `4096`, `64KiB`, `16MiB`, `1GiB` (and `k`/`M`/`G` as binary units).

/// Parses a size such as `64KiB`, `16MiB`, `1G` or `4096`. Units are binary (1 KiB = 1024 bytes);
/// `KB`/`MB`/`GB` are accepted as the same binary units since that is what people mean for
/// memory sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number with an optional unit, like 64KiB or 16MiB"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a byte count in the largest binary unit it reaches: whole when exact (`1MiB`),
/// else with one decimal (`1.5GiB`, `4.8MiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            if bytes % scale == 0 {
                return format!("{}{unit}", bytes / scale);
            }
            return format!("{:.1}{unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size(" 2 mb "), Ok(2 << 20));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("20000000TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(100), "100B");
        assert_eq!(format_size(5_000_000), "4.8MiB");
        assert_eq!(parse_size(&format_size(64 << 10)), Ok(64 << 10));
    }
}
