//! Hooks for tests: clients that misbehave on purpose, to test the daemon's defences, and
//! the daemon's own code run in-process, for tests and benches of packages that cannot rely
//! on the `packet-ipcd` binary being built.
//!
//! Not part of the API: hidden from the documentation, and of no use outside tests.

use crate::connect::{self, ConnectOptions};
use crate::transport::broker::{ProducerConn, SubEvent, SubscriberConn};
use crate::transport::frame::NoticeCode;
use crate::Result;

/// A producer connection that can send what the library never would.
pub struct HostileProducer {
    conn: ProducerConn,
}

impl HostileProducer {
    /// Connects to `server` as a producer.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileProducer> {
        Ok(HostileProducer {
            conn: connect::producer_once(server, options)?.conn,
        })
    }

    /// The id the daemon gave this producer.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Sends `bytes` as a data frame (`sealed`: in the envelope the daemon unwraps).
    pub fn frame(&mut self, bytes: &[u8], sealed: bool) -> Result<()> {
        Ok(self.conn.raw_frame(bytes, sealed)?)
    }

    /// Writes `bytes` into shared memory and sends a descriptor claiming `claimed_len`.
    pub fn batch(&mut self, bytes: &[u8], claimed_len: u32) -> Result<()> {
        Ok(self.conn.raw_batch(bytes, claimed_len)?)
    }

    /// Announces `n` segments (each a file descriptor) with ids from `first`.
    pub fn flood(&mut self, first: u32, n: u32) -> Result<()> {
        Ok(self.conn.announce_flood(first, n)?)
    }

    /// The reason the daemon gave when it cut this producer off, once it has.
    pub fn cut_off(&mut self) -> Result<Option<String>> {
        Ok(self.conn.cut_off()?)
    }
}

/// A subscriber connection that can send what the library never would.
pub struct HostileSubscriber {
    conn: SubscriberConn,
}

impl HostileSubscriber {
    /// Connects to `server` as a subscriber.
    pub fn connect(server: &str, options: &ConnectOptions) -> Result<HostileSubscriber> {
        Ok(HostileSubscriber {
            conn: connect::subscriber_once(server, options)?.conn,
        })
    }

    /// The id the daemon gave this subscriber.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Sends `bytes` on the release channel (`sealed`: in the envelope).
    pub fn release(&mut self, bytes: &[u8], sealed: bool) -> Result<()> {
        Ok(self.conn.raw_release(bytes, sealed)?)
    }

    /// Waits up to `timeout` for the daemon's word: the reason it cut this subscriber
    /// off, if it did (batches received meanwhile are dropped).
    pub fn cut_off(&mut self, timeout: std::time::Duration) -> Result<Option<String>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.conn.next(Some(left)) {
                Ok(SubEvent::Notice(NoticeCode::Disconnected, why)) => return Ok(Some(why)),
                Ok(SubEvent::Timeout) => return Ok(None),
                Ok(_) => {}
                Err(crate::TransportError::Disconnected) => {
                    return Ok(Some("the daemon closed the connection".into()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `packet-ipcd`'s own code ([`crate::broker::daemon::run`]) on a thread of this process,
/// with its own tokio runtime, in a temporary runtime directory.
pub struct InProcessDaemon {
    rendezvous: std::path::PathBuf,
    control: tokio::sync::mpsc::Sender<crate::broker::daemon::Control>,
    thread: Option<std::thread::JoinHandle<std::result::Result<(), String>>>,
    // Dropped last: the daemon is gone before its directory is.
    _dir: tempdir::TempDir,
}

/// How long [`InProcessDaemon`] waits for the daemon to start or stop.
const IN_PROCESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl InProcessDaemon {
    /// Starts the daemon on `config` (read from `source`, which a reload reads again) in a
    /// fresh runtime directory, and waits until it has published its rendezvous file.
    pub fn start(
        source: crate::broker::config::Source,
        mut config: crate::broker::config::Config,
    ) -> std::result::Result<InProcessDaemon, String> {
        use crate::rendezvous::{self, Rendezvous};
        let dir = tempdir::TempDir::new().map_err(|e| format!("a runtime directory: {e}"))?;
        config.daemon.runtime_dir = Some(dir.0.clone());
        // What the daemon will use (the environment has the last word, as for packet-ipcd).
        let runtime = rendezvous::daemon_runtime_dir(Some(&dir.0));
        let rendezvous = rendezvous::rendezvous_path(&runtime);
        let (control, rx) = tokio::sync::mpsc::channel(4);
        let thread = std::thread::Builder::new()
            .name("packet-ipcd".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let result = rt.block_on(crate::broker::daemon::run(source, config, rx));
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
                result.map_err(|e| e.to_string())
            })
            .map_err(|e| format!("starting the daemon thread: {e}"))?;
        let mut daemon = InProcessDaemon {
            rendezvous,
            control,
            thread: Some(thread),
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while !Rendezvous::read(&daemon.rendezvous).is_ok_and(|r| r.pid == std::process::id()) {
            if daemon.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let result = daemon.thread.take().map(|t| t.join());
                return Err(format!("the daemon stopped: {result:?}"));
            }
            if start.elapsed() > IN_PROCESS_DEADLINE {
                return Err("the daemon never got ready".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// Its rendezvous file.
    pub fn rendezvous(&self) -> &std::path::Path {
        &self.rendezvous
    }

    /// Options that reach this daemon, and fail at once rather than wait for another.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            rendezvous: Some(self.rendezvous.clone()),
            reconnect_wait: std::time::Duration::ZERO,
            ..ConnectOptions::default()
        }
    }

    /// Asks the daemon to stop and waits for it: its result.
    pub fn stop(mut self) -> std::result::Result<(), String> {
        let _ = self
            .control
            .try_send(crate::broker::daemon::Control::Shutdown);
        let Some(thread) = self.thread.take() else {
            return Err("the daemon had stopped already".into());
        };
        let start = std::time::Instant::now();
        while !thread.is_finished() {
            if start.elapsed() > IN_PROCESS_DEADLINE {
                return Err("the daemon did not stop".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        thread
            .join()
            .map_err(|_| "the daemon thread panicked".to_owned())?
    }
}

impl Drop for InProcessDaemon {
    /// Without [`InProcessDaemon::stop`] (a failing test): stops the daemon if it still
    /// runs, waiting a little.
    fn drop(&mut self) {
        let _ = self
            .control
            .try_send(crate::broker::daemon::Control::Shutdown);
        if let Some(thread) = self.thread.take() {
            let start = std::time::Instant::now();
            while !thread.is_finished() && start.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

mod tempdir {
    use std::path::PathBuf;

    /// A temporary runtime directory, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> std::io::Result<TempDir> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let path = std::env::temp_dir().join(format!("pit-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&path)?;
            Ok(TempDir(path))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
