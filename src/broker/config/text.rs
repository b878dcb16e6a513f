//! The configuration text: line numbers and dotted keys from byte offsets.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// The configuration text and how errors name it.
pub(super) struct FileText<'a> {
    pub(super) name: String,
    pub(super) text: &'a str,
}

impl FileText<'_> {
    /// A syntax or type error of the toml crate, with its line and key.
    pub(super) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
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
    pub(super) fn error(&self, path: &[&str], message: String) -> ConfigError {
        ConfigError {
            source_name: self.name.clone(),
            line: self.line_of(path),
            key: Some(path.join(".")),
            message,
        }
    }

    /// The line where the key `path` is written, if it is.
    pub(super) fn line_of(&self, path: &[&str]) -> Option<usize> {
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
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key written at byte `offset` of `text`: the key itself, or the key of the value
/// there.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
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
#[cfg(test)]
mod tests {
    use super::*;

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
