//! Options that both sides use: the daemon's configuration sets a server's default, and a
//! client may choose for itself. Built without the `daemon` feature.

use std::fmt;
use std::str::FromStr;

/// How a subscriber waits for data when it has none.
///
/// A server's `wait` key (in `[servers.NAME]` of the daemon's configuration) sets the mode of
/// its subscribers unless they choose one. This is the subscriber waiting for batches; it has
/// nothing to do with `overflow = "block"`, where a producer waits for slow subscribers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Spin for a short while, then sleep until woken: low latency while data flows,
    /// little CPU when it does not.
    #[default]
    Adaptive,
    /// Never sleep: the lowest latency, for a whole CPU core per subscriber.
    Spin,
    /// Sleep until woken: the least CPU, for the latency of a wake-up.
    Park,
}

impl WaitMode {
    /// Every mode.
    pub const ALL: [WaitMode; 3] = [WaitMode::Adaptive, WaitMode::Spin, WaitMode::Park];

    /// The mode's name as written in the configuration: `adaptive`, `spin` or `park`.
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
        WaitMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown wait mode {s:?} (adaptive, spin or park)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_mode_names() {
        for (mode, name) in WaitMode::ALL.into_iter().zip(["adaptive", "spin", "park"]) {
            assert_eq!(mode.as_str(), name);
            assert_eq!(mode.to_string(), name);
            let json = format!("\"{name}\"");
            assert_eq!(serde_json::to_string(&mode).expect("serialize"), json);
            let back: WaitMode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, mode);
        }
        assert!(serde_json::from_str::<WaitMode>("\"block\"").is_err());
    }
}
