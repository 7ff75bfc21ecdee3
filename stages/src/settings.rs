//! Checks that several kinds' settings share: counts, periods and durations.

use std::time::Duration;

/// The longest timer period a setting may ask for, ms (one day).
pub const MAX_PERIOD_MS: u64 = 86_400_000;

/// `value` of setting `name` is at least 1.
pub fn at_least_one(name: &str, value: u64) -> Result<(), String> {
    if value == 0 { Err(format!("`{name}` must be at least 1")) } else { Ok(()) }
}

/// `value` of setting `name` is a timer period: from 1 ms to one day.
pub fn a_period(name: &str, value: u64) -> Result<(), String> {
    at_least_one(name, value)?;
    if value > MAX_PERIOD_MS {
        return Err(format!("`{name}` must be at most {MAX_PERIOD_MS} (one day), got {value}"));
    }
    Ok(())
}

/// A duration setting given either as text (`"3s"`, `"500ms"`) or in milliseconds.
pub fn duration_setting(
    text: Option<&str>,
    millis: Option<u64>,
    names: (&str, &str),
    default: Duration,
) -> Result<Duration, String> {
    let duration = match (text, millis) {
        (Some(_), Some(_)) => return Err(format!("set `{}` or `{}`, not both", names.0, names.1)),
        (Some(text), None) => humantime::parse_duration(text)
            .map_err(|error| format!("`{}` = \"{text}\": {error} (e.g. \"3s\", \"500ms\")", names.0))?,
        (None, Some(millis)) => Duration::from_millis(millis),
        (None, None) => default,
    };
    if duration.is_zero() {
        return Err(format!("`{}` must be longer than 0", names.0));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_come_as_text_or_milliseconds_not_both_never_zero() {
        let names = ("flush_interval", "flush_interval_ms");
        let default = Duration::from_secs(3);
        assert_eq!(duration_setting(None, None, names, default), Ok(default));
        assert_eq!(duration_setting(Some("250ms"), None, names, default), Ok(Duration::from_millis(250)));
        assert_eq!(duration_setting(None, Some(1500), names, default), Ok(Duration::from_millis(1500)));
        assert!(duration_setting(Some("1s"), Some(1), names, default).unwrap_err().contains("not both"));
        assert!(duration_setting(Some("soon"), None, names, default).unwrap_err().contains("flush_interval"));
        assert!(duration_setting(None, Some(0), names, default).unwrap_err().contains("longer than 0"));
    }

    #[test]
    fn periods_run_from_one_millisecond_to_one_day() {
        assert!(a_period("every_ms", 1).is_ok() && a_period("every_ms", MAX_PERIOD_MS).is_ok());
        assert_eq!(a_period("every_ms", 0).unwrap_err(), "`every_ms` must be at least 1");
        assert!(a_period("every_ms", MAX_PERIOD_MS + 1).unwrap_err().contains("at most"));
    }
}
