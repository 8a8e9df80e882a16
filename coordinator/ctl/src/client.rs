//! The HTTP client of the admin API: one call, one answer or one error in the API's terms.

use super::CtlError;
use serde_json::Value;

/// The fewest characters (after the prefix) a short id may have.
const MIN_SHORT_ID: usize = 4;

/// A client of one admin endpoint.
pub struct Client {
    pub(super) agent: ureq::Agent,
    pub(super) base: String,
    pub(super) token: String,
}

/// Percent-encodes one path segment or query value (names may be CJK, ids never need it).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `given` is a short form of `id` (`n-0123abcd` or `0123abcd` for
/// `n-0123abcd45678901`). It needs at least 4 characters after the prefix: `nodes remove n-`
/// must not pick the only node there is.
pub fn short_id_matches(id: &str, given: &str) -> bool {
    id.split_once('-').is_some_and(|(prefix, rest)| {
        let bare = given
            .strip_prefix(prefix)
            .and_then(|g| g.strip_prefix('-'))
            .unwrap_or(given);
        bare.chars().count() >= MIN_SHORT_ID && rest.starts_with(bare)
    })
}

impl Client {
    /// `method path` with an optional JSON body; the parsed answer, or the API's error.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let auth = format!("Bearer {}", self.token);
        let res = match method {
            "POST" => {
                let r = self.agent.post(&url).header("Authorization", &auth);
                match body {
                    Some(b) => r.send_json(&b),
                    None => r.send_empty(),
                }
            }
            "PATCH" => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or(Value::Object(Default::default()))),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut res = res.map_err(|e| CtlError::Unreachable {
            endpoint: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = res.status();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(v)
        } else {
            Err(CtlError::Api {
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}")),
            })
        }
    }

    /// GET.
    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.call("GET", path, None)
    }

    /// Resolves what a person typed for an object listed at `list_path` under `key` (e.g.
    /// `/v1/nodes`, `nodes`): an exact id or name is kept; otherwise a short id (with or
    /// without its prefix, as the tables show it) that matches exactly one object becomes that
    /// object's id. Anything else is returned unchanged, for the API to refuse by name.
    pub fn resolve(&self, list_path: &str, key: &str, given: &str) -> Result<String, CtlError> {
        let list = self.get(list_path)?;
        let items = list[key].as_array().cloned().unwrap_or_default();
        if items.iter().any(|o| o["id"] == given || o["name"] == given) {
            return Ok(given.to_string());
        }
        let matches: Vec<&str> = items
            .iter()
            .filter_map(|o| o["id"].as_str())
            .filter(|id| short_id_matches(id, given))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Ok(given.to_string()),
            many => Err(CtlError::Ambiguous {
                given: given.to_string(),
                matches: many.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_ids() {
        use super::short_id_matches as m;
        let id = "n-0123456789abcdef";
        assert!(m(id, "n-01234567"));
        assert!(m(id, "01234567"));
        assert!(m(id, "n-0123"));
        assert!(m("op-0123456789ab", "op-0123"));
        assert!(m("c-c0ffee000000", "c0ffee"));
        assert!(!m(id, "n-"), "too short");
        assert!(!m(id, "n-012"), "too short");
        assert!(!m(id, ""));
        assert!(!m(id, "n-1234"));
        assert!(!m(id, "c-01234567"), "another kind of id");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(super::enc("c-01ab"), "c-01ab");
        assert_eq!(super::enc("a b/c"), "a%20b%2Fc");
        assert_eq!(super::enc("边"), "%E8%BE%B9");
    }
}
