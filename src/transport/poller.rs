//! Where a hub sleeps: one epoll set over its clients' sockets and a waker for commands.
//!
//! The sockets carry only rare frames (a wake-up from a client that published while the
//! hub slept, "ready", a hang-up); the hub reads them itself ([`super::ends::read_client`])
//! when the poller says a socket is readable.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{io_err, TransportError};

/// The token of the waker's events.
pub(crate) const WAKER: u64 = u64::MAX;

/// Wakes a [`Poller`] from another thread.
#[derive(Clone)]
pub(crate) struct Waker(Arc<EventFd>);

impl Waker {
    /// Wakes the poller.
    pub(crate) fn wake(&self) {
        let _ = self.0.write(1);
    }
}

/// An epoll set of sockets, each known by a token.
pub(crate) struct Poller {
    epoll: Epoll,
    waker: Arc<EventFd>,
    ready: Vec<EpollEvent>,
}

fn nix_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> TransportError {
    move |e| io_err(what)(io::Error::from(e))
}

impl Poller {
    /// A new poller and its waker.
    pub(crate) fn new() -> Result<(Poller, Waker), TransportError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(nix_err("creating an epoll set"))?;
        let waker = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(nix_err("creating an eventfd"))?,
        );
        epoll
            .add(waker.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKER))
            .map_err(nix_err("adding to an epoll set"))?;
        Ok((
            Poller {
                epoll,
                waker: Arc::clone(&waker),
                ready: vec![EpollEvent::empty(); 64],
            },
            Waker(waker),
        ))
    }

    /// Watches `fd` for input, reported as `token`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> Result<(), TransportError> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(nix_err("adding to an epoll set"))
    }

    /// Stops watching `fd`.
    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        let _ = self.epoll.delete(fd);
    }

    /// Waits up to `timeout` (zero: not at all) and appends the tokens of the sockets that
    /// are readable to `out` ([`WAKER`] for the waker, whose count is consumed).
    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        out: &mut Vec<u64>,
    ) -> Result<(), TransportError> {
        let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
        let n = match self.epoll.wait(&mut self.ready, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(nix_err("waiting for clients")(e)),
        };
        for ev in &self.ready[..n] {
            if ev.data() == WAKER {
                let _ = self.waker.read();
            }
            out.push(ev.data());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sock::Conn;

    #[test]
    fn readable_sockets_and_the_waker_are_reported() {
        let (mut poller, waker) = Poller::new().unwrap();
        let (a, b) = Conn::pair().unwrap();
        poller.add(b.as_fd(), 7).unwrap();
        let mut out = Vec::new();
        poller.wait(Duration::ZERO, &mut out).unwrap();
        assert!(out.is_empty());
        a.send(b"x", &[]).unwrap();
        waker.wake();
        poller.wait(Duration::from_secs(1), &mut out).unwrap();
        out.sort();
        assert_eq!(out, [7, WAKER]);
        poller.remove(b.as_fd());
    }
}
