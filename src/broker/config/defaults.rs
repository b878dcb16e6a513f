//! The defaults of the key table, applied: filled into a parsed file, as a layer of the
//! `config` crate below the file, and as the `Default` of the section structs.
//!
//! The section structs have no serde defaults of their own (a serde default would have to be
//! written per field, or come from a `Default` that cannot itself be read from the table
//! through serde), so every way to a [`Config`](super::Config) goes through here.

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::keys::{self, Section};
use super::layer::Layer;

/// How the `config` crate's own errors would name a default.
const ORIGIN: &str = "the key table's default";

/// A default as a TOML value. The table's defaults are valid TOML (tested), so this only
/// fails on a broken table.
fn value(literal: &'static str) -> DeValue<'static> {
    match DeValue::parse(literal) {
        Ok(value) => value.into_inner(),
        Err(err) => {
            panic!("the key table has a default that is not a TOML value: {literal}: {err}")
        }
    }
}

/// Adds to `table` the default of every key of `section` that it does not set.
fn fill_table(table: &mut DeTable<'_>, section: Section) {
    for spec in keys::of(section) {
        if let Some(default) = spec.default {
            if !table.contains_key(spec.name) {
                table.insert(
                    Spanned::new(0..0, Cow::Borrowed(spec.name)),
                    Spanned::new(0..0, value(default)),
                );
            }
        }
    }
}

/// Fills the defaults into every section table of a parsed file, and into every server
/// table of `[servers]`. What is not a table is left for serde to report.
pub(super) fn fill(document: &mut DeTable<'_>) {
    for section in Section::ALL {
        let Some(value) = document.get_mut(section.name()) else {
            continue;
        };
        let DeValue::Table(table) = value.get_mut() else {
            continue;
        };
        if section.named() {
            for (_, server) in table.iter_mut() {
                if let DeValue::Table(server) = server.get_mut() {
                    fill_table(server, section);
                }
            }
        } else {
            fill_table(table, section);
        }
    }
}

/// The struct of a section (of one server, for `[servers]`) with every default: what its
/// `Default` returns.
pub(super) fn of<T: serde::de::DeserializeOwned>(section: Section) -> T {
    let mut table = DeTable::new();
    fill_table(&mut table, section);
    T::deserialize(toml::de::Deserializer::from(Spanned::new(0..0, table)))
        .unwrap_or_else(|err| panic!("the key table's defaults of [{section}] do not fit: {err}"))
}

/// A default as a value of the `config` crate.
fn config_value(literal: &'static str) -> config::ValueKind {
    match value(literal) {
        DeValue::String(text) => config::ValueKind::String(text.into_owned()),
        DeValue::Integer(int) => match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(int) => config::ValueKind::I64(int),
            Err(err) => panic!("the key table has a default out of range: {literal}: {err}"),
        },
        _ => panic!("the key table has a default neither a string nor an integer: {literal}"),
    }
}

/// The defaults as a `config` layer: every key of the sections that are tables of keys, and
/// of the server named by each of `servers`.
pub(super) fn layer<'a>(servers: impl IntoIterator<Item = &'a str>) -> Layer {
    let mut layer = Layer::default();
    let mut set = |path: Vec<String>, literal| {
        layer.set(path, config_value(literal), ORIGIN.to_owned());
    };
    let servers: Vec<&str> = servers.into_iter().collect();
    for spec in keys::KEYS {
        let Some(default) = spec.default else {
            continue;
        };
        let section = spec.section.name().to_owned();
        if spec.section.named() {
            for server in &servers {
                set(
                    vec![section.clone(), (*server).to_owned(), spec.name.to_owned()],
                    default,
                );
            }
        } else {
            set(vec![section, spec.name.to_owned()], default);
        }
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_string_or_an_integer() {
        for spec in keys::KEYS {
            if let Some(default) = spec.default {
                let kind = config_value(default);
                assert!(
                    matches!(
                        kind,
                        config::ValueKind::String(_) | config::ValueKind::I64(_)
                    ),
                    "{}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn fill_keeps_what_is_set() {
        let text = "[daemon]\nshutdown-timeout-ms = 7\n[servers.a]\nsnaplen = 9\n";
        let mut document = DeTable::parse(text).expect("valid").into_inner();
        fill(&mut document);
        let get = |path: &[&str]| {
            let mut value = document.get(path[0]).map(|v| v.get_ref());
            for segment in &path[1..] {
                value = value.and_then(|v| v.get(*segment)).map(|v| v.get_ref());
            }
            value
                .and_then(|v| v.as_integer())
                .map(|i| i.as_str().to_owned())
        };
        assert_eq!(
            get(&["daemon", "shutdown-timeout-ms"]).as_deref(),
            Some("7")
        );
        assert_eq!(get(&["servers", "a", "snaplen"]).as_deref(), Some("9"));
        assert_eq!(
            get(&["servers", "a", "queue-depth"]).as_deref(),
            Some("256")
        );
        assert!(document
            .get("daemon")
            .is_some_and(|d| d.get_ref().get("log-format").is_some()));
    }
}
