//! [`Layer`]: values set at exact key paths, as a source of the `config` crate (the defaults
//! and the environment overrides are each one).

/// Values at key paths such as `["servers", "lo.1", "snaplen"]`, each with its origin.
///
/// The paths become nested tables, so that server names are taken as they are: the `config`
/// crate would parse a dotted key as a path and split a name holding a dot.
#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    values: Vec<(Vec<String>, config::ValueKind, String)>,
}

impl Layer {
    /// Sets `path` to `value`, which comes from `origin` (the `config` crate's own errors may
    /// name it). A later value for the same path wins.
    pub(super) fn set(&mut self, path: Vec<String>, value: config::ValueKind, origin: String) {
        self.values.push((path, value, origin));
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut root = config::Map::new();
        for (path, value, origin) in &self.values {
            let value = config::Value::new(Some(origin), value.clone());
            insert(&mut root, path, value, origin);
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

#[cfg(test)]
mod tests {
    use super::*;
    use config::Source;

    #[test]
    fn paths_become_nested_tables() {
        let mut layer = Layer::default();
        let path = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        layer.set(
            path(&["servers", "lo.1", "snaplen"]),
            config::ValueKind::U64(1),
            "a".into(),
        );
        layer.set(
            path(&["servers", "lo.1", "snaplen"]),
            config::ValueKind::U64(2),
            "b".into(),
        );
        let root = layer.collect().expect("a table");
        let servers = root["servers"].clone().into_table().expect("a table");
        let server = servers["lo.1"].clone().into_table().expect("a table");
        assert_eq!(server["snaplen"].clone().into_uint().ok(), Some(2));
    }
}
