//! Helpers of the configuration's tests.

use std::path::{Path, PathBuf};

use super::{load_with_env, Config, ConfigError, Source};

/// The shipped example configuration.
pub(super) const SHIPPED: &str = include_str!("../../../config/packet-ipcd.toml");

/// Where the shipped example is.
pub(super) fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/packet-ipcd.toml")
}

/// `pairs` as an environment.
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// Writes `text` to a file in a fresh directory and loads it with `vars`.
pub(super) fn load_text(
    text: &str,
    vars: &[(&str, &str)],
) -> (PathBuf, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("packet-ipcd.toml");
    std::fs::write(&path, text).expect("write the file");
    let result = load_with_env(&Source::File(path.clone()), &env(vars));
    (path, result)
}

/// [`load_text`], expecting an error.
pub(super) fn load_err(text: &str, vars: &[(&str, &str)]) -> (PathBuf, ConfigError) {
    let (path, result) = load_text(text, vars);
    match result {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(err) => (path, err),
    }
}

/// The 1-based line of the first line of `text` holding `needle`.
pub(super) fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|i| i + 1)
        .expect("needle in text")
}

/// A smallest valid configuration.
pub(super) const MINIMAL: &str = "[servers.capture0]\nlinktype = 1\n";
