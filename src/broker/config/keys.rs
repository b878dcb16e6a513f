//! The key table: every key of the configuration, declared once with its default, the values
//! it takes and what it means.
//!
//! Everything that needs to know a key reads [`KEYS`]: the defaults filled in under each
//! table (and the `Default` of [`DaemonConfig`](super::DaemonConfig) and
//! [`ServerConfig`](super::ServerConfig)), the typing of environment overrides, the checks of
//! values, and the tests that hold `config/packet-ipcd.toml` and
//! [`EMBEDDED_DEFAULT`](super::EMBEDDED_DEFAULT) to it.
//!
//! Adding a key is one [`KeySpec`] here and its field in the struct of its section, in the
//! same order (tested).

use std::fmt;

use super::{GroupBalance, LogFormat, Overflow, WaitMode};

/// A table of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `[daemon]`: settings of the process itself.
    Daemon,
    /// `[metrics]`: the metrics endpoint; absent, there is none.
    Metrics,
    /// `[servers.NAME]`: one table per named server.
    Servers,
}

impl Section {
    /// Every section, in the order the checks visit them.
    pub const ALL: [Section; 3] = [Section::Daemon, Section::Metrics, Section::Servers];

    /// The section's name in the file and in environment variables (upper-cased there).
    pub fn name(self) -> &'static str {
        match self {
            Section::Daemon => "daemon",
            Section::Metrics => "metrics",
            Section::Servers => "servers",
        }
    }

    /// Whether the section holds one table per name (`[servers.NAME]`) rather than being a
    /// table of keys itself.
    pub fn named(self) -> bool {
        matches!(self, Section::Servers)
    }

    /// The section named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Section> {
        Section::ALL
            .into_iter()
            .find(|section| section.name() == name)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The values a key takes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A non-negative integer from `min` to `max` (both included).
    Integer {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// The name of a variant of an enumeration; the function tells whether a name is one
    /// (with serde's message, which lists them, when it is not).
    Choice(fn(&str) -> Result<(), String>),
    /// An absolute path.
    AbsolutePath,
    /// The name of a Unix group (whether it exists is the daemon's business, see
    /// [`missing_groups`](super::missing_groups)).
    Group,
    /// A socket address, `IP:PORT` with a numeric IP (`127.0.0.1:9464`, `[::1]:9464`).
    SocketAddr,
}

/// One key of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The section the key belongs to.
    pub section: Section,
    /// Its name, kebab-case, as written in the file.
    pub name: &'static str,
    /// Its default, as a TOML value written in the file (`65535`, `"drop-oldest"`); `None`
    /// for an optional key, unset unless given.
    pub default: Option<&'static str>,
    /// The values it takes.
    pub kind: Kind,
    /// What it means.
    pub doc: &'static str,
}

impl KeySpec {
    /// Whether the key may be left unset (it has no default).
    pub fn optional(&self) -> bool {
        self.default.is_none()
    }
}

/// Every key, section by section, each section in the order of its struct's fields.
pub const KEYS: &[KeySpec] = &[
    // [daemon]
    KeySpec {
        section: Section::Daemon,
        name: "runtime-dir",
        default: None,
        kind: Kind::AbsolutePath,
        doc: "Where the rendezvous file, the spool directories and the lock live. Unset lets \
              the daemon choose: $PACKET_IPC_RUNTIME_DIR, else $RUNTIME_DIRECTORY (systemd), \
              else /run/packet-ipc as root, else $XDG_RUNTIME_DIR/packet-ipc, else \
              /tmp/packet-ipc-<uid>.",
    },
    KeySpec {
        section: Section::Daemon,
        name: "log-format",
        default: Some("\"text\""),
        kind: Kind::Choice(is_variant::<LogFormat>),
        doc: "How the daemon writes its log: `text` (coloured on a terminal) or `json` (one \
              object per line).",
    },
    KeySpec {
        section: Section::Daemon,
        name: "shutdown-timeout-ms",
        default: Some("5000"),
        kind: Kind::Integer {
            min: 0,
            max: 24 * 60 * 60 * 1000,
        },
        doc: "How long to keep delivering queued batches after SIGTERM or SIGINT, in \
              milliseconds. At most one day, so that a deadline computed from it cannot \
              overflow.",
    },
    // [metrics]
    KeySpec {
        section: Section::Metrics,
        name: "listen",
        default: None,
        kind: Kind::SocketAddr,
        doc: "The address, IP:PORT, where the daemon serves its metrics. Unset, or without \
              a [metrics] table, there is no metrics endpoint.",
    },
    // [servers.NAME]
    KeySpec {
        section: Section::Servers,
        name: "linktype",
        default: Some("1"),
        kind: Kind::Integer { min: 0, max: 65535 },
        doc: "The pcap `LINKTYPE_*` of the packets (1 is Ethernet), written into subscribers' \
              pcap files.",
    },
    KeySpec {
        section: Section::Servers,
        name: "snaplen",
        default: Some("65535"),
        kind: Kind::Integer {
            min: 1,
            max: 262_144,
        },
        doc: "The longest captured length; publishers cut longer packets to it.",
    },
    KeySpec {
        section: Section::Servers,
        name: "queue-depth",
        default: Some("256"),
        kind: Kind::Integer {
            min: 1,
            max: 65_536,
        },
        doc: "Batches buffered per subscriber before the overflow policy applies.",
    },
    KeySpec {
        section: Section::Servers,
        name: "overflow",
        default: Some("\"drop-oldest\""),
        kind: Kind::Choice(is_variant::<Overflow>),
        doc: "What to do when a subscriber's queue is full: `drop-oldest`, `drop-newest`, \
              `disconnect` or `block` (lossless: the producer waits).",
    },
    KeySpec {
        section: Section::Servers,
        name: "max-subscribers",
        default: Some("64"),
        kind: Kind::Integer { min: 1, max: 4096 },
        doc: "Subscribers connected at once.",
    },
    KeySpec {
        section: Section::Servers,
        name: "max-producers",
        default: Some("4"),
        kind: Kind::Integer { min: 1, max: 64 },
        doc: "Producers connected at once.",
    },
    KeySpec {
        section: Section::Servers,
        name: "max-batch-bytes",
        default: Some("16777216"),
        kind: Kind::Integer {
            min: 4096,
            max: 1 << 30,
        },
        doc: "The largest batch a producer may send, in bytes (default 16 MiB).",
    },
    KeySpec {
        section: Section::Servers,
        name: "group-balance",
        default: Some("\"flow\""),
        kind: Kind::Choice(is_variant::<GroupBalance>),
        doc: "How a subscriber group of this server spreads packets over its members: `flow` \
              (a connection's packets to one member), `ip-pair` (the packets between two \
              addresses to one member) or `batch` (whole batches in turn).",
    },
    KeySpec {
        section: Section::Servers,
        name: "wait",
        default: Some("\"adaptive\""),
        kind: Kind::Choice(is_variant::<WaitMode>),
        doc: "How this server's subscribers wait for data unless they choose: `adaptive` \
              (spin a little, then sleep), `spin` (never sleep) or `park` (sleep until \
              woken). Not the producer's wait of `overflow = \"block\"`.",
    },
    KeySpec {
        section: Section::Servers,
        name: "producer-group",
        default: None,
        kind: Kind::Group,
        doc: "When set, only members of this Unix group may produce.",
    },
    KeySpec {
        section: Section::Servers,
        name: "subscriber-group",
        default: None,
        kind: Kind::Group,
        doc: "When set, only members of this Unix group may subscribe.",
    },
];

/// The keys of `section`, in table order.
pub fn of(section: Section) -> impl Iterator<Item = &'static KeySpec> {
    KEYS.iter().filter(move |spec| spec.section == section)
}

/// The key `name` of `section`, if there is one.
pub fn find(section: Section, name: &str) -> Option<&'static KeySpec> {
    of(section).find(|spec| spec.name == name)
}

/// Whether `name` is a variant of `T`, with serde's message if not.
fn is_variant<T: serde::de::DeserializeOwned>(name: &str) -> Result<(), String> {
    let deserializer = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name);
    T::deserialize(deserializer)
        .map(drop)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kebab_case_and_unique() {
        for (i, spec) in KEYS.iter().enumerate() {
            assert!(
                spec.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                spec.name
            );
            assert!(!spec.doc.is_empty(), "{}", spec.name);
            assert!(
                KEYS[..i]
                    .iter()
                    .all(|other| (other.section, other.name) != (spec.section, spec.name)),
                "{} twice",
                spec.name
            );
        }
        // Sections come in one block each, in Section::ALL order.
        let order: Vec<Section> = KEYS.iter().map(|spec| spec.section).collect();
        let mut blocks = order.clone();
        blocks.dedup();
        assert_eq!(blocks, Section::ALL);
        for section in Section::ALL {
            assert_eq!(Section::from_name(section.name()), Some(section));
        }
        assert_eq!(Section::from_name("deamon"), None);
    }

    #[test]
    fn defaults_are_allowed_values() {
        for spec in KEYS {
            let Some(default) = spec.default else {
                continue;
            };
            match spec.kind {
                Kind::Integer { min, max } => {
                    let value: u64 = default.parse().expect("an integer default");
                    assert!((min..=max).contains(&value), "{}", spec.name);
                    assert!(min <= max);
                }
                Kind::Choice(check) => {
                    let name = default
                        .strip_prefix('"')
                        .and_then(|rest| rest.strip_suffix('"'))
                        .expect("a quoted default");
                    assert_eq!(check(name), Ok(()), "{}", spec.name);
                    assert!(check("no-such-variant").is_err());
                }
                Kind::AbsolutePath | Kind::Group | Kind::SocketAddr => {
                    panic!("{}: optional kinds have no default", spec.name)
                }
            }
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            find(Section::Servers, "snaplen").map(|spec| spec.default),
            Some(Some("65535"))
        );
        assert!(find(Section::Daemon, "snaplen").is_none());
        assert!(find(Section::Servers, "colour").is_none());
        assert!(find(Section::Daemon, "runtime-dir").is_some_and(KeySpec::optional));
    }
}
