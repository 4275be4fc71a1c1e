//! Human-readable byte sizes: `4096`, `64KiB`, `16MiB`, `1GiB`. Units are binary only
//! (`K`/`KiB` = 1024, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, any case); SI units (`kB`, `MB`, `GB`,
//! `TB`) are refused rather than read as either power, and so are decimals (`1.5GiB`).

/// Parses a size such as `64KiB`, `16MiB`, `1G` or `4096` (binary units, whole numbers).
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
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid size {text:?}: decimals are not allowed; use a whole number of a smaller unit (1536MiB, not 1.5GiB)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        si @ ("kb" | "mb" | "gb" | "tb") => {
            return Err(format!(
                "invalid size {text:?}: SI unit {si:?} (powers of 1000) not accepted; use binary units: KiB, MiB, GiB, TiB"
            ))
        }
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a byte count in the largest binary unit it reaches, rounded to one decimal that is
/// left out when it is 0: `1MiB`, `100MiB` (also for a byte short of it), `1.5GiB`, `4.8MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            // In u128, so that no byte count overflows; the result fits easily.
            let tenths = (u128::from(bytes) * 10 + u128::from(scale / 2)) / u128::from(scale);
            return match tenths % 10 {
                0 => format!("{}{unit}", tenths / 10),
                frac => format!("{}.{frac}{unit}", tenths / 10),
            };
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
        assert_eq!(parse_size(" 2 mib "), Ok(2 << 20));
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
        assert!(parse_size("16MB").unwrap_err().contains("SI unit"));
        assert!(parse_size("1.5GiB").unwrap_err().contains("decimals"));
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(100), "100B");
        assert_eq!(format_size(5_000_000), "4.8MiB");
        assert_eq!(format_size((100 << 20) - 1), "100MiB");
        assert_eq!(format_size(u64::MAX), "16777216TiB");
        assert_eq!(parse_size(&format_size(64 << 10)), Ok(64 << 10));
    }
}
