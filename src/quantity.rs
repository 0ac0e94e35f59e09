//! Kubernetes resource quantities as exact integers of milli-units.
//!
//! Enough of `resource.Quantity` for what Palisade needs: validating user input,
//! comparing a desired quantity with the server's canonical form, and splitting a
//! tenant-wide budget over namespaces. Pure; no client.

use std::fmt;

/// A quantity in thousandths of the base unit (1 CPU = 1000, 1Ki = 1_024_000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i128);

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a Kubernetes quantity (expected e.g. 500m, 2, 1.5Gi, 10G)")]
pub struct ParseQuantityError {
    pub input: String,
}

const MAX_ABS: i128 = (i64::MAX as i128) * 1000;

impl Milli {
    /// Parses `<sign><number><suffix>` with binary (Ki..Ei), decimal (m, k..E)
    /// and exponent (e3, E-2) suffixes. Fractions below a milli-unit round up, as
    /// the apiserver does.
    pub fn parse(input: &str) -> Result<Self, ParseQuantityError> {
        let err = || ParseQuantityError {
            input: input.to_string(),
        };
        let s = input.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        // value = digits * 10^(-frac_len) * multiplier; keep everything as a
        // rational num/den in i128 so nothing is lost before the final rounding.
        let digits: String = format!("{int_part}{frac_part}");
        if digits.len() > 30 {
            return Err(err());
        }
        let mantissa: i128 = digits.parse().map_err(|_| err())?;
        let mut num = mantissa * 1000; // milli-units
        let mut den: i128 = 10i128.pow(frac_part.len() as u32);
        let (mul, div): (i128, i128) = match suffix {
            "" => (1, 1),
            "m" => (1, 1000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            exp if exp.starts_with(['e', 'E']) => {
                let e: i32 = exp[1..].parse().map_err(|_| err())?;
                if !(-18..=18).contains(&e) {
                    return Err(err());
                }
                if e >= 0 {
                    (10i128.pow(e as u32), 1)
                } else {
                    (1, 10i128.pow((-e) as u32))
                }
            }
            _ => return Err(err()),
        };
        num = num.checked_mul(mul).ok_or_else(err)?;
        den = den.checked_mul(div).ok_or_else(err)?;
        let mut value = num / den + i128::from(num % den != 0);
        if value > MAX_ABS {
            return Err(err());
        }
        if negative {
            value = -value;
        }
        Ok(Milli(value))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl fmt::Display for Milli {
    /// A canonical decimal form: plain integers when whole, `<n>m` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// True when both strings are quantities of the same value ("1" and "1000m",
/// "1Gi" and "1073741824").
pub fn same_quantity(a: &str, b: &str) -> bool {
    match (Milli::parse(a), Milli::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_suffix_families() {
        let table = [
            ("1", 1000),
            ("500m", 500),
            ("1.5", 1500),
            ("2k", 2_000_000),
            ("1Ki", 1_024_000),
            ("1Gi", 1_073_741_824_000),
            ("10G", 10_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("0.1m", 1), // rounds up like the apiserver
            ("-2", -2000),
            ("+3", 3000),
            (".5", 500),
        ];
        for (input, milli) in table {
            assert_eq!(Milli::parse(input), Ok(Milli(milli)), "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in ["", "abc", "1.2.3", "1Q", "Gi", "1e99", "-", "1 Gi"] {
            assert!(Milli::parse(input).is_err(), "{input} should not parse");
        }
    }

    #[test]
    fn compares_across_forms() {
        assert!(same_quantity("1", "1000m"));
        assert!(same_quantity("1Gi", "1073741824"));
        assert!(!same_quantity("1G", "1Gi"));
        assert!(!same_quantity("x", "x"));
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(Milli(1500).to_string(), "1500m");
        assert_eq!(Milli(2000).to_string(), "2");
    }
}
