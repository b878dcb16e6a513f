//! The checks of values that types alone do not make: ranges, absolute paths, group names,
//! server names, at least one server.
//!
//! They run on the final values, the environment layered over the file, and read each key's
//! [`Kind`] from the key table; an error names where the bad value came from (the variable
//! that set it, else the file and its line). Before that, [`file_values`] rejects what the
//! file writes that cannot even be carried to the final values.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use toml::de::{DeTable, DeValue};

use super::env::EnvOverrides;
use super::keys::{self, KeySpec, Kind, Section};
use super::text::{line_at, FileText};
use super::{Config, ConfigError};

/// The longest server name.
const SERVER_NAME_MAX: usize = 64;

/// Checks the values written in the file that no later step could name with their key and
/// line, or as clearly: an integer key given an integer that is negative or does not fit in
/// 63 bits (the `config` crate reads integers as `i64` and would fail without naming the
/// key), reported as out of the key's range; an address that is not one.
pub(super) fn file_values(document: &DeTable<'_>, file: &FileText<'_>) -> Result<(), ConfigError> {
    for section in Section::ALL {
        let Some(DeValue::Table(table)) = document.get(section.name()).map(|v| v.get_ref()) else {
            continue;
        };
        if !section.named() {
            file_table(table, &[section.name()], section, file)?;
            continue;
        }
        for (name, server) in table {
            if let DeValue::Table(server) = server.get_ref() {
                file_table(server, &[section.name(), name.get_ref()], section, file)?;
            }
        }
    }
    Ok(())
}

/// [`file_values`] for the keys of `section` in `table`, the table at `path`.
fn file_table(
    table: &DeTable<'_>,
    path: &[&str],
    section: Section,
    file: &FileText<'_>,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let Some(spec) = keys::find(section, key.get_ref()) else {
            continue; // serde reports unknown keys
        };
        let written = file.text.get(value.span()).unwrap_or_default();
        if let Err(message) = file_value(spec, value.get_ref(), written) {
            let mut path = path.to_vec();
            path.push(spec.name);
            return Err(ConfigError {
                source_name: file.name.clone(),
                line: Some(line_at(file.text, key.span().start)),
                key: Some(path.join(".")),
                message,
            });
        }
    }
    Ok(())
}

/// Checks one value as written in the file (`written` is its text).
fn file_value(spec: &KeySpec, value: &DeValue<'_>, written: &str) -> Result<(), String> {
    match (spec.kind, value) {
        (Kind::Integer { min, max }, DeValue::Integer(int)) => {
            match i64::from_str_radix(int.as_str(), int.radix()) {
                Ok(int) if int >= 0 => Ok(()),
                _ => Err(range_message(min, max, written)),
            }
        }
        (Kind::SocketAddr, DeValue::String(text)) => socket_addr(text).map(drop),
        _ => Ok(()),
    }
}

/// Checks the final configuration: that there is at least one server, the server names, and
/// each key against its table entry.
pub(super) fn validate(
    config: &Config,
    file: &FileText<'_>,
    env: &EnvOverrides,
) -> Result<(), ConfigError> {
    // The final values by key name, so that the checks need nothing per key but its entry.
    let values = serde_json::to_value(config).map_err(|err| ConfigError {
        source_name: file.name.clone(),
        line: None,
        key: None,
        message: format!("cannot check the values: {err}"),
    })?;
    for section in Section::ALL {
        let values = &values[section.name()];
        if !section.named() {
            check_keys(values, &[section.name()], section, file, env)?;
            continue;
        }
        if config.servers.is_empty() {
            return Err(env.error(
                file,
                &[section.name()],
                "at least one server is required, e.g. a [servers.capture0] table".to_owned(),
            ));
        }
        for name in config.servers.keys() {
            let path = [section.name(), name.as_str()];
            if !valid_server_name(name) {
                return Err(env.error(
                    file,
                    &path,
                    format!(
                        "invalid server name {name:?}: 1 to {SERVER_NAME_MAX} characters among \
                         A-Z a-z 0-9 . _ -, starting with a letter or a digit"
                    ),
                ));
            }
            check_keys(&values[name.as_str()], &path, section, file, env)?;
        }
    }
    Ok(())
}

/// Checks the keys of `section` in `table`, the table at `path`.
fn check_keys(
    table: &Value,
    path: &[&str],
    section: Section,
    file: &FileText<'_>,
    env: &EnvOverrides,
) -> Result<(), ConfigError> {
    for spec in keys::of(section) {
        if let Err(message) = check_value(spec, &table[spec.name]) {
            let mut path = path.to_vec();
            path.push(spec.name);
            return Err(env.error(file, &path, message));
        }
    }
    Ok(())
}

/// Checks one final value against its key's kind; `null` is an optional key left unset.
fn check_value(spec: &KeySpec, value: &Value) -> Result<(), String> {
    match (spec.kind, value) {
        (_, Value::Null) => Ok(()),
        (Kind::Integer { min, max }, value) => match value.as_u64() {
            Some(int) if (min..=max).contains(&int) => Ok(()),
            _ => Err(range_message(min, max, value)),
        },
        (Kind::AbsolutePath, Value::String(path)) if !Path::new(path).is_absolute() => {
            Err(format!("must be an absolute path, got {path:?}"))
        }
        (Kind::Group, Value::String(group)) if group.is_empty() || group.contains('\0') => {
            Err("must be a group name (leave the key out for no restriction)".to_owned())
        }
        _ => Ok(()),
    }
}

/// What an integer outside `min..=max` is told.
pub(super) fn range_message(min: u64, max: u64, got: impl std::fmt::Display) -> String {
    if min == 0 {
        format!("must be at most {max}, got {got}")
    } else {
        format!("must be between {min} and {max}, got {got}")
    }
}

/// `text` as a socket address, with what is wrong with it if it is not one.
pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        let port = text.rsplit_once(':').map(|(_, port)| port);
        match port.and_then(|port| port.parse::<u64>().ok()) {
            Some(port) if port > u64::from(u16::MAX) => {
                format!("port {port} is out of range (at most 65535) in {text:?}")
            }
            _ => format!(
                "expected IP:PORT with a numeric IP, such as \"127.0.0.1:9464\" or \
                 \"[::1]:9464\" (host names are not resolved), got {text:?}"
            ),
        }
    })
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
    use super::super::test_support::*;

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
    fn integers_that_fit_no_field_name_key_and_line() {
        for value in [
            "99999999999999999999",
            "9223372036854775808",
            "18446744073709551616",
            "0x8000000000000000",
            "-1",
            "-9223372036854775809",
        ] {
            let text = format!("[servers.x]\n\nmax-batch-bytes = {value}\n");
            let (path, err) = load_err(&text, &[]);
            assert_eq!(err.key(), Some("servers.x.max-batch-bytes"), "{value}");
            assert_eq!(err.line(), Some(3), "{value}");
            assert_eq!(err.source_name, path.display().to_string());
            assert_eq!(
                err.message,
                format!("must be between 4096 and 1073741824, got {value}")
            );
        }
        let (_, err) = load_err(
            "[daemon]\nshutdown-timeout-ms = 9223372036854775808\n[servers.x]\n",
            &[],
        );
        assert_eq!(err.key(), Some("daemon.shutdown-timeout-ms"));
        assert_eq!(err.line(), Some(2));
        assert!(err.message.starts_with("must be at most 86400000"), "{err}");

        // Written as TOML allows, integers are read as TOML reads them.
        let text = "[servers.x]\nmax-batch-bytes = 1_048_576\nsnaplen = 0x5dc\n";
        let config = load_text(text, &[]).1.expect("valid");
        assert_eq!(config.servers["x"].max_batch_bytes, 1 << 20);
        assert_eq!(config.servers["x"].snaplen, 1500);

        // From the environment: the variable and the key.
        let var = "PACKET_IPC__SERVERS__X__MAX_BATCH_BYTES";
        for value in ["99999999999999999999", "18446744073709551615"] {
            let (_, err) = load_err("[servers.x]\n", &[(var, value)]);
            assert_eq!(err.source_name, format!("environment variable {var}"));
            assert_eq!(err.key(), Some("servers.x.max-batch-bytes"));
            assert_eq!(
                err.message,
                format!("must be between 4096 and 1073741824, got {value}")
            );
        }
    }
}
