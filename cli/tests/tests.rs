//! Integration tests: real processes on both ends of every link.
//!
//! One test binary (so helpers are shared and linking happens once); `util` starts peer
//! processes and guards every wait with a deadline, so that a hang fails the test instead
//! of stalling the suite.

mod access;
mod bridge;
mod broker;
mod capture;
mod cli;
mod extcap;
mod groups;
mod hostile;
mod metrics;
mod p2p;
mod reliability;
mod trust;
mod util;
