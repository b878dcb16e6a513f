//! The hub of one named server: registers its producers and subscribers and moves every
//! batch from the first to the second.
//!
//! One thread per server owns all of the server's state, so nothing here takes a lock on
//! the data path. Per batch only a descriptor moves, through rings in shared memory: the
//! hub reads a producer's ring ([`intake`]), queues the batch for every subscriber (a
//! reference count on the producer's slot, never a copy, see [`refs`]) under the server's
//! overflow policy ([`queue`]), and writes what each subscriber's window allows into its
//! ring ([`delivery`]); members of a group get only their share of the packets
//! ([`groups`]). When the last subscriber released a slot, it goes back to its producer
//! through the producer's release ring.
//!
//! The hub makes no system call per batch: it wakes a client only when the client said it
//! sleeps, and sleeps itself (in its poller, on the clients' sockets) only when a round
//! found nothing to do — after spinning and yielding briefly, and after asking every
//! client for a wake-up frame.
//!
//! A client can never make the hub wait: what the hub sends is bounded (a window per
//! subscriber), sockets are written without blocking, and everything a client writes into
//! its region is checked before use. A client whose writes do not hold up is cut off, alone.
//!
//! [`board`] holds the counters, which anyone may read without asking the hub.

pub(crate) mod board;
mod delivery;
pub(crate) mod groups;
pub(crate) mod ids;
mod intake;
mod queue;
mod refs;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::board::{Board, GroupCounters, Identity, ProducerCounters, SubscriberCounters};
use self::groups::Group;
use self::ids::{ClientId, PoolId, Slot};
use self::queue::PolicyQueue;
use self::refs::{Pools, Unref};
use super::config::{GroupBalance, Overflow, ServerConfig};
use crate::transport::ends::{read_client, ClientFrame, ProducerEnd, SubscriberEnd};
use crate::transport::poller::{Poller, Waker, WAKER};
use crate::transport::region::{SubscriberLayout, FLAG_INDEX_IPPAIR, FLAG_WANT_INDEX};
use crate::transport::sock::Conn;
use crate::transport::wire::{NoticeCode, PoolShape, WireInfo, MAX_CLIENT_FRAME};
use crate::transport::TransportError;

/// Batches a subscriber may hold delivered and unreleased (its ring's size) under
/// `block`: large, so that a burst of the producer never waits for the hub to come round.
pub(crate) const BLOCK_WINDOW: u32 = 256;
/// The same under the drop policies: a stalled subscriber holds this many slots, and the
/// pool leaves room for every subscriber's.
pub(crate) const WINDOW: u32 = 64;
/// Slots of a producer's pool under `block`: few, so that the batches in flight stay in
/// cache (measured: at 1500 B, 16-64 slots in flight run nearly twice as fast as 256).
const BLOCK_SLOTS: u32 = 64;
/// Slots beyond the windows and the queue, so that a producer never waits for a slot under
/// the drop policies.
const SLACK_SLOTS: u32 = 8;
/// Bytes of a small slot: a whole batch of 256 packets of 1500 bytes, with room to spare.
const SMALL_SLOT: u64 = 512 << 10;
/// The most address space the small slots of one pool take.
const MAX_SMALL_BYTES: u64 = 4 << 30;
/// The most address space the large slots of one pool take.
const MAX_LARGE_BYTES: u64 = 1 << 30;
/// Descriptors read from one producer per round, at most (fairness between producers).
const INTAKE_BUDGET: u32 = 256;
/// Frames read from one client's socket per round, at most.
const FRAMES_PER_ROUND: u32 = 16;
/// Busy rounds between two looks at sockets, commands and deadlines.
const MAINTAIN_EVERY: u32 = 256;
/// Idle rounds spent spinning, then yielding, before the hub sleeps.
const SPIN_ROUNDS: u32 = 8;
const YIELD_ROUNDS: u32 = 2;
/// How long the hub sleeps at most (heartbeat, deadlines).
const TICK: Duration = Duration::from_millis(100);
/// How often deadlines and gauges are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// A client that does not say it is ready this long after its welcome is dropped.
const READY_LIMIT: Duration = Duration::from_secs(5);
/// A subscriber cut off by the `disconnect` policy keeps what it was delivered this long
/// (it may still be reading it), unless it hangs up first.
const DEPARTING_LIMIT: Duration = Duration::from_secs(5);

/// A slot of the per-user limit on clients not yet ready; released when dropped.
pub(crate) trait PendingToken: Send {}

/// Who asked to connect.
pub(crate) struct ClientInfo {
    /// The client's process id, as the kernel said.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
    /// Held until the client is ready (the daemon's per-user limit).
    pub pending: Box<dyn PendingToken>,
}

/// Asks a hub to do something.
pub(crate) enum Command {
    /// A producer connected.
    AddProducer(Conn, ClientInfo),
    /// A subscriber connected, joining a group or not.
    AddSubscriber(Conn, ClientInfo, Option<String>),
    /// New settings that keep the server's identity (link type and snaplen).
    Reconfigure(Box<ServerConfig>),
    /// Stop: deliver what was published until `deadline` (not for a removed server), tell
    /// every client why, and end the thread.
    Stop {
        /// The server was removed from the configuration (else the daemon is stopping).
        removed: bool,
        /// When to give up delivering.
        deadline: Instant,
    },
}

/// The handle the daemon keeps for a running hub.
pub(crate) struct HubHandle {
    sender: HubSender,
    /// When the hub last went round its loop, in ms since the daemon's epoch.
    heartbeat: Arc<AtomicU64>,
    /// The server's counters.
    pub board: Arc<Board>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HubHandle {
    /// Sends a command and wakes the hub. False if the hub is gone.
    pub(crate) fn send(&self, command: Command) -> bool {
        self.sender.send(command)
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
#[derive(Clone)]
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

/// Starts the hub of server `name`; `ids` numbers clients and pools daemon-wide.
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
    let board = Arc::new(Board::new(&name));
    let hub = Hub::new(name.clone(), config, poller, rx, ids, Arc::clone(&board));
    let server = name.clone();
    let thread = thread::Builder::new()
        .name(format!("hub-{name}"))
        .spawn(move || {
            // Nothing a client sends can panic the hub (every value is checked); this is
            // the last defence against a bug: the daemon restarts the server, and its
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
        sender: HubSender { commands, waker },
        heartbeat,
        board,
        thread: Some(thread),
    })
}

/// A batch waiting in a subscriber's queue.
#[derive(Clone, Copy, Debug)]
struct Queued {
    pool: PoolId,
    slot: Slot,
    len: u32,
    seq: u64,
    /// Packets in the whole batch.
    count: u32,
    /// Packets for this subscriber (its share, for a group member).
    packets: u32,
    /// This subscriber's packets are listed in its selection (a group member's share).
    selected: bool,
    /// Batches (and their packets) dropped for this subscriber just before this one.
    lost_batches: u64,
    lost_packets: u64,
}

/// A batch delivered and not yet released.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    pool: PoolId,
    slot: Slot,
    packets: u32,
    /// Where its selection ends in the selection ring.
    sel_end: u64,
}

/// A producer as the hub knows it.
struct Prod {
    end: ProducerEnd,
    pool: PoolId,
    counters: Arc<ProducerCounters>,
    welcomed: Instant,
    /// Held until the producer says it is ready.
    pending: Option<Box<dyn PendingToken>>,
    /// Its socket closed: take what is left in its ring, then let it go.
    closed: bool,
}

/// A subscriber as the hub knows it.
struct Sub {
    end: SubscriberEnd,
    group: Option<String>,
    counters: Arc<SubscriberCounters>,
    group_counters: Option<Arc<GroupCounters>>,
    queue: PolicyQueue<Queued>,
    /// Packet indices of the queued items' selections, in order.
    sel_pending: VecDeque<u32>,
    /// Delivered and not released, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Losses to report on the next queued batch.
    lost_batches: u64,
    lost_packets: u64,
    /// Pools announced to it.
    announced: HashSet<PoolId>,
    /// The selection ring: written up to `sel_head`, released up to `sel_tail`.
    sel_head: u64,
    sel_tail: u64,
    /// Its group's assignment changed: say so on the next batch.
    reassigned: bool,
    /// It was told (in the log) that a share outgrew its selection ring.
    outgrown: bool,
    welcomed: Instant,
    pending: Option<Box<dyn PendingToken>>,
}

/// A subscriber cut off by its queue's policy, which may still read what it was given.
struct Departing {
    end: SubscriberEnd,
    in_flight: VecDeque<InFlight>,
    since: Instant,
}

/// Why a client is let go.
enum Cut {
    /// It broke the protocol or its ring: cut at once.
    Broken(String),
    /// Its queue overflowed under `disconnect`: told why, keeps what it holds a while.
    Policy(String),
    /// It never said it was ready.
    NotReady,
}

struct Hub {
    name: String,
    config: ServerConfig,
    info: WireInfo,
    poller: Poller,
    commands: mpsc::Receiver<Command>,
    ids: Arc<AtomicU64>,
    board: Arc<Board>,
    producers: BTreeMap<ClientId, Prod>,
    subscribers: BTreeMap<ClientId, Sub>,
    departing: BTreeMap<ClientId, Departing>,
    pools: Pools,
    groups: BTreeMap<String, Group>,
    next_seq: u64,
    stopping: Option<(bool, Instant)>,
    /// Clients to let go at the end of the round.
    cuts: Vec<(ClientId, Cut)>,
    /// Slots let go during the round, to hand back.
    freed: Vec<(PoolId, Slot)>,
    // Reused buffers.
    tokens: Vec<u64>,
    keys: Vec<ClientId>,
    plain: Vec<ClientId>,
    group_names: Vec<String>,
    members: Vec<u64>,
    hashes: Vec<u32>,
    shares: Vec<Vec<u32>>,
    frame: [u8; MAX_CLIENT_FRAME],
}

fn wire_info(name: &str, c: &ServerConfig) -> WireInfo {
    WireInfo {
        name: name.to_owned(),
        linktype: c.linktype,
        snaplen: c.snaplen,
        max_batch_bytes: c.max_batch_bytes as u64,
    }
}

fn group_gid(g: &Option<String>) -> Option<u32> {
    g.as_deref().and_then(super::config::group_id)
}

/// A group name a subscriber may ask for.
fn valid_group(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Hub {
    fn new(
        name: String,
        config: ServerConfig,
        poller: Poller,
        commands: mpsc::Receiver<Command>,
        ids: Arc<AtomicU64>,
        board: Arc<Board>,
    ) -> Hub {
        board.set_access(
            group_gid(&config.producer_group),
            group_gid(&config.subscriber_group),
        );
        Hub {
            info: wire_info(&name, &config),
            name,
            config,
            poller,
            commands,
            ids,
            board,
            producers: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            departing: BTreeMap::new(),
            pools: Pools::default(),
            groups: BTreeMap::new(),
            next_seq: 0,
            stopping: None,
            cuts: Vec::new(),
            freed: Vec::new(),
            tokens: Vec::new(),
            keys: Vec::new(),
            plain: Vec::new(),
            group_names: Vec::new(),
            members: Vec::new(),
            hashes: Vec::new(),
            shares: Vec::new(),
            frame: [0; MAX_CLIENT_FRAME],
        }
    }

    fn run(mut self, heartbeat: &AtomicU64, epoch: Instant) {
        let mut idle = 0u32;
        let mut rounds = 0u32;
        let mut last_house = Instant::now();
        loop {
            let busy = self.round();
            rounds = rounds.wrapping_add(1);
            if busy {
                idle = 0;
                // Sockets, commands and deadlines now and then, without a system call per
                // round while batches flow.
                if rounds.is_multiple_of(MAINTAIN_EVERY)
                    && self.maintain(heartbeat, epoch, &mut last_house)
                {
                    return;
                }
                continue;
            }
            idle += 1;
            if idle <= SPIN_ROUNDS {
                std::hint::spin_loop();
                continue;
            }
            if idle <= SPIN_ROUNDS + YIELD_ROUNDS {
                thread::yield_now();
                continue;
            }
            idle = 0;
            if self.maintain(heartbeat, epoch, &mut last_house) {
                return;
            }
            self.park();
        }
    }

    /// Reads sockets and commands, runs the deadlines, and ends a stopping hub: true when
    /// the hub is done.
    fn maintain(&mut self, heartbeat: &AtomicU64, epoch: Instant, last: &mut Instant) -> bool {
        heartbeat.store(clock_ms(epoch), Ordering::Relaxed);
        self.events(Duration::ZERO);
        let now = Instant::now();
        if now.duration_since(*last) >= HOUSEKEEPING {
            self.housekeeping(now);
            *last = now;
        }
        if let Some((removed, deadline)) = self.stopping {
            if removed || now >= deadline || self.drained() {
                self.finish(removed);
                return true;
            }
        }
        false
    }

    /// One pass over every ring; true when anything moved.
    fn round(&mut self) -> bool {
        let taken = self.intake();
        let released = self.collect();
        let delivered = self.deliver();
        self.give_back();
        self.apply_cuts();
        taken || released || delivered
    }

    /// Sleeps until a client or a command wakes the hub, or a tick passes.
    fn park(&mut self) {
        let starving = self.producers.values().any(|p| p.end.starving());
        for p in self.producers.values() {
            p.end.want_wake(true);
        }
        for s in self.subscribers.values() {
            // A subscriber's releases matter now only if something waits for them.
            s.end.want_wake(starving || !s.queue.is_empty());
        }
        fence(Ordering::SeqCst);
        let work = self.producers.values().any(|p| p.end.pending())
            || self
                .subscribers
                .values()
                .any(|s| s.end.pending() && (starving || !s.queue.is_empty()));
        if !work {
            self.events(TICK);
        }
        for p in self.producers.values() {
            p.end.want_wake(false);
        }
        for s in self.subscribers.values() {
            s.end.want_wake(false);
        }
    }

    /// Reads the sockets that have something (waiting up to `timeout`) and the commands.
    fn events(&mut self, timeout: Duration) {
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        if let Err(e) = self.poller.wait(timeout, &mut tokens) {
            warn!(server = %self.name, error = %e, "waiting for clients failed");
            thread::sleep(timeout.min(TICK));
        }
        for &token in &tokens {
            if token != WAKER {
                self.read_socket(ClientId(token));
            }
        }
        self.tokens = tokens;
        while let Ok(command) = self.commands.try_recv() {
            self.command(command);
        }
        self.apply_cuts();
    }

    /// Reads what a client sent on its socket.
    fn read_socket(&mut self, id: ClientId) {
        for _ in 0..FRAMES_PER_ROUND {
            let conn = if let Some(p) = self.producers.get(&id) {
                &p.end.conn
            } else if let Some(s) = self.subscribers.get(&id) {
                &s.end.conn
            } else if let Some(d) = self.departing.get(&id) {
                &d.end.conn
            } else {
                return;
            };
            match read_client(conn, &mut self.frame) {
                Ok(ClientFrame::Empty) => return,
                Ok(ClientFrame::Wake) => {}
                Ok(ClientFrame::Ready) => self.ready(id),
                Ok(ClientFrame::Closed) => return self.hung_up(id),
                Err(e) => {
                    self.cuts.push((id, Cut::Broken(e.to_string())));
                    return;
                }
            }
        }
    }

    /// A client said it received its welcome.
    fn ready(&mut self, id: ClientId) {
        if let Some(p) = self.producers.get_mut(&id) {
            p.pending = None;
        } else if let Some(s) = self.subscribers.get_mut(&id) {
            s.pending = None;
        }
    }

    /// A client's socket closed: it left.
    fn hung_up(&mut self, id: ClientId) {
        if let Some(p) = self.producers.get_mut(&id) {
            // Its last batches may still be in its ring: the next round takes them.
            p.closed = true;
            self.poller.remove(std::os::fd::AsFd::as_fd(&p.end.conn));
        } else if let Some(sub) = self.subscribers.remove(&id) {
            info!(server = %self.name, subscriber = %id, "subscriber left");
            self.forget_subscriber(id, sub, true);
        } else if let Some(d) = self.departing.remove(&id) {
            self.poller.remove(std::os::fd::AsFd::as_fd(&d.end.conn));
            for f in d.in_flight {
                self.release_slot(f.pool, f.slot);
            }
        }
    }

    // ---- commands --------------------------------------------------------------------

    fn command(&mut self, command: Command) {
        match command {
            Command::AddProducer(conn, who) => self.add_producer(conn, who),
            Command::AddSubscriber(conn, who, group) => self.add_subscriber(conn, who, group),
            Command::Reconfigure(config) => self.reconfigure(*config),
            Command::Stop { removed, deadline } => {
                // Producers stop first: nothing new comes while the queues drain.
                let (code, text) = stop_notice(removed, &self.name);
                for p in self.producers.values() {
                    p.end.notice(code, &text);
                }
                self.stopping = Some((removed, deadline));
            }
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn refuse(&self, conn: &Conn, who: &ClientInfo, why: String) {
        self.board.counters.refused.add(1);
        warn!(server = %self.name, pid = who.pid, uid = who.uid, reason = %why, "connection refused");
        crate::transport::bootstrap::send_refused(conn, &why);
    }

    fn add_producer(&mut self, conn: Conn, who: ClientInfo) {
        if self.stopping.is_some() {
            return self.refuse(&conn, &who, "the server is stopping".into());
        }
        let live = self.producers.values().filter(|p| !p.closed).count();
        if live >= self.config.max_producers {
            return self.refuse(
                &conn,
                &who,
                format!(
                    "server {} already has its maximum of {} producers (max-producers)",
                    self.name, self.config.max_producers
                ),
            );
        }
        let shape = pool_shape(&self.config);
        let id = ClientId(self.next_id());
        let pool = PoolId(self.next_id());
        let end = match ProducerEnd::welcome(conn, id.0, self.info.clone(), pool.0, shape) {
            Ok(end) => end,
            Err(e) => {
                warn!(server = %self.name, pid = who.pid, error = %e, "welcoming a producer failed");
                return;
            }
        };
        if let Err(e) = self.poller.add(std::os::fd::AsFd::as_fd(&end.conn), id.0) {
            warn!(server = %self.name, error = %e, "cannot watch a producer");
            return;
        }
        end.set_index(self.index_flags());
        self.pools.insert(pool, Arc::clone(&end.pool), id);
        let counters = self.board.add_producer(id, Identity { pid: who.pid });
        info!(server = %self.name, producer = %id, pid = who.pid, uid = who.uid, slots = shape.slots(), "producer connected");
        self.producers.insert(
            id,
            Prod {
                end,
                pool,
                counters,
                welcomed: Instant::now(),
                pending: Some(who.pending),
                closed: false,
            },
        );
    }

    fn add_subscriber(&mut self, conn: Conn, who: ClientInfo, group: Option<String>) {
        if self.stopping.is_some() {
            return self.refuse(&conn, &who, "the server is stopping".into());
        }
        if self.subscribers.len() >= self.config.max_subscribers {
            return self.refuse(
                &conn,
                &who,
                format!(
                    "server {} already has its maximum of {} subscribers (max-subscribers)",
                    self.name, self.config.max_subscribers
                ),
            );
        }
        if let Some(g) = &group {
            if !valid_group(g) {
                return self.refuse(
                    &conn,
                    &who,
                    format!("invalid group name {g:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
                );
            }
        }
        // Every member gets a selection ring, under `batch` too: a reload may turn the
        // server's balancing to `flow` or `ip-pair` while it is a member.
        let selects = group.is_some();
        let layout = SubscriberLayout {
            desc_cap: if self.config.overflow == Overflow::Block {
                BLOCK_WINDOW
            } else {
                WINDOW
            },
            sel_cap: if selects {
                selection_cap(self.config.max_batch_bytes)
            } else {
                0
            },
        };
        let id = ClientId(self.next_id());
        let end = match SubscriberEnd::welcome(
            conn,
            id.0,
            self.info.clone(),
            layout,
            group.clone(),
            self.config.wait,
        ) {
            Ok(end) => end,
            Err(e) => {
                warn!(server = %self.name, pid = who.pid, error = %e, "welcoming a subscriber failed");
                return;
            }
        };
        if let Err(e) = self.poller.add(std::os::fd::AsFd::as_fd(&end.conn), id.0) {
            warn!(server = %self.name, error = %e, "cannot watch a subscriber");
            return;
        }
        let (counters, group_counters) =
            self.board
                .add_subscriber(id, Identity { pid: who.pid }, group.clone());
        info!(server = %self.name, subscriber = %id, pid = who.pid, uid = who.uid, group = ?group, "subscriber connected");
        self.subscribers.insert(
            id,
            Sub {
                end,
                group: group.clone(),
                counters,
                group_counters,
                queue: PolicyQueue::new(self.config.queue_depth, self.config.overflow),
                sel_pending: VecDeque::new(),
                in_flight: VecDeque::new(),
                lost_batches: 0,
                lost_packets: 0,
                announced: HashSet::new(),
                sel_head: 0,
                sel_tail: 0,
                reassigned: false,
                outgrown: false,
                welcomed: Instant::now(),
                pending: Some(who.pending),
            },
        );
        if let Some(name) = group {
            self.join_group(&name, id);
        }
    }

    fn reconfigure(&mut self, config: ServerConfig) {
        info!(server = %self.name, "configuration changed");
        self.info = wire_info(&self.name, &config);
        for sub in self.subscribers.values_mut() {
            sub.queue.reconfigure(config.queue_depth, config.overflow);
        }
        let rebalanced = config.group_balance != self.config.group_balance;
        for g in self.groups.values_mut() {
            g.balance = config.group_balance;
        }
        if rebalanced {
            // Flows move between members: each is told on its next batch.
            for sub in self.subscribers.values_mut() {
                sub.reassigned |= sub.group.is_some();
            }
        }
        self.board.set_access(
            group_gid(&config.producer_group),
            group_gid(&config.subscriber_group),
        );
        self.config = config;
        self.update_index();
    }

    // ---- groups ----------------------------------------------------------------------

    /// The index flags producers must follow: a flow index when some group balances by
    /// flow or address pair.
    fn index_flags(&self) -> u32 {
        let hashed = !self.groups.is_empty() && self.config.group_balance != GroupBalance::Batch;
        match (hashed, self.config.group_balance) {
            (false, _) => 0,
            (true, GroupBalance::IpPair) => FLAG_WANT_INDEX | FLAG_INDEX_IPPAIR,
            (true, _) => FLAG_WANT_INDEX,
        }
    }

    fn update_index(&self) {
        let flags = self.index_flags();
        for p in self.producers.values() {
            p.end.set_index(flags);
        }
    }

    fn join_group(&mut self, name: &str, id: ClientId) {
        match self.groups.get_mut(name) {
            Some(g) => {
                g.join(id.0);
                // The members that were there see their flows move.
                for m in g.assignment.members() {
                    if *m != id.0 {
                        if let Some(s) = self.subscribers.get_mut(&ClientId(*m)) {
                            s.reassigned = true;
                        }
                    }
                }
            }
            None => {
                self.groups
                    .insert(name.to_owned(), Group::new(self.config.group_balance, id.0));
                self.update_index();
            }
        }
    }

    // ---- letting clients go ----------------------------------------------------------

    fn apply_cuts(&mut self) {
        while let Some((id, cut)) = self.cuts.pop() {
            if self.producers.contains_key(&id) {
                let why = match &cut {
                    Cut::Broken(w) | Cut::Policy(w) => w.clone(),
                    Cut::NotReady => "never said it was ready".to_owned(),
                };
                self.drop_producer(id, &why);
            } else if let Some(sub) = self.subscribers.remove(&id) {
                self.board.counters.dropped_clients.add(1);
                match cut {
                    Cut::Broken(why) => {
                        warn!(server = %self.name, subscriber = %id, reason = %why, "dropping subscriber");
                        sub.end.notice(NoticeCode::Disconnected, &why);
                        self.forget_subscriber(id, sub, false);
                    }
                    Cut::NotReady => {
                        debug!(server = %self.name, subscriber = %id, "dropping a subscriber that never said it was ready");
                        self.forget_subscriber(id, sub, false);
                    }
                    Cut::Policy(why) => {
                        warn!(server = %self.name, subscriber = %id, reason = %why, "disconnecting subscriber");
                        sub.end.notice(NoticeCode::Disconnected, &why);
                        self.depart(id, sub);
                    }
                }
            } else if self.departing.contains_key(&id) {
                self.hung_up(id);
            }
        }
    }

    fn drop_producer(&mut self, id: ClientId, why: &str) {
        let Some(p) = self.producers.remove(&id) else {
            return;
        };
        warn!(server = %self.name, producer = %id, reason = why, "dropping producer");
        self.board.counters.dropped_clients.add(1);
        p.end.notice(NoticeCode::Disconnected, why);
        self.retire_producer(id, p);
    }

    /// Lets a producer go (its socket closed and its ring is empty, or it was cut off).
    fn retire_producer(&mut self, id: ClientId, p: Prod) {
        // Its last report of source drops, kept in the server's total.
        p.counters.source_dropped.set(p.end.source_dropped());
        self.poller.remove(std::os::fd::AsFd::as_fd(&p.end.conn));
        self.board.remove_producer(id);
        if self.pools.producer_left(p.pool) {
            self.retire_pool(p.pool);
        }
    }

    /// Tells every subscriber that knew pool `pool` that it is gone.
    fn retire_pool(&mut self, pool: PoolId) {
        for sub in self.subscribers.values_mut() {
            if sub.announced.remove(&pool) {
                let _ = sub.end.retire(pool.0);
            }
        }
    }

    /// Lets a subscriber go: what it had queued goes to the other members of its group;
    /// what it held is released (and counted lost when it `died`).
    fn forget_subscriber(&mut self, id: ClientId, mut sub: Sub, died: bool) {
        self.poller.remove(std::os::fd::AsFd::as_fd(&sub.end.conn));
        self.board.remove_subscriber(id);
        // What it released before it went is not lost: take its last releases first.
        if let Ok(n) = sub.end.released() {
            for _ in 0..n {
                let Some(f) = sub.in_flight.pop_front() else {
                    break;
                };
                self.release_slot(f.pool, f.slot);
            }
        }
        if died {
            let packets: u64 = sub.in_flight.iter().map(|f| u64::from(f.packets)).sum();
            self.count_lost(&sub, sub.in_flight.len() as u64, packets);
        }
        for f in std::mem::take(&mut sub.in_flight) {
            self.release_slot(f.pool, f.slot);
        }
        self.leave_group(id, &mut sub);
    }

    /// A subscriber cut off by its policy keeps what it was delivered for a while.
    fn depart(&mut self, id: ClientId, mut sub: Sub) {
        self.board.remove_subscriber(id);
        let in_flight = std::mem::take(&mut sub.in_flight);
        self.leave_group(id, &mut sub);
        self.departing.insert(
            id,
            Departing {
                end: sub.end,
                in_flight,
                since: Instant::now(),
            },
        );
    }

    /// Takes `sub` out of its group, giving what it had queued to the others.
    fn leave_group(&mut self, id: ClientId, sub: &mut Sub) {
        let queued: Vec<Queued> = sub.queue.drain().collect();
        let mut selections = std::mem::take(&mut sub.sel_pending);
        let Some(name) = sub.group.clone() else {
            for q in queued {
                self.release_slot(q.pool, q.slot);
            }
            return;
        };
        let remains = self.groups.get_mut(&name).is_some_and(|g| g.leave(id.0));
        if !remains {
            self.groups.remove(&name);
            self.update_index();
            let packets: u64 = queued.iter().map(|q| u64::from(q.packets)).sum();
            self.count_lost(sub, queued.len() as u64, packets);
            for q in queued {
                self.release_slot(q.pool, q.slot);
            }
            return;
        }
        if let Some(g) = self.groups.get(&name) {
            for m in g.assignment.members() {
                if let Some(s) = self.subscribers.get_mut(&ClientId(*m)) {
                    s.reassigned = true;
                }
            }
        }
        for q in queued {
            let indices: Vec<u32> = if q.selected {
                selections.drain(..q.packets as usize).collect()
            } else {
                Vec::new()
            };
            self.redistribute(&name, q, &indices);
            self.release_slot(q.pool, q.slot);
        }
    }

    fn count_lost(&self, sub: &Sub, batches: u64, packets: u64) {
        if batches == 0 {
            return;
        }
        sub.counters.lost_batches.add(batches);
        sub.counters.lost_packets.add(packets);
        self.board.counters.lost_batches.add(batches);
        self.board.counters.lost_packets.add(packets);
        if let Some(g) = &sub.group_counters {
            g.lost_packets.add(packets);
        }
    }

    /// Lets go of one reference to a slot; the last one frees it for its producer (at the
    /// end of the round), or retires a departed producer's pool.
    fn release_slot(&mut self, pool: PoolId, slot: Slot) {
        match self.pools.release(pool, slot) {
            Unref::Held | Unref::Orphan => {}
            Unref::Free(..) => self.freed.push((pool, slot)),
            Unref::Retire(pool) => self.retire_pool(pool),
        }
    }

    /// Gives freed slots back to their producers and publishes the release rings.
    fn give_back(&mut self) {
        let mut freed = std::mem::take(&mut self.freed);
        for (pool, slot) in freed.drain(..) {
            let owner = self.producers.iter_mut().find(|(_, p)| p.pool == pool);
            if let Some((&id, p)) = owner {
                if let Err(e) = p.end.release(slot.0) {
                    self.cuts.push((id, Cut::Broken(e.to_string())));
                }
            }
        }
        self.freed = freed;
        for p in self.producers.values_mut() {
            p.end.publish();
        }
    }

    // ---- housekeeping ----------------------------------------------------------------

    fn housekeeping(&mut self, now: Instant) {
        for (&id, p) in &self.producers {
            if p.pending.is_some() && now.duration_since(p.welcomed) > READY_LIMIT {
                self.cuts.push((id, Cut::NotReady));
            }
            p.counters.source_dropped.set(p.end.source_dropped());
        }
        for (&id, s) in &self.subscribers {
            if s.pending.is_some() && now.duration_since(s.welcomed) > READY_LIMIT {
                self.cuts.push((id, Cut::NotReady));
            }
            s.counters.queued.set(s.queue.len() as u64);
            s.counters.in_flight.set(s.in_flight.len() as u64);
            let (skipped, cut_short) = s.end.reported();
            s.counters.skipped.set(skipped.saturating_add(cut_short));
        }
        let late: Vec<ClientId> = self
            .departing
            .iter()
            .filter(|(_, d)| now.duration_since(d.since) > DEPARTING_LIMIT)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            self.hung_up(id);
        }
        // Producers that left, once their ring is empty.
        let gone: Vec<ClientId> = self
            .producers
            .iter()
            .filter(|(_, p)| p.closed && !p.end.pending())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(p) = self.producers.remove(&id) {
                info!(server = %self.name, producer = %id, "producer left");
                self.retire_producer(id, p);
            }
        }
        self.apply_cuts();
    }

    /// Nothing published waits in the daemon.
    fn drained(&self) -> bool {
        self.producers.values().all(|p| !p.end.pending())
            && self.subscribers.values().all(|s| s.queue.is_empty())
    }

    fn finish(&self, removed: bool) {
        let (code, text) = stop_notice(removed, &self.name);
        for s in self.subscribers.values() {
            s.end.notice(code, &text);
        }
        for p in self.producers.values() {
            p.end.notice(code, &text);
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

/// How a producer's pool is cut for a server.
///
/// Most batches are small (256 packets of 1500 bytes are 390 KB), and the largest a server
/// allows (`max-batch-bytes`, 16 MiB by default) are rare: so there are many slots of
/// [`SMALL_SLOT`] bytes and a few of `max-batch-bytes`. Under the drop policies there are
/// enough small slots that every subscriber's full window and the queue still leave the
/// producer room, so it never waits; under `block`, few, where waiting is the point and
/// the batches in flight should stay in cache.
fn pool_shape(c: &ServerConfig) -> PoolShape {
    let page = |n: u64| n.div_ceil(4096) * 4096;
    let max = page(c.max_batch_bytes as u64);
    let small_size = max.min(SMALL_SLOT);
    let wanted = match c.overflow {
        Overflow::Block => u64::from(BLOCK_SLOTS),
        _ => {
            c.queue_depth as u64
                + u64::from(WINDOW) * (c.max_subscribers as u64).min(64)
                + u64::from(SLACK_SLOTS)
        }
    };
    let small_slots = wanted.clamp(8, (MAX_SMALL_BYTES / small_size).clamp(8, 1 << 16));
    let (large_slots, large_size) = if max > small_size {
        let n: u64 = match c.overflow {
            Overflow::Block => 8,
            _ => 16,
        };
        (n.min((MAX_LARGE_BYTES / max).max(2)), max)
    } else {
        (0, 0)
    };
    PoolShape {
        small_slots: small_slots as u32,
        small_size: small_size as u32,
        large_slots: large_slots as u32,
        large_size: large_size as u32,
    }
}

/// Selection ring entries for a group member: room for a whole window's worth of the
/// largest batch's packets would be wasteful; room for one largest batch of the smallest
/// packets, twice, is enough (delivery waits for room).
fn selection_cap(max_batch_bytes: usize) -> u32 {
    let most = (max_batch_bytes / crate::batch::RECORD_HEAD_LEN).max(1024);
    (most.next_power_of_two() * 2).min(1 << 26) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_leave_room_for_every_window_except_under_block() {
        let mut c = ServerConfig::default();
        let shape = pool_shape(&c);
        assert_eq!(shape.small_slots, 256 + 64 * 64 + 8);
        assert_eq!(shape.small_size, 512 << 10);
        assert_eq!(shape.large_size as usize, c.max_batch_bytes);
        assert_eq!(shape.large_slots, 16);
        assert!(shape.len().unwrap() < 4 << 30, "a few GiB of address space");
        c.max_batch_bytes = 65536;
        let shape = pool_shape(&c);
        assert_eq!((shape.small_size, shape.large_slots), (65536, 0));
        c.max_batch_bytes = 16 << 20;
        c.overflow = Overflow::Block;
        assert_eq!(pool_shape(&c).small_slots, BLOCK_SLOTS);
        c.overflow = Overflow::DropOldest;
        c.max_batch_bytes = 1 << 30;
        assert_eq!(
            pool_shape(&c).large_slots,
            2,
            "huge batches: the byte cap bounds them"
        );
        assert!(selection_cap(16 << 20) >= (16 << 20) / 16);
        assert!(valid_group("ids-1.a_b"));
        assert!(!valid_group("") && !valid_group("a/b") && !valid_group(&"x".repeat(65)));
    }
}
