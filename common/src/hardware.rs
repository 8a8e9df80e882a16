//! The hardware report an agent sends at registration.
//!
//! (Skeleton: the hardware-inventory work fills this in.) It travels inside bincode frames and
//! is shown as JSON by the admin API, so it keeps to serde features that both formats support:
//! no `flatten`, no `skip_serializing_if`, no untagged enums, no `serde_json::Value`.

use serde::{Deserialize, Serialize};

/// Everything an agent knows about its machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareReport {
    /// The host name.
    pub hostname: String,
}
