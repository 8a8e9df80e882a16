//! Parsing what people type: durations (`90s`, `10m`, `1h30m`), sizes (`4GiB`, `512M`), CPU
//! (`0.5`, `500m`), labels (`key=value`) and environment variables (`KEY=value`).

use std::time::Duration;

/// Parses a duration: a whole number of seconds (`90`), or one or more number-unit parts
/// (`90s`, `10m`, `2h`, `1d`, `1h30m`, `1.5h`). Units: `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 90s, 10m or 2h".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 10m, 2h, 1h30m)"))?;
        let scale = match unit.trim() {
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            "" => {
                return Err(format!(
                    "`{s}`: a unit is missing after {num} (s, m, h, d or w)"
                ))
            }
            u => return Err(format!("`{s}`: unknown unit `{u}` (use s, m, h, d or w)")),
        };
        total += n * scale;
        rest = next;
    }
    if !total.is_finite() || total > u64::MAX as f64 / 2.0 {
        return Err(format!("`{s}` is too long a duration"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses a size in bytes: a whole number of bytes, or a number and a unit. `KiB`, `MiB`,
/// `GiB`, `TiB` and their short forms `K`, `M`, `G`, `T` are powers of 1024; `KB`, `MB`, `GB`,
/// `TB` are powers of 1000. Units are case-insensitive; `1.5GiB` and `4 GiB` are accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_len);
    if num.is_empty() {
        return Err(format!("`{s}` is not a size (e.g. 4GiB, 512MiB, 8G)"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4GiB, 512MiB, 8G)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => {
            return Err(format!(
                "`{s}`: unknown unit `{u}` (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = n * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    if unit.trim().is_empty() && num.contains('.') {
        return Err(format!("`{s}`: a number of bytes must be whole"));
    }
    Ok(bytes.round() as u64)
}

/// Parses `key=value` (the value may be empty; the key may not).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("`{s}`: the label key is empty")),
        None => Err(format!("`{s}` is not key=value")),
    }
}

/// Parses CPU as thousandths of a core: cores (`0.5`, `2`, `1.25`) or millicores (`500m`).
/// At least `1m`; a whole number of millicores.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    const HINT: &str = "e.g. 0.5, 2 or 500m";
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('m') {
        Some(n) => (n.trim(), 1.0),
        None => (t, 1000.0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` is not a CPU amount ({HINT})"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a CPU amount ({HINT})"))?;
    let millis = n * scale;
    if !millis.is_finite() || millis >= 1e15 {
        return Err(format!("`{s}` is too much CPU"));
    }
    if (millis - millis.round()).abs() > 1e-6 {
        return Err(format!(
            "`{s}`: CPU is counted in whole thousandths of a core (1m = 0.001)"
        ));
    }
    let millis = millis.round() as u64;
    if millis == 0 {
        return Err(format!("`{s}`: a job needs some CPU, at least 1m (0.001)"));
    }
    Ok(millis)
}

/// Parses `KEY=value` for a job's environment (the value may be empty or hold `=`).
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("`{s}`: the variable name is empty")),
        None => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("0"), Ok(0.0));
        assert_eq!(secs("90"), Ok(90.0));
        assert_eq!(secs("90s"), Ok(90.0));
        assert_eq!(secs("10m"), Ok(600.0));
        assert_eq!(secs("2h"), Ok(7200.0));
        assert_eq!(secs("1d"), Ok(86_400.0));
        assert_eq!(secs("1w"), Ok(604_800.0));
        assert_eq!(secs("1h30m"), Ok(5400.0));
        assert_eq!(secs("1h 30m"), Ok(5400.0));
        assert_eq!(secs("1.5h"), Ok(5400.0));
        assert_eq!(secs(" 10m "), Ok(600.0));
        for bad in ["", "m", "10x", "10 parsecs", "-5s", "1..5h", "h10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4gib"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "GiB", "4XB", "four", "1.5", "-4GiB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("区域=华东"), Ok(("区域".into(), "华东".into())));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.25"), Ok(1250));
        assert_eq!(parse_cpu("1m"), Ok(1));
        assert_eq!(parse_cpu(" 250m "), Ok(250));
        assert_eq!(parse_cpu("0.001"), Ok(1));
        assert_eq!(parse_cpu("0.3"), Ok(300));
        assert_eq!(parse_cpu("0.7"), Ok(700));
        for bad in [
            "", "m", "0", "0m", "-1", "1.5m", "0.0001", "half", "1e3", "2 cores",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env() {
        assert_eq!(parse_env("A=b"), Ok(("A".into(), "b".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert_eq!(parse_env("OPTS=-x=1"), Ok(("OPTS".into(), "-x=1".into())));
        assert!(parse_env("=b").is_err());
        assert!(parse_env("AB").is_err());
    }
}
