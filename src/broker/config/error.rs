//! [`ConfigError`]: what is wrong with a configuration, and where.

///
/// Displayed on one line: where (the file, or `environment variable PACKET_IPC__...`), the
/// line when known, the dotted key when known, and what is wrong, e.g.
/// `/etc/packet-ipc/packet-ipcd.toml: line 12: servers.capture0.overflow: unknown variant
/// `fast`, expected one of ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}{}{message}", line_prefix(*.line), key_prefix(.key.as_deref()))]
pub struct ConfigError {
    /// The file's path, [`Source::Embedded`](super::Source::Embedded)'s name, or `environment variable NAME`.
    pub source_name: String,
    /// The 1-based line in the file, when known.
    pub line: Option<usize>,
    /// The dotted key, e.g. `servers.capture0.overflow`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|line| format!("line {line}: "))
        .unwrap_or_default()
}

fn key_prefix(key: Option<&str>) -> String {
    key.map(|key| format!("{key}: ")).unwrap_or_default()
}
