//! Raw ipc-channel baselines for `packet-ipc bench`: what ipc-channel alone does with the
//! same batches, and its round-trip time, measured in the same run as packet-ipc.
//!
//! The parent starts a child process (a command it is given, which must call [`child`]
//! with the server name appended as its last argument) and talks to it over two raw byte
//! channels the child creates.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use serde::{Deserialize, Serialize};

use packet_ipc::batch::BatchView;

/// Why a baseline measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An operating-system error.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The peer did not follow the baseline's protocol.
    #[error("{0}")]
    Protocol(String),
    /// A malformed batch.
    #[error(transparent)]
    Batch(#[from] packet_ipc::batch::BatchError),
}

/// The child's ends for the parent.
#[derive(Serialize, Deserialize)]
struct Setup {
    /// Parent → child.
    down: IpcBytesSender,
    /// Child → parent.
    up: IpcBytesReceiver,
}

const BATCH: u8 = b'B';
const END: u8 = b'E';
const PING: u8 = b'P';
const QUIT: u8 = b'Q';

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
    move |source| TransportError::Io { what, source }
}

fn ipc(e: ipc_channel::IpcError) -> TransportError {
    TransportError::Protocol(format!("baseline: {e}"))
}

/// A started baseline child.
pub struct Peer {
    down: IpcBytesSender,
    up: IpcBytesReceiver,
    child: Child,
    buf: Vec<u8>,
}

impl Peer {
    /// Starts `command NAME` and waits for it to connect.
    pub fn start(mut command: Command) -> Result<Peer, TransportError> {
        let (server, name) = IpcOneShotServer::<Setup>::new().map_err(io("baseline server"))?;
        let child = command
            .arg(&name)
            .stdin(Stdio::null())
            .spawn()
            .map_err(io("starting the baseline child"))?;
        let (_, setup) = server.accept().map_err(ipc)?;
        Ok(Peer {
            down: setup.down,
            up: setup.up,
            child,
            buf: Vec::new(),
        })
    }

    /// Sends `batch` (bytes in the batch format) as fast as ipc-channel allows for
    /// `duration`; returns batches per second as the child received them (it reads every
    /// packet's first and last byte, as packet-ipc's subscribers do).
    pub fn throughput(&mut self, batch: &[u8], duration: Duration) -> Result<f64, TransportError> {
        self.buf.clear();
        self.buf.push(BATCH);
        self.buf.extend_from_slice(batch);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            self.down.send(&self.buf).map_err(io("sending a batch"))?;
            sent += 1;
        }
        self.down.send(&[END]).map_err(io("sending the end"))?;
        let reply = self.up.recv().map_err(ipc)?;
        let elapsed = start.elapsed().as_secs_f64();
        let got = reply
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| TransportError::Protocol("baseline: short reply".into()))?;
        if got != sent {
            return Err(TransportError::Protocol(format!(
                "baseline: sent {sent} batches, the child counted {got}"
            )));
        }
        Ok(got as f64 / elapsed)
    }

    /// Round trips of a 64-byte message, in microseconds, `n` of them after a warm-up.
    pub fn round_trips(&mut self, n: usize) -> Result<Vec<f64>, TransportError> {
        let mut ping = [0u8; 64];
        ping[0] = PING;
        let mut out = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let start = Instant::now();
            self.down.send(&ping).map_err(io("sending a ping"))?;
            self.up.recv().map_err(ipc)?;
            if i >= n / 10 {
                out.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(out)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.down.send(&[QUIT]);
        let _ = self.child.wait();
    }
}

/// The child's side: connects to `name`, then answers until told to quit.
pub fn child(name: &str) -> Result<(), TransportError> {
    let (down_tx, down_rx) = ipc::bytes_channel().map_err(io("channel"))?;
    let (up_tx, up_rx) = ipc::bytes_channel().map_err(io("channel"))?;
    IpcSender::<Setup>::connect(name.to_owned())
        .map_err(io("connecting to the bench"))?
        .send(Setup {
            down: down_tx,
            up: up_rx,
        })
        .map_err(ipc)?;
    let mut batches = 0u64;
    loop {
        let msg = down_rx.recv().map_err(ipc)?;
        match msg.first() {
            Some(&BATCH) => {
                let view = BatchView::parse(&msg[1..])?;
                let mut sum = 0u8;
                for p in view.iter() {
                    let d = p.bytes();
                    sum ^= d.first().copied().unwrap_or(0) ^ d.last().copied().unwrap_or(0);
                }
                std::hint::black_box(sum);
                batches += 1;
            }
            Some(&END) => {
                up_tx.send(&batches.to_le_bytes()).map_err(io("replying"))?;
                batches = 0;
            }
            Some(&PING) => up_tx.send(&msg).map_err(io("replying"))?,
            _ => return Ok(()),
        }
    }
}
