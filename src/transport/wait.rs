//! Waiting for the other side without a system call per batch: spin, yield, then sleep on
//! a futex, and wake a sleeper only when it said it sleeps.
//!
//! # The doorbell protocol
//!
//! A waiter and a notifier share two words in shared memory: the futex `word` and the
//! `parked` flag (see `super::region`). The order of operations is what makes a wake-up
//! impossible to lose:
//!
//! ```text
//! waiter                                   notifier
//!   v = word.load()                          publish (a Release store)
//!   parked.store(1)                          fence(SeqCst)
//!   fence(SeqCst)                            if parked.load() == 1:
//!   if ready(): parked.store(0); return          word += 1
//!   futex_wait(word, v)                          futex_wake(word)
//!   parked.store(0)
//! ```
//!
//! Either the notifier sees the flag (and changes `word`, so the wait returns at once or
//! is woken), or the waiter's second look sees what was published. The waiter reads `word`
//! *before* raising the flag: a notifier still acting on an earlier wait then bumps a word
//! the waiter has not read yet, which costs at most one spurious wake-up, never a lost
//! one. Only the waiter clears its flag. Both words live in memory shared with one peer
//! only, so a peer that scribbles over them can delay nobody but itself.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::options::WaitMode;

/// Busy checks before yielding, in adaptive mode. Measured with `packet-ipc bench`: a few
/// microseconds of spinning catches the next batch at saturation; more steals the core the
/// other side needs (two cores, ten processes).
pub(crate) const SPIN_CHECKS: u32 = 64;
/// `sched_yield` rounds before sleeping, in adaptive mode.
pub(crate) const YIELDS: u32 = 1;

/// Sleeps on `word` while it holds `expected`, at most `timeout`. Returns on a wake-up, a
/// changed word, a signal or the timeout (the caller looks again in every case).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the u32 at `word` (a valid, aligned atomic in memory that
    // lives for the call) and `ts`. Not FUTEX_PRIVATE: the word is shared between
    // processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every process sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// The two words of a doorbell (see the module docs).
#[derive(Clone, Copy)]
pub(crate) struct Bell<'a> {
    /// The futex word, bumped by the notifier.
    pub word: &'a AtomicU32,
    /// Set by the waiter while it sleeps.
    pub parked: &'a AtomicU32,
}

impl Bell<'_> {
    /// The notifier's side, called after publishing: wakes the waiter if it sleeps.
    /// Returns true when a wake-up was sent.
    pub(crate) fn ring(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) != 0 {
            self.word.fetch_add(1, Ordering::Release);
            futex_wake(self.word);
            return true;
        }
        false
    }

    /// The waiter's side: sleeps until `ready()` or `until`, whichever comes first.
    fn sleep(&self, ready: &mut impl FnMut() -> bool, until: Instant) -> bool {
        loop {
            let v = self.word.load(Ordering::Acquire);
            self.parked.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                self.parked.store(0, Ordering::Relaxed);
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.parked.store(0, Ordering::Relaxed);
                return false;
            }
            futex_wait(self.word, v, left);
            self.parked.store(0, Ordering::Relaxed);
            if ready() {
                return true;
            }
        }
    }
}

/// A deadline set by a timeout from the moment it is first needed: a wait that the first
/// checks satisfy reads no clock (at saturation, most of them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl Deadline {
    /// `timeout` from the first time it is asked; `None`: never.
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        Deadline { timeout, at: None }
    }

    /// The instant (`None`: never), fixed on the first call.
    pub(crate) fn instant(&mut self) -> Option<Instant> {
        if self.at.is_none() {
            self.at = self.timeout.map(|t| Instant::now() + t);
        }
        self.at
    }

    /// Whether it has passed.
    pub(crate) fn passed(&mut self) -> bool {
        self.instant().is_some_and(|d| Instant::now() >= d)
    }
}

/// Waits for `ready()` in the given mode, at most until `until()` (asked only when the
/// first checks did not find it ready); true when it became ready.
pub(crate) fn wait(
    mode: WaitMode,
    bell: Bell<'_>,
    until: impl FnOnce() -> Instant,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    match mode {
        WaitMode::Spin => {
            let until = until();
            let mut n = 0u32;
            loop {
                for _ in 0..256 {
                    std::hint::spin_loop();
                    if ready() {
                        return true;
                    }
                }
                n = n.wrapping_add(1);
                // Let the other processes of this core run now and then: a spinning
                // reader on a shared core would otherwise delay its own writer.
                if n.is_multiple_of(16) {
                    std::thread::yield_now();
                }
                if Instant::now() >= until {
                    return false;
                }
            }
        }
        WaitMode::Adaptive => {
            let (spins, yields) = (SPIN_CHECKS, YIELDS);
            for _ in 0..spins {
                std::hint::spin_loop();
                if ready() {
                    return true;
                }
            }
            for _ in 0..yields {
                std::thread::yield_now();
                if ready() {
                    return true;
                }
            }
            bell.sleep(&mut ready, until())
        }
        WaitMode::Park => bell.sleep(&mut ready, until()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn a_deadline_is_fixed_when_first_asked() {
        let mut never = Deadline::after(None);
        assert_eq!(never.instant(), None);
        assert!(!never.passed());
        let mut now = Deadline::after(Some(Duration::ZERO));
        assert!(now.passed());
        let mut later = Deadline::after(Some(Duration::from_secs(3600)));
        let at = later.instant().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(later.instant(), Some(at), "fixed once");
        assert!(!later.passed());
    }

    #[test]
    fn a_sleeper_is_woken_and_a_timeout_returns() {
        for mode in [WaitMode::Adaptive, WaitMode::Park, WaitMode::Spin] {
            let words = Arc::new((AtomicU32::new(0), AtomicU32::new(0), AtomicU64::new(0)));
            let theirs = Arc::clone(&words);
            let waiter = std::thread::spawn(move || {
                let (word, parked, data) = &*theirs;
                let bell = Bell { word, parked };
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut seen = 0;
                for want in 1..=200u64 {
                    assert!(wait(
                        mode,
                        bell,
                        || deadline,
                        || data.load(Ordering::Acquire) >= want
                    ));
                    seen = want;
                }
                seen
            });
            let (word, parked, data) = &*words;
            let bell = Bell { word, parked };
            for i in 1..=200u64 {
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                data.store(i, Ordering::Release);
                bell.ring();
            }
            assert_eq!(waiter.join().unwrap(), 200, "{mode:?}");
            // Nothing published: the wait gives up at its deadline.
            let start = Instant::now();
            let ready = wait(
                mode,
                bell,
                || Instant::now() + Duration::from_millis(30),
                || false,
            );
            assert!(!ready);
            assert!(start.elapsed() >= Duration::from_millis(30));
            assert_eq!(parked.load(Ordering::Relaxed), 0, "the flag is lowered");
        }
    }
}
