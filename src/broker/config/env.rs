//! The `PACKET_IPC__SECTION__KEY` environment overrides: which variables are overrides,
//! which key each one sets, and its value typed by the key table.

use super::check::{range_message, socket_addr};
use super::keys::{self, KeySpec, Kind, Section};
use super::layer::Layer;
use super::text::FileText;
use super::ConfigError;

/// The prefix of override variables (matched ignoring ASCII case).
const ENV_PREFIX: &str = "PACKET_IPC__";
/// What separates the levels of an override variable's name.
const ENV_SEPARATOR: &str = "__";

/// Whether `name` is the name of an override variable.
pub(super) fn has_env_prefix(name: &str) -> bool {
    name.get(..ENV_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX))
}

/// How errors name the variable `var`.
pub(super) fn env_source_name(var: &str) -> String {
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

/// The environment overrides.
#[derive(Debug, Clone, Default)]
pub(super) struct EnvOverrides {
    overrides: Vec<Override>,
}

impl EnvOverrides {
    /// Picks the `PACKET_IPC__` variables out of `env` and checks their keys and the form of
    /// their values. `servers` are the server names of the file, to resolve `<NAME>` against.
    pub(super) fn parse(env: &[(String, String)], servers: &[String]) -> Result<Self, ConfigError> {
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
            let given = segments[0].to_ascii_lowercase();
            let Some(section) = Section::from_name(&given) else {
                let shapes: Vec<String> = Section::ALL.into_iter().map(env_shape).collect();
                return Err(error(
                    Some(kebab(&segments.join("."))),
                    format!("unknown key, expected {}", shapes.join(", ")),
                ));
            };
            let mut path = vec![section.name().to_owned()];
            match (section.named(), segments.len()) {
                (false, 2) => {}
                (true, n) if n >= 3 => {
                    let given = segments[1..n - 1].join(ENV_SEPARATOR);
                    let name = resolve_server(&given, servers).map_err(|candidates| {
                        error(
                            Some(format!("{section}.{given}")),
                            format!("matches more than one server: {}", candidates.join(", ")),
                        )
                    })?;
                    path.push(name);
                }
                _ => {
                    return Err(error(
                        Some(given),
                        format!("expected {}", env_shape(section)),
                    ))
                }
            }
            let key = kebab(segments[segments.len() - 1]);
            path.push(key.clone());
            let dotted = path.join(".");
            let Some(spec) = keys::find(section, &key) else {
                let expected: Vec<String> = keys::of(section)
                    .map(|spec| format!("`{}`", spec.name))
                    .collect();
                return Err(error(
                    Some(dotted),
                    format!("unknown key, expected one of {}", expected.join(", ")),
                ));
            };
            let value = typed(spec, value).map_err(|message| error(Some(dotted), message))?;
            overrides.push(Override {
                var: var.clone(),
                path,
                value,
            });
        }
        Ok(EnvOverrides { overrides })
    }

    /// The overrides as a `config` layer.
    pub(super) fn layer(&self) -> Layer {
        let mut layer = Layer::default();
        for o in &self.overrides {
            layer.set(o.path.clone(), o.value.clone(), env_source_name(&o.var));
        }
        layer
    }

    /// The names of the servers the overrides set keys of (some may not be in the file).
    pub(super) fn servers(&self) -> impl Iterator<Item = &str> {
        self.overrides
            .iter()
            .filter_map(|o| match o.path.as_slice() {
                [section, name, _] if section == Section::Servers.name() => Some(name.as_str()),
                _ => None,
            })
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
    pub(super) fn error(&self, file: &FileText<'_>, path: &[&str], message: String) -> ConfigError {
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
    pub(super) fn config_error(
        &self,
        file: &FileText<'_>,
        err: config::ConfigError,
    ) -> ConfigError {
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

/// How the variables of `section` are spelled, for errors.
fn env_shape(section: Section) -> String {
    let name = section.name().to_ascii_uppercase();
    if section.named() {
        format!("{ENV_PREFIX}{name}__<NAME>__<KEY>")
    } else {
        format!("{ENV_PREFIX}{name}__<KEY>")
    }
}

/// The text of an override as a value of the key `spec`: an integer key takes a non-negative
/// decimal integer (its range is checked with the other values), a choice one of its names,
/// the others the text as it is. An empty value clears an optional key.
fn typed(spec: &KeySpec, text: &str) -> Result<config::ValueKind, String> {
    if text.is_empty() && spec.optional() {
        return Ok(config::ValueKind::Nil);
    }
    match spec.kind {
        Kind::Integer { min, max } => {
            let digits = text.trim();
            match digits.parse::<u64>() {
                Ok(int) => Ok(config::ValueKind::U64(int)),
                Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Err(range_message(min, max, digits))
                }
                Err(_) => Err(format!("expected a non-negative integer, got {text:?}")),
            }
        }
        Kind::Choice(check) => check(text).map(|()| config::ValueKind::String(text.to_owned())),
        Kind::SocketAddr => socket_addr(text).map(|_| config::ValueKind::String(text.to_owned())),
        Kind::AbsolutePath | Kind::Group => Ok(config::ValueKind::String(text.to_owned())),
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use super::*;
    use std::path::Path;

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
    fn every_key_can_be_overridden() {
        // A value other than the default for each choice key.
        let choices = [
            ("log-format", "json"),
            ("overflow", "block"),
            ("group-balance", "ip-pair"),
            ("wait", "park"),
        ];
        let mut vars = Vec::new();
        let mut expected = Vec::new();
        for spec in keys::KEYS {
            let value = match spec.kind {
                Kind::Integer { max, .. } => serde_json::json!(max),
                Kind::Choice(_) => choices
                    .iter()
                    .find(|(name, _)| *name == spec.name)
                    .map(|(_, value)| serde_json::json!(value))
                    .unwrap_or_else(|| panic!("give {} a test value", spec.name)),
                Kind::AbsolutePath => serde_json::json!("/run/x"),
                Kind::Group => serde_json::json!("somegroup"),
                Kind::SocketAddr => serde_json::json!("127.0.0.1:9464"),
            };
            let section = spec.section.name();
            let (var, pointer) = if spec.section.named() {
                (
                    format!("{section}__A"),
                    format!("/{section}/a/{}", spec.name),
                )
            } else {
                (section.to_owned(), format!("/{section}/{}", spec.name))
            };
            let var = format!("PACKET_IPC__{var}__{}", spec.name).to_ascii_uppercase();
            let text = match &value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            vars.push((var.replace('-', "_"), text));
            expected.push((pointer, value));
        }
        let config = load_with_env(&Source::Embedded, &vars).expect("valid");
        let values = serde_json::to_value(&config).expect("serializable");
        for (pointer, value) in expected {
            assert_eq!(values.pointer(&pointer), Some(&value), "{pointer}");
        }
        assert_eq!(config.servers["a"].overflow, Overflow::Block);
    }
}
