//! The daemon's configuration: where it comes from, how it is read, and what makes it valid.
//!
//! # Sources
//!
//! The file is, first found: `--config FILE`, `$PACKET_IPC_CONFIG`, [`SYSTEM_PATH`], else the
//! embedded default [`EMBEDDED_DEFAULT`] (one server, `default`); see [`locate`]. Its keys are
//! kebab-case and unknown keys are errors, in the file and in the environment alike.
//!
//! # Reading
//!
//! [`load`] reads the text once and parses it twice:
//!
//! 1. with the `toml` crate straight into [`Config`], only to report syntax and type errors
//!    with the file, the dotted key and the line (the span of the error is mapped back to the
//!    key through a spanned parse of the same text);
//! 2. with the `config` crate, which layers the environment overrides over the file and
//!    builds the final [`Config`].
//!
//! The values are then checked (ranges, server names, at least one server). Every error is a
//! [`ConfigError`] that names where the bad value came from: the file (with its line when it
//! can be found) or the environment variable.
//!
//! # Environment overrides
//!
//! `PACKET_IPC__DAEMON__<KEY>` sets `daemon.<key>` and `PACKET_IPC__SERVERS__<NAME>__<KEY>`
//! sets `servers.<name>.<key>`: double underscores separate the levels, `<KEY>` is matched
//! case-insensitively with `_` standing for `-` (`QUEUE_DEPTH` is `queue-depth`). Only the
//! `PACKET_IPC__` prefix (two underscores) is read, so the contract's single-underscore
//! variables (`PACKET_IPC_CONFIG`, `PACKET_IPC_RUNTIME_DIR`, `PACKET_IPC_RENDEZVOUS`) are
//! never taken for keys. Any other `PACKET_IPC__...` variable is an error naming it.
//!
//! `<NAME>` is resolved against the servers of the file: the exact name first, else the one
//! server whose name is equal ignoring ASCII case and taking `-`, `_` and `.` as the same
//! character (so `PACKET_IPC__SERVERS__CAP_0__SNAPLEN` reaches a server named `cap-0` and
//! `..._CAPTURE0_...` one named `Capture0`). Two servers that match that way are an error.
//! A name matching no server creates one, named `<NAME>` in lower case, with the defaults
//! for what is not set.
//!
//! Values are typed by their key: integer keys take a non-negative decimal integer, `overflow`
//! and `log-format` one of their names, the others the text as it is; an empty value clears an optional key (`runtime-dir`, `producer-group`,
//! `subscriber-group`).
//!
//! The overrides reach the `config` crate through a [`config::Source`] of our own rather than
//! `config::Environment`: that one lowercases every key and, with `convert_case(Kebab)`,
//! converts every segment, server names included, and its kebab conversion splits letters
//! from digits (`capture0` would become `capture-0`), so an override could never reach
//! `servers.capture0`. The limitation left: a server whose name cannot be spelled in an
//! environment variable name even with the rules above (say `a__b` next to `a_b`) is out of
//! reach of overrides; it can still be set in the file.
//!
//! # Groups
//!
//! A Unix group named by `producer-group` or `subscriber-group` that does not exist is not an
//! error here: [`missing_groups`] lists them, and the daemon decides (a warning under
//! `--check`, an error when it starts).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// The daemon's whole configuration.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The `[daemon]` table: settings of the process itself.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The `[servers.NAME]` tables: one broker server per entry, keyed by its name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DaemonConfig {
    /// `runtime-dir`: where the rendezvous file, the spool directories and the lock live.
    /// `None` lets the daemon choose (see DESIGN.md 1.1). Must be absolute when set.
    pub runtime_dir: Option<PathBuf>,
    /// `log-format`: how the daemon writes its log. Default: text.
    pub log_format: LogFormat,
    /// `shutdown-timeout-ms`: how long to keep delivering queued batches after SIGTERM or
    /// SIGINT, in milliseconds. Default 5000; at most one day, so a deadline computed from it
    /// cannot overflow.
    pub shutdown_timeout_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            runtime_dir: None,
            log_format: LogFormat::Text,
            shutdown_timeout_ms: 5000,
        }
    }
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[servers.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerConfig {
    /// `linktype`: the pcap `LINKTYPE_*` of the packets, written into subscribers' pcap
    /// files. Default 1 (Ethernet); at most 65535.
    pub linktype: u32,
    /// `snaplen`: the longest captured length; publishers cut longer packets to it.
    /// Default 65535; 1 to 262144.
    pub snaplen: u32,
    /// `queue-depth`: batches buffered per subscriber before the overflow policy applies.
    /// Default 256; 1 to 65536.
    pub queue_depth: usize,
    /// `overflow`: what to do when a subscriber's queue is full. Default drop-oldest.
    pub overflow: Overflow,
    /// `max-subscribers`: subscribers connected at once. Default 64; 1 to 4096.
    pub max_subscribers: usize,
    /// `max-producers`: producers connected at once. Default 4; 1 to 64.
    pub max_producers: usize,
    /// `max-batch-bytes`: the largest batch a producer may send, in bytes.
    /// Default 16 MiB; 4096 to 1 GiB.
    pub max_batch_bytes: usize,
    /// `producer-group`: when set, only members of this Unix group may produce.
    pub producer_group: Option<String>,
    /// `subscriber-group`: when set, only members of this Unix group may subscribe.
    pub subscriber_group: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            linktype: 1,
            snaplen: 65535,
            queue_depth: 256,
            overflow: Overflow::DropOldest,
            max_subscribers: 64,
            max_producers: 4,
            max_batch_bytes: 16 * 1024 * 1024,
            producer_group: None,
            subscriber_group: None,
        }
    }
}

/// What a server does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Discard the subscriber's oldest queued batch; it is told how much it lost.
    DropOldest,
    /// Discard the incoming batch for that subscriber; it is told how much it lost.
    DropNewest,
    /// Cut the subscriber off, telling it why.
    Disconnect,
    /// Lossless: the producer waits for the slowest subscriber.
    Block,
}

impl Overflow {
    /// The policy's name as written in the configuration: `drop-oldest`, `drop-newest`,
    /// `disconnect` or `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropOldest => "drop-oldest",
            Overflow::DropNewest => "drop-newest",
            Overflow::Disconnect => "disconnect",
            Overflow::Block => "block",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
/// The prefix of override variables (matched ignoring ASCII case).
const ENV_PREFIX: &str = "PACKET_IPC__";
/// What separates the levels of an override variable's name.
const ENV_SEPARATOR: &str = "__";
/// How errors name the embedded default.
const EMBEDDED_NAME: &str = "the embedded default configuration";

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

/// Reads and checks the configuration from `source`, then applies the
/// `PACKET_IPC__SECTION__KEY` overrides of the process environment (see the module docs).
pub fn load(source: &Source) -> Result<Config, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => env.push((name, value)),
            (name, _) => {
                let name = match name {
                    Ok(name) => name,
                    Err(name) => name.to_string_lossy().into_owned(),
                };
                if has_env_prefix(&name) {
                    return Err(ConfigError {
                        source_name: env_source_name(&name),
                        line: None,
                        key: None,
                        message: "not valid UTF-8".to_owned(),
                    });
                }
            }
        }
    }
    load_with_env(source, &env)
}

/// [`load`] with the environment given as (name, value) pairs.
pub fn load_with_env(source: &Source, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let text: Cow<'_, str> = match source {
        Source::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => Cow::Owned(text),
            Err(err) => {
                return Err(ConfigError {
                    source_name: source.to_string(),
                    line: None,
                    key: None,
                    message: format!("cannot read the file: {err}"),
                })
            }
        },
        Source::Embedded => Cow::Borrowed(EMBEDDED_DEFAULT),
    };
    let file = FileText {
        name: source.to_string(),
        text: &text,
    };

    // Syntax and type errors, with the line: from the toml crate and its spans.
    let parsed: Config = toml::from_str(&text).map_err(|err| file.toml_error(&err))?;

    let known: Vec<String> = parsed.servers.keys().cloned().collect();
    let overrides = EnvOverrides::parse(env, &known)?;

    // The final configuration: the file, then the environment over it.
    let merged = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(overrides.clone())
        .build()
        .and_then(|merged| merged.try_deserialize::<Config>())
        .map_err(|err| overrides.config_error(&file, err))?;

    validate(&merged, &file, &overrides)?;
    Ok(merged)
}

/// What is wrong with a configuration.
///
/// Displayed on one line: where (the file, or `environment variable PACKET_IPC__...`), the
/// line when known, the dotted key when known, and what is wrong, e.g.
/// `/etc/packet-ipc/packet-ipcd.toml: line 12: servers.capture0.overflow: unknown variant
/// `fast`, expected one of ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}{}{message}", line_prefix(*.line), key_prefix(.key.as_deref()))]
pub struct ConfigError {
    /// The file's path, [`Source::Embedded`]'s name, or `environment variable NAME`.
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

/// Unix groups named by the configuration that do not exist on this machine, as
/// (server, key, group), in server order, `producer-group` before `subscriber-group`.
pub fn missing_groups(config: &Config) -> Vec<(String, &'static str, String)> {
    let mut missing = Vec::new();
    for (name, server) in &config.servers {
        let groups = [
            ("producer-group", &server.producer_group),
            ("subscriber-group", &server.subscriber_group),
        ];
        for (key, group) in groups {
            if let Some(group) = group {
                if group_id(group).is_none() {
                    missing.push((name.clone(), key, group.clone()));
                }
            }
        }
    }
    missing
}

/// Looks a Unix group up by name: its gid, or `None` if there is no such group (or it cannot
/// be looked up).
pub fn group_id(name: &str) -> Option<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Some(group.gid.as_raw()),
        Ok(None) | Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The file text: line numbers and keys from byte offsets.

/// The configuration text and how errors name it.
struct FileText<'a> {
    name: String,
    text: &'a str,
}

impl FileText<'_> {
    /// A syntax or type error of the toml crate, with its line and key.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let offset = err.span().map(|span| span.start);
        let message = err.message().trim().replace('\n', "; ");
        ConfigError {
            source_name: self.name.clone(),
            line: offset.map(|offset| line_at(self.text, offset)),
            key: offset.and_then(|offset| key_at(self.text, offset)),
            message,
        }
    }

    /// An error about `path`, set in this file, with its line if it can be found.
    fn error(&self, path: &[&str], message: String) -> ConfigError {
        ConfigError {
            source_name: self.name.clone(),
            line: self.line_of(path),
            key: Some(path.join(".")),
            message,
        }
    }

    /// The line where the key `path` is written, if it is.
    fn line_of(&self, path: &[&str]) -> Option<usize> {
        let (document, _) = DeTable::parse_recoverable(self.text);
        let mut table = document.get_ref();
        let mut span = None;
        for (i, segment) in path.iter().enumerate() {
            let (key, value) = table.iter().find(|(key, _)| key.get_ref() == segment)?;
            span = Some(key.span());
            if i + 1 < path.len() {
                table = match value.get_ref() {
                    DeValue::Table(inner) => inner,
                    _ => return None,
                };
            }
        }
        span.map(|span| line_at(self.text, span.start))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key written at byte `offset` of `text`: the key itself, or the key of the value
/// there.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let (document, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    // Keys and scalar values first: a table's span may reach beyond what it holds.
    if find_key(document.get_ref(), offset, false, &mut path)
        || find_key(document.get_ref(), offset, true, &mut path)
    {
        Some(path.join("."))
    } else {
        None
    }
}

fn find_key(table: &DeTable<'_>, offset: usize, tables: bool, path: &mut Vec<String>) -> bool {
    let holds = |span: Range<usize>| span.contains(&offset) || span.start == offset;
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        let found = match value.get_ref() {
            DeValue::Table(inner) => {
                (!tables && holds(key.span()))
                    || find_key(inner, offset, tables, path)
                    || (tables && holds(value.span()))
            }
            _ => !tables && (holds(key.span()) || holds(value.span())),
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Environment overrides.

/// How an override's text becomes a value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-negative decimal integer.
    Integer,
    /// The name of a variant, checked by the function (so that the error lists the variants).
    Variant(fn(&str) -> Result<(), String>),
    /// The text as it is; empty clears the key.
    OptionalText,
}

/// The keys of `[daemon]`, with their kinds. Kept equal to [`DaemonConfig`]'s fields (tested).
const DAEMON_KEYS: &[(&str, Kind)] = &[
    ("runtime-dir", Kind::OptionalText),
    ("log-format", Kind::Variant(check_variant::<LogFormat>)),
    ("shutdown-timeout-ms", Kind::Integer),
];

/// The keys of `[servers.NAME]`, with their kinds. Kept equal to [`ServerConfig`]'s fields
/// (tested).
const SERVER_KEYS: &[(&str, Kind)] = &[
    ("linktype", Kind::Integer),
    ("snaplen", Kind::Integer),
    ("queue-depth", Kind::Integer),
    ("overflow", Kind::Variant(check_variant::<Overflow>)),
    ("max-subscribers", Kind::Integer),
    ("max-producers", Kind::Integer),
    ("max-batch-bytes", Kind::Integer),
    ("producer-group", Kind::OptionalText),
    ("subscriber-group", Kind::OptionalText),
];

/// Whether `name` is a variant of `T`, with serde's message if not.
fn check_variant<T: serde::de::DeserializeOwned>(name: &str) -> Result<(), String> {
    let deserializer = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name);
    T::deserialize(deserializer)
        .map(drop)
        .map_err(|err| err.to_string())
}

fn has_env_prefix(name: &str) -> bool {
    name.get(..ENV_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX))
}

fn env_source_name(var: &str) -> String {
    format!("environment variable {var}")
}

/// One `PACKET_IPC__...` variable, understood.
#[derive(Debug, Clone)]
struct Override {
    /// The variable's name, for errors.
    var: String,
    /// The key it sets: `["daemon", key]` or `["servers", name, key]`.
    path: Vec<String>,
    /// The value, typed by the key.
    value: config::ValueKind,
}

/// The environment overrides, as a `config` source.
#[derive(Debug, Clone, Default)]
struct EnvOverrides {
    overrides: Vec<Override>,
}

impl EnvOverrides {
    /// Picks the `PACKET_IPC__` variables out of `env` and checks their keys and integer
    /// values. `servers` are the server names of the file, to resolve `<NAME>` against.
    fn parse(env: &[(String, String)], servers: &[String]) -> Result<Self, ConfigError> {
        let mut overrides = Vec::new();
        for (var, value) in env {
            if !has_env_prefix(var) {
                continue;
            }
            let error = |key: Option<String>, message: String| ConfigError {
                source_name: env_source_name(var),
                line: None,
                key,
                message,
            };
            let segments: Vec<&str> = var[ENV_PREFIX.len()..].split(ENV_SEPARATOR).collect();
            let section = segments[0].to_ascii_lowercase();
            let (path, keys) = match (section.as_str(), segments.len()) {
                ("daemon", 2) => (vec![section.clone()], DAEMON_KEYS),
                ("servers", n) if n >= 3 => {
                    let given = segments[1..n - 1].join(ENV_SEPARATOR);
                    let name = resolve_server(&given, servers).map_err(|candidates| {
                        error(
                            Some(format!("servers.{given}")),
                            format!("matches more than one server: {}", candidates.join(", ")),
                        )
                    })?;
                    (vec![section.clone(), name], SERVER_KEYS)
                }
                ("daemon", _) => {
                    return Err(error(
                        Some(section),
                        "expected PACKET_IPC__DAEMON__<KEY>".to_owned(),
                    ))
                }
                ("servers", _) => {
                    return Err(error(
                        Some(section),
                        "expected PACKET_IPC__SERVERS__<NAME>__<KEY>".to_owned(),
                    ))
                }
                _ => {
                    return Err(error(
                        Some(kebab(&segments.join("."))),
                        "unknown key, expected PACKET_IPC__DAEMON__<KEY> or \
                         PACKET_IPC__SERVERS__<NAME>__<KEY>"
                            .to_owned(),
                    ))
                }
            };
            let key = kebab(segments[segments.len() - 1]);
            let mut path = path;
            path.push(key.clone());
            let dotted = path.join(".");
            let Some(&(_, kind)) = keys.iter().find(|(name, _)| *name == key) else {
                let expected: Vec<String> =
                    keys.iter().map(|(name, _)| format!("`{name}`")).collect();
                return Err(error(
                    Some(dotted),
                    format!("unknown key, expected one of {}", expected.join(", ")),
                ));
            };
            let value = match kind {
                Kind::Integer => match value.trim().parse::<u64>() {
                    Ok(int) => config::ValueKind::U64(int),
                    Err(_) => {
                        return Err(error(
                            Some(dotted),
                            format!("expected a non-negative integer, got {value:?}"),
                        ))
                    }
                },
                Kind::OptionalText if value.is_empty() => config::ValueKind::Nil,
                Kind::Variant(check) => {
                    check(value).map_err(|message| error(Some(dotted.clone()), message))?;
                    config::ValueKind::String(value.clone())
                }
                Kind::OptionalText => config::ValueKind::String(value.clone()),
            };
            overrides.push(Override {
                var: var.clone(),
                path,
                value,
            });
        }
        Ok(EnvOverrides { overrides })
    }

    /// The variable that set exactly the key `path`, if one did (the last one wins, as in
    /// the merge).
    fn setting(&self, path: &[&str]) -> Option<&Override> {
        self.overrides.iter().rev().find(|o| o.path == path)
    }

    /// The first variable that set a key under `path`.
    fn setting_under(&self, path: &[&str]) -> Option<&Override> {
        self.overrides
            .iter()
            .find(|o| path_starts_with(&o.path, path))
    }

    /// An error about the value at `path`, named after where that value came from: the
    /// variable that set it, else the file (with the line), else a variable that set a key
    /// under it (a server created by the environment).
    fn error(&self, file: &FileText<'_>, path: &[&str], message: String) -> ConfigError {
        if let Some(o) = self.setting(path) {
            return ConfigError {
                source_name: env_source_name(&o.var),
                line: None,
                key: Some(path.join(".")),
                message,
            };
        }
        let error = file.error(path, message);
        match self.setting_under(path) {
            Some(o) if error.line.is_none() => ConfigError {
                source_name: env_source_name(&o.var),
                ..error
            },
            _ => error,
        }
    }

    /// An error of the `config` crate, named after the source of its key.
    fn config_error(&self, file: &FileText<'_>, err: config::ConfigError) -> ConfigError {
        let (key, message) = match err {
            config::ConfigError::Type {
                unexpected,
                expected,
                key,
                ..
            } => (
                key,
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            config::ConfigError::At { error, key, .. } => (key, error.to_string()),
            config::ConfigError::NotFound(key) => (Some(key), "missing".to_owned()),
            other => (None, other.to_string()),
        };
        match key {
            Some(key) => {
                let path: Vec<&str> = key.split('.').collect();
                self.error(file, &path, message)
            }
            None => ConfigError {
                source_name: file.name.clone(),
                line: None,
                key: None,
                message,
            },
        }
    }
}

impl config::Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    /// Nested tables, so that server names are taken as they are (the `config` crate would
    /// parse a dotted key as a path and split a name holding a dot).
    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut root = config::Map::new();
        for o in &self.overrides {
            let origin = env_source_name(&o.var);
            let value = config::Value::new(Some(&origin), o.value.clone());
            insert(&mut root, &o.path, value, &origin);
        }
        Ok(root)
    }
}

/// Sets `path` in the nested tables under `table`, making the tables on the way.
fn insert(
    table: &mut config::Map<String, config::Value>,
    path: &[String],
    value: config::Value,
    origin: &String,
) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table.entry(first.clone()).or_insert_with(|| {
        config::Value::new(Some(origin), config::ValueKind::Table(config::Map::new()))
    });
    if let config::ValueKind::Table(inner) = &mut entry.kind {
        insert(inner, rest, value, origin);
    }
}

/// `path` starts with the segments of `prefix`.
fn path_starts_with(path: &[String], prefix: &[&str]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| a == b)
}

/// An environment key segment in the configuration's spelling: lower case, `-` for `_`.
fn kebab(segment: &str) -> String {
    segment.to_ascii_lowercase().replace('_', "-")
}

/// The server that `<NAME>` of an override means: an exact match, else the one equal
/// ignoring ASCII case with `-`, `_` and `.` alike, else a new server named `<NAME>` in
/// lower case. `Err` lists the servers when more than one matches.
fn resolve_server(given: &str, servers: &[String]) -> Result<String, Vec<String>> {
    if servers.iter().any(|name| name == given) {
        return Ok(given.to_owned());
    }
    let fold = |name: &str| -> String {
        name.chars()
            .map(|c| match c {
                '-' | '.' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    };
    let wanted = fold(given);
    let matches: Vec<String> = servers
        .iter()
        .filter(|name| fold(name) == wanted)
        .cloned()
        .collect();
    match matches.len() {
        0 => Ok(given.to_ascii_lowercase()),
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        _ => Err(matches),
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

const LINKTYPE_MAX: u64 = 65535;
const SNAPLEN: (u64, u64) = (1, 262_144);
const QUEUE_DEPTH: (u64, u64) = (1, 65_536);
const MAX_SUBSCRIBERS: (u64, u64) = (1, 4096);
const MAX_PRODUCERS: (u64, u64) = (1, 64);
const MAX_BATCH_BYTES: (u64, u64) = (4096, 1 << 30);
const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;
const SERVER_NAME_MAX: usize = 64;

/// Checks the values that types alone do not: ranges, names, at least one server.
fn validate(config: &Config, file: &FileText<'_>, env: &EnvOverrides) -> Result<(), ConfigError> {
    let daemon = &config.daemon;
    if let Some(dir) = &daemon.runtime_dir {
        if !dir.is_absolute() {
            return Err(env.error(
                file,
                &["daemon", "runtime-dir"],
                format!(
                    "must be an absolute path, got {:?}",
                    dir.display().to_string()
                ),
            ));
        }
    }
    check_range(
        file,
        env,
        &["daemon", "shutdown-timeout-ms"],
        daemon.shutdown_timeout_ms,
        (0, SHUTDOWN_TIMEOUT_MS_MAX),
    )?;

    if config.servers.is_empty() {
        return Err(env.error(
            file,
            &["servers"],
            "at least one server is required, e.g. a [servers.capture0] table".to_owned(),
        ));
    }
    for (name, server) in &config.servers {
        if !valid_server_name(name) {
            return Err(env.error(
                file,
                &["servers", name],
                format!(
                    "invalid server name {name:?}: 1 to {SERVER_NAME_MAX} characters among \
                     A-Z a-z 0-9 . _ -, starting with a letter or a digit"
                ),
            ));
        }
        let key = |key| ["servers", name.as_str(), key];
        let usize_value = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        check_range(
            file,
            env,
            &key("linktype"),
            server.linktype.into(),
            (0, LINKTYPE_MAX),
        )?;
        check_range(file, env, &key("snaplen"), server.snaplen.into(), SNAPLEN)?;
        check_range(
            file,
            env,
            &key("queue-depth"),
            usize_value(server.queue_depth),
            QUEUE_DEPTH,
        )?;
        check_range(
            file,
            env,
            &key("max-subscribers"),
            usize_value(server.max_subscribers),
            MAX_SUBSCRIBERS,
        )?;
        check_range(
            file,
            env,
            &key("max-producers"),
            usize_value(server.max_producers),
            MAX_PRODUCERS,
        )?;
        check_range(
            file,
            env,
            &key("max-batch-bytes"),
            usize_value(server.max_batch_bytes),
            MAX_BATCH_BYTES,
        )?;
        for (group_key, group) in [
            ("producer-group", &server.producer_group),
            ("subscriber-group", &server.subscriber_group),
        ] {
            if let Some(group) = group {
                if group.is_empty() || group.contains('\0') {
                    return Err(env.error(
                        file,
                        &key(group_key),
                        "must be a group name (leave the key out for no restriction)".to_owned(),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_range(
    file: &FileText<'_>,
    env: &EnvOverrides,
    path: &[&str],
    value: u64,
    (min, max): (u64, u64),
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let message = if min == 0 {
        format!("must be at most {max}, got {value}")
    } else {
        format!("must be between {min} and {max}, got {value}")
    };
    Err(env.error(file, path, message))
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
fn valid_server_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= SERVER_NAME_MAX
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config/packet-ipcd.toml");

    fn shipped_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/packet-ipcd.toml")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// Writes `text` to a file in a fresh directory and loads it with `vars`.
    fn load_text(text: &str, vars: &[(&str, &str)]) -> (PathBuf, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("packet-ipcd.toml");
        std::fs::write(&path, text).expect("write the file");
        let result = load_with_env(&Source::File(path.clone()), &env(vars));
        (path, result)
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> (PathBuf, ConfigError) {
        let (path, result) = load_text(text, vars);
        match result {
            Ok(config) => panic!("expected an error, loaded {config:?}"),
            Err(err) => (path, err),
        }
    }

    /// The 1-based line of the first line of `text` holding `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .map(|i| i + 1)
            .expect("needle in text")
    }

    const MINIMAL: &str = "[servers.capture0]\nlinktype = 1\n";

    #[test]
    fn shipped_example_loads() {
        let config = load_with_env(&Source::File(shipped_path()), &[]).expect("valid");
        assert_eq!(config.daemon, DaemonConfig::default());
        assert_eq!(
            config.servers.keys().collect::<Vec<_>>(),
            ["capture0", "lossless"]
        );
        assert_eq!(config.servers["capture0"], ServerConfig::default());
        let lossless = &config.servers["lossless"];
        assert_eq!(lossless.overflow, Overflow::Block);
        assert_eq!(lossless.queue_depth, 64);
        assert_eq!(lossless.max_subscribers, 8);
        assert_eq!(lossless.max_producers, 1);
        // The same text through the toml crate alone gives the same thing.
        assert_eq!(toml::from_str::<Config>(SHIPPED).expect("valid"), config);
        assert!(missing_groups(&config).is_empty());
    }

    #[test]
    fn embedded_default_is_one_default_server() {
        let config = load_with_env(&Source::Embedded, &[]).expect("valid");
        let expected = Config {
            daemon: DaemonConfig::default(),
            servers: BTreeMap::from([("default".to_owned(), ServerConfig::default())]),
        };
        assert_eq!(config, expected);
        assert_eq!(Source::Embedded.to_string(), EMBEDDED_NAME);
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let (_, result) = load_text(MINIMAL, &[]);
        let config = result.expect("valid");
        assert_eq!(config.daemon, DaemonConfig::default());
        assert_eq!(config.servers["capture0"], ServerConfig::default());
        let defaults = ServerConfig::default();
        assert_eq!(defaults.max_batch_bytes, 16 * 1024 * 1024);
        assert_eq!(DaemonConfig::default().shutdown_timeout_ms, 5000);
        assert_eq!(DaemonConfig::default().log_format, LogFormat::Text);
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = "[daemon]\nlog-format = \"json\"\n\n[servers.capture0]\nsnaplen = 100\ncolour = \"red\"\n";
        let (path, err) = load_err(text, &[]);
        assert_eq!(err.key(), Some("servers.capture0.colour"));
        assert_eq!(err.line(), Some(6));
        assert!(err.message.contains("unknown field `colour`"), "{err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}: line 6: servers.capture0.colour: unknown field",
                path.display()
            )),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
    }

    #[test]
    fn unknown_daemon_key_and_section() {
        let (_, err) = load_err("[daemon]\nlog-level = \"debug\"\n", &[]);
        assert_eq!(err.key(), Some("daemon.log-level"));
        assert_eq!(err.line(), Some(2));

        let text = format!("{MINIMAL}\n[deamon]\nlog-format = \"json\"\n");
        let (_, err) = load_err(&text, &[]);
        assert_eq!(err.key(), Some("deamon"));
        assert_eq!(err.line(), Some(line_of(&text, "[deamon]")));
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = "[servers.capture0]\nlinktype = 1\nsnaplen = \"big\"\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.key(), Some("servers.capture0.snaplen"));
        assert_eq!(err.line(), Some(3));
        assert!(err.message.contains("invalid type"), "{err}");

        let text = "[daemon]\nshutdown-timeout-ms = -1\n[servers.a]\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.key(), Some("daemon.shutdown-timeout-ms"));
        assert_eq!(err.line(), Some(2));

        let text = "[servers.a]\n\n\nlinktype = 4294967296\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.key(), Some("servers.a.linktype"));
        assert_eq!(err.line(), Some(4));

        let text = "[servers]\ncapture0 = 5\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.key(), Some("servers.capture0"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn syntax_error_names_line() {
        let text = "[daemon]\nlog-format = \"text\"\n\n[servers.capture0\nsnaplen = 1\n";
        let (path, err) = load_err(text, &[]);
        assert_eq!(err.line(), Some(4));
        assert!(err
            .to_string()
            .starts_with(&format!("{}: line 4: ", path.display())));

        let text = "[servers.capture0]\nsnaplen = 1\noverflow = drop-oldest\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.line(), Some(3));

        let text = "[servers.a]\nsnaplen = 1\nsnaplen = 2\n";
        let (_, err) = load_err(text, &[]);
        assert_eq!(err.line(), Some(3));
    }

    #[test]
    fn unknown_overflow_variant() {
        let text = SHIPPED.replace("overflow = \"block\"", "overflow = \"fast\"");
        let (path, err) = load_err(&text, &[]);
        assert_eq!(err.key(), Some("servers.lossless.overflow"));
        assert_eq!(err.line(), Some(line_of(&text, "\"fast\"")));
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}: line {}: servers.lossless.overflow: unknown variant `fast`, expected one of",
                path.display(),
                err.line().unwrap_or_default()
            )),
            "{shown}"
        );
        for name in ["drop-oldest", "drop-newest", "disconnect", "block"] {
            assert!(shown.contains(name), "{shown}");
        }

        let (_, err) = load_err("[daemon]\nlog-format = \"xml\"\n[servers.a]\n", &[]);
        assert_eq!(err.key(), Some("daemon.log-format"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn range_errors_name_file_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "snaplen = 0",
                "snaplen",
                "must be between 1 and 262144, got 0",
            ),
            (
                "snaplen = 262145",
                "snaplen",
                "must be between 1 and 262144, got 262145",
            ),
            (
                "linktype = 65536",
                "linktype",
                "must be at most 65535, got 65536",
            ),
            (
                "queue-depth = 0",
                "queue-depth",
                "must be between 1 and 65536, got 0",
            ),
            (
                "queue-depth = 65537",
                "queue-depth",
                "must be between 1 and 65536",
            ),
            (
                "max-subscribers = 0",
                "max-subscribers",
                "must be between 1 and 4096",
            ),
            ("max-subscribers = 4097", "max-subscribers", "got 4097"),
            (
                "max-producers = 0",
                "max-producers",
                "must be between 1 and 64, got 0",
            ),
            ("max-producers = 65", "max-producers", "got 65"),
            (
                "max-batch-bytes = 4095",
                "max-batch-bytes",
                "must be between 4096 and 1073741824",
            ),
            (
                "max-batch-bytes = 1073741825",
                "max-batch-bytes",
                "got 1073741825",
            ),
            (
                "producer-group = \"\"",
                "producer-group",
                "must be a group name",
            ),
        ];
        for (line, key, message) in cases {
            let text = format!("[daemon]\n\n[servers.x]\noverflow = \"block\"\n{line}\n");
            let (path, err) = load_err(&text, &[]);
            assert_eq!(
                err.key(),
                Some(format!("servers.x.{key}").as_str()),
                "{line}"
            );
            assert_eq!(err.line(), Some(5), "{line}");
            assert_eq!(err.source_name, path.display().to_string());
            assert!(err.message.contains(message), "{line}: {err}");
            assert!(
                err.to_string()
                    .contains(&format!("servers.x.{key}: {}", err.message)),
                "{err}"
            );
        }
        // The bounds themselves are valid.
        let text = "[servers.x]\nlinktype = 65535\nsnaplen = 262144\nqueue-depth = 65536\n\
                    max-subscribers = 4096\nmax-producers = 64\nmax-batch-bytes = 1073741824\n\
                    [servers.y]\nlinktype = 0\nsnaplen = 1\nqueue-depth = 1\nmax-subscribers = 1\n\
                    max-producers = 1\nmax-batch-bytes = 4096\n";
        load_text(text, &[]).1.expect("bounds are valid");

        let (_, err) = load_err(
            "[daemon]\nshutdown-timeout-ms = 86400001\n[servers.x]\n",
            &[],
        );
        assert_eq!(err.key(), Some("daemon.shutdown-timeout-ms"));
        let (_, err) = load_err("[daemon]\nruntime-dir = \"run/here\"\n[servers.x]\n", &[]);
        assert_eq!(err.key(), Some("daemon.runtime-dir"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn server_names_and_count() {
        for name in ["a", "capture0", "Cap-0.rx_1", &"n".repeat(64)] {
            let text = format!("[servers.\"{name}\"]\n");
            let (_, result) = load_text(&text, &[]);
            let config = result.unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(config.servers.contains_key(name));
        }
        for name in ["-a", ".a", "_a", "a b", "é", &"n".repeat(65), ""] {
            let text = format!("[servers.x]\n[servers.\"{name}\"]\n");
            let (_, err) = load_err(&text, &[]);
            assert_eq!(err.key(), Some(format!("servers.{name}").as_str()));
            assert!(err.message.contains("invalid server name"), "{err}");
        }
        let (_, err) = load_err("[daemon]\nlog-format = \"json\"\n", &[]);
        assert_eq!(err.key(), Some("servers"));
        assert!(err.message.contains("at least one server"), "{err}");
        let (_, err) = load_err("[daemon]\n[servers]\n", &[]);
        assert_eq!(err.key(), Some("servers"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn unreadable_file_names_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("absent.toml");
        let err = load_with_env(&Source::File(path.clone()), &[]).expect_err("absent");
        assert_eq!(err.source_name, path.display().to_string());
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let vars = [
            ("PACKET_IPC__DAEMON__LOG_FORMAT", "json"),
            ("PACKET_IPC__DAEMON__RUNTIME_DIR", "/run/elsewhere"),
            ("PACKET_IPC__DAEMON__SHUTDOWN_TIMEOUT_MS", "250"),
            ("PACKET_IPC__SERVERS__CAPTURE0__QUEUE_DEPTH", "8"),
            ("PACKET_IPC__SERVERS__CAPTURE0__OVERFLOW", "disconnect"),
            ("PACKET_IPC__SERVERS__CAPTURE0__PRODUCER_GROUP", "pcap"),
            ("PACKET_IPC__SERVERS__LOSSLESS__SNAPLEN", "1500"),
        ];
        let config = load_with_env(&Source::File(shipped_path()), &env(&vars)).expect("valid");
        assert_eq!(config.daemon.log_format, LogFormat::Json);
        assert_eq!(
            config.daemon.runtime_dir.as_deref(),
            Some(Path::new("/run/elsewhere"))
        );
        assert_eq!(config.daemon.shutdown_timeout_ms, 250);
        let capture0 = &config.servers["capture0"];
        assert_eq!(capture0.queue_depth, 8);
        assert_eq!(capture0.overflow, Overflow::Disconnect);
        assert_eq!(capture0.producer_group.as_deref(), Some("pcap"));
        assert_eq!(capture0.snaplen, 65535);
        assert_eq!(config.servers["lossless"].snaplen, 1500);
        assert_eq!(config.servers["lossless"].overflow, Overflow::Block);
        assert_eq!(config.servers.len(), 2);

        // Over the embedded default too.
        let vars = [("PACKET_IPC__SERVERS__DEFAULT__MAX_PRODUCERS", "2")];
        let config = load_with_env(&Source::Embedded, &env(&vars)).expect("valid");
        assert_eq!(config.servers.len(), 1);
        assert_eq!(config.servers["default"].max_producers, 2);
    }

    #[test]
    fn env_overrides_keep_server_names_intact() {
        let text = "[servers.cap-0]\n[servers.eth1_rx]\n[servers.Capture2]\n[servers.v2x]\n\
                    [servers.\"lo.1\"]\n[servers.a-b-c]\n";
        let vars = [
            ("PACKET_IPC__SERVERS__CAP_0__SNAPLEN", "100"),
            ("PACKET_IPC__SERVERS__ETH1_RX__SNAPLEN", "101"),
            ("PACKET_IPC__SERVERS__CAPTURE2__SNAPLEN", "102"),
            ("PACKET_IPC__SERVERS__V2X__SNAPLEN", "103"),
            ("PACKET_IPC__SERVERS__LO_1__SNAPLEN", "104"),
            ("PACKET_IPC__SERVERS__a-b-c__SNAPLEN", "105"),
            ("PACKET_IPC__SERVERS__NEW9__SNAPLEN", "106"),
        ];
        let (_, result) = load_text(text, &vars);
        let config = result.expect("valid");
        let snaplens: Vec<(&str, u32)> = config
            .servers
            .iter()
            .map(|(name, server)| (name.as_str(), server.snaplen))
            .collect();
        assert_eq!(
            snaplens,
            [
                ("Capture2", 102),
                ("a-b-c", 105),
                ("cap-0", 100),
                ("eth1_rx", 101),
                ("lo.1", 104),
                ("new9", 106),
                ("v2x", 103),
            ]
        );
        assert_eq!(config.servers["new9"].queue_depth, 256);

        // Two servers that the same variable could mean.
        let text = "[servers.a-b]\n[servers.a_b]\n";
        let (_, err) = load_err(text, &[("PACKET_IPC__SERVERS__A_B__SNAPLEN", "1")]);
        assert_eq!(
            err.source_name,
            "environment variable PACKET_IPC__SERVERS__A_B__SNAPLEN"
        );
        assert!(err.message.contains("more than one server"), "{err}");
    }

    #[test]
    fn env_unknown_key_names_the_variable() {
        let cases = [
            (
                "PACKET_IPC__SERVERS__CAPTURE0__COLOUR",
                "servers.capture0.colour",
            ),
            ("PACKET_IPC__DAEMON__LOG_LEVEL", "daemon.log-level"),
            ("PACKET_IPC__DEAMON__LOG_FORMAT", "deamon.log-format"),
            ("PACKET_IPC__SERVERS__CAPTURE0", "servers"),
            ("PACKET_IPC__DAEMON", "daemon"),
            ("PACKET_IPC__DAEMON__X__LOG_FORMAT", "daemon"),
        ];
        for (var, key) in cases {
            let err =
                load_with_env(&Source::File(shipped_path()), &env(&[(var, "1")])).expect_err(var);
            assert_eq!(err.source_name, format!("environment variable {var}"));
            assert_eq!(err.key(), Some(key), "{var}");
            assert_eq!(err.line(), None);
            assert!(
                err.to_string()
                    .starts_with(&format!("environment variable {var}: {key}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn env_bad_values_name_the_variable() {
        let cases = [
            (
                "PACKET_IPC__SERVERS__CAPTURE0__OVERFLOW",
                "fast",
                "servers.capture0.overflow",
                "unknown variant `fast`",
            ),
            (
                "PACKET_IPC__SERVERS__CAPTURE0__QUEUE_DEPTH",
                "deep",
                "servers.capture0.queue-depth",
                "expected a non-negative integer",
            ),
            (
                "PACKET_IPC__SERVERS__CAPTURE0__QUEUE_DEPTH",
                "0",
                "servers.capture0.queue-depth",
                "must be between 1 and 65536, got 0",
            ),
            (
                "PACKET_IPC__SERVERS__CAPTURE0__SNAPLEN",
                "-1",
                "servers.capture0.snaplen",
                "expected a non-negative integer",
            ),
            (
                "PACKET_IPC__SERVERS__CAPTURE0__LINKTYPE",
                "4294967296",
                "servers.capture0.linktype",
                "expected an unsigned 32 bit integer",
            ),
            (
                "PACKET_IPC__DAEMON__LOG_FORMAT",
                "xml",
                "daemon.log-format",
                "unknown variant `xml`",
            ),
            (
                "PACKET_IPC__DAEMON__RUNTIME_DIR",
                "relative",
                "daemon.runtime-dir",
                "absolute",
            ),
            (
                "PACKET_IPC__SERVERS__BAD!NAME__SNAPLEN",
                "1",
                "servers.bad!name",
                "invalid server name",
            ),
        ];
        for (var, value, key, message) in cases {
            let err =
                load_with_env(&Source::File(shipped_path()), &env(&[(var, value)])).expect_err(var);
            assert_eq!(
                err.source_name,
                format!("environment variable {var}"),
                "{var}={value}: {err}"
            );
            assert_eq!(err.key(), Some(key), "{var}={value}: {err}");
            assert!(err.message.contains(message), "{var}={value}: {err}");
        }
    }

    #[test]
    fn env_empty_value_clears_an_optional_key() {
        let text = "[daemon]\nruntime-dir = \"/run/x\"\n[servers.a]\nproducer-group = \"pcap\"\n";
        let vars = [
            ("PACKET_IPC__SERVERS__A__PRODUCER_GROUP", ""),
            ("PACKET_IPC__DAEMON__RUNTIME_DIR", ""),
        ];
        let (_, result) = load_text(text, &vars);
        let config = result.expect("valid");
        assert_eq!(config.servers["a"].producer_group, None);
        assert_eq!(config.daemon.runtime_dir, None);
    }

    #[test]
    fn single_underscore_variables_are_not_overrides() {
        let vars = [
            ("PACKET_IPC_CONFIG", "/nowhere/packet-ipcd.toml"),
            ("PACKET_IPC_RUNTIME_DIR", "/tmp/somewhere"),
            ("PACKET_IPC_RENDEZVOUS", "/tmp/somewhere/rendezvous.json"),
            ("PACKET_IPC_ANYTHING_ELSE", "x"),
            ("PACKET_IPC", "x"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
        ];
        let config = load_with_env(&Source::File(shipped_path()), &env(&vars)).expect("valid");
        let plain = load_with_env(&Source::File(shipped_path()), &[]).expect("valid");
        assert_eq!(config, plain);
        let config = load_with_env(&Source::Embedded, &env(&vars)).expect("valid");
        assert_eq!(config.daemon.runtime_dir, None);
    }

    #[test]
    fn load_reads_the_process_environment() {
        let real: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        assert_eq!(
            load(&Source::Embedded),
            load_with_env(&Source::Embedded, &real)
        );
    }

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

    #[test]
    fn overflow_names() {
        for (overflow, name) in [
            (Overflow::DropOldest, "drop-oldest"),
            (Overflow::DropNewest, "drop-newest"),
            (Overflow::Disconnect, "disconnect"),
            (Overflow::Block, "block"),
        ] {
            assert_eq!(overflow.as_str(), name);
            assert_eq!(overflow.to_string(), name);
            assert_eq!(
                serde_json::to_string(&overflow).expect("serialize"),
                format!("\"{name}\"")
            );
            let text = format!("[servers.a]\noverflow = \"{name}\"\n");
            let config: Config = toml::from_str(&text).expect("valid");
            assert_eq!(config.servers["a"].overflow, overflow);
        }
    }

    /// The fields serde expects, read from its "unknown field" message.
    fn expected_fields(text: &str) -> Vec<String> {
        let err = toml::from_str::<Config>(text).expect_err("unknown field");
        let message = err.message();
        let list = message
            .split_once("expected one of ")
            .map(|(_, list)| list)
            .expect("a list of fields");
        list.split(", ")
            .map(|name| name.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn env_key_lists_match_the_structs() {
        let names = |keys: &[(&str, Kind)]| -> Vec<String> {
            keys.iter().map(|(name, _)| (*name).to_owned()).collect()
        };
        assert_eq!(expected_fields("[daemon]\nzzz = 1\n"), names(DAEMON_KEYS));
        assert_eq!(
            expected_fields("[servers.a]\nzzz = 1\n"),
            names(SERVER_KEYS)
        );
        // Every key can be overridden, each kind as declared.
        let mut vars = Vec::new();
        for (section, keys) in [("DAEMON", DAEMON_KEYS), ("SERVERS__A", SERVER_KEYS)] {
            for (key, kind) in keys {
                let value = match (key, kind) {
                    (&"max-producers", _) => "64",
                    (_, Kind::Integer) => "4096",
                    (&"runtime-dir", _) => "/run/x",
                    (&"log-format", _) => "json",
                    (&"overflow", _) => "block",
                    _ => "somegroup",
                };
                let var = format!(
                    "PACKET_IPC__{section}__{}",
                    key.to_ascii_uppercase().replace('-', "_")
                );
                vars.push((var, value.to_owned()));
            }
        }
        let config = load_with_env(&Source::Embedded, &vars).expect("valid");
        let a = &config.servers["a"];
        assert_eq!((a.snaplen, a.overflow), (4096, Overflow::Block));
        assert_eq!(a.subscriber_group.as_deref(), Some("somegroup"));
        assert_eq!(config.daemon.log_format, LogFormat::Json);
    }

    #[test]
    fn groups() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("packet-ipc-no-such-group"), None);
        let text = "[servers.a]\nproducer-group = \"root\"\nsubscriber-group = \"packet-ipc-no-such-group\"\n\
                    [servers.b]\nproducer-group = \"packet-ipc-no-such-group-2\"\n";
        let (_, result) = load_text(text, &[]);
        let config = result.expect("a missing group is not a load error");
        assert_eq!(
            missing_groups(&config),
            [
                (
                    "a".to_owned(),
                    "subscriber-group",
                    "packet-ipc-no-such-group".to_owned()
                ),
                (
                    "b".to_owned(),
                    "producer-group",
                    "packet-ipc-no-such-group-2".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn line_and_key_helpers() {
        assert_eq!(line_at("a\nb\nc", 0), 1);
        assert_eq!(line_at("a\nb\nc", 2), 2);
        assert_eq!(line_at("a\nb\nc", 100), 3);
        let text = "[daemon]\nlog-format = \"text\"\n\n[servers.x]\nsnaplen = 1\n";
        assert_eq!(
            key_at(text, text.find("snaplen").unwrap_or(0)),
            Some("servers.x.snaplen".into())
        );
        assert_eq!(
            key_at(text, text.find("\"text\"").unwrap_or(0)),
            Some("daemon.log-format".into())
        );
        let file = FileText {
            name: "f".into(),
            text,
        };
        assert_eq!(file.line_of(&["servers", "x", "snaplen"]), Some(5));
        assert_eq!(file.line_of(&["servers", "x"]), Some(4));
        assert_eq!(file.line_of(&["servers", "y"]), None);
    }
}
