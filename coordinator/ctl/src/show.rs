//! How tandemctl prints: plain tables in the style of `nomad node status`, short ids, ages.

use comfy_table::{presets::NOTHING, Table};
use serde_json::Value;
use tandem_common::time::{parse_rfc3339, unix_ms};

/// A value as a cell: strings bare, null as `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bytes as GiB with one decimal.
pub fn gib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "-".into())
}

/// A table with a header and no borders.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

/// The short form of an id: its prefix and the first 8 characters after it
/// (`n-0123456789abcdef` -> `n-01234567`).
pub fn short(v: &Value) -> String {
    let Some(id) = v.as_str() else {
        return "-".into();
    };
    match id.split_once('-') {
        Some((p, rest)) => format!("{p}-{}", rest.chars().take(8).collect::<String>()),
        None => id.chars().take(8).collect(),
    }
}

/// How long ago, in the largest whole unit: `12s ago`, `3m ago`, `5h ago`, `2d ago`.
pub fn ago_ms(then_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The age of an RFC 3339 time or a Unix-ms number.
pub fn ago(v: &Value) -> String {
    let ms = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => parse_rfc3339(t),
        _ => None,
    };
    ms.map(|m| ago_ms(m, unix_ms()))
        .unwrap_or_else(|| "-".into())
}

/// `k=v,k2=v2`, or `-`.
pub fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// Key/value lines with aligned keys.
pub fn kv(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
}

/// A pair's member: its name and short id.
pub fn member(name: &Value, id: &Value) -> String {
    match name.as_str() {
        Some(n) => format!("{n} ({})", short(id)),
        None => short(id),
    }
}

/// A cluster's pairs as a table.
pub fn pairs_table(pairs: &[Value]) -> Table {
    let mut t = table(&["ID", "PRIMARY", "STANDBY", "STATE", "SINCE", "REASON"]);
    for p in pairs {
        t.add_row(vec![
            short(&p["id"]),
            member(&p["primary_name"], &p["primary"]),
            member(&p["standby_name"], &p["standby"]),
            s(&p["state"]),
            ago(&p["since"]),
            s(&p["reason"]),
        ]);
    }
    t
}

/// `free/total` for a capacity field pair.
pub fn free_total(cap: &Value, free: &str, total: &str) -> String {
    let f = match &cap[free] {
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
        other => s(other),
    };
    format!("{f}/{}", s(&cap[total]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_ids_and_ages() {
        assert_eq!(short(&json!("n-0123456789abcdef")), "n-01234567");
        assert_eq!(short(&json!("op-0123456789ab")), "op-01234567");
        assert_eq!(short(&json!("abc")), "abc");
        assert_eq!(short(&Value::Null), "-");
        assert_eq!(ago_ms(1000, 13_500), "12s ago");
        assert_eq!(ago_ms(0, 180_000), "3m ago");
        assert_eq!(ago_ms(0, 5 * 3_600_000 + 1), "5h ago");
        assert_eq!(ago_ms(0, 3 * 86_400_000), "3d ago");
        assert_eq!(ago_ms(10_000, 0), "0s ago");
    }
}
