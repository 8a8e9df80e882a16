//! The input rules for clusters and nodes (issue 4, after console 001): names, aliases,
//! descriptions, labels, taints and quotas.
//!
//! Every check returns a [`ValidationError`] whose text starts with the field and says what is
//! allowed and what was given, e.g.
//! `name: must be 1-63 characters of letters, digits, CJK characters and '-', got 64`: the API
//! hands it back as `invalid_argument` unchanged, so a user can fix the request from the message
//! alone. Lengths are counted in characters (Unicode scalar values), not bytes, so that a CJK
//! name has the same limit as a Latin one.
//!
//! # Decisions the issue leaves open
//! - **CJK characters** are the ideographs: CJK Unified Ideographs U+4E00–U+9FFF, Extension A
//!   U+3400–U+4DBF, Extension B U+20000–U+2A6DF, CJK Compatibility Ideographs U+F900–U+FAFF and
//!   their Supplement U+2F800–U+2FA1F. Kana, Hangul, CJK punctuation (`、`, `。`) and full-width
//!   forms (`Ａ`, `－`) are not: they look like separators or like ASCII and would make names
//!   that read the same but differ.
//! - **Letters** are ASCII letters only, for the same reason (no `é`/`е` look-alikes).
//! - A **name** may not have the shape of a cluster id (`c-` and 12 hex digits): the API looks a
//!   cluster up "by id or name", and such a name would shadow, or be shadowed by, an id.
//! - An **alias** is 0–63 characters of the name's alphabet plus the ASCII space, not beginning
//!   or ending with a space (a display name such as `边缘 集群 A`, searchable without surprises).
//! - A **description** is free text of at most 256 characters; line breaks are allowed.
//! - **Label keys** may not contain `=` (the list filter is `label=k=v`, split at the first `=`)
//!   or control characters; **values** may be empty but may not contain control characters.
//!   The reserved prefixes `tandem`, `http://`, `https://` are refused in any case.
//! - **Deleting a label**: a PATCH carries `{"labels": {"k": "v", "gone": null}}`; a `null`
//!   value deletes the key, an empty string is a real (empty) value. [`merge_labels`] does the
//!   merge; the caller checks the result with [`check_labels`] (the count applies to the result).

use crate::model::{Taint, TaintEffect};
use std::collections::{BTreeMap, HashSet};

/// The most characters in a cluster name.
pub const NAME_MAX_CHARS: usize = 63;
/// The most characters in an alias.
pub const ALIAS_MAX_CHARS: usize = 63;
/// The most characters in a description.
pub const DESCRIPTION_MAX_CHARS: usize = 256;
/// The most labels (or taints) on one object.
pub const LABELS_MAX: usize = 20;
/// The most characters in a label or taint key.
pub const LABEL_KEY_MAX_CHARS: usize = 64;
/// The most characters in a label or taint value.
pub const LABEL_VALUE_MAX_CHARS: usize = 128;
/// Label keys may not begin with these, compared without regard to ASCII case.
pub const RESERVED_LABEL_PREFIXES: [&str; 3] = ["tandem", "http://", "https://"];

/// An input that breaks a rule. Shown as `"{field}: {message}"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The request field at fault, e.g. `name`, `labels`.
    pub field: String,
    /// What is allowed and what was given.
    pub message: String,
}

impl ValidationError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// One more object would go over a configured quota.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: at most {limit} {what} are allowed and {current} already exist")]
pub struct QuotaError {
    /// What is counted, e.g. `clusters per coordinator`.
    pub what: String,
    /// The quota.
    pub limit: usize,
    /// How many there are before the one being added.
    pub current: usize,
}

/// Whether `c` is a CJK ideograph (see the module docs for the ranges).
pub fn is_cjk(c: char) -> bool {
    matches!(
        c,
        '\u{4E00}'..='\u{9FFF}'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{20000}'..='\u{2A6DF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{2F800}'..='\u{2FA1F}'
    )
}

/// The name alphabet: ASCII letters and digits, `-`, CJK ideographs.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || is_cjk(c)
}

/// `s` quoted for a message, cut to 40 characters so that a huge input gives a short error.
fn shown(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

/// The first character of `s` that `ok` refuses, with its 1-based position.
fn first_bad(s: &str, ok: impl Fn(char) -> bool) -> Option<(usize, char)> {
    s.chars()
        .enumerate()
        .find(|&(_, c)| !ok(c))
        .map(|(i, c)| (i + 1, c))
}

/// Whether `s` looks like a cluster id: `c-` and 12 lowercase hex digits.
fn looks_like_cluster_id(s: &str) -> bool {
    s.strip_prefix("c-").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A cluster name: 1–63 characters of ASCII letters, ASCII digits, `-` and CJK ideographs,
/// and not shaped like a cluster id.
pub fn check_cluster_name(name: &str) -> Result<(), ValidationError> {
    const RULE: &str = "must be 1-63 characters of letters, digits, CJK characters and '-'";
    let n = name.chars().count();
    if n == 0 || n > NAME_MAX_CHARS {
        return Err(ValidationError::new("name", format!("{RULE}, got {n}")));
    }
    if let Some((pos, c)) = first_bad(name, is_name_char) {
        return Err(ValidationError::new(
            "name",
            format!("{RULE}, got {c:?} at position {pos}"),
        ));
    }
    if looks_like_cluster_id(name) {
        return Err(ValidationError::new(
            "name",
            format!(
                "must not have the shape of a cluster id ('c-' and 12 hex digits), got {}",
                shown(name)
            ),
        ));
    }
    Ok(())
}

/// An alias: 0–63 characters of the name alphabet plus the ASCII space, not beginning or
/// ending with a space.
pub fn check_alias(alias: &str) -> Result<(), ValidationError> {
    const RULE: &str = "must be 0-63 characters of letters, digits, CJK characters, '-' and spaces";
    let n = alias.chars().count();
    if n > ALIAS_MAX_CHARS {
        return Err(ValidationError::new("alias", format!("{RULE}, got {n}")));
    }
    if let Some((pos, c)) = first_bad(alias, |c| c == ' ' || is_name_char(c)) {
        return Err(ValidationError::new(
            "alias",
            format!("{RULE}, got {c:?} at position {pos}"),
        ));
    }
    if alias.starts_with(' ') || alias.ends_with(' ') {
        return Err(ValidationError::new(
            "alias",
            format!("must not begin or end with a space, got {}", shown(alias)),
        ));
    }
    Ok(())
}

/// A description: free text of at most 256 characters.
pub fn check_description(description: &str) -> Result<(), ValidationError> {
    let n = description.chars().count();
    if n > DESCRIPTION_MAX_CHARS {
        return Err(ValidationError::new(
            "description",
            format!("must be at most {DESCRIPTION_MAX_CHARS} characters, got {n}"),
        ));
    }
    Ok(())
}

/// One key by the label rules, reported under `field`.
fn check_key(field: &str, key: &str) -> Result<(), ValidationError> {
    let n = key.chars().count();
    if n == 0 || n > LABEL_KEY_MAX_CHARS {
        return Err(ValidationError::new(
            field,
            format!(
                "a key must be 1-{LABEL_KEY_MAX_CHARS} characters, got {n} in key {}",
                shown(key)
            ),
        ));
    }
    if let Some(prefix) = RESERVED_LABEL_PREFIXES.iter().find(|p| {
        key.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    }) {
        return Err(ValidationError::new(
            field,
            format!(
                "key {} must not begin with the reserved prefix {prefix:?} (in any case); \
                 reserved are 'tandem', 'http://' and 'https://'",
                shown(key)
            ),
        ));
    }
    if let Some((pos, c)) = first_bad(key, |c| c != '=' && !c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!(
                "key {} must not contain '=' or control characters, got {c:?} at position {pos}",
                shown(key)
            ),
        ));
    }
    Ok(())
}

/// One value by the label rules, reported under `field`.
fn check_value(field: &str, key: &str, value: &str) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n > LABEL_VALUE_MAX_CHARS {
        return Err(ValidationError::new(
            field,
            format!(
                "the value of key {} must be at most {LABEL_VALUE_MAX_CHARS} characters, got {n}",
                shown(key)
            ),
        ));
    }
    if let Some((pos, c)) = first_bad(value, |c| !c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!(
                "the value of key {} must not contain control characters, got {c:?} at position {pos}",
                shown(key)
            ),
        ));
    }
    Ok(())
}

/// Labels: at most 20; each key 1–64 characters, without `=` or control characters, not
/// beginning with `tandem`, `http://` or `https://` in any case; each value at most 128
/// characters without control characters (empty is fine).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    const FIELD: &str = "labels";
    if labels.len() > LABELS_MAX {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "at most {LABELS_MAX} labels are allowed, got {}",
                labels.len()
            ),
        ));
    }
    for (key, value) in labels {
        check_key(FIELD, key)?;
        check_value(FIELD, key, value)?;
    }
    Ok(())
}

/// `existing` with `updates` applied: `Some(v)` sets the key (the same key overwrites),
/// `None` (a JSON `null`) deletes it; deleting a key that is not there does nothing.
/// Check the result with [`check_labels`].
pub fn merge_labels(
    existing: &BTreeMap<String, String>,
    updates: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, String> {
    let mut merged = existing.clone();
    for (key, value) in updates {
        match value {
            Some(v) => {
                merged.insert(key.clone(), v.clone());
            }
            None => {
                merged.remove(key);
            }
        }
    }
    merged
}

fn effect_name(effect: TaintEffect) -> &'static str {
    match effect {
        TaintEffect::NoSchedule => "no_schedule",
    }
}

/// Taints: at most 20; key and value by the label rules; no two with the same key and effect.
pub fn check_taints(taints: &[Taint]) -> Result<(), ValidationError> {
    const FIELD: &str = "taints";
    if taints.len() > LABELS_MAX {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "at most {LABELS_MAX} taints are allowed, got {}",
                taints.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for t in taints {
        check_key(FIELD, &t.key)?;
        check_value(FIELD, &t.key, &t.value)?;
        if !seen.insert((t.key.as_str(), effect_name(t.effect))) {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "key {} appears twice with effect {}; each key and effect may appear once",
                    shown(&t.key),
                    effect_name(t.effect)
                ),
            ));
        }
    }
    Ok(())
}

/// Whether one more object may be added when `current` exist and the quota is `limit`
/// (`what` names what is counted, e.g. `clusters per coordinator`, and goes into the error).
pub fn check_quota(current: usize, limit: usize, what: &str) -> Result<(), QuotaError> {
    if current >= limit {
        return Err(QuotaError {
            what: what.to_string(),
            limit,
            current,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn taint(key: &str, value: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: TaintEffect::NoSchedule,
        }
    }

    #[test]
    fn names_of_letters_digits_hyphens_and_cjk_are_valid() {
        for ok in [
            "a",
            "edge-1",
            "Edge-Cluster-2",
            "-",
            "边缘-集群-1",
            "東京",
            "\u{3400}\u{20000}\u{F900}\u{2F800}",
            &"a".repeat(63),
            &"集".repeat(63),
        ] {
            assert_eq!(check_cluster_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn empty_and_64_character_names_are_refused_with_the_count() {
        let e = check_cluster_name("").unwrap_err();
        assert_eq!(e.field, "name");
        assert_eq!(
            e.to_string(),
            "name: must be 1-63 characters of letters, digits, CJK characters and '-', got 0"
        );
        let e = check_cluster_name(&"a".repeat(64)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "name: must be 1-63 characters of letters, digits, CJK characters and '-', got 64"
        );
        // Characters, not bytes: 64 ideographs are too many, 63 (189 bytes) are fine.
        assert!(check_cluster_name(&"集".repeat(64))
            .unwrap_err()
            .to_string()
            .ends_with("got 64"));
    }

    #[test]
    fn names_with_other_characters_are_refused_naming_the_character() {
        let e = check_cluster_name("a_b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "name: must be 1-63 characters of letters, digits, CJK characters and '-', \
             got '_' at position 2"
        );
        for bad in [
            "a b",
            "a.b",
            "a/b",
            "é",
            "ｅｄｇｅ",
            "边缘－1",
            "边缘、1",
            "かな",
            "한국",
            "a\n",
        ] {
            let e = check_cluster_name(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
            assert!(e.message.contains("got "), "{bad}: {e}");
        }
    }

    #[test]
    fn names_shaped_like_cluster_ids_are_refused() {
        let e = check_cluster_name("c-0123456789ab").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("name: must not have the shape of a cluster id"));
        // Close but not an id: fine.
        assert_eq!(check_cluster_name("c-0123456789abc"), Ok(()));
        assert_eq!(check_cluster_name("c-0123456789AB"), Ok(()));
        assert_eq!(check_cluster_name("c-0123456789ag"), Ok(()));
    }

    #[test]
    fn cjk_ranges_have_the_documented_edges() {
        for c in [
            '\u{4E00}',
            '\u{9FFF}',
            '\u{3400}',
            '\u{4DBF}',
            '\u{20000}',
            '\u{2A6DF}',
            '\u{F900}',
            '\u{FAFF}',
            '\u{2F800}',
            '\u{2FA1F}',
        ] {
            assert!(is_cjk(c), "{c:?}");
        }
        for c in [
            '\u{4DFF}',
            '\u{A000}',
            '\u{33FF}',
            '\u{2A700}',
            '\u{FB00}',
            '\u{3042}',
            '\u{AC00}',
            '\u{3001}',
            'a',
        ] {
            assert!(!is_cjk(c), "{c:?}");
        }
    }

    #[test]
    fn aliases_allow_spaces_inside_and_may_be_empty() {
        for ok in ["", "Edge A", "边缘 集群 1", &"a".repeat(63)] {
            assert_eq!(check_alias(ok), Ok(()), "{ok}");
        }
        let e = check_alias(&"a".repeat(64)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "alias: must be 0-63 characters of letters, digits, CJK characters, '-' and spaces, \
             got 64"
        );
        assert!(check_alias("a_b")
            .unwrap_err()
            .to_string()
            .ends_with("got '_' at position 2"));
        assert!(check_alias("a\tb").is_err());
        for edge in [" a", "a ", " "] {
            let e = check_alias(edge).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("alias: must not begin or end with a space"),
                "{e}"
            );
        }
    }

    #[test]
    fn descriptions_are_at_most_256_characters() {
        assert_eq!(check_description(""), Ok(()));
        assert_eq!(check_description("line one\nline two, 説明"), Ok(()));
        assert_eq!(check_description(&"説".repeat(256)), Ok(()));
        assert_eq!(
            check_description(&"x".repeat(257)).unwrap_err().to_string(),
            "description: must be at most 256 characters, got 257"
        );
    }

    #[test]
    fn twenty_labels_pass_and_twenty_one_are_refused() {
        let mut l: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        assert_eq!(check_labels(&l), Ok(()));
        l.insert("k20".into(), "v".into());
        assert_eq!(
            check_labels(&l).unwrap_err().to_string(),
            "labels: at most 20 labels are allowed, got 21"
        );
        assert_eq!(check_labels(&BTreeMap::new()), Ok(()));
    }

    #[test]
    fn label_keys_are_1_to_64_characters() {
        assert_eq!(check_labels(&labels(&[(&"k".repeat(64), "v")])), Ok(()));
        assert_eq!(check_labels(&labels(&[(&"键".repeat(64), "v")])), Ok(()));
        let e = check_labels(&labels(&[(&"k".repeat(65), "v")])).unwrap_err();
        assert_eq!(e.field, "labels");
        assert!(
            e.message
                .starts_with("a key must be 1-64 characters, got 65 in key \"kkk"),
            "{e}"
        );
        assert!(
            e.message.ends_with("…"),
            "long keys are cut in the message: {e}"
        );
        let e = check_labels(&labels(&[("", "v")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "labels: a key must be 1-64 characters, got 0 in key \"\""
        );
    }

    #[test]
    fn reserved_prefixes_are_refused_in_any_case() {
        for bad in [
            "tandem",
            "tandem.io/role",
            "Tandem-x",
            "TANDEM",
            "tAnDeM_zone",
            "http://x",
            "HTTP://x",
            "https://x",
            "HttpS://example.com/k",
        ] {
            let e = check_labels(&labels(&[(bad, "v")])).unwrap_err();
            assert_eq!(e.field, "labels");
            assert!(
                e.message
                    .contains("must not begin with the reserved prefix"),
                "{bad}: {e}"
            );
        }
        // Only as a prefix, and `http:` without the slashes is not one.
        for ok in [
            "my-tandem",
            "x.tandem",
            "tande",
            "http:x",
            "https",
            "ftp://x",
        ] {
            assert_eq!(check_labels(&labels(&[(ok, "v")])), Ok(()), "{ok}");
        }
        // A multi-byte key shorter than the prefix in bytes does not panic.
        assert_eq!(check_labels(&labels(&[("集群", "v")])), Ok(()));
        assert_eq!(check_labels(&labels(&[("ta集", "v")])), Ok(()));
    }

    #[test]
    fn label_keys_refuse_equals_and_control_characters() {
        for bad in ["a=b", "a\nb", "\u{7f}"] {
            let e = check_labels(&labels(&[(bad, "v")])).unwrap_err();
            assert!(
                e.message
                    .contains("must not contain '=' or control characters"),
                "{e}"
            );
        }
        assert_eq!(check_labels(&labels(&[("team/a.b_c d", "v")])), Ok(()));
    }

    #[test]
    fn label_values_are_at_most_128_characters_and_may_be_empty() {
        assert_eq!(check_labels(&labels(&[("k", "")])), Ok(()));
        assert_eq!(check_labels(&labels(&[("k", &"v".repeat(128))])), Ok(()));
        assert_eq!(
            check_labels(&labels(&[("k", &"v".repeat(129))]))
                .unwrap_err()
                .to_string(),
            "labels: the value of key \"k\" must be at most 128 characters, got 129"
        );
        assert!(check_labels(&labels(&[("k", "a\u{0}")]))
            .unwrap_err()
            .message
            .contains("must not contain control characters"));
    }

    #[test]
    fn merge_overwrites_the_same_key_and_null_deletes() {
        let existing = labels(&[("env", "prod"), ("team", "a"), ("zone", "1")]);
        let updates: BTreeMap<String, Option<String>> = [
            ("env".to_string(), Some("staging".to_string())),
            ("team".to_string(), None),
            ("zone".to_string(), Some(String::new())),
            ("new".to_string(), Some("x".to_string())),
            ("absent".to_string(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            merge_labels(&existing, &updates),
            labels(&[("env", "staging"), ("zone", ""), ("new", "x")])
        );
        assert_eq!(merge_labels(&existing, &BTreeMap::new()), existing);
    }

    #[test]
    fn the_label_count_applies_to_the_merged_result() {
        let existing: BTreeMap<String, String> =
            (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
        let add: BTreeMap<_, _> = [("k20".to_string(), Some("v".to_string()))].into();
        assert!(check_labels(&merge_labels(&existing, &add)).is_err());
        let swap: BTreeMap<_, _> = [
            ("k0".to_string(), None),
            ("k20".to_string(), Some("v".to_string())),
        ]
        .into();
        assert_eq!(check_labels(&merge_labels(&existing, &swap)), Ok(()));
    }

    #[test]
    fn taints_follow_the_label_rules() {
        assert_eq!(check_taints(&[]), Ok(()));
        assert_eq!(
            check_taints(&[taint("gpu", ""), taint("maint", "yes")]),
            Ok(())
        );
        let many: Vec<_> = (0..21).map(|i| taint(&format!("k{i}"), "")).collect();
        assert_eq!(
            check_taints(&many).unwrap_err().to_string(),
            "taints: at most 20 taints are allowed, got 21"
        );
        assert_eq!(check_taints(&many[..20]), Ok(()));
        let e = check_taints(&[taint("Tandem/x", "")]).unwrap_err();
        assert_eq!(e.field, "taints");
        assert!(e.message.contains("reserved prefix"), "{e}");
        assert!(check_taints(&[taint(&"k".repeat(65), "")]).is_err());
        assert!(check_taints(&[taint("", "")]).is_err());
        assert!(check_taints(&[taint("k", &"v".repeat(129))])
            .unwrap_err()
            .to_string()
            .starts_with("taints: the value of key \"k\" must be at most 128"));
    }

    #[test]
    fn taints_with_the_same_key_and_effect_are_refused() {
        let e = check_taints(&[taint("gpu", "a"), taint("gpu", "b")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "taints: key \"gpu\" appears twice with effect no_schedule; \
             each key and effect may appear once"
        );
    }

    #[test]
    fn quotas_allow_up_to_the_limit() {
        assert_eq!(check_quota(0, 50, "clusters per coordinator"), Ok(()));
        assert_eq!(check_quota(49, 50, "clusters per coordinator"), Ok(()));
        let e = check_quota(50, 50, "clusters per coordinator").unwrap_err();
        assert_eq!(
            e,
            QuotaError {
                what: "clusters per coordinator".into(),
                limit: 50,
                current: 50
            }
        );
        assert_eq!(
            e.to_string(),
            "quota exceeded: at most 50 clusters per coordinator are allowed and 50 already exist"
        );
        assert!(check_quota(100, 100, "nodes in cluster \"edge\"").is_err());
        assert!(check_quota(0, 0, "nodes").is_err());
    }
}
