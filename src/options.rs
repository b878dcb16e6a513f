//! Choices a client makes when it connects, shared by the library and the daemon.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a subscriber (or a producer waiting for free memory) waits for the other side.
///
/// Not to be confused with `overflow = "block"`, which decides what happens to a
/// subscriber that falls behind; this decides how a process waits when it has nothing to
/// do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Spin briefly, then yield the processor a few times, then sleep until woken: the
    /// latency of spinning when data flows, no processor time when it does not.
    #[default]
    Adaptive,
    /// Never sleep: poll the queue continuously. Lowest latency, one busy core per
    /// waiting process; only for dedicated cores.
    Spin,
    /// Sleep at once until woken: least processor time, a wake-up per burst.
    Park,
}

impl WaitMode {
    /// The mode's name as the configuration and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitMode::Adaptive => "adaptive",
            WaitMode::Spin => "spin",
            WaitMode::Park => "park",
        }
    }
}

impl fmt::Display for WaitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WaitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<WaitMode, String> {
        match s {
            "adaptive" => Ok(WaitMode::Adaptive),
            "spin" => Ok(WaitMode::Spin),
            "park" => Ok(WaitMode::Park),
            other => Err(format!(
                "unknown wait mode {other:?} (adaptive, spin or park)"
            )),
        }
    }
}
