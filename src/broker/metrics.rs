//! The daemon's metrics endpoint: `GET /metrics` in the Prometheus text exposition format
//! 0.0.4, served on the daemon's tokio runtime when `[metrics] listen` is set.
//!
//! Nothing is counted here: at each scrape a [`prometheus`] collector reads the counters
//! the hubs already keep in their boards (plain atomics, and a lock the hub takes only
//! when a client joins or leaves), so a scrape never waits for, or slows, a hub. The set of
//! boards is shared with the daemon, which the daemon updates as servers start and stop (reloads
//! included).
//!
//! The families (each labelled `server`; counters end in `_total`): packets, batches and
//! bytes in, producers and subscribers connected, packets and batches lost by subscribers
//! (departed ones included), clients dropped, connections refused, packets the producers'
//! sources dropped, batches no subscriber was there for; per group (`server`, `group`) its
//! members, packets out and packets lost; per subscriber (`server`, `subscriber`, `group`)
//! packets out, packets lost and batches queued; and the process's resident memory and
//! open file descriptors (from `/proc/self`).
//!
//! Any other path answers 404, any other method than GET or HEAD 405. Connections are
//! bounded ([`MAX_CONNECTIONS`] at once, each at most [`CONNECTION_LIMIT`] long, one
//! request each).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricType::{COUNTER, GAUGE};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::hub::board::{Board, Viewer};
use crate::stats::ServerStats;

/// Scrapes served at once, at most; a connection past that is closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long one connection may last (reading the request, answering it).
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(10);
/// The only path served.
pub const PATH: &str = "/metrics";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be listened on (in use, not an address of this machine, not
    /// permitted).
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metric families could not be registered (a bug).
    #[error("metrics: {0}")]
    Registry(#[from] prometheus::Error),
}

/// The boards of the running servers, as the endpoint sees them. The daemon's lifecycle
/// task replaces the list whenever a server starts or stops; a scrape takes a copy.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedBoards(Arc<Mutex<Vec<Arc<Board>>>>);

impl SharedBoards {
    /// Replaces the list.
    pub(crate) fn set(&self, boards: Vec<Arc<Board>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = boards;
    }

    /// The list now.
    pub(crate) fn get(&self) -> Vec<Arc<Board>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A bound listener, not serving yet (see [`serve`]).
pub(crate) struct Listener {
    inner: tokio::net::TcpListener,
    addr: SocketAddr,
    registry: Registry,
}

/// Binds the endpoint's address and prepares what it serves: the families read from
/// `boards`. Done before the servers start, so that an address that cannot be used stops
/// the daemon before it has created anything.
pub(crate) async fn bind(addr: SocketAddr, boards: SharedBoards) -> Result<Listener, MetricsError> {
    let registry = Registry::new();
    registry.register(Box::new(BoardsCollector::new(boards)?))?;
    let inner = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    // The port actually bound (the configured one may be 0).
    let addr = inner.local_addr().unwrap_or(addr);
    Ok(Listener {
        inner,
        addr,
        registry,
    })
}

/// The running endpoint; it stops when dropped.
pub(crate) struct Endpoint {
    task: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts serving `GET /metrics` on the current tokio runtime.
pub(crate) fn serve(listener: Listener) -> Endpoint {
    info!(listen = %listener.addr, path = PATH, "metrics endpoint serving");
    let task = tokio::spawn(accept_loop(listener.inner, Arc::new(listener.registry)));
    Endpoint { task }
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics endpoint: too many connections; closing this one");
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&registry, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_LIMIT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIMIT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics endpoint: connection failed"),
                Err(_) => debug!(%peer, "metrics endpoint: connection too slow; closed"),
            }
        });
    }
}

/// The answer to one request.
fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match render(registry) {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Err(e) => {
            error!(error = %e, "metrics endpoint: cannot encode the metrics");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
        }
    }
}

/// Every family, in the text exposition format 0.0.4.
fn render(registry: &Registry) -> prometheus::Result<String> {
    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// What a family is: name, help, type and label names.
struct FamilyDef {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const SERVER: &[&str] = &["server"];
const GROUP: &[&str] = &["server", "group"];
const SUBSCRIBER: &[&str] = &["server", "subscriber", "group"];
const NONE: &[&str] = &[];

const fn def(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
) -> FamilyDef {
    FamilyDef {
        name,
        help,
        kind,
        labels,
    }
}

/// Where a per-server value comes from.
type ServerValue = fn(&ServerStats) -> u64;

/// The per-server families, and where each value comes from.
const SERVER_FAMILIES: &[(FamilyDef, ServerValue)] = &[
    (
        def(
            "packet_ipc_packets_in_total",
            "Packets received from producers.",
            COUNTER,
            SERVER,
        ),
        |s| s.packets_in,
    ),
    (
        def(
            "packet_ipc_batches_in_total",
            "Batches received from producers.",
            COUNTER,
            SERVER,
        ),
        |s| s.batches_in,
    ),
    (
        def(
            "packet_ipc_bytes_in_total",
            "Captured bytes received from producers.",
            COUNTER,
            SERVER,
        ),
        |s| s.bytes_in,
    ),
    (
        def(
            "packet_ipc_producers",
            "Producers connected now.",
            GAUGE,
            SERVER,
        ),
        |s| s.producers,
    ),
    (
        def(
            "packet_ipc_subscribers",
            "Subscribers connected now.",
            GAUGE,
            SERVER,
        ),
        |s| s.subscribers.len() as u64,
    ),
    (
        def(
            "packet_ipc_lost_packets_total",
            "Packets lost by subscribers (overflow policy), departed subscribers included.",
            COUNTER,
            SERVER,
        ),
        |s| s.lost_packets,
    ),
    (
        def(
            "packet_ipc_lost_batches_total",
            "Batches lost by subscribers (overflow policy), departed subscribers included.",
            COUNTER,
            SERVER,
        ),
        |s| s.lost_batches,
    ),
    (
        def(
            "packet_ipc_dropped_clients_total",
            "Clients dropped for misbehaving or by the disconnect policy.",
            COUNTER,
            SERVER,
        ),
        |s| s.dropped_clients,
    ),
    (
        def(
            "packet_ipc_refused_total",
            "Connections refused (limits, bad requests).",
            COUNTER,
            SERVER,
        ),
        |s| s.refused,
    ),
    (
        def(
            "packet_ipc_source_dropped_total",
            "Packets the producers' sources dropped before they reached them, departed \
             producers included.",
            COUNTER,
            SERVER,
        ),
        |s| s.source_dropped,
    ),
    (
        def(
            "packet_ipc_unsubscribed_batches_total",
            "Batches that reached no subscriber (none was connected).",
            COUNTER,
            SERVER,
        ),
        |s| s.unsubscribed_batches,
    ),
];

const GROUP_MEMBERS: FamilyDef = def(
    "packet_ipc_group_members",
    "Members of a subscriber group now.",
    GAUGE,
    GROUP,
);
const GROUP_PACKETS_OUT: FamilyDef = def(
    "packet_ipc_group_packets_out_total",
    "Packets delivered to a group's members, departed members included.",
    COUNTER,
    GROUP,
);
const GROUP_LOST_PACKETS: FamilyDef = def(
    "packet_ipc_group_lost_packets_total",
    "Packets lost by a group's members, departed members included.",
    COUNTER,
    GROUP,
);
const SUBSCRIBER_PACKETS_OUT: FamilyDef = def(
    "packet_ipc_subscriber_packets_out_total",
    "Packets delivered to a subscriber (a group member: its share).",
    COUNTER,
    SUBSCRIBER,
);
const SUBSCRIBER_LOST_PACKETS: FamilyDef = def(
    "packet_ipc_subscriber_lost_packets_total",
    "Packets in the batches dropped for a subscriber.",
    COUNTER,
    SUBSCRIBER,
);
const SUBSCRIBER_QUEUED: FamilyDef = def(
    "packet_ipc_subscriber_queued",
    "Batches waiting in a subscriber's queue.",
    GAUGE,
    SUBSCRIBER,
);
const PROCESS_RESIDENT: FamilyDef = def(
    "packet_ipc_process_resident_bytes",
    "Resident memory of the daemon, in bytes.",
    GAUGE,
    NONE,
);
const PROCESS_FDS: FamilyDef = def(
    "packet_ipc_process_open_fds",
    "File descriptors the daemon has open.",
    GAUGE,
    NONE,
);

/// Every family but the per-server ones.
const OTHER_FAMILIES: [&FamilyDef; 8] = [
    &GROUP_MEMBERS,
    &GROUP_PACKETS_OUT,
    &GROUP_LOST_PACKETS,
    &SUBSCRIBER_PACKETS_OUT,
    &SUBSCRIBER_LOST_PACKETS,
    &SUBSCRIBER_QUEUED,
    &PROCESS_RESIDENT,
    &PROCESS_FDS,
];

/// The names of every family the endpoint exports (for tests and dashboards).
pub fn family_names() -> Vec<&'static str> {
    SERVER_FAMILIES
        .iter()
        .map(|(d, _)| d.name)
        .chain(OTHER_FAMILIES.iter().map(|d| d.name))
        .collect()
}

/// One family's samples, gathered as a scrape goes.
struct Samples<'a> {
    def: &'a FamilyDef,
    metrics: Vec<Metric>,
}

impl<'a> Samples<'a> {
    fn new(def: &'a FamilyDef) -> Samples<'a> {
        Samples {
            def,
            metrics: Vec::new(),
        }
    }

    /// Adds a sample; `values` are those of the family's labels, in order.
    fn push(&mut self, values: &[&str], value: u64) {
        let labels = self
            .def
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = Metric::from_label(labels);
        // Counters up to 2^53 are exact as f64.
        match self.def.kind {
            COUNTER => {
                let mut c = Counter::default();
                c.set_value(value as f64);
                metric.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value as f64);
                metric.set_gauge(g);
            }
        }
        self.metrics.push(metric);
    }

    fn family(self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.def.name.to_owned());
        family.set_help(self.def.help.to_owned());
        family.set_field_type(self.def.kind);
        family.set_metric(self.metrics);
        family
    }
}

/// Reads every board at scrape time.
struct BoardsCollector {
    boards: SharedBoards,
    descs: Vec<Desc>,
}

impl BoardsCollector {
    fn new(boards: SharedBoards) -> prometheus::Result<BoardsCollector> {
        let descs = SERVER_FAMILIES
            .iter()
            .map(|(d, _)| d)
            .chain(OTHER_FAMILIES)
            .map(|d| {
                Desc::new(
                    d.name.to_owned(),
                    d.help.to_owned(),
                    d.labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(BoardsCollector { boards, descs })
    }
}

impl Collector for BoardsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let everything = Viewer {
            all: true,
            gids: Vec::new(),
        };
        let stats: Vec<ServerStats> = self
            .boards
            .get()
            .iter()
            .map(|b| b.snapshot(&everything))
            .collect();
        let mut families: Vec<MetricFamily> = SERVER_FAMILIES
            .iter()
            .map(|(def, value)| {
                let mut samples = Samples::new(def);
                for s in &stats {
                    samples.push(&[s.name.as_str()], value(s));
                }
                samples.family()
            })
            .collect();

        let mut members = Samples::new(&GROUP_MEMBERS);
        let mut group_out = Samples::new(&GROUP_PACKETS_OUT);
        let mut group_lost = Samples::new(&GROUP_LOST_PACKETS);
        let mut sub_out = Samples::new(&SUBSCRIBER_PACKETS_OUT);
        let mut sub_lost = Samples::new(&SUBSCRIBER_LOST_PACKETS);
        let mut sub_queued = Samples::new(&SUBSCRIBER_QUEUED);
        for s in &stats {
            for g in &s.groups {
                let labels = [s.name.as_str(), g.name.as_str()];
                members.push(&labels, g.members);
                group_out.push(&labels, g.packets_out);
                group_lost.push(&labels, g.lost_packets);
            }
            for sub in &s.subscribers {
                let id = sub.id.to_string();
                let labels = [
                    s.name.as_str(),
                    id.as_str(),
                    sub.group.as_deref().unwrap_or(""),
                ];
                sub_out.push(&labels, sub.packets_out);
                sub_lost.push(&labels, sub.lost_packets);
                sub_queued.push(&labels, sub.queued);
            }
        }
        let mut resident = Samples::new(&PROCESS_RESIDENT);
        if let Some(bytes) = resident_bytes() {
            resident.push(&[], bytes);
        }
        let mut fds = Samples::new(&PROCESS_FDS);
        if let Some(n) = open_fds() {
            fds.push(&[], n);
        }
        families.extend(
            [
                members, group_out, group_lost, sub_out, sub_lost, sub_queued, resident, fds,
            ]
            .map(Samples::family),
        );
        families
    }
}

/// Resident memory of this process (`/proc/self/statm`, second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Open file descriptors of this process (`/proc/self/fd`, less the one reading it).
fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::hub::board::Identity;
    use crate::broker::hub::ids::ClientId;

    fn text(boards: Vec<Arc<Board>>) -> String {
        let shared = SharedBoards::default();
        shared.set(boards);
        let registry = Registry::new();
        registry
            .register(Box::new(BoardsCollector::new(shared).unwrap()))
            .unwrap();
        render(&registry).unwrap()
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let board = Arc::new(Board::new("eth0"));
        let (s, g) = board.add_subscriber(ClientId(7), Identity { pid: 1 }, Some("ids".into()));
        s.packets_out.add(5);
        g.unwrap().packets_out.add(5);
        let text = text(vec![board]);
        for name in family_names() {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn values_come_from_the_boards() {
        let board = Arc::new(Board::new("eth0"));
        board.counters.packets_in.add(38);
        board.counters.bytes_in.add(9000);
        board.counters.lost_packets.add(3);
        let (s, _) = board.add_subscriber(ClientId(7), Identity { pid: 1 }, None);
        s.packets_out.add(35);
        s.queued.set(2);
        let other = Arc::new(Board::new("wifi \"2\""));
        let text = text(vec![board, Arc::clone(&other)]);
        for line in [
            "packet_ipc_packets_in_total{server=\"eth0\"} 38\n",
            "packet_ipc_bytes_in_total{server=\"eth0\"} 9000\n",
            "packet_ipc_lost_packets_total{server=\"eth0\"} 3\n",
            "packet_ipc_subscribers{server=\"eth0\"} 1\n",
            "packet_ipc_packets_in_total{server=\"wifi \\\"2\\\"\"} 0\n",
            "packet_ipc_subscriber_packets_out_total{server=\"eth0\",subscriber=\"7\",group=\"\"} 35\n",
            "packet_ipc_subscriber_queued{server=\"eth0\",subscriber=\"7\",group=\"\"} 2\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(text.contains("packet_ipc_process_open_fds "), "{text}");
        assert!(
            text.contains("packet_ipc_process_resident_bytes "),
            "{text}"
        );
    }
}
