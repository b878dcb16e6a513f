//! The daemon's configuration: where it comes from, how it is read, and what makes it valid.
//!
//! # Keys
//!
//! Every key is declared once, in the key table [`keys::KEYS`], with its default, the values
//! it takes and what it means; the structs below hold the values, one field per key in the
//! table's order. Keys are kebab-case and unknown keys are errors, in the file and in the
//! environment alike.
//!
//! # Sources
//!
//! The file is, first found: `--config FILE`, `$PACKET_IPC_CONFIG`, [`SYSTEM_PATH`], else the
//! embedded default [`EMBEDDED_DEFAULT`] (one server, `default`); see [`locate`].
//!
//! # Reading
//!
//! [`load`] reads the text once (a regular file of at most 1 MiB, opened without blocking so
//! that a FIFO cannot hang it) and parses it twice:
//!
//! 1. with the `toml` crate, the table's defaults filled in, straight into [`Config`], only to
//!    report syntax and type errors with the file, the dotted key and the line (the span of
//!    the error is mapped back to the key through a spanned parse of the same text); before
//!    serde sees them, an integer that no field can hold (negative, or past `i64`, which the
//!    `config` crate could not read) and an address that is not `IP:PORT` are reported the
//!    same way;
//! 2. with the `config` crate, which layers the file over the table's defaults and the
//!    environment overrides over the file, and builds the final [`Config`].
//!
//! The values are then checked against the table (ranges, absolute paths, group names), and
//! the server names and that there is at least one server. Every error is a [`ConfigError`]
//! that names where the bad value came from: the file (with its line when it can be found) or
//! the environment variable.
//!
//! # Environment overrides
//!
//! `PACKET_IPC__DAEMON__<KEY>` sets `daemon.<key>`, `PACKET_IPC__METRICS__<KEY>`
//! `metrics.<key>` and `PACKET_IPC__SERVERS__<NAME>__<KEY>` sets `servers.<name>.<key>`: double underscores separate the levels, `<KEY>` is matched
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
//! Values are typed by their key's kind in the table: integer keys take a non-negative
//! decimal integer, choices one of their names, the others the text as it is; an empty value
//! clears an optional key (one without a default: `runtime-dir`, `producer-group`,
//! `subscriber-group`, `listen`), so `PACKET_IPC__METRICS__LISTEN=` turns metrics off.
//!
//! The overrides reach the `config` crate as a source of our own rather than
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
//!
//! # Layout
//!
//! - `mod.rs`: the types and [`load`];
//! - [`keys`]: the key table;
//! - `defaults.rs`: the table's defaults, filled into a parsed file, layered under it, and
//!   the `Default` of the structs;
//! - `layer.rs`: values at key paths as a `config` source;
//! - `env.rs`: the environment overrides;
//! - `check.rs`: the checks of values: of the file's own (what cannot even be merged) and of
//!   the final ones;
//! - `source.rs`: where the configuration comes from;
//! - `text.rs`: lines and keys of the file from byte offsets;
//! - `error.rs`: [`ConfigError`];
//! - `groups.rs`: [`missing_groups`] and [`group_id`].

mod check;
mod defaults;
mod env;
mod error;
mod groups;
pub mod keys;
mod layer;
mod source;
#[cfg(test)]
mod test_support;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::de::DeTable;

pub use crate::options::WaitMode;
pub use error::ConfigError;
pub use groups::{group_id, missing_groups};
pub use source::{locate, locate_with, Source, EMBEDDED_DEFAULT, SYSTEM_PATH};

use env::{env_source_name, has_env_prefix, EnvOverrides};
use keys::Section;
use text::FileText;

/// The daemon's whole configuration.
///
/// [`load`] makes one. Deserializing it directly takes every key of a table that has a default
/// as given: the defaults of the key table are filled in by [`load`], not by serde.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The `[daemon]` table: settings of the process itself.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The `[metrics]` table: the metrics endpoint, off when the table or its `listen` is
    /// absent.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The `[servers.NAME]` tables: one broker server per entry, keyed by its name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// The `[daemon]` table. Defaults and ranges: [`keys::KEYS`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonConfig {
    /// `runtime-dir`: where the rendezvous file, the spool directories and the lock live.
    /// `None` lets the daemon choose ([`crate::rendezvous::daemon_runtime_dir`]). Absolute.
    pub runtime_dir: Option<PathBuf>,
    /// `log-format`: how the daemon writes its log.
    pub log_format: LogFormat,
    /// `shutdown-timeout-ms`: how long to keep delivering queued batches after SIGTERM or
    /// SIGINT, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

impl Default for DaemonConfig {
    /// Every key at its default in [`keys::KEYS`].
    fn default() -> Self {
        defaults::of(Section::Daemon)
    }
}

/// The `[metrics]` table. Absent, it is the default: no metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// `listen`: where the daemon serves its metrics, `IP:PORT` with a numeric IP
    /// (`127.0.0.1:9464`). `None`, the default, means no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    /// Every key at its default in [`keys::KEYS`]: no endpoint.
    fn default() -> Self {
        defaults::of(Section::Metrics)
    }
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[servers.NAME]` table. Defaults and ranges: [`keys::KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// `linktype`: the pcap `LINKTYPE_*` of the packets, written into subscribers' pcap
    /// files.
    pub linktype: u32,
    /// `snaplen`: the longest captured length; publishers cut longer packets to it.
    pub snaplen: u32,
    /// `queue-depth`: batches buffered per subscriber before the overflow policy applies.
    pub queue_depth: usize,
    /// `overflow`: what to do when a subscriber's queue is full.
    pub overflow: Overflow,
    /// `max-subscribers`: subscribers connected at once.
    pub max_subscribers: usize,
    /// `max-producers`: producers connected at once.
    pub max_producers: usize,
    /// `max-batch-bytes`: the largest batch a producer may send, in bytes.
    pub max_batch_bytes: usize,
    /// `group-balance`: how a subscriber group of this server spreads packets over its
    /// members.
    pub group_balance: GroupBalance,
    /// `wait`: how this server's subscribers wait for data, unless they choose.
    pub wait: WaitMode,
    /// `producer-group`: when set, only members of this Unix group may produce.
    pub producer_group: Option<String>,
    /// `subscriber-group`: when set, only members of this Unix group may subscribe.
    pub subscriber_group: Option<String>,
}

impl Default for ServerConfig {
    /// Every key at its default in [`keys::KEYS`].
    fn default() -> Self {
        defaults::of(Section::Servers)
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

/// How a subscriber group spreads a server's packets over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBalance {
    /// By flow: the packets of one connection (its addresses, ports and protocol, both
    /// directions) go to the same member.
    Flow,
    /// By address pair: the packets between two IP addresses, both directions, whatever the
    /// ports, go to the same member.
    IpPair,
    /// By batch: whole batches go to the members in turn, whatever they hold.
    Batch,
}

impl GroupBalance {
    /// Every way.
    pub const ALL: [GroupBalance; 3] = [
        GroupBalance::Flow,
        GroupBalance::IpPair,
        GroupBalance::Batch,
    ];

    /// The name as written in the configuration: `flow`, `ip-pair` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBalance::Flow => "flow",
            GroupBalance::IpPair => "ip-pair",
            GroupBalance::Batch => "batch",
        }
    }
}

impl fmt::Display for GroupBalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    let text = source::read(source)?;
    let file = FileText {
        name: source.to_string(),
        text: &text,
    };

    // Syntax and type errors, with the line: from the toml crate and its spans.
    let parsed = parse_file(&file)?;

    let known: Vec<String> = parsed.servers.keys().cloned().collect();
    let overrides = EnvOverrides::parse(env, &known)?;
    let servers: BTreeSet<&str> = known
        .iter()
        .map(String::as_str)
        .chain(overrides.servers())
        .collect();

    // The final configuration: the defaults, the file over them, the environment over it.
    let merged = config::Config::builder()
        .add_source(defaults::layer(servers))
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(overrides.layer())
        .build()
        .and_then(|merged| merged.try_deserialize::<Config>())
        .map_err(|err| overrides.config_error(&file, err))?;

    check::validate(&merged, &file, &overrides)?;
    Ok(merged)
}

/// The file alone, its defaults filled in, through the toml crate: its syntax and type errors
/// come with their spans.
fn parse_file(file: &FileText<'_>) -> Result<Config, ConfigError> {
    let mut document = DeTable::parse(file.text).map_err(|err| file.toml_error(&err))?;
    check::file_values(document.get_ref(), file)?;
    defaults::fill(document.get_mut());
    Config::deserialize(toml::de::Deserializer::from(document)).map_err(|err| file.toml_error(&err))
}

#[cfg(test)]
mod tests {
    use super::source::EMBEDDED_NAME;
    use super::test_support::*;
    use super::*;

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
        assert_eq!(parse(SHIPPED).expect("valid"), config);
        assert!(missing_groups(&config).is_empty());
    }

    #[test]
    fn embedded_default_is_one_default_server() {
        let config = load_with_env(&Source::Embedded, &[]).expect("valid");
        let expected = Config {
            daemon: DaemonConfig::default(),
            metrics: MetricsConfig::default(),
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
    fn unreadable_file_names_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("absent.toml");
        let err = load_with_env(&Source::File(path.clone()), &[]).expect_err("absent");
        assert_eq!(err.source_name, path.display().to_string());
        assert!(err.to_string().contains("cannot read"), "{err}");
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
            let config = parse(&text).expect("valid");
            assert_eq!(config.servers["a"].overflow, overflow);
        }
    }

    /// The text through the toml crate alone, as the first parse of [`load`] does.
    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_file(&FileText {
            name: "text".into(),
            text,
        })
    }

    /// The fields serde expects, read from its "unknown field" message.
    fn expected_fields(text: &str) -> Vec<String> {
        let err = toml::from_str::<Config>(text).expect_err("unknown field");
        let message = err.message();
        // "expected one of `a`, `b`", or "expected `a`" for a single field.
        let list = message
            .split_once("expected one of ")
            .or_else(|| message.split_once("expected "))
            .map(|(_, list)| list)
            .expect("a list of fields");
        list.split(", ")
            .map(|name| name.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn key_table_matches_the_structs() {
        for section in Section::ALL {
            let table = if section.named() {
                format!("[{section}.a]\nzzz = 1\n")
            } else {
                format!("[{section}]\nzzz = 1\n")
            };
            let names: Vec<&str> = keys::of(section).map(|spec| spec.name).collect();
            assert_eq!(expected_fields(&table), names, "[{section}]");
        }
    }

    /// The lines of the table `header` of `text` (up to the next header), a header being a
    /// line starting with `[` or, for a table documented commented out, `# [`.
    fn table_lines<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
        let is_header = |line: &str| line.starts_with('[') || line.starts_with("# [");
        text.lines()
            .skip_while(|line| line.trim_start_matches("# ") != header)
            .skip(1)
            .take_while(|line| !is_header(line))
            .collect()
    }

    /// Where a key's example value is written for each section: its table in the shipped
    /// example and in the embedded default.
    fn documented_in(section: Section) -> (&'static str, &'static str) {
        match section {
            Section::Daemon => ("[daemon]", "[daemon]"),
            Section::Metrics => ("[metrics]", "[metrics]"),
            Section::Servers => ("[servers.capture0]", "[servers.default]"),
        }
    }

    #[test]
    fn shipped_example_documents_every_key_with_its_default() {
        for spec in keys::KEYS {
            let (header, _) = documented_in(spec.section);
            let lines = table_lines(SHIPPED, header);
            let prefix = format!("{} = ", spec.name);
            let line = lines
                .iter()
                .find(|line| line.trim_start_matches("# ").starts_with(&prefix))
                .unwrap_or_else(|| panic!("{} is not in {header} of the example", spec.name));
            match spec.default {
                // Written as it is, not commented out.
                Some(default) => assert_eq!(*line, format!("{prefix}{default}"), "{}", spec.name),
                // Shown commented out, with a valid example value.
                None => assert!(line.starts_with("# "), "{line}"),
            }
        }
    }

    #[test]
    fn embedded_default_lists_every_default() {
        for spec in keys::KEYS {
            let (_, header) = documented_in(spec.section);
            let lines = table_lines(EMBEDDED_DEFAULT, header);
            let prefix = format!("{} = ", spec.name);
            let written = lines.iter().find(|line| line.starts_with(&prefix));
            match spec.default {
                Some(default) => {
                    assert_eq!(written, Some(&format!("{prefix}{default}").as_str()))
                }
                None => assert_eq!(written, None, "{} has no default", spec.name),
            }
        }
    }

    #[test]
    fn defaults_come_from_the_table() {
        let daemon = DaemonConfig::default();
        assert_eq!(daemon.log_format, LogFormat::Text);
        assert_eq!(daemon.shutdown_timeout_ms, 5000);
        assert_eq!(daemon.runtime_dir, None);
        // Every default of the table, and nothing else, reads back from the structs.
        let values = serde_json::to_value(Config {
            daemon,
            metrics: MetricsConfig::default(),
            servers: BTreeMap::from([("a".to_owned(), ServerConfig::default())]),
        })
        .expect("serializable");
        for spec in keys::KEYS {
            let pointer = if spec.section.named() {
                format!("/{}/a/{}", spec.section, spec.name)
            } else {
                format!("/{}/{}", spec.section, spec.name)
            };
            let value = values.pointer(&pointer).expect("a field per key");
            match spec.default {
                Some(default) => assert_eq!(&value.to_string(), default, "{pointer}"),
                None => assert!(value.is_null(), "{pointer}"),
            }
        }
        // Partial tables are filled by load, not by serde.
        assert!(toml::from_str::<Config>("[servers.a]\nsnaplen = 1\n")
            .is_err_and(|err| err.message().contains("missing field")));
    }

    #[test]
    fn group_balance_and_wait() {
        let defaults = ServerConfig::default();
        assert_eq!(defaults.group_balance, GroupBalance::Flow);
        assert_eq!(defaults.wait, WaitMode::Adaptive);
        let config = load_text(MINIMAL, &[]).1.expect("valid");
        assert_eq!(config.servers["capture0"].group_balance, GroupBalance::Flow);
        assert_eq!(config.servers["capture0"].wait, WaitMode::Adaptive);

        for (balance, name) in GroupBalance::ALL
            .into_iter()
            .zip(["flow", "ip-pair", "batch"])
        {
            assert_eq!((balance.as_str(), balance.to_string()), (name, name.into()));
            let text = format!("[servers.a]\ngroup-balance = \"{name}\"\n");
            let config = load_text(&text, &[]).1.expect("valid");
            assert_eq!(config.servers["a"].group_balance, balance);
            let var = ("PACKET_IPC__SERVERS__A__GROUP_BALANCE", name);
            let config = load_text("[servers.a]\n", &[var]).1.expect("valid");
            assert_eq!(config.servers["a"].group_balance, balance);
        }
        for mode in WaitMode::ALL {
            let text = format!("[servers.a]\nwait = \"{mode}\"\n");
            let config = load_text(&text, &[]).1.expect("valid");
            assert_eq!(config.servers["a"].wait, mode);
            let var = ("PACKET_IPC__SERVERS__A__WAIT", mode.as_str());
            let config = load_text("[servers.a]\n", &[var]).1.expect("valid");
            assert_eq!(config.servers["a"].wait, mode);
        }

        let cases = [
            (
                "group-balance = \"round-robin\"",
                "group-balance",
                "round-robin",
            ),
            ("wait = \"block\"", "wait", "block"),
            ("wait = \"Spin\"", "wait", "Spin"),
        ];
        for (line, key, value) in cases {
            let text = format!("[servers.x]\n\n{line}\n");
            let (path, err) = load_err(&text, &[]);
            assert_eq!(err.key(), Some(format!("servers.x.{key}").as_str()));
            assert_eq!(err.line(), Some(3));
            assert_eq!(err.source_name, path.display().to_string());
            assert!(
                err.message
                    .starts_with(&format!("unknown variant `{value}`")),
                "{err}"
            );
            let var =
                format!("PACKET_IPC__SERVERS__X__{}", key.to_ascii_uppercase()).replace('-', "_");
            let (_, err) = load_err("[servers.x]\n", &[(&var, value)]);
            assert_eq!(err.source_name, format!("environment variable {var}"));
            assert_eq!(err.key(), Some(format!("servers.x.{key}").as_str()));
            assert!(err.message.contains("unknown variant"), "{err}");
        }
        let (_, err) = load_err("[servers.x]\nwait = 1\n", &[]);
        assert_eq!((err.key(), err.line()), (Some("servers.x.wait"), Some(2)));
    }

    #[test]
    fn metrics_listen() {
        // Off unless set.
        assert_eq!(MetricsConfig::default().listen, None);
        let config = load_text(MINIMAL, &[]).1.expect("valid");
        assert_eq!(config.metrics.listen, None);
        let config = load_text(&format!("[metrics]\n{MINIMAL}"), &[])
            .1
            .expect("valid");
        assert_eq!(config.metrics.listen, None);

        for addr in ["127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464", "[::]:80"] {
            let text = format!("[metrics]\nlisten = \"{addr}\"\n{MINIMAL}");
            let config = load_text(&text, &[]).1.expect("valid");
            assert_eq!(config.metrics.listen, addr.parse().ok(), "{addr}");
        }

        let cases = [
            ("localhost", "expected IP:PORT"),
            ("localhost:9464", "host names are not resolved"),
            ("127.0.0.1", "expected IP:PORT"),
            (
                "1.2.3.4:99999",
                "port 99999 is out of range (at most 65535)",
            ),
            ("::1:9464", "expected IP:PORT"),
            ("", "expected IP:PORT"),
        ];
        for (addr, message) in cases {
            let text = format!("{MINIMAL}\n[metrics]\nlisten = \"{addr}\"\n");
            let (path, err) = load_err(&text, &[]);
            assert_eq!(err.source_name, path.display().to_string());
            assert_eq!(err.key(), Some("metrics.listen"), "{addr}");
            assert_eq!(err.line(), Some(5), "{addr}");
            assert!(err.message.contains(message), "{addr}: {err}");
            assert!(err.message.contains(&format!("{addr:?}")), "{err}");
        }
        let (_, err) = load_err("[metrics]\nlisten = 9464\n[servers.a]\n", &[]);
        assert_eq!((err.key(), err.line()), (Some("metrics.listen"), Some(2)));
        assert!(err.message.contains("invalid type"), "{err}");

        // From the environment: on, over the file, off again, or a bad value named.
        let var = "PACKET_IPC__METRICS__LISTEN";
        let config = load_text(MINIMAL, &[(var, "127.0.0.1:9000")])
            .1
            .expect("valid");
        assert_eq!(config.metrics.listen, "127.0.0.1:9000".parse().ok());
        let text = format!("[metrics]\nlisten = \"127.0.0.1:9464\"\n{MINIMAL}");
        let config = load_text(&text, &[(var, "[::1]:9001")]).1.expect("valid");
        assert_eq!(config.metrics.listen, "[::1]:9001".parse().ok());
        let config = load_text(&text, &[(var, "")]).1.expect("valid");
        assert_eq!(config.metrics.listen, None);
        let (_, err) = load_err(MINIMAL, &[(var, "localhost")]);
        assert_eq!(err.source_name, format!("environment variable {var}"));
        assert_eq!(err.key(), Some("metrics.listen"));
        assert!(err.message.contains("expected IP:PORT"), "{err}");

        // Unknown keys are still errors.
        let (_, err) = load_err("[metrics]\nfoo = 1\n[servers.a]\n", &[]);
        assert_eq!((err.key(), err.line()), (Some("metrics.foo"), Some(2)));
        assert!(err.message.contains("unknown field `foo`"), "{err}");
        let (_, err) = load_err(MINIMAL, &[("PACKET_IPC__METRICS__FOO", "1")]);
        assert_eq!(err.key(), Some("metrics.foo"));
        assert!(err.message.contains("expected one of `listen`"), "{err}");
        let (_, err) = load_err(MINIMAL, &[("PACKET_IPC__METRICS__A__LISTEN", "1")]);
        assert_eq!(err.key(), Some("metrics"));
    }
}
