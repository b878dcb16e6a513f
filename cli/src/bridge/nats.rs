//! NATS for the bridge: connecting (credentials, TLS, a bounded wait at start), and the
//! JetStream stream both directions use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream};

use super::{warn, NatsArgs, Status, SUBJECT_PREFIX};
use crate::{exit, Failure, Outcome};

/// How long JetStream API requests and publish acks may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest duplicate window given to a stream the bridge creates (capped by its
/// `--max-age`): a publish retried within it after a fault is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// A NATS connection with its JetStream context.
pub struct Nats {
    /// The client.
    pub client: async_nats::Client,
    /// JetStream on that client.
    pub js: jetstream::Context,
    /// The URL, for messages.
    pub url: String,
}

/// Connects, trying again until `--connect-wait` has passed (NATS may be starting); after
/// that the client reconnects by itself for as long as the command runs, and says so on
/// stderr. A refused login or a missing credentials file fails at once.
pub async fn connect(args: &NatsArgs, name: &str) -> Outcome<Nats> {
    for (flag, path) in [
        ("--creds", &args.creds),
        ("--tls-ca", &args.tls_ca),
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
    ] {
        if let Some(p) = path {
            if let Err(e) = std::fs::metadata(p) {
                return Err(Failure::new(
                    exit::NOINPUT,
                    format!("cannot read {flag} {}: {e}", p.display()),
                ));
            }
        }
    }
    let deadline = Instant::now() + args.connect_wait();
    let mut delay = Duration::from_millis(100);
    loop {
        let lost = Arc::new(AtomicBool::new(false));
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)))
                    .min(Duration::from_secs(2))
            })
            .event_callback(move |event| {
                let lost = Arc::clone(&lost);
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            lost.store(true, Ordering::Relaxed);
                            warn("packet-ipc: warning: NATS connection lost; reconnecting");
                        }
                        async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
                            warn("packet-ipc: NATS connection back");
                        }
                        _ => {}
                    }
                }
            });
        match url_credentials(&args.nats) {
            Some((user, Some(pass))) => options = options.user_and_password(user, pass),
            Some((token, None)) => options = options.token(token),
            None => {}
        }
        if let Some(creds) = &args.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                Failure::new(
                    exit::DATAERR,
                    format!("invalid credentials file {}: {e}", creds.display()),
                )
            })?;
        }
        if let Some(ca) = &args.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        match options.connect(args.nats.as_str()).await {
            Ok(client) => {
                let js = jetstream::ContextBuilder::new()
                    .timeout(REQUEST_TIMEOUT)
                    .build(client.clone());
                return Ok(Nats {
                    client,
                    js,
                    url: redacted(&args.nats),
                });
            }
            Err(e) => {
                use async_nats::ConnectErrorKind as K;
                let fatal = match e.kind() {
                    K::ServerParse => Some(exit::USAGE),
                    K::Authentication | K::AuthorizationViolation => Some(exit::NOPERM),
                    K::Tls => Some(exit::UNAVAILABLE),
                    _ => None,
                };
                if let Some(code) = fatal.filter(|c| *c != exit::UNAVAILABLE) {
                    return Err(Failure::new(
                        code,
                        format!("cannot connect to NATS at {}: {e}", redacted(&args.nats)),
                    ));
                }
                if Instant::now() + delay > deadline || fatal.is_some() {
                    return Err(Failure::new(
                        exit::UNAVAILABLE,
                        format!(
                            "cannot reach NATS at {} (tried for {:.0} s): {e}",
                            redacted(&args.nats),
                            args.connect_wait().as_secs_f64()
                        ),
                    ));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The user and password (or the token: no password) in the first URL that has them:
/// `nats://user:password@host`, `nats://token@host`, percent-escapes decoded.
pub fn url_credentials(urls: &str) -> Option<(String, Option<String>)> {
    urls.split(',').find_map(|one| {
        let rest = &one[one.find("://")? + 3..];
        let authority = rest.split('/').next().unwrap_or(rest);
        let (userinfo, _) = authority.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, pass)) => (percent_decode(user), Some(percent_decode(pass))),
            None => (percent_decode(userinfo), None),
        })
    })
}

/// `%XX` escapes decoded (a URL's user and password may need them).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                // A user keeps its name; a token (no password) is hidden whole.
                let shown = match one[s + 3..at].split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".to_owned(),
                };
                format!("{}{shown}@{}", &one[..s + 3], &one[at + 1..])
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What a stream created by the bridge is made of.
pub struct StreamSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// The subject that must be in it.
    pub subject: &'a str,
    /// `--max-bytes`.
    pub max_bytes: Option<u64>,
    /// `--max-age`.
    pub max_age: Option<Duration>,
}

/// The stream: the existing one (its configuration untouched; a warning when it does not
/// take `subject`), or a new one, file storage, the limits given, oldest discarded first,
/// over `packet-ipc.>` (or over `subject` when that lies outside it). Tries again until
/// `deadline` while JetStream is not there yet (a server still starting).
pub async fn ensure_stream(
    nats: &Nats,
    spec: &StreamSpec<'_>,
    deadline: Instant,
    status: &mut Status,
) -> Outcome<stream::Stream> {
    let mut delay = Duration::from_millis(100);
    loop {
        let outcome = match nats.js.get_stream(spec.name).await {
            Ok(mut s) => {
                let info = s.info().await.map(|i| i.config.subjects.clone());
                if let Ok(subjects) = info {
                    if !subjects.iter().any(|p| subject_matches(p, spec.subject)) {
                        status.line(&format!(
                            "packet-ipc: warning: stream {} does not take subject {} (its \
                             subjects: {}); its messages will not be stored",
                            spec.name,
                            spec.subject,
                            subjects.join(" ")
                        ));
                    }
                }
                return Ok(s);
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    match nats.js.create_stream(config(spec)).await {
                        Ok(s) => return Ok(s),
                        Err(e) => e.to_string(),
                    }
                }
                GetStreamErrorKind::InvalidStreamName | GetStreamErrorKind::EmptyName => {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!("invalid stream name {:?}", spec.name),
                    ))
                }
                _ => e.to_string(),
            },
        };
        if Instant::now() + delay > deadline {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "cannot get or create JetStream stream {} at {} (is JetStream enabled, \
                     nats-server -js?): {outcome}",
                    spec.name, nats.url
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// The configuration of a stream the bridge creates.
fn config(spec: &StreamSpec<'_>) -> stream::Config {
    let wide = format!("{SUBJECT_PREFIX}.>");
    let subjects = if subject_matches(&wide, spec.subject) {
        vec![wide]
    } else {
        vec![spec.subject.to_owned()]
    };
    let max_age = spec.max_age.unwrap_or(Duration::ZERO);
    let duplicate_window = if max_age.is_zero() {
        DUPLICATE_WINDOW
    } else {
        DUPLICATE_WINDOW.min(max_age)
    };
    stream::Config {
        name: spec.name.to_owned(),
        subjects,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        max_bytes: spec.max_bytes.map_or(-1, |b| b as i64),
        max_messages: -1,
        max_messages_per_subject: -1,
        max_age,
        duplicate_window,
        description: Some("packets from packet-ipc bridge export".to_owned()),
        ..Default::default()
    }
}

/// Whether the subject pattern `pattern` (tokens, `*` one token, `>` the rest) takes the
/// subject `subject` (or, when `subject` has wildcards, every subject it names).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("packet-ipc.>", "packet-ipc.default"));
        assert!(subject_matches("packet-ipc.>", "packet-ipc.a.b"));
        assert!(!subject_matches("packet-ipc.>", "packet-ipc"));
        assert!(subject_matches("packet-ipc.*", "packet-ipc.x"));
        assert!(!subject_matches("packet-ipc.*", "packet-ipc.x.y"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(subject_matches("packet-ipc.>", "packet-ipc.*"));
        assert!(!subject_matches("packet-ipc.*", "packet-ipc.>"));
    }

    #[test]
    fn credentials_in_urls() {
        assert_eq!(
            url_credentials("nats://alice:s%40cret@host:4222"),
            Some(("alice".to_owned(), Some("s@cret".to_owned())))
        );
        assert_eq!(
            url_credentials("nats://h1,tls://tok@h2"),
            Some(("tok".to_owned(), None))
        );
        assert_eq!(url_credentials("nats://host:4222"), None);
        assert_eq!(url_credentials("nats://host/a@b"), None);
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redacted("nats://alice:secret@host:4222"),
            "nats://alice:***@host:4222"
        );
        assert_eq!(redacted("nats://host:4222"), "nats://host:4222");
        assert_eq!(
            redacted("nats://a:b@h1,nats://h2"),
            "nats://a:***@h1,nats://h2"
        );
        assert_eq!(redacted("tls://t0ken@h"), "tls://***@h");
    }
}
