//! Durations as people write them in specs (`30s`, `5m`, `1h30m`, `250ms`), parsed at validation time.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused; the caller adds file, line and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// The help text shown with every duration error.
pub const DURATION_HELP: &str =
    "write a number followed by a unit (ms, s, m, h, d), optionally chained: `30s`, `5m`, `1h30m`";

/// Parses `1h30m`, `90s`, `250ms`, `2d`. A bare number is refused: a spec that says `interval: 60`
/// is ambiguous between seconds and minutes, so the author must say which.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError("empty duration".into()));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError(format!(
                "expected a number in `{text}`, found `{rest}`"
            )));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = number
            .parse()
            .map_err(|_| DurationError(format!("number `{number}` is too large")))?;
        let unit_millis: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(DurationError(format!(
                    "`{text}` has no unit after `{number}`"
                )));
            }
            other => {
                return Err(DurationError(format!("unknown unit `{other}` in `{text}`")));
            }
        };
        let millis = n
            .checked_mul(unit_millis)
            .ok_or_else(|| DurationError(format!("`{text}` is too long")))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| DurationError(format!("`{text}` is too long")))?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way specs write it: `1h30m`, `45s`, `250ms`, `0s`.
pub fn display(d: Duration) -> impl fmt::Display {
    struct Show(Duration);
    impl fmt::Display for Show {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut millis = self.0.as_millis();
            if millis == 0 {
                return f.write_str("0s");
            }
            for (unit, size) in [
                ("d", 86_400_000),
                ("h", 3_600_000),
                ("m", 60_000),
                ("s", 1_000),
            ] {
                if millis >= size {
                    write!(f, "{}{unit}", millis / size)?;
                    millis %= size;
                }
            }
            if millis > 0 {
                write!(f, "{millis}ms")?;
            }
            Ok(())
        }
    }
    Show(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u64, &str>) {
        match (parse(text), expected) {
            (Ok(d), Ok(ms)) => assert_eq!(d, Duration::from_millis(ms), "{text}"),
            (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_what_people_write() {
        check("30s", Ok(30_000));
        check("5m", Ok(300_000));
        check("1h30m", Ok(5_400_000));
        check("250ms", Ok(250));
        check("2d", Ok(172_800_000));
        check(" 10s ", Ok(10_000));
        check("1m30s500ms", Ok(90_500));
        check("0s", Ok(0));
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        check("", Err("empty"));
        check("60", Err("no unit"));
        check("5 m", Err("unknown unit ` m`"));
        check("5min", Err("unknown unit `min`"));
        check("m5", Err("expected a number"));
        check("-5s", Err("expected a number"));
        check("99999999999999999999s", Err("too large"));
        check("9999999999999999d", Err("too long"));
    }

    #[test]
    fn displays_round_trip() {
        for text in ["1h30m", "45s", "250ms", "0s", "2d", "1m30s500ms"] {
            let d = parse(text).unwrap();
            assert_eq!(display(d).to_string(), text);
        }
    }
}
