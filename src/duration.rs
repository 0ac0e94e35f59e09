//! Durations as users write them in specs and annotations: `90s`, `15m`, `1h30m`,
//! `7d`, `2w`. One parser for every duration field (rotation, TTLs, retention).

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a duration (expected e.g. 90s, 15m, 1h30m, 7d, 2w)")]
pub struct ParseDurationError {
    pub input: String,
}

/// Parses a sequence of `<integer><unit>` with units ms, s, m, h, d, w.
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError {
        input: input.to_string(),
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(millis_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(Duration::from_millis(total))
}

/// Like [`parse`], but zero is an error too.
pub fn parse_positive(input: &str) -> Result<Duration, ParseDurationError> {
    match parse(input)? {
        d if d.is_zero() => Err(ParseDurationError {
            input: input.to_string(),
        }),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sequences() {
        let table = [
            ("90s", 90_000),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            ("250ms", 250),
            ("0s", 0),
        ];
        for (input, ms) in table {
            assert_eq!(parse(input), Ok(Duration::from_millis(ms)), "{input}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for input in [
            "",
            "10",
            "h",
            "1y",
            "-5m",
            "1.5h",
            "5 m",
            "99999999999999999999s",
        ] {
            assert!(parse(input).is_err(), "{input} should not parse");
        }
        assert!(parse_positive("0m").is_err());
    }
}
