//! Unix groups named by the configuration.

use super::Config;

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
#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
