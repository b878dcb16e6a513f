//! Where the configuration comes from: `--config`, `$PACKET_IPC_CONFIG`, the system path,
//! else the embedded default; and reading it.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ConfigError;

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

# No [metrics] table: no metrics endpoint.

[servers.default]
linktype = 1
snaplen = 65535
queue-depth = 256
overflow = "drop-oldest"
max-subscribers = 64
max-producers = 4
max-batch-bytes = 16777216
group-balance = "flow"
wait = "adaptive"
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
/// The most a configuration file may hold, in bytes: 1 MiB.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// The text of `source`.
///
/// A file is opened without blocking (so that a FIFO given as the file cannot hang the
/// daemon or `--check`), must be a regular file, as told by `fstat` on the open descriptor,
/// and may hold at most [`MAX_FILE_BYTES`] of UTF-8; anything else is an error naming it.
pub(super) fn read(source: &Source) -> Result<Cow<'static, str>, ConfigError> {
    let path = match source {
        Source::File(path) => path,
        Source::Embedded => return Ok(Cow::Borrowed(EMBEDDED_DEFAULT)),
    };
    let error = |why: String| ConfigError {
        source_name: source.to_string(),
        line: None,
        key: None,
        message: format!("cannot read the file: {why}"),
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| error(err.to_string()))?;
    let metadata = file.metadata().map_err(|err| error(err.to_string()))?;
    if !metadata.is_file() {
        return Err(error(format!(
            "not a regular file but {}",
            file_type_name(metadata.file_type())
        )));
    }
    let too_big = || error(format!("larger than {MAX_FILE_BYTES} bytes (1 MiB)"));
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    // At most one byte past the limit, in case the file grew since fstat.
    let mut bytes = Vec::new();
    File::take(file, MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| error(err.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|err| error(format!("not valid UTF-8 ({err})")))
}

/// What a file that is not a regular file is, for errors.
fn file_type_name(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "something else"
    }
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

    fn read_err(path: &Path) -> ConfigError {
        read(&Source::File(path.to_path_buf())).expect_err("not readable")
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let source = Source::File(path.clone());
        std::thread::spawn(move || tx.send(super::super::load_with_env(&source, &[])));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("load returns promptly on a FIFO");
        let err = result.expect_err("a FIFO is not a configuration file");
        assert_eq!(err.source_name, path.display().to_string());
        assert_eq!(
            err.message,
            "cannot read the file: not a regular file but a FIFO"
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        let err = read_err(Path::new("/dev/zero"));
        assert_eq!(err.source_name, "/dev/zero");
        assert!(err.message.ends_with("a character device"), "{err}");
        let dir = tempfile::tempdir().expect("temporary directory");
        let err = read_err(dir.path());
        assert!(err.message.ends_with("a directory"), "{err}");
        let err = read_err(&dir.path().join("absent.toml"));
        assert!(err.message.starts_with("cannot read the file: "), "{err}");
        assert_eq!((err.line, err.key), (None, None));
    }

    #[test]
    fn at_most_one_mebibyte() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("big.toml");
        let head = "[servers.a]\n";
        let mut text = String::from(head);
        while text.len() < MAX_FILE_BYTES as usize {
            text.push_str("# padding\n");
        }
        text.truncate(MAX_FILE_BYTES as usize - 1);
        text.push('\n');
        std::fs::write(&path, &text).expect("write");
        let read_back = read(&Source::File(path.clone())).expect("exactly 1 MiB is read");
        assert_eq!(read_back.len() as u64, MAX_FILE_BYTES);
        text.push('\n');
        std::fs::write(&path, &text).expect("write");
        let err = read_err(&path);
        assert_eq!(err.source_name, path.display().to_string());
        assert!(err.message.contains("larger than 1048576 bytes"), "{err}");

        std::fs::write(&path, b"[servers.a]\n# \xff\n").expect("write");
        assert!(read_err(&path).message.contains("not valid UTF-8"));
        assert_eq!(read(&Source::Embedded).expect("embedded"), EMBEDDED_DEFAULT);
    }
}
