//! Where the configuration comes from: `--config`, `$PACKET_IPC_CONFIG`, the system path,
//! else the embedded default.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A TOML file.
    File(PathBuf),
    /// [`EMBEDDED_DEFAULT`], used when no file is found.
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Embedded => f.write_str(EMBEDDED_NAME),
        }
    }
}

/// The embedded default configuration, used when no file is found: one server named
/// `default` with every default value, and the daemon's defaults.
pub const EMBEDDED_DEFAULT: &str = r#"# packet-ipcd embedded default configuration: used when neither --config,
# $PACKET_IPC_CONFIG nor /etc/packet-ipc/packet-ipcd.toml gives a file.
# Every value is the default; config/packet-ipcd.toml documents them.

[daemon]
log-format = "text"
shutdown-timeout-ms = 5000

[servers.default]
linktype = 1
snaplen = 65535
queue-depth = 256
overflow = "drop-oldest"
max-subscribers = 64
max-producers = 4
max-batch-bytes = 16777216
"#;

/// Where the packaged configuration file lives.
pub const SYSTEM_PATH: &str = "/etc/packet-ipc/packet-ipcd.toml";

/// The variable naming the configuration file.
const CONFIG_VAR: &str = "PACKET_IPC_CONFIG";
/// How errors name the embedded default.
pub(super) const EMBEDDED_NAME: &str = "the embedded default configuration";

/// The configuration source, first found: `cli` (`--config FILE`), `$PACKET_IPC_CONFIG`
/// (when set and not empty), [`SYSTEM_PATH`] if it exists, else [`Source::Embedded`].
///
/// A file named by `--config` or `$PACKET_IPC_CONFIG` is returned whether it exists or not:
/// reading it will then fail with a clear error instead of silently using another one.
pub fn locate(cli: Option<&Path>) -> Source {
    let var = std::env::var_os(CONFIG_VAR);
    locate_with(cli, var.as_deref(), |path| path.exists())
}

/// [`locate`] with its inputs given: `env` is the value of `$PACKET_IPC_CONFIG` and `exists`
/// tells whether a path exists.
pub fn locate_with(
    cli: Option<&Path>,
    env: Option<&OsStr>,
    exists: impl Fn(&Path) -> bool,
) -> Source {
    if let Some(path) = cli {
        return Source::File(path.to_path_buf());
    }
    if let Some(path) = env.filter(|value| !value.is_empty()) {
        return Source::File(PathBuf::from(path));
    }
    let system = Path::new(SYSTEM_PATH);
    if exists(system) {
        return Source::File(system.to_path_buf());
    }
    Source::Embedded
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_precedence() {
        let cli = Path::new("/from/cli.toml");
        let var = OsStr::new("/from/env.toml");
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        assert_eq!(
            locate_with(Some(cli), Some(var), yes),
            Source::File(cli.into())
        );
        assert_eq!(locate_with(None, Some(var), yes), Source::File(var.into()));
        assert_eq!(
            locate_with(None, Some(OsStr::new("")), yes),
            Source::File(SYSTEM_PATH.into())
        );
        assert_eq!(
            locate_with(None, None, |path: &Path| path == Path::new(SYSTEM_PATH)),
            Source::File(SYSTEM_PATH.into())
        );
        assert_eq!(locate_with(None, None, no), Source::Embedded);
        // A named file that does not exist is still the one to read.
        assert_eq!(locate_with(Some(cli), None, no), Source::File(cli.into()));
        assert_eq!(locate_with(None, Some(var), no), Source::File(var.into()));
        assert_eq!(
            locate(Some(cli)),
            Source::File(cli.into()),
            "--config wins whatever the machine has"
        );
        assert_eq!(
            Source::File("/etc/x.toml".into()).to_string(),
            "/etc/x.toml"
        );
    }
}
