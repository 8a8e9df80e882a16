//! Identifiers shared by every crate.
//!
//! A node id is chosen by the coordinator at join and written into the node's certificate, so
//! it is the one name for a node that cannot be forged by the node itself.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's stable id, `n-` followed by 16 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(format!("n-{:016x}", rand::random::<u64>()))
    }

    /// Parses and checks the `n-<16 hex>` shape.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("n-")?;
        (hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| NodeId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_parse() {
        let id = NodeId::random();
        assert_eq!(NodeId::parse(id.as_str()), Some(id));
        assert_eq!(NodeId::parse("n-XYZ"), None);
        assert_eq!(NodeId::parse("x-0123456789abcdef"), None);
    }
}
