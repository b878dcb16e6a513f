//! Synthetic traffic: deterministic (seeded), realistic Ethernet frames for the
//! integration tests (filters compared with tcpdump's, group balancing) and the benchmark.
//!
//! - [`mixed`]: a capture of bidirectional conversations of many kinds, with each
//!   packet's flow (and fragment's datagram) known, see [`Synth`].
//! - [`flow_shaped`]: many TCP and UDP flows in frames of one exact size, fast.
//! - [`write_pcap`]: a nanosecond pcap file of them, for tcpdump, tshark or `publish`.
//!
//! The frames are valid enough for tcpdump and libpcap filters to read them as intended:
//! IP lengths, IHL, next-header chains and fragment fields are right, and every checksum
//! (IPv4 header, TCP, UDP, ICMP, ICMPv6) is computed. Payloads on ports that tcpdump
//! decodes are what it expects there (DNS on 53, HTTP on 80, SSH banners on 22, NTP on
//! 123); other server ports are 40000-49151, where it decodes nothing, so that `tcpdump
//! -nn` prints one clean line per packet. The randomness is splitmix64, written here, so
//! a seed gives the same frames on every machine and every run.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use packet_ipc::{AsIpcPacket, Packet};
use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};

/// The first timestamp of a capture: 2023-11-14 22:13:20 UTC, in nanoseconds.
const EPOCH_NANOS: u64 = 1_700_000_000_000_000_000;
/// The smallest Ethernet frame without its FCS; shorter frames are padded.
const MIN_FRAME: usize = 60;
/// The largest untagged Ethernet frame without its FCS (a 1500-byte MTU).
const MAX_FRAME: usize = 1514;
/// The largest frame [`flow_shaped`] makes: an IPv4 packet of 65535 bytes.
const MAX_SHAPED: usize = 14 + 65_535;

/// A synthetic capture: its packets (Ethernet, link type 1) in time order, and for each
/// packet, at the same index, what it belongs to.
#[derive(Clone, Debug, Default)]
pub struct Synth {
    /// The frames, with strictly increasing nanosecond timestamps.
    pub packets: Vec<Packet>,
    /// The id of the packet's bidirectional flow: both directions of a conversation share
    /// it (an ARP request and its reply too). Ids run from 0 to [`Synth::flows`] - 1.
    pub flow: Vec<u64>,
    /// For an IP fragment, the id of the datagram it is a piece of (every fragment of a
    /// datagram, the first one too); `None` for every other packet.
    pub datagram: Vec<Option<u64>>,
}

impl Synth {
    /// The number of flows (one more than the highest flow id).
    pub fn flows(&self) -> usize {
        self.flow.iter().max().map_or(0, |&id| id as usize + 1)
    }
}

/// `flows` bidirectional conversations (at least one), their packets interleaved in time
/// order over a few seconds.
///
/// Each flow is one of: TCP over IPv4 or IPv6 (handshake, requests and responses, then a
/// FIN or RST close; server ports 443, 80, 53, 22 and others, with HTTP, DNS, SSH and
/// TLS-looking payloads), UDP over IPv4 or IPv6 (DNS on 53, QUIC-looking 443, NTP, other
/// ports), fragmented UDP over IPv4 (flags and offsets) or IPv6 (a Fragment header) whose
/// every datagram, both ways, is in 2 to 4 fragments, ICMP or ICMPv6 echo
/// request and reply, or an ARP request (broadcast) and its reply. Every kind appears
/// once `flows` is 9 or more. One flow in five carries an 802.1Q tag and one in ten a
/// QinQ pair (`0x88a8` outer, `0x8100` inner); frames are 60 to 1514 bytes (tags
/// included).
pub fn mixed(seed: u64, flows: usize) -> Synth {
    let mut mix = Mix {
        rng: Rng(seed),
        events: Vec::new(),
        datagrams: 0,
    };
    for id in 0..flows.max(1) as u64 {
        let kind = if id < KINDS.len() as u64 {
            KINDS[id as usize]
        } else {
            mix.rng.weighted(&KIND_WEIGHTS)
        };
        let tags = match mix.rng.below(10) {
            0 | 1 => Tags::Dot1q(mix.rng.range(2, 4094) as u16),
            2 => Tags::QinQ(mix.rng.range(2, 4094) as u16, mix.rng.range(2, 4094) as u16),
            _ => Tags::None,
        };
        let start = EPOCH_NANOS + mix.rng.below(2_000_000_000);
        let mut flow = Flow {
            id,
            t: start,
            conv: Conv::new(&mut mix.rng, kind.is_v6(), kind == Kind::Arp, tags),
        };
        match kind {
            Kind::Tcp4 | Kind::Tcp6 => tcp_flow(&mut mix, &mut flow),
            Kind::Udp4 | Kind::Udp6 => udp_flow(&mut mix, &mut flow),
            Kind::Frag4 | Kind::Frag6 => fragmented_flow(&mut mix, &mut flow),
            Kind::Icmp4 | Kind::Icmp6 => echo_flow(&mut mix, &mut flow),
            Kind::Arp => arp_flow(&mut mix, &mut flow),
        }
    }
    // Time order; a flow's packets keep their order (their times only grow).
    let mut events = mix.events;
    events.sort_by_key(|e| e.t);
    let mut synth = Synth {
        packets: Vec::with_capacity(events.len()),
        flow: Vec::with_capacity(events.len()),
        datagram: Vec::with_capacity(events.len()),
    };
    let mut last = 0;
    for event in events {
        let t = event.t.max(last + 1);
        last = t;
        synth.packets.push(Packet::new(time(t), event.frame));
        synth.flow.push(event.flow);
        synth.datagram.push(event.datagram);
    }
    synth
}

/// `count` Ethernet frames of exactly `packet_size` bytes (raised to 64 if smaller,
/// lowered to 65549, an IPv4 packet of 65535 bytes, if larger), for benchmarks: TCP and
/// UDP over IPv4 and IPv6, one microsecond apart.
///
/// The frames belong to `count / 4` flows (rounded up, at most 4096), half of them IPv4,
/// the packets of each going both ways in turn. A quarter of the flows are TCP to port 443
/// (`tcp port 443` matches about a quarter of the packets); the others are TCP to 80, 22
/// and high ports, UDP to 443 and high ports. Below 74 bytes an IPv6 TCP frame does not
/// fit: TCP flows are then all IPv4. The payload pads each frame to its size; every
/// checksum is right.
pub fn flow_shaped(seed: u64, packet_size: usize, count: usize) -> Vec<Packet> {
    let size = packet_size.clamp(64, MAX_SHAPED);
    let mut rng = Rng(seed);
    let mut flows: Vec<ShapedFlow> = (0..count.div_ceil(4).clamp(1, 4096))
        .map(|_| {
            let high = rng.range(40_000, 49_151) as u16;
            let (tcp, server_port) = match rng.below(100) {
                0..25 => (true, 443),
                25..40 => (true, 80),
                40..50 => (true, 22),
                50..65 => (true, high),
                65..85 => (false, 443),
                _ => (false, high),
            };
            // Below 74 bytes an IPv6 TCP frame does not fit.
            let v6 = rng.chance(50) && !(tcp && size < 14 + 40 + 20);
            ShapedFlow {
                conv: Conv::new(&mut rng, v6, false, Tags::None),
                tcp,
                server_port,
                client_port: rng.range(32_768, 60_999) as u16,
                seq: [rng.next() as u32, rng.next() as u32],
                ident: rng.next() as u16,
            }
        })
        .collect();
    let n = flows.len();
    let mut out = Vec::with_capacity(count);
    let mut pattern = vec![0u8; size];
    rng.fill(&mut pattern);
    for i in 0..count {
        let flow = &mut flows[(i / 2) % n];
        let to_server = i % 2 == 0;
        let (sport, dport) = if to_server {
            (flow.client_port, flow.server_port)
        } else {
            (flow.server_port, flow.client_port)
        };
        let ips = flow.conv.ips(to_server);
        let headers = 14 + ips.header_len() + if flow.tcp { 20 } else { 8 };
        let payload = &pattern[..size - headers];
        let mut segment = if flow.tcp {
            let me = usize::from(!to_server);
            let (seq, ack) = (flow.seq[me], flow.seq[1 - me]);
            flow.seq[me] = seq.wrapping_add(payload.len() as u32);
            tcp_segment(sport, dport, seq, ack, ACK | PSH, payload, None)
        } else {
            udp_datagram(sport, dport, payload)
        };
        let protocol = if flow.tcp { TCP } else { UDP };
        seal(ips, protocol, &mut segment);
        flow.ident = flow.ident.wrapping_add(1);
        let (src, dst) = flow.conv.macs(to_server);
        let frame = ip_frame(
            src,
            dst,
            Tags::None,
            ips,
            protocol,
            u32::from(flow.ident),
            None,
            &segment,
        );
        out.push(Packet::new(time(EPOCH_NANOS + i as u64 * 1000), frame));
    }
    out
}

/// Writes `packets` to a pcap file at `path` (replaced if it exists): nanosecond
/// timestamps (magic `0xa1b23c4d`, in this machine's byte order), link type 1 (Ethernet),
/// snaplen 65535 (or the largest packet, if larger).
pub fn write_pcap(path: &Path, packets: &[Packet]) -> io::Result<()> {
    let to_io = |e: PcapError| match e {
        PcapError::IoError(e) => e,
        e => io::Error::other(e.to_string()),
    };
    let largest = packets.iter().map(|p| p.data().len()).max().unwrap_or(0);
    let header = PcapHeader {
        snaplen: u32::try_from(largest.max(65_535)).unwrap_or(u32::MAX),
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let file = BufWriter::new(File::create(path)?);
    let mut writer = PcapWriter::with_header(file, header).map_err(to_io)?;
    for packet in packets {
        let nanos = packet.timestamp_nanos();
        let len = u32::try_from(packet.data().len()).unwrap_or(u32::MAX);
        writer
            .write_raw_packet(&RawPcapPacket {
                ts_sec: u32::try_from(nanos / 1_000_000_000).unwrap_or(u32::MAX),
                ts_frac: (nanos % 1_000_000_000) as u32,
                incl_len: len,
                orig_len: u32::try_from(packet.orig_len()).unwrap_or(len),
                data: Cow::Borrowed(packet.data()),
            })
            .map_err(to_io)?;
    }
    writer.into_writer().flush()
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// splitmix64 (Steele, Lea and Flood): one add and two multiply-xorshifts per number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by a multiply rather than a modulo.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// One of the items, each as likely as its weight.
    fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut at = self.below(total);
        for &(item, weight) in items {
            if at < weight {
                return item;
            }
            at -= weight;
        }
        items[items.len() - 1].0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.fill(&mut buf);
        buf
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
    Frag4,
    Frag6,
    Icmp4,
    Icmp6,
    Arp,
}

impl Kind {
    fn is_v6(self) -> bool {
        matches!(self, Kind::Tcp6 | Kind::Udp6 | Kind::Frag6 | Kind::Icmp6)
    }
}

/// The first flows, one of each kind.
const KINDS: [Kind; 9] = [
    Kind::Tcp4,
    Kind::Tcp6,
    Kind::Udp4,
    Kind::Udp6,
    Kind::Frag4,
    Kind::Frag6,
    Kind::Icmp4,
    Kind::Icmp6,
    Kind::Arp,
];

/// How common each kind is after the first flows, in percent.
const KIND_WEIGHTS: [(Kind, u64); 9] = [
    (Kind::Tcp4, 30),
    (Kind::Tcp6, 15),
    (Kind::Udp4, 15),
    (Kind::Udp6, 10),
    (Kind::Frag4, 8),
    (Kind::Frag6, 6),
    (Kind::Icmp4, 6),
    (Kind::Icmp6, 5),
    (Kind::Arp, 5),
];

/// The VLAN tags of a flow's frames.
#[derive(Clone, Copy, Debug)]
enum Tags {
    None,
    /// One 802.1Q tag with this VLAN id.
    Dot1q(u16),
    /// A QinQ pair: outer (service, `0x88a8`) and inner (customer, `0x8100`) VLAN ids.
    QinQ(u16, u16),
}

impl Tags {
    fn len(self) -> usize {
        match self {
            Tags::None => 0,
            Tags::Dot1q(_) => 4,
            Tags::QinQ(..) => 8,
        }
    }
}

/// Source and destination addresses of one direction.
#[derive(Clone, Copy, Debug)]
enum Ips {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Ips {
    fn reversed(self) -> Ips {
        match self {
            Ips::V4(s, d) => Ips::V4(d, s),
            Ips::V6(s, d) => Ips::V6(d, s),
        }
    }

    /// The length of the fixed IP header.
    fn header_len(self) -> usize {
        match self {
            Ips::V4(..) => 20,
            Ips::V6(..) => 40,
        }
    }
}

/// The two ends of a conversation: the client's MAC and IP addresses, and the server's
/// (for ARP, the host asked about).
#[derive(Clone, Copy, Debug)]
struct Conv {
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    /// Client to server.
    ips: Ips,
    tags: Tags,
}

impl Conv {
    /// Two hosts: a client on 10.0.0.0/8 or fd00::/8; a server on the documentation
    /// prefixes, or a `neighbour` on the client's /24 (IPv4 only, for ARP).
    fn new(rng: &mut Rng, v6: bool, neighbour: bool, tags: Tags) -> Conv {
        let mut client_mac = [0x02, 0, 0, 0, 0, 0];
        rng.fill(&mut client_mac[1..]);
        let mut server_mac = [0x02, 0, 0, 0, 0, 0];
        rng.fill(&mut server_mac[1..]);
        let ips = if v6 {
            let mut client = [0u8; 16];
            rng.fill(&mut client);
            client[0] = 0xfd;
            let mut server = [0u8; 16];
            rng.fill(&mut server);
            server[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            Ips::V6(client, server)
        } else {
            let r = rng.next().to_be_bytes();
            let client = [10, r[0], r[1], r[2].max(2)];
            let server = if neighbour {
                [10, r[0], r[1], if rng.chance(50) { 1 } else { r[3].max(2) }]
            } else {
                let prefix = rng.pick(&[[192, 0, 2], [198, 51, 100], [203, 0, 113]]);
                [prefix[0], prefix[1], prefix[2], r[4].max(1)]
            };
            Ips::V4(client, server)
        };
        Conv {
            client_mac,
            server_mac,
            ips,
            tags,
        }
    }

    fn ips(&self, to_server: bool) -> Ips {
        if to_server {
            self.ips
        } else {
            self.ips.reversed()
        }
    }

    /// Source and destination MAC addresses.
    fn macs(&self, to_server: bool) -> ([u8; 6], [u8; 6]) {
        if to_server {
            (self.client_mac, self.server_mac)
        } else {
            (self.server_mac, self.client_mac)
        }
    }

    /// The largest IP packet a frame of this flow carries (1514-byte frames, tags included).
    fn mtu(&self) -> usize {
        MAX_FRAME - 14 - self.tags.len()
    }
}

/// One packet of [`mixed`] before the time sort.
struct Event {
    t: u64,
    flow: u64,
    datagram: Option<u64>,
    frame: Vec<u8>,
}

/// What [`mixed`] builds up.
struct Mix {
    rng: Rng,
    events: Vec<Event>,
    datagrams: u64,
}

/// A flow being generated: its id, clock and ends.
struct Flow {
    id: u64,
    /// The time of its last packet.
    t: u64,
    conv: Conv,
}

impl Mix {
    /// Adds a frame to the flow, `gap` nanoseconds after its previous one.
    fn emit(&mut self, flow: &mut Flow, gap: u64, datagram: Option<u64>, frame: Vec<u8>) {
        flow.t += gap.max(1);
        self.events.push(Event {
            t: flow.t,
            flow: flow.id,
            datagram,
            frame,
        });
    }

    /// A gap between packets: 5 µs to 20 ms.
    fn gap(&mut self) -> u64 {
        self.rng.range(5_000, 20_000_000) as u64
    }

    /// Seals a transport segment (its checksum) and sends it in one IP packet.
    fn send_ip(&mut self, flow: &mut Flow, to_server: bool, protocol: u8, mut segment: Vec<u8>) {
        let ips = flow.conv.ips(to_server);
        seal(ips, protocol, &mut segment);
        let (src, dst) = flow.conv.macs(to_server);
        let ident = self.rng.next() as u32;
        let frame = ip_frame(
            src,
            dst,
            flow.conv.tags,
            ips,
            protocol,
            ident,
            None,
            &segment,
        );
        let gap = self.gap();
        self.emit(flow, gap, None, frame);
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A TCP connection: handshake, 1 to 4 request/response rounds, FIN or RST close.
fn tcp_flow(mix: &mut Mix, flow: &mut Flow) {
    let rng = &mut mix.rng;
    let port = rng.weighted(&[
        (443u16, 35),
        (80, 20),
        (53, 10),
        (22, 10),
        (8443, 5),
        (5432, 5),
        (3306, 5),
        (0, 10),
    ]);
    let server_port = if port == 0 {
        rng.range(40_000, 49_151) as u16
    } else {
        port
    };
    let client_port = rng.range(32_768, 60_999) as u16;
    let mss = flow.conv.mtu() - flow.conv.ips.header_len() - 20;
    let mut seq = [rng.next() as u32, rng.next() as u32]; // client, server
    let rounds = if server_port == 53 {
        1
    } else {
        rng.range(1, 4)
    };
    let mut send = |mix: &mut Mix, flow: &mut Flow, to_server: bool, flags: u8, payload: &[u8]| {
        let (me, peer) = if to_server { (0, 1) } else { (1, 0) };
        let (sport, dport) = if to_server {
            (client_port, server_port)
        } else {
            (server_port, client_port)
        };
        let ack = if flags & ACK != 0 { seq[peer] } else { 0 };
        let mss_option = (flags & SYN != 0).then_some(mss as u16);
        let segment = tcp_segment(sport, dport, seq[me], ack, flags, payload, mss_option);
        let consumed = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        seq[me] = seq[me].wrapping_add(consumed);
        mix.send_ip(flow, to_server, TCP, segment);
    };
    send(mix, flow, true, SYN, &[]);
    send(mix, flow, false, SYN | ACK, &[]);
    send(mix, flow, true, ACK, &[]);
    let mut dns_answer = Vec::new();
    for round in 0..rounds {
        let request = if server_port == 53 {
            let (query, answer) = dns_exchange(&mut mix.rng);
            dns_answer = length_prefixed(&answer);
            length_prefixed(&query)
        } else {
            tcp_request(&mut mix.rng, server_port, round)
        };
        send(mix, flow, true, PSH | ACK, &request);
        let response = if server_port == 53 {
            std::mem::take(&mut dns_answer)
        } else {
            tcp_response(&mut mix.rng, server_port, round, mss)
        };
        let segments = response.chunks(mss).count();
        for (i, chunk) in response.chunks(mss).enumerate() {
            let flags = if i + 1 == segments { PSH | ACK } else { ACK };
            send(mix, flow, false, flags, chunk);
        }
        send(mix, flow, true, ACK, &[]);
    }
    if mix.rng.chance(10) {
        send(mix, flow, true, RST | ACK, &[]);
    } else {
        send(mix, flow, true, FIN | ACK, &[]);
        send(mix, flow, false, FIN | ACK, &[]);
        send(mix, flow, true, ACK, &[]);
    }
}

/// What a client sends to a TCP server port (but 53).
fn tcp_request(rng: &mut Rng, port: u16, round: usize) -> Vec<u8> {
    match port {
        80 => {
            let path = rng.pick(&["/", "/index.html", "/api/v1/items", "/static/app.js"]);
            format!(
                "GET {path} HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: synth/1.0\r\n\
                 Accept: */*\r\n\r\n"
            )
            .into_bytes()
        }
        22 if round == 0 => b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec(),
        443 | 8443 => {
            let len = rng.range(30, 600);
            tls_record(rng, len)
        }
        _ => {
            let len = rng.range(10, 600);
            rng.bytes(len)
        }
    }
}

/// What a TCP server (but 53) answers: one message, which may take several segments.
fn tcp_response(rng: &mut Rng, port: u16, round: usize, mss: usize) -> Vec<u8> {
    let len = match rng.below(3) {
        0 => rng.range(20, 400),
        1 => rng.range(400, mss),
        _ => rng.range(mss, 3 * mss),
    };
    match port {
        80 => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {len}\r\n\r\n"
            );
            let mut body = head.into_bytes();
            body.extend((0..len).map(|i| b'a' + (i % 26) as u8));
            body
        }
        22 if round == 0 => b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n".to_vec(),
        443 | 8443 => tls_record(rng, len),
        _ => rng.bytes(len),
    }
}

/// A TLS 1.2/1.3 application-data record of `len` bytes of ciphertext.
fn tls_record(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut r = vec![0x17, 0x03, 0x03];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    r.extend(rng.bytes(len));
    r
}

fn length_prefixed(message: &[u8]) -> Vec<u8> {
    let mut m = (message.len() as u16).to_be_bytes().to_vec();
    m.extend_from_slice(message);
    m
}

fn dns_name(rng: &mut Rng) -> String {
    let host = rng.pick(&["www", "api", "cdn", "mail", "static", "login"]);
    let domain = rng.pick(&["example.com", "example.net", "example.org"]);
    format!("{host}{}.{domain}", rng.below(100))
}

/// A DNS query for an A (or AAAA) record, and its answer.
fn dns_exchange(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let id = rng.next() as u16;
    let name = dns_name(rng);
    let a = rng.chance(70);
    let rdata = if a {
        vec![192, 0, 2, rng.range(1, 254) as u8]
    } else {
        let mut rdata = vec![0x20, 0x01, 0x0d, 0xb8];
        rdata.extend(rng.bytes(12));
        rdata
    };
    (
        dns_message(id, &name, a, None),
        dns_message(id, &name, a, Some(rdata)),
    )
}

/// A DNS query for `name` (type A, or AAAA), or its response when `answer` (4 or 16
/// bytes) is given.
fn dns_message(id: u16, name: &str, a: bool, answer: Option<Vec<u8>>) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    let flags: u16 = if answer.is_some() { 0x8180 } else { 0x0100 };
    m.extend_from_slice(&flags.to_be_bytes());
    let answers = u16::from(answer.is_some());
    for count in [1, answers, 0, 0] {
        m.extend_from_slice(&count.to_be_bytes());
    }
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    let qtype: u16 = if a { 1 } else { 28 };
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some(rdata) = answer {
        let rtype: u16 = if rdata.len() == 4 { 1 } else { 28 };
        m.extend_from_slice(&0xC00Cu16.to_be_bytes()); // the name, by pointer
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

/// UDP exchanges: DNS (53), QUIC-looking (443), NTP (123), or other payloads; 1 to 5
/// request/response pairs, with a response now and then missing and an extra one sent.
fn udp_flow(mix: &mut Mix, flow: &mut Flow) {
    let rng = &mut mix.rng;
    let port = rng.weighted(&[(53u16, 35), (443, 30), (123, 10), (0, 25)]);
    let server_port = if port == 0 {
        rng.range(40_000, 49_151) as u16
    } else {
        port
    };
    let client_port = rng.range(32_768, 60_999) as u16;
    let max = flow.conv.mtu() - flow.conv.ips.header_len() - 8;
    let exchanges = rng.range(1, 5);
    for _ in 0..exchanges {
        let rng = &mut mix.rng;
        let (request, response) = match server_port {
            53 => dns_exchange(rng),
            443 => {
                let up = rng.range(30, 1200.min(max));
                let down = rng.range(30, max);
                (quic_short(rng, up), quic_short(rng, down))
            }
            123 => (ntp(rng, 3), ntp(rng, 4)),
            _ => {
                let up = rng.range(1, max);
                let down = rng.range(1, max);
                (rng.bytes(up), rng.bytes(down))
            }
        };
        let segment = udp_datagram(client_port, server_port, &request);
        mix.send_ip(flow, true, UDP, segment);
        let segment = udp_datagram(server_port, client_port, &response);
        mix.send_ip(flow, false, UDP, segment);
    }
}

/// A QUIC 1-RTT packet (short header, fixed bit set) of `len` bytes at least 10.
fn quic_short(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut p = rng.bytes(len.max(10));
    p[0] = 0x40 | (p[0] & 0x27);
    p
}

/// An NTPv4 packet of mode 3 (client) or 4 (server).
fn ntp(rng: &mut Rng, mode: u8) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = (4 << 3) | mode;
    if mode == 4 {
        p[1] = 2; // stratum
        p[12..16].copy_from_slice(&[192, 0, 2, 123]); // reference id
    }
    p[2] = 6; // poll
    p[3] = 0xE9; // precision
    let seconds = (EPOCH_NANOS / 1_000_000_000 + 2_208_988_800) as u32; // NTP era 0
    for at in [16, 24, 32, 40] {
        if mode == 4 || at == 40 {
            p[at..at + 4].copy_from_slice(&seconds.to_be_bytes());
            p[at + 4..at + 8].copy_from_slice(&(rng.next() as u32).to_be_bytes());
        }
    }
    p
}

/// UDP datagrams too large for one packet, both ways: 1 or 2 each way, each in 2 to 4
/// fragments sent back to back.
fn fragmented_flow(mix: &mut Mix, flow: &mut Flow) {
    let rng = &mut mix.rng;
    let client_port = rng.range(32_768, 60_999) as u16;
    let server_port = rng.range(40_000, 49_151) as u16;
    let v6 = matches!(flow.conv.ips, Ips::V6(..));
    // The largest fragment payload: a multiple of 8 that fits the MTU.
    let room = flow.conv.mtu() - flow.conv.ips.header_len() - if v6 { 8 } else { 0 };
    let max_chunk = room & !7;
    let datagrams = [mix.rng.range(1, 2), mix.rng.range(1, 2)];
    for (to_server, n) in [(true, datagrams[0]), (false, datagrams[1])] {
        for _ in 0..n {
            let rng = &mut mix.rng;
            let pieces = rng.range(2, 4);
            let chunk = rng.range(64, max_chunk) & !7;
            let last = rng.range(1, chunk);
            let total = (pieces - 1) * chunk + last;
            let (sport, dport) = if to_server {
                (client_port, server_port)
            } else {
                (server_port, client_port)
            };
            let payload = rng.bytes(total - 8);
            let mut datagram = udp_datagram(sport, dport, &payload);
            let ips = flow.conv.ips(to_server);
            seal(ips, UDP, &mut datagram);
            let ident = if v6 {
                rng.next() as u32
            } else {
                u32::from(rng.next() as u16)
            };
            let id = mix.datagrams;
            mix.datagrams += 1;
            let (src, dst) = flow.conv.macs(to_server);
            let mut gap = mix.gap();
            for (i, piece) in datagram.chunks(chunk).enumerate() {
                let more = i + 1 < pieces;
                let offset = (i * chunk / 8) as u16;
                let frame = ip_frame(
                    src,
                    dst,
                    flow.conv.tags,
                    ips,
                    UDP,
                    ident,
                    Some((offset, more)),
                    piece,
                );
                mix.emit(flow, gap, Some(id), frame);
                // The rest follow at once.
                gap = mix.rng.range(1_000, 20_000) as u64;
            }
        }
    }
}

/// Pings: 1 to 4 echo requests, each with its reply (ICMP or ICMPv6).
fn echo_flow(mix: &mut Mix, flow: &mut Flow) {
    let v6 = matches!(flow.conv.ips, Ips::V6(..));
    let max = flow.conv.mtu() - flow.conv.ips.header_len() - 8;
    let len = mix.rng.pick(&[56, 56, 56, 32, 120, 1000, max]);
    let id = mix.rng.next() as u16;
    let (protocol, request, reply) = if v6 { (ICMPV6, 128, 129) } else { (ICMP, 8, 0) };
    for seq in 1..=mix.rng.range(1, 4) as u16 {
        let mut payload = (EPOCH_NANOS / 1_000).to_le_bytes().to_vec();
        payload.extend((8..len).map(|i| i as u8));
        payload.truncate(len);
        for kind in [request, reply] {
            let mut message = vec![kind, 0, 0, 0];
            message.extend_from_slice(&id.to_be_bytes());
            message.extend_from_slice(&seq.to_be_bytes());
            message.extend_from_slice(&payload);
            mix.send_ip(flow, kind == request, protocol, message);
        }
    }
}

/// ARP: 1 or 2 requests (broadcast) for the server's address, each answered.
fn arp_flow(mix: &mut Mix, flow: &mut Flow) {
    let Ips::V4(client_ip, target_ip) = flow.conv.ips else {
        return;
    };
    let conv = flow.conv;
    for _ in 0..mix.rng.range(1, 2) {
        let request = arp(1, conv.client_mac, client_ip, [0; 6], target_ip);
        let gap = mix.gap();
        let broadcast = frame(conv.client_mac, [0xff; 6], conv.tags, 0x0806, &request);
        mix.emit(flow, gap, None, broadcast);
        let reply = arp(2, conv.server_mac, target_ip, conv.client_mac, client_ip);
        let gap = mix.rng.range(20_000, 500_000) as u64;
        let answer = frame(conv.server_mac, conv.client_mac, conv.tags, 0x0806, &reply);
        mix.emit(flow, gap, None, answer);
    }
}

/// An ARP packet for IPv4 over Ethernet.
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

/// A TCP segment, its checksum left for [`seal`]; `mss` adds that option (on a SYN).
fn tcp_segment(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    mss: Option<u16>,
) -> Vec<u8> {
    let header = if mss.is_some() { 24 } else { 20 };
    let mut s = Vec::with_capacity(header + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push(((header / 4) as u8) << 4);
    s.push(flags);
    s.extend_from_slice(&64_240u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if let Some(mss) = mss {
        s.extend_from_slice(&[2, 4]);
        s.extend_from_slice(&mss.to_be_bytes());
    }
    s.extend_from_slice(payload);
    s
}

/// A UDP datagram, its checksum left for [`seal`].
fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

/// Fills in the checksum of a whole transport segment (TCP, UDP, ICMP, ICMPv6) sent
/// between `ips`.
fn seal(ips: Ips, protocol: u8, segment: &mut [u8]) {
    let at = match protocol {
        TCP => 16,
        UDP => 6,
        ICMP | ICMPV6 => 2,
        _ => return,
    };
    if segment.len() < at + 2 {
        return;
    }
    segment[at..at + 2].fill(0);
    let len = segment.len() as u64;
    let mut sum = 0u64;
    match ips {
        // ICMP for IPv4 has no pseudo-header.
        Ips::V4(..) if protocol == ICMP => {}
        Ips::V4(src, dst) => {
            sum = ones_sum(sum, &src);
            sum = ones_sum(sum, &dst);
            sum += u64::from(protocol) + len;
        }
        Ips::V6(src, dst) => {
            sum = ones_sum(sum, &src);
            sum = ones_sum(sum, &dst);
            sum += u64::from(protocol) + len;
        }
    }
    let mut checksum = fold(ones_sum(sum, segment));
    if checksum == 0 && protocol == UDP {
        checksum = 0xFFFF; // 0 means "no checksum" in UDP
    }
    segment[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// Adds the big-endian 16-bit words of `bytes` (an odd last byte padded with zero).
fn ones_sum(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The ones' complement of the ones' complement sum.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame: addresses, tags, EtherType, payload, padded to 60 bytes.
fn frame(src: [u8; 6], dst: [u8; 6], tags: Tags, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity((14 + tags.len() + payload.len()).max(MIN_FRAME));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    match tags {
        Tags::None => {}
        Tags::Dot1q(vid) => {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        Tags::QinQ(outer, inner) => {
            f.extend_from_slice(&0x88A8u16.to_be_bytes());
            f.extend_from_slice(&outer.to_be_bytes());
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&inner.to_be_bytes());
        }
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    f
}

/// An IP packet in an Ethernet frame, carrying `payload` (a sealed transport segment, or
/// a fragment's piece of one). `fragment` is the offset in 8-byte units and whether more
/// fragments follow: IPv4 sets its flags and offset, IPv6 adds a Fragment header; `ident`
/// is the IPv4 identification (its low 16 bits) or the Fragment header's.
#[allow(clippy::too_many_arguments)]
fn ip_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    tags: Tags,
    ips: Ips,
    protocol: u8,
    ident: u32,
    fragment: Option<(u16, bool)>,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(48 + payload.len());
    let ethertype = match ips {
        Ips::V4(src, dst) => {
            let flags_offset = match fragment {
                Some((offset, more)) => (u16::from(more) << 13) | offset,
                None => 0x4000, // DF
            };
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            packet.extend_from_slice(&(ident as u16).to_be_bytes());
            packet.extend_from_slice(&flags_offset.to_be_bytes());
            packet.extend_from_slice(&[64, protocol, 0, 0]);
            packet.extend_from_slice(&src);
            packet.extend_from_slice(&dst);
            let checksum = fold(ones_sum(0, &packet));
            packet[10..12].copy_from_slice(&checksum.to_be_bytes());
            0x0800
        }
        Ips::V6(src, dst) => {
            let extra = if fragment.is_some() { 8 } else { 0 };
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&((extra + payload.len()) as u16).to_be_bytes());
            packet.push(if fragment.is_some() { 44 } else { protocol });
            packet.push(64);
            packet.extend_from_slice(&src);
            packet.extend_from_slice(&dst);
            if let Some((offset, more)) = fragment {
                packet.extend_from_slice(&[protocol, 0]);
                packet.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                packet.extend_from_slice(&ident.to_be_bytes());
            }
            0x86DD
        }
    };
    packet.extend_from_slice(payload);
    frame(src_mac, dst_mac, tags, ethertype, &packet)
}

/// One flow of [`flow_shaped`].
struct ShapedFlow {
    conv: Conv,
    tcp: bool,
    server_port: u16,
    client_port: u16,
    /// Next sequence numbers: client, server.
    seq: [u32; 2],
    ident: u16,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::process::Command;

    use packet_ipc::flow::{hash, Balance};

    use super::*;

    /// An IP packet read back from a frame.
    struct Ip<'a> {
        src: &'a [u8],
        dst: &'a [u8],
        /// The transport protocol (after any IPv6 Fragment header).
        protocol: u8,
        /// Identification, offset in bytes, more fragments.
        fragment: Option<(u32, usize, bool)>,
        /// What follows the IP header(s), without the Ethernet padding.
        payload: &'a [u8],
    }

    /// The VLAN tag types, the EtherType and where the network layer starts.
    fn link(frame: &[u8]) -> (Vec<u16>, u16, usize) {
        let mut tags = Vec::new();
        let mut at = 12;
        loop {
            let ethertype = u16::from_be_bytes([frame[at], frame[at + 1]]);
            if matches!(ethertype, 0x8100 | 0x88A8) {
                tags.push(ethertype);
                at += 4;
            } else {
                return (tags, ethertype, at + 2);
            }
        }
    }

    /// The IP packet of a frame, its lengths and IPv4 header checksum checked.
    fn ip(frame: &[u8]) -> Option<Ip<'_>> {
        let (_, ethertype, at) = link(frame);
        let p = &frame[at..];
        match ethertype {
            0x0800 => {
                assert_eq!(p[0], 0x45);
                let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
                assert!(total <= p.len() && (total == p.len() || frame.len() == MIN_FRAME));
                assert_eq!(fold(ones_sum(0, &p[..20])), 0, "IPv4 header checksum");
                let field = u16::from_be_bytes([p[6], p[7]]);
                let offset = usize::from(field & 0x1FFF) * 8;
                let more = field & 0x2000 != 0;
                let ident = u32::from(u16::from_be_bytes([p[4], p[5]]));
                Some(Ip {
                    src: &p[12..16],
                    dst: &p[16..20],
                    protocol: p[9],
                    fragment: (more || offset != 0).then_some((ident, offset, more)),
                    payload: &p[20..total],
                })
            }
            0x86DD => {
                let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
                assert!(total <= p.len() && (total == p.len() || frame.len() == MIN_FRAME));
                let (mut protocol, mut fragment, mut payload) = (p[6], None, &p[40..total]);
                if protocol == 44 {
                    let field = u16::from_be_bytes([payload[2], payload[3]]);
                    let ident = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    fragment = Some((ident, usize::from(field >> 3) * 8, field & 1 != 0));
                    protocol = payload[0];
                    payload = &payload[8..];
                }
                Some(Ip {
                    src: &p[8..24],
                    dst: &p[24..40],
                    protocol,
                    fragment,
                    payload,
                })
            }
            _ => None,
        }
    }

    /// Whether a whole transport segment's checksum is right.
    fn checksum_ok(src: &[u8], dst: &[u8], protocol: u8, segment: &[u8]) -> bool {
        let mut sum = ones_sum(0, segment);
        if protocol != ICMP {
            sum = ones_sum(ones_sum(sum, src), dst) + u64::from(protocol) + segment.len() as u64;
        }
        fold(sum) == 0
    }

    /// Source and destination addresses: IP, or the sender and target of ARP.
    fn ends(frame: &[u8]) -> (Vec<u8>, Vec<u8>) {
        if let Some(ip) = ip(frame) {
            return (ip.src.to_vec(), ip.dst.to_vec());
        }
        let (_, ethertype, at) = link(frame);
        assert_eq!(ethertype, 0x0806);
        (
            frame[at + 14..at + 18].to_vec(),
            frame[at + 24..at + 28].to_vec(),
        )
    }

    #[test]
    fn mixed_is_deterministic_and_well_ordered() {
        let synth = mixed(7, 300);
        assert_eq!(synth.flows(), 300);
        let n = synth.packets.len();
        assert!(n > 300 * 4, "{n} packets");
        assert_eq!(synth.flow.len(), n);
        assert_eq!(synth.datagram.len(), n);
        for pair in synth.packets.windows(2) {
            assert!(pair[0].timestamp_nanos() < pair[1].timestamp_nanos());
        }
        for p in &synth.packets {
            assert!((MIN_FRAME..=MAX_FRAME).contains(&p.data().len()));
        }
        let sizes: BTreeSet<usize> = synth.packets.iter().map(|p| p.data().len()).collect();
        assert!(sizes.len() > 200, "{} distinct sizes", sizes.len());
        assert!(sizes.contains(&MIN_FRAME) && sizes.contains(&MAX_FRAME));
        let again = mixed(7, 300);
        assert_eq!(again.packets, synth.packets);
        assert_eq!(again.flow, synth.flow);
        assert_ne!(mixed(8, 300).packets, synth.packets);
        assert_eq!(mixed(1, 0).flows(), 1);
    }

    #[test]
    fn every_flow_goes_both_ways() {
        let synth = mixed(11, 300);
        // Per flow: the (source, destination) address pairs seen.
        type Ways = BTreeSet<(Vec<u8>, Vec<u8>)>;
        let mut directions: BTreeMap<u64, Ways> = BTreeMap::new();
        for (p, &flow) in synth.packets.iter().zip(&synth.flow) {
            directions.entry(flow).or_default().insert(ends(p.data()));
        }
        assert_eq!(directions.len(), 300);
        for (flow, ways) in directions {
            assert_eq!(ways.len(), 2, "flow {flow}: {ways:?}");
            let (a, b) = ways.first().unwrap();
            assert!(ways.contains(&(b.clone(), a.clone())), "flow {flow}");
        }
    }

    #[test]
    fn every_kind_is_there() {
        let synth = mixed(3, 300);
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &synth.packets {
            let frame = p.data();
            let (tags, ethertype, _) = link(frame);
            let mut count = |what| *seen.entry(what).or_default() += 1;
            match tags[..] {
                [0x8100] => count("802.1Q"),
                [0x88A8, 0x8100] => count("QinQ"),
                [] => {}
                _ => panic!("tags {tags:x?}"),
            }
            if ethertype == 0x0806 {
                count("ARP");
            }
            let Some(ip) = ip(frame) else { continue };
            let v6 = ip.src.len() == 16;
            if ip.fragment.is_some() {
                count(if v6 { "IPv6 fragment" } else { "IPv4 fragment" });
                continue;
            }
            let port = |at: usize| u16::from_be_bytes([ip.payload[at], ip.payload[at + 1]]);
            match ip.protocol {
                TCP => {
                    if ip.payload[13] == SYN {
                        count(if v6 { "IPv6 TCP SYN" } else { "IPv4 TCP SYN" });
                    }
                    for (server, what) in [(80, "TCP 80"), (443, "TCP 443"), (53, "TCP 53")] {
                        if port(0) == server || port(2) == server {
                            count(what);
                        }
                    }
                }
                UDP => {
                    count(if v6 { "IPv6 UDP" } else { "IPv4 UDP" });
                    if port(2) == 53 {
                        count("DNS query");
                    }
                    if port(0) == 443 {
                        count("UDP 443");
                    }
                }
                ICMP if ip.payload[0] == 8 => count("echo request"),
                ICMP => count("echo reply"),
                ICMPV6 if ip.payload[0] == 128 => count("ICMPv6 echo request"),
                ICMPV6 => count("ICMPv6 echo reply"),
                other => panic!("protocol {other}"),
            }
        }
        for what in [
            "802.1Q",
            "QinQ",
            "ARP",
            "IPv4 fragment",
            "IPv6 fragment",
            "IPv4 TCP SYN",
            "IPv6 TCP SYN",
            "TCP 80",
            "TCP 443",
            "TCP 53",
            "IPv4 UDP",
            "IPv6 UDP",
            "DNS query",
            "UDP 443",
            "echo request",
            "echo reply",
            "ICMPv6 echo request",
            "ICMPv6 echo reply",
        ] {
            assert!(
                seen.get(what).copied().unwrap_or(0) > 0,
                "no {what}: {seen:?}"
            );
        }
    }

    #[test]
    fn checksums_are_right() {
        let synth = mixed(5, 300);
        let mut checked = 0;
        for p in &synth.packets {
            if let Some(ip) = ip(p.data()) {
                if ip.fragment.is_none() {
                    assert!(checksum_ok(ip.src, ip.dst, ip.protocol, ip.payload));
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn fragments_make_whole_datagrams() {
        let synth = mixed(13, 300);
        let mut datagrams: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, p) in synth.packets.iter().enumerate() {
            let fragment = ip(p.data()).and_then(|ip| ip.fragment);
            assert_eq!(
                fragment.is_some(),
                synth.datagram[i].is_some(),
                "packet {i}"
            );
            if let Some(id) = synth.datagram[i] {
                datagrams.entry(id).or_default().push(i);
            }
        }
        assert!(datagrams.len() > 20, "{} datagrams", datagrams.len());
        for (id, packets) in datagrams {
            assert!((2..=4).contains(&packets.len()), "datagram {id}");
            let flow = synth.flow[packets[0]];
            let mut whole = Vec::new();
            let first = ip(synth.packets[packets[0]].data()).unwrap();
            let (ident, ..) = first.fragment.unwrap();
            for (n, &i) in packets.iter().enumerate() {
                assert_eq!(synth.flow[i], flow, "datagram {id}");
                let piece = ip(synth.packets[i].data()).unwrap();
                let (this_ident, offset, more) = piece.fragment.unwrap();
                assert_eq!((this_ident, offset), (ident, whole.len()), "datagram {id}");
                assert_eq!(more, n + 1 < packets.len(), "datagram {id}");
                assert_eq!(
                    (piece.src, piece.dst, piece.protocol),
                    (first.src, first.dst, UDP)
                );
                if more {
                    assert_eq!(piece.payload.len() % 8, 0);
                }
                whole.extend_from_slice(piece.payload);
            }
            assert_eq!(
                usize::from(u16::from_be_bytes([whole[4], whole[5]])),
                whole.len()
            );
            assert!(
                checksum_ok(first.src, first.dst, UDP, &whole),
                "datagram {id}"
            );
        }
    }

    #[test]
    fn flows_hash_whole_and_spread() {
        let synth = mixed(17, 400);
        let mut by_flow: HashMap<u64, u32> = HashMap::new();
        let mut by_datagram: HashMap<u64, u32> = HashMap::new();
        for (i, p) in synth.packets.iter().enumerate() {
            let h = hash(1, p.data(), Balance::Flow);
            let want = *by_flow.entry(synth.flow[i]).or_insert(h);
            assert_eq!(h, want, "packet {i} of flow {}", synth.flow[i]);
            if let Some(d) = synth.datagram[i] {
                assert_eq!(h, *by_datagram.entry(d).or_insert(h), "datagram {d}");
            }
        }
        let mut buckets = [0usize; 8];
        for h in by_flow.values() {
            buckets[*h as usize % 8] += 1;
        }
        let fair = by_flow.len() as f64 / 8.0;
        for n in buckets {
            assert!(
                n as f64 >= fair / 2.0 && n as f64 <= fair * 2.0,
                "{buckets:?}"
            );
        }
    }

    #[test]
    fn flow_shaped_frames_have_the_size_asked() {
        for size in [1, 64, 73, 74, 100, 1500, 9000] {
            let packets = flow_shaped(9, size, 2000);
            assert_eq!(packets.len(), 2000);
            let (mut v4, mut v6, mut tcp, mut udp, mut https) = (0, 0, 0, 0, 0);
            let mut flows = BTreeSet::new();
            for p in &packets {
                assert_eq!(p.data().len(), size.max(64), "size {size}");
                let ip = ip(p.data()).unwrap();
                assert!(checksum_ok(ip.src, ip.dst, ip.protocol, ip.payload));
                if ip.src.len() == 4 {
                    v4 += 1
                } else {
                    v6 += 1
                }
                let ports = (&ip.payload[..2], &ip.payload[2..4]);
                match ip.protocol {
                    TCP => {
                        tcp += 1;
                        if ports.0 == 443u16.to_be_bytes() || ports.1 == 443u16.to_be_bytes() {
                            https += 1;
                        }
                    }
                    UDP => udp += 1,
                    other => panic!("protocol {other}"),
                }
                let (a, b) = (ip.src.min(ip.dst), ip.src.max(ip.dst));
                flows.insert((a.to_vec(), b.to_vec(), ip.protocol));
            }
            // Below 74 bytes IPv6 carries UDP only.
            let least_v6 = if size < 74 { 100 } else { 500 };
            assert!(
                v4 > 500 && v6 > least_v6 && tcp > 500 && udp > 300,
                "size {size}: {v4} IPv4, {v6} IPv6, {tcp} TCP, {udp} UDP"
            );
            assert!((300..700).contains(&https), "size {size}: {https} to 443");
            assert!(flows.len() > 450, "size {size}: {} flows", flows.len());
        }
        assert_eq!(flow_shaped(1, 64, 10), flow_shaped(1, 64, 10));
        assert!(flow_shaped(1, 64, 0).is_empty());
        assert_eq!(flow_shaped(1, 70_000, 2)[0].data().len(), MAX_SHAPED);
    }

    #[test]
    fn pcap_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.pcap");
        let synth = mixed(2, 20);
        write_pcap(&path, &synth.packets).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[..4], 0xa1b2_3c4du32.to_ne_bytes());
        let mut reader = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut read = 0;
        while let Some(record) = reader.next_raw_packet() {
            let record = record.unwrap();
            let want = &synth.packets[read];
            assert_eq!(&record.data[..], want.data());
            let nanos = u64::from(record.ts_sec) * 1_000_000_000 + u64::from(record.ts_frac);
            assert_eq!(nanos, want.timestamp_nanos());
            read += 1;
        }
        assert_eq!(read, synth.packets.len());
    }

    /// Whether a tool is installed; when it is not, says so, and fails if the tools are
    /// required (`PACKET_IPC_REQUIRE_TOOLS=1`).
    fn have(tool: &str, what: &str) -> bool {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let message = format!("skipped: {what}: needs {tool} (apt-get install {tool})");
            assert!(
                std::env::var("PACKET_IPC_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "{message}"
            );
            println!("{message}");
        }
        found
    }

    #[test]
    fn tcpdump_reads_every_packet_as_built() {
        if !have("tcpdump", "tcpdump reading the mixed capture") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.pcap");
        let synth = mixed(21, 300);
        write_pcap(&path, &synth.packets).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("tcpdump")
                .args(args)
                .arg("-r")
                .arg(&path)
                .output()
                .expect("run tcpdump");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("tcpdump prints text")
        };
        let text = run(&["-nn"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), synth.packets.len());
        for line in &lines {
            let lower = line.to_lowercase();
            assert!(
                !lower.contains("truncated") && !lower.contains("bad") && !line.contains("[|"),
                "{line}"
            );
        }
        // Verbose, tcpdump checks the IPv4 header, TCP and UDP checksums.
        let verbose = run(&["-nn", "-v"]);
        assert!(!verbose.contains("incorrect") && !verbose.contains("bad cksum"));
        assert!(verbose.matches("(correct)").count() > 1000);
    }
}
