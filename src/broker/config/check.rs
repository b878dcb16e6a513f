//! The checks of values that types alone do not make: ranges, names, at least one server.

use super::env::EnvOverrides;
use super::text::FileText;
use super::{Config, ConfigError};

const LINKTYPE_MAX: u64 = 65535;
const SNAPLEN: (u64, u64) = (1, 262_144);
const QUEUE_DEPTH: (u64, u64) = (1, 65_536);
const MAX_SUBSCRIBERS: (u64, u64) = (1, 4096);
const MAX_PRODUCERS: (u64, u64) = (1, 64);
const MAX_BATCH_BYTES: (u64, u64) = (4096, 1 << 30);
const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;
const SERVER_NAME_MAX: usize = 64;

/// Checks the values that types alone do not: ranges, names, at least one server.
pub(super) fn validate(
    config: &Config,
    file: &FileText<'_>,
    env: &EnvOverrides,
) -> Result<(), ConfigError> {
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
}
