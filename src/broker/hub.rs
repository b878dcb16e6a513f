//! The hub of one named server: registers its producers and subscribers and fans every
//! batch out to every subscriber.
//!
//! One thread per server owns all of the server's state and reads all of its channels
//! from one poller, so nothing here takes a lock on the data path. Per batch only a
//! descriptor moves: the producer's segment is shared by every subscriber, reference
//! counted here, and given back to the producer when the last subscriber released it.
//!
//! A subscriber can never make the hub wait: what is sent to it is bounded by a credit
//! window ([`CREDIT_WINDOW`] batches delivered and not yet released), so its socket never
//! fills; what waits beyond that is its queue (`queue-depth`), where the overflow policy
//! applies. Releases to a producer go through a thread of their own, so a stopped producer
//! cannot block the hub either. Under `block` nothing is dropped: the producer runs out of
//! free segments and waits, paced by the slowest subscriber.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::config::{Overflow, ServerConfig};
use crate::batch::Header;
use crate::stats::{ServerStats, SubscriberStats};
use crate::transport::broker::{
    parse_frame, Event, Pending, Poller, ProducerEnd, SharedSegment, SubscriberEnd, Token, Waker,
    WireInfo,
};
use crate::transport::frame::{Desc, Frame, NoticeCode};
use crate::transport::{TransportError, CREDIT_WINDOW};

/// Segments a producer may create beyond the queue depth and the credit window.
const POOL_SLACK: usize = 8;
/// How often the hub wakes when nothing happens (heartbeat, stalled producers).
const TICK: Duration = Duration::from_millis(100);
/// How long a descriptor may wait for the announcement of its segment.
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(5);

/// Asks a hub to do something.
pub(crate) enum Command {
    /// A producer asked to connect.
    AddProducer(Pending, ClientInfo),
    /// A subscriber asked to connect.
    AddSubscriber(Pending, ClientInfo),
    /// New settings that keep the server's identity (link type and snaplen).
    Reconfigure(ServerConfig),
    /// A snapshot of the counters.
    Stats(mpsc::Sender<ServerStats>),
    /// Stop: deliver what is queued until `deadline` (not for a removed server), tell
    /// every client why, and end the thread.
    Stop {
        /// The server was removed from the configuration (else the daemon is stopping).
        removed: bool,
        /// When to give up delivering.
        deadline: Instant,
    },
}

/// Who asked to connect.
#[derive(Clone, Debug)]
pub(crate) struct ClientInfo {
    /// The client's process id, as its request said.
    pub pid: u32,
    /// The user that owns the request.
    pub uid: u32,
}

/// The handle the daemon keeps for a running hub.
pub(crate) struct HubHandle {
    commands: mpsc::Sender<Command>,
    waker: Waker,
    /// When the hub last went round its loop, in ms since the daemon's epoch.
    heartbeat: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HubHandle {
    /// Sends a command and wakes the hub. False if the hub is gone.
    pub(crate) fn send(&self, command: Command) -> bool {
        let ok = self.commands.send(command).is_ok();
        self.waker.wake();
        ok
    }

    /// A clone of the command channel, for tasks that hand the hub new clients.
    pub(crate) fn sender(&self) -> HubSender {
        HubSender {
            commands: self.commands.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Milliseconds since the hub's last round (for the watchdog).
    pub(crate) fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heartbeat.load(Ordering::Relaxed))
    }

    /// True when the hub's thread has ended (it stopped, or it panicked).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(thread::JoinHandle::is_finished)
    }

    /// Waits for the hub's thread to end.
    pub(crate) fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends commands to a hub from another thread or task.
pub(crate) struct HubSender {
    commands: mpsc::Sender<Command>,
    waker: Waker,
}

impl HubSender {
    /// Sends a command and wakes the hub. False if the hub is gone.
    pub(crate) fn send(&self, command: Command) -> bool {
        let ok = self.commands.send(command).is_ok();
        self.waker.wake();
        ok
    }
}

/// A monotonic clock in milliseconds shared by the hubs and the watchdog.
pub(crate) fn clock_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Starts the hub of server `name`.
pub(crate) fn spawn(
    name: String,
    config: ServerConfig,
    ids: Arc<AtomicU64>,
    epoch: Instant,
) -> Result<HubHandle, TransportError> {
    let (poller, waker) = Poller::new()?;
    let (commands, rx) = mpsc::channel();
    let heartbeat = Arc::new(AtomicU64::new(clock_ms(epoch)));
    let beat = Arc::clone(&heartbeat);
    let hub = Hub::new(name.clone(), config, poller, rx, ids);
    let server = name.clone();
    let thread = thread::Builder::new()
        .name(format!("hub-{name}"))
        .spawn(move || {
            // A panic here can only come from below us (ipc-channel's receive path meeting
            // bytes that do not follow its framing). The daemon restarts the server; its
            // clients reconnect by themselves.
            let run = std::panic::AssertUnwindSafe(|| hub.run(&beat, epoch));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(server = %server, "the server's hub panicked");
            }
        })
        .map_err(|source| TransportError::Io {
            what: "starting a hub thread",
            source,
        })?;
    Ok(HubHandle {
        commands,
        waker,
        heartbeat,
        thread: Some(thread),
    })
}

/// A batch waiting in a subscriber's queue.
#[derive(Clone, Copy, Debug)]
struct Queued {
    seg: u32,
    len: u32,
    seq: u64,
    packets: u32,
    /// Batches dropped for this subscriber just before this one.
    lost_before: u32,
}

struct Subscriber {
    end: SubscriberEnd,
    queue: VecDeque<Queued>,
    /// Segments delivered and not yet released.
    in_flight: HashSet<u32>,
    /// Segments this subscriber has been given (and must not be given again).
    known: HashSet<u32>,
    /// Batches dropped since the last one queued, to report on the next.
    lost_pending: u32,
    stats: SubscriberStats,
}

/// A producer's segment as the hub knows it.
struct ProducerSegment {
    seg: SharedSegment,
    /// Announced since its last use: a descriptor flagged fresh may use it.
    announced: bool,
}

struct Producer {
    slot: u32,
    back: BackSender,
    segments: HashMap<u32, ProducerSegment>,
    /// Descriptors waiting for the announcement of their segment, in order.
    stalled: VecDeque<(Desc, Instant)>,
    pool: usize,
    pid: u32,
}

/// A segment some subscriber holds (queued or delivered).
struct Held {
    seg: SharedSegment,
    refs: u32,
    producer: u64,
    local: u32,
}

struct Hub {
    name: String,
    config: ServerConfig,
    info: WireInfo,
    poller: Poller,
    commands: mpsc::Receiver<Command>,
    ids: Arc<AtomicU64>,
    producers: BTreeMap<u64, Producer>,
    subscribers: BTreeMap<u64, Subscriber>,
    /// Held segments by global id (`slot << 16 | local`).
    held: HashMap<u32, Held>,
    next_seq: u64,
    stats: ServerStats,
    /// Reused buffers.
    events: Vec<Event>,
    descs: Vec<Desc>,
}

fn global(slot: u32, local: u32) -> u32 {
    slot << 16 | local
}

fn wire_info(name: &str, c: &ServerConfig) -> WireInfo {
    WireInfo {
        name: name.to_owned(),
        linktype: c.linktype,
        snaplen: c.snaplen,
        max_batch_bytes: c.max_batch_bytes as u64,
    }
}

impl Hub {
    fn new(
        name: String,
        config: ServerConfig,
        poller: Poller,
        commands: mpsc::Receiver<Command>,
        ids: Arc<AtomicU64>,
    ) -> Hub {
        Hub {
            info: wire_info(&name, &config),
            stats: ServerStats {
                name: name.clone(),
                ..ServerStats::default()
            },
            name,
            config,
            poller,
            commands,
            ids,
            producers: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            held: HashMap::new(),
            next_seq: 0,
            events: Vec::new(),
            descs: Vec::new(),
        }
    }

    fn run(mut self, heartbeat: &AtomicU64, epoch: Instant) {
        let mut stopping: Option<(bool, Instant)> = None;
        loop {
            heartbeat.store(clock_ms(epoch), Ordering::Relaxed);
            if let Err(e) = self.poller.wait(TICK, &mut self.events) {
                warn!(server = %self.name, error = %e, "waiting for clients failed");
                thread::sleep(TICK);
            }
            let mut events = std::mem::take(&mut self.events);
            // Announcements first: a descriptor may arrive in the same round as the
            // announcement of its segment.
            events.sort_by_key(|e| !matches!(e, Event::Segment(..)));
            for event in events.drain(..) {
                self.handle(event);
            }
            self.events = events;
            while let Ok(command) = self.commands.try_recv() {
                if let Some(stop) = self.command(command) {
                    stopping = Some(stop);
                }
            }
            self.expire_stalled();
            self.deliver_all();
            self.flush_releases();
            if let Some((removed, deadline)) = stopping {
                let drained = self.subscribers.values().all(|s| s.queue.is_empty());
                if removed || drained || Instant::now() >= deadline {
                    self.finish(removed);
                    return;
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Wake => {}
            Event::Segment(Token::ProducerCtrl(p), local, seg) => self.segment(p, local, seg),
            Event::Frame(Token::ProducerData(p), bytes) => match parse_frame(&bytes) {
                Ok(Frame::Descs(descs)) => {
                    for d in descs {
                        if self.producers.contains_key(&p) {
                            self.incoming(p, d);
                        }
                    }
                }
                Ok(other) => self.drop_producer(p, &format!("sent frame kind {}", other.kind())),
                Err(e) => self.drop_producer(p, &e.to_string()),
            },
            Event::Frame(Token::SubscriberReleases(s), bytes) => match parse_frame(&bytes) {
                Ok(Frame::Releases(ids)) => {
                    for g in ids {
                        if !self.release(s, g) {
                            self.drop_subscriber(
                                s,
                                &format!("released segment {g} it does not hold"),
                            );
                            break;
                        }
                    }
                }
                Ok(other) => self.drop_subscriber(s, &format!("sent frame kind {}", other.kind())),
                Err(e) => self.drop_subscriber(s, &e.to_string()),
            },
            // Only the data channel's end retires a producer: ipc-channel reports it after
            // every message on it was read, so the last batches are not lost. (The control
            // channel may close first, in the same round, before those messages.)
            Event::Closed(Token::ProducerCtrl(_)) => {}
            Event::Closed(Token::ProducerData(p)) => {
                self.poller.forget(p);
                if let Some(prod) = self.producers.remove(&p) {
                    info!(server = %self.name, producer = p, pid = prod.pid, "producer left");
                    prod.back.close();
                }
            }
            Event::Closed(Token::SubscriberReleases(s)) => {
                if let Some(sub) = self.subscribers.remove(&s) {
                    info!(server = %self.name, subscriber = s, pid = sub.stats.pid, "subscriber left");
                    self.forget(sub);
                }
            }
            // The poller stopped reading that channel; a client whose messages cannot be
            // read safely is not read at all any more. (One dropped for what its messages
            // said stays read, and ignored, until it hangs up: it is told why first.)
            Event::Malformed(Token::ProducerData(p) | Token::ProducerCtrl(p), why) => {
                self.poller.forget(p);
                self.drop_producer(p, &why)
            }
            Event::Malformed(Token::SubscriberReleases(s), why) => {
                self.poller.forget(s);
                self.drop_subscriber(s, &why)
            }
            Event::Segment(..) | Event::Frame(..) | Event::Closed(_) | Event::Malformed(..) => {}
        }
    }

    // ---- producers -----------------------------------------------------------------

    fn segment(&mut self, p: u64, local: u32, seg: SharedSegment) {
        let Some(prod) = self.producers.get_mut(&p) else {
            return;
        };
        if local as usize >= prod.pool {
            return self.drop_producer(p, &format!("announced segment {local} beyond its pool"));
        }
        if self.held.contains_key(&global(prod.slot, local)) {
            return self.drop_producer(p, &format!("replaced segment {local} while it is held"));
        }
        prod.segments.insert(
            local,
            ProducerSegment {
                seg,
                announced: true,
            },
        );
        // Descriptors that waited for this announcement can go now, in order.
        while let Some(&(d, _)) = self.producers.get(&p).and_then(|x| x.stalled.front()) {
            if !self.ready(p, &d) {
                break;
            }
            if let Some(prod) = self.producers.get_mut(&p) {
                prod.stalled.pop_front();
            }
            self.accept_batch(p, d);
        }
    }

    /// True when the descriptor's segment is known (and freshly announced if it says so).
    fn ready(&self, p: u64, d: &Desc) -> bool {
        self.producers
            .get(&p)
            .and_then(|prod| prod.segments.get(&d.seg))
            .is_some_and(|s| !d.fresh || s.announced)
    }

    fn incoming(&mut self, p: u64, d: Desc) {
        let Some(prod) = self.producers.get_mut(&p) else {
            return;
        };
        if !prod.stalled.is_empty() || !self.ready(p, &d) {
            if let Some(prod) = self.producers.get_mut(&p) {
                prod.stalled.push_back((d, Instant::now()));
            }
            return;
        }
        self.accept_batch(p, d);
    }

    fn expire_stalled(&mut self) {
        let late: Vec<u64> = self
            .producers
            .iter()
            .filter(|(_, prod)| {
                prod.stalled
                    .front()
                    .is_some_and(|(_, since)| since.elapsed() > ANNOUNCE_LIMIT)
            })
            .map(|(&p, _)| p)
            .collect();
        for p in late {
            self.drop_producer(p, "sent a descriptor for a segment it never announced");
        }
    }

    /// Checks a batch a producer sent and fans it out.
    fn accept_batch(&mut self, p: u64, d: Desc) {
        let max = self.config.max_batch_bytes;
        let Some(prod) = self.producers.get_mut(&p) else {
            return;
        };
        let Some(ps) = prod.segments.get_mut(&d.seg) else {
            return self.drop_producer(p, &format!("unknown segment {}", d.seg));
        };
        ps.announced = false;
        let g = global(prod.slot, d.seg);
        if d.len as usize > max {
            return self.drop_producer(
                p,
                &format!("batch of {} bytes is over max-batch-bytes ({max})", d.len),
            );
        }
        let bytes = ps.seg.bytes();
        let header = match bytes.get(..d.len as usize).map(Header::parse) {
            Some(Ok(h)) if h.total_len == d.len => h,
            Some(Ok(h)) => {
                return self.drop_producer(
                    p,
                    &format!(
                        "batch header says {} bytes, descriptor {}",
                        h.total_len, d.len
                    ),
                )
            }
            Some(Err(e)) => return self.drop_producer(p, &format!("bad batch: {e}")),
            None => {
                return self.drop_producer(
                    p,
                    &format!("descriptor of {} bytes overruns its segment", d.len),
                )
            }
        };
        if self.held.contains_key(&g) {
            return self.drop_producer(p, &format!("reused segment {} while it is held", d.seg));
        }
        let seg = ps.seg.clone();
        let local = d.seg;
        self.stats.batches_in += 1;
        self.stats.packets_in += u64::from(header.count);
        let item = Queued {
            seg: g,
            len: d.len,
            seq: self.next_seq,
            packets: header.count,
            lost_before: 0,
        };
        self.next_seq += 1;
        let mut refs = 0;
        let mut cut = Vec::new();
        let (depth, policy) = (self.config.queue_depth, self.config.overflow);
        for (&s, sub) in self.subscribers.iter_mut() {
            if sub.queue.len() >= depth {
                match policy {
                    Overflow::Block => {}
                    Overflow::DropNewest => {
                        sub.lost_pending += 1;
                        sub.stats.lost_batches += 1;
                        sub.stats.lost_packets += u64::from(item.packets);
                        continue;
                    }
                    Overflow::DropOldest => {
                        if let Some(old) = sub.queue.pop_front() {
                            let lost = old.lost_before + 1;
                            match sub.queue.front_mut() {
                                Some(next) => next.lost_before += lost,
                                None => sub.lost_pending += lost,
                            }
                            sub.stats.lost_batches += 1;
                            sub.stats.lost_packets += u64::from(old.packets);
                            unref(&mut self.held, &mut self.producers, old.seg);
                        }
                    }
                    Overflow::Disconnect => {
                        cut.push(s);
                        continue;
                    }
                }
            }
            let mut queued = item;
            queued.lost_before = std::mem::take(&mut sub.lost_pending);
            sub.queue.push_back(queued);
            refs += 1;
        }
        if refs == 0 {
            self.stats.unsubscribed_batches += 1;
            if let Some(prod) = self.producers.get_mut(&p) {
                prod.back.release(local);
            }
        } else {
            self.held.insert(
                g,
                Held {
                    seg,
                    refs,
                    producer: p,
                    local,
                },
            );
        }
        for s in cut {
            let why = format!("its queue of {depth} batches was full (overflow = disconnect)");
            self.drop_subscriber_with(s, NoticeCode::Disconnected, &why);
        }
    }

    fn drop_producer(&mut self, p: u64, why: &str) {
        if let Some(prod) = self.producers.remove(&p) {
            warn!(server = %self.name, producer = p, pid = prod.pid, reason = why, "dropping producer");
            self.stats.dropped_clients += 1;
            prod.back.notice(NoticeCode::Disconnected, why.to_owned());
        }
    }

    // ---- subscribers ---------------------------------------------------------------

    /// A subscriber released segment `g`; false if it did not hold it.
    fn release(&mut self, s: u64, g: u32) -> bool {
        let Some(sub) = self.subscribers.get_mut(&s) else {
            return true;
        };
        if !sub.in_flight.remove(&g) {
            return false;
        }
        unref(&mut self.held, &mut self.producers, g);
        true
    }

    fn drop_subscriber(&mut self, s: u64, why: &str) {
        self.drop_subscriber_with(s, NoticeCode::Disconnected, why);
    }

    fn drop_subscriber_with(&mut self, s: u64, code: NoticeCode, why: &str) {
        if let Some(mut sub) = self.subscribers.remove(&s) {
            warn!(server = %self.name, subscriber = s, pid = sub.stats.pid, reason = why, "dropping subscriber");
            self.stats.dropped_clients += 1;
            let _ = sub.end.notice(code, why);
            self.forget(sub);
        }
    }

    /// Lets go of everything a departed subscriber held.
    fn forget(&mut self, sub: Subscriber) {
        for q in sub.queue {
            unref(&mut self.held, &mut self.producers, q.seg);
        }
        for g in sub.in_flight {
            unref(&mut self.held, &mut self.producers, g);
        }
    }

    /// Sends every subscriber what its credit allows, in one message each.
    fn deliver_all(&mut self) {
        let mut failed = Vec::new();
        for (&s, sub) in self.subscribers.iter_mut() {
            let room = CREDIT_WINDOW.saturating_sub(sub.in_flight.len());
            let n = room.min(sub.queue.len());
            if n == 0 {
                continue;
            }
            self.descs.clear();
            let mut result = Ok(());
            for q in sub.queue.iter().take(n) {
                let fresh = !sub.known.contains(&q.seg);
                if fresh {
                    let Some(h) = self.held.get(&q.seg) else {
                        continue;
                    };
                    result = sub.end.announce(q.seg, &h.seg);
                    if result.is_err() {
                        break;
                    }
                    sub.known.insert(q.seg);
                }
                self.descs.push(Desc {
                    seg: q.seg,
                    len: q.len,
                    seq: q.seq,
                    lost: q.lost_before,
                    fresh,
                });
            }
            let result = result.and_then(|()| sub.end.deliver(&self.descs));
            if let Err(e) = result {
                failed.push((s, e));
                continue;
            }
            for q in sub.queue.drain(..n) {
                sub.in_flight.insert(q.seg);
                sub.stats.batches_out += 1;
                sub.stats.packets_out += u64::from(q.packets);
            }
        }
        for (s, e) in failed {
            // The peer is gone (its closed channel will be reported too) or broken.
            if let Some(sub) = self.subscribers.remove(&s) {
                debug!(server = %self.name, subscriber = s, error = %e, "delivery failed");
                self.forget(sub);
            }
        }
    }

    fn flush_releases(&mut self) {
        for prod in self.producers.values() {
            prod.back.flush();
        }
    }

    // ---- commands ------------------------------------------------------------------

    fn command(&mut self, command: Command) -> Option<(bool, Instant)> {
        match command {
            Command::AddSubscriber(pending, who) => self.add_subscriber(pending, who),
            Command::AddProducer(pending, who) => self.add_producer(pending, who),
            Command::Reconfigure(config) => {
                info!(server = %self.name, "configuration changed");
                self.info = wire_info(&self.name, &config);
                self.config = config;
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Stop { removed, deadline } => {
                // Producers stop first: nothing new comes while the queues drain.
                let (code, text) = stop_notice(removed, &self.name);
                for prod in self.producers.values() {
                    prod.back.notice(code, text.clone());
                }
                return Some((removed, deadline));
            }
        }
        None
    }

    fn add_subscriber(&mut self, pending: Pending, who: ClientInfo) {
        if self.subscribers.len() >= self.config.max_subscribers {
            self.stats.refused += 1;
            warn!(server = %self.name, pid = who.pid, "subscriber refused: max-subscribers reached");
            return pending.refuse(&format!(
                "server {} already has its maximum of {} subscribers (max-subscribers)",
                self.name, self.config.max_subscribers
            ));
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        match pending.accept_subscriber(id, &self.info, &mut self.poller) {
            Ok(end) => {
                info!(server = %self.name, subscriber = id, pid = who.pid, uid = who.uid, "subscriber connected");
                self.subscribers.insert(
                    id,
                    Subscriber {
                        end,
                        queue: VecDeque::new(),
                        in_flight: HashSet::new(),
                        known: HashSet::new(),
                        lost_pending: 0,
                        stats: SubscriberStats {
                            id,
                            pid: who.pid,
                            ..SubscriberStats::default()
                        },
                    },
                );
            }
            Err(e) => {
                warn!(server = %self.name, pid = who.pid, error = %e, "welcoming a subscriber failed")
            }
        }
    }

    fn add_producer(&mut self, pending: Pending, who: ClientInfo) {
        if self.producers.len() >= self.config.max_producers {
            self.stats.refused += 1;
            warn!(server = %self.name, pid = who.pid, "producer refused: max-producers reached");
            return pending.refuse(&format!(
                "server {} already has its maximum of {} producers (max-producers)",
                self.name, self.config.max_producers
            ));
        }
        let Some(slot) = self.free_slot() else {
            self.stats.refused += 1;
            return pending.refuse("no producer slot is free; try again later");
        };
        let pool = (self.config.queue_depth + CREDIT_WINDOW + POOL_SLACK).min(u16::MAX as usize);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        match pending.accept_producer(id, &self.info, pool as u32, &mut self.poller) {
            Ok(end) => {
                info!(server = %self.name, producer = id, pid = who.pid, uid = who.uid, "producer connected");
                self.producers.insert(
                    id,
                    Producer {
                        slot,
                        back: BackSender::spawn(end, &self.name, id),
                        segments: HashMap::new(),
                        stalled: VecDeque::new(),
                        pool,
                        pid: who.pid,
                    },
                );
            }
            Err(e) => {
                warn!(server = %self.name, pid = who.pid, error = %e, "welcoming a producer failed")
            }
        }
    }

    /// A producer slot used by no producer and no held segment.
    fn free_slot(&self) -> Option<u32> {
        let busy: HashSet<u32> = self
            .producers
            .values()
            .map(|p| p.slot)
            .chain(self.held.keys().map(|g| g >> 16))
            .collect();
        (0..=u16::MAX as u32).find(|s| !busy.contains(s))
    }

    fn snapshot(&self) -> ServerStats {
        let mut stats = self.stats.clone();
        stats.producers = self.producers.len() as u64;
        stats.subscribers = self
            .subscribers
            .values()
            .map(|s| SubscriberStats {
                queued: s.queue.len() as u64,
                in_flight: s.in_flight.len() as u64,
                ..s.stats.clone()
            })
            .collect();
        stats
    }

    fn finish(mut self, removed: bool) {
        let (code, text) = stop_notice(removed, &self.name);
        for sub in self.subscribers.values_mut() {
            let _ = sub.end.notice(code, &text);
        }
        for prod in self.producers.values() {
            prod.back.close();
        }
        info!(server = %self.name, removed, "server stopped");
    }
}

fn stop_notice(removed: bool, name: &str) -> (NoticeCode, String) {
    if removed {
        (
            NoticeCode::ServerGone,
            format!("server {name} was removed from the configuration"),
        )
    } else {
        (NoticeCode::Stopping, "the daemon is stopping".to_owned())
    }
}

/// Drops one reference to held segment `g`; the last one gives it back to its producer.
fn unref(held: &mut HashMap<u32, Held>, producers: &mut BTreeMap<u64, Producer>, g: u32) {
    let Some(h) = held.get_mut(&g) else { return };
    h.refs = h.refs.saturating_sub(1);
    if h.refs == 0 {
        if let Some(h) = held.remove(&g) {
            if let Some(prod) = producers.get_mut(&h.producer) {
                prod.back.release(h.local);
            }
        }
    }
}

/// What waits to go back to a producer.
#[derive(Default)]
struct BackQueue {
    ids: Vec<u32>,
    notices: Vec<(NoticeCode, String)>,
    closed: bool,
    /// Set by `flush`: send what is there now.
    ready: bool,
}

/// Sends releases and notices to a producer from a thread of its own, so that a producer
/// that does not read cannot block the hub. The hub only appends to a queue.
struct BackSender {
    queue: Arc<(Mutex<BackQueue>, Condvar)>,
}

impl BackSender {
    fn spawn(mut end: ProducerEnd, server: &str, id: u64) -> BackSender {
        let queue = Arc::new((Mutex::new(BackQueue::default()), Condvar::new()));
        let theirs = Arc::clone(&queue);
        let server = server.to_owned();
        let spawned = thread::Builder::new()
            .name(format!("back-{id}"))
            .spawn(move || {
                let (lock, ready) = &*theirs;
                let mut ids = Vec::new();
                loop {
                    let (notices, closed) = {
                        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while !q.ready && !q.closed {
                            q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                        q.ready = false;
                        std::mem::swap(&mut ids, &mut q.ids);
                        (std::mem::take(&mut q.notices), q.closed)
                    };
                    let mut result = Ok(());
                    if !ids.is_empty() {
                        result = end.release(&ids);
                        ids.clear();
                    }
                    for (code, text) in &notices {
                        result = result.and_then(|()| end.notice(*code, text));
                    }
                    if let Err(e) = result {
                        debug!(server = %server, producer = id, error = %e, "producer unreachable");
                        return;
                    }
                    if closed {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(producer = id, error = %e, "cannot start the producer's sender thread");
        }
        BackSender { queue }
    }

    fn with(&self, f: impl FnOnce(&mut BackQueue)) {
        let (lock, ready) = &*self.queue;
        f(&mut lock.lock().unwrap_or_else(|e| e.into_inner()));
        ready.notify_one();
    }

    fn release(&self, local: u32) {
        let (lock, _) = &*self.queue;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .push(local);
    }

    fn flush(&self) {
        let (lock, ready) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !q.ids.is_empty() {
            q.ready = true;
            ready.notify_one();
        }
    }

    fn notice(&self, code: NoticeCode, text: String) {
        self.with(|q| {
            q.notices.push((code, text));
            q.ready = true;
        });
    }

    fn close(&self) {
        self.with(|q| q.closed = true);
    }
}

impl Drop for BackSender {
    fn drop(&mut self) {
        self.close();
    }
}
