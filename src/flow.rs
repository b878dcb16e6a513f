//! Flow hashing, for subscriber groups that balance flows over worker processes: one
//! 32-bit hash per packet, equal for every packet of a flow in both directions, so that
//! `hash % workers` (or `hash >> k`) sends each flow to exactly one worker.
//!
//! [`hash`] is meant for a producer's hot path: it reads a few header fields of the bytes
//! it is given, allocates nothing, never panics and never reads past the captured bytes,
//! whatever they hold; it costs a few nanoseconds per packet (`cargo bench --bench flow`).
//!
//! # What is hashed
//!
//! The endpoints are put in a canonical order first (the lower address, and with equal
//! addresses the lower port, first), so both directions of a flow hash alike. What follows
//! the link layer does not depend on it: a flow hashes the same on Ethernet, behind any
//! number of VLAN tags (802.1Q `0x8100`, QinQ `0x88a8` and `0x9100`, up to 8), on a Linux
//! cooked capture or as raw IP.
//!
//! | packet | [`Balance::Flow`] | [`Balance::IpPair`] |
//! |---|---|---|
//! | TCP, UDP, UDP-Lite, SCTP, DCCP over IPv4 or IPv6 | addresses, ports, protocol | addresses |
//! | a fragment (IPv4: MF set or a non-zero offset; IPv6: a Fragment header with MF set or a non-zero offset), the first one too | addresses, protocol | addresses |
//! | any other IP protocol (ICMP, ICMPv6, GRE, ESP, ...) | addresses, protocol | addresses |
//! | ARP for IPv4 over Ethernet | the sender and target IPv4 addresses of its body | the same |
//! | any other packet on Ethernet (LLDP, STP, MPLS, PPPoE, ...) | the MAC addresses | the same |
//! | any other packet on a Linux cooked capture | its protocol (EtherType) alone | the same |
//! | any packet on another link type | 0 | 0 |
//!
//! Choices, and what follows from them:
//!
//! - Fragments hash without ports (only the first fragment has them), so all the fragments
//!   of a datagram land together, but apart from the whole datagrams of the same UDP flow
//!   (as NIC receive-side scaling does). [`Balance::IpPair`] keeps them all together.
//! - An IPv6 "atomic fragment" (a Fragment header with offset 0 and MF clear, RFC 6946)
//!   is a whole datagram: it hashes with its flow.
//! - In IPv6 the extension headers are walked (hop-by-hop 0, routing 43, fragment 44,
//!   destination options 60, AH 51, mobility 135, HIP 139, shim6 140), at most 8 of them;
//!   the protocol hashed is the first header that is not one of those (with more than 8, or
//!   a chain cut by the capture, the last next-header value read). ESP (50) ends the walk:
//!   what follows it is encrypted.
//! - IPv4 options are skipped by the IHL; IPv4 AH is not looked through (ESP cannot be).
//! - ARP hashes by the IPv4 addresses of its body, not by its MAC addresses, so that a
//!   broadcast request lands with its (unicast) reply. Other ARP (not Ethernet/IPv4) and
//!   every other non-IP EtherType on Ethernet hash by the MAC address pair.
//! - A Linux cooked capture (SLL, SLL2) records the sender's link address only: there is
//!   no pair to hash, so non-IP packets there hash by their protocol.
//! - Unknown link types hash to 0: every packet goes to one worker, which keeps flows
//!   whole (hashing the first bytes would split a flow between workers).
//! - Cut short by the capture, a packet hashes by what is there: the addresses and
//!   protocol when its ports are cut off; the MAC pair (Ethernet), the protocol (cooked) or
//!   0 (raw IP) when its IP header is cut; 0 when even the link header is. Such a packet
//!   may then land apart from the rest of its flow.
//! - The hash is not keyed: someone who controls the traffic can aim many flows at one
//!   worker.
//!
//! # Example
//!
//! ```
//! use packet_ipc::flow::{hash, Balance};
//!
//! // An Ethernet frame: IPv4 UDP from 10.0.0.1:5353 to 10.0.0.2:53, no payload.
//! let mut frame = vec![0u8; 42];
//! frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
//! frame[14] = 0x45;
//! frame[16..18].copy_from_slice(&28u16.to_be_bytes());
//! frame[23] = 17;
//! frame[26..30].copy_from_slice(&[10, 0, 0, 1]);
//! frame[30..34].copy_from_slice(&[10, 0, 0, 2]);
//! frame[34..36].copy_from_slice(&5353u16.to_be_bytes());
//! frame[36..38].copy_from_slice(&53u16.to_be_bytes());
//! let workers = 4;
//! let worker = hash(1, &frame, Balance::Flow) % workers;
//! assert!(worker < workers);
//! ```

/// What a packet's hash is made of (see the [module](self) for each kind of packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Transport flows: the address pair, the port pair and the protocol for TCP, UDP,
    /// UDP-Lite, SCTP and DCCP; the address pair and the protocol for fragments and other
    /// IP protocols.
    Flow,
    /// Address pairs: the two IP addresses alone, for every IP packet. Coarser than
    /// [`Balance::Flow`], but keeps fragments and whole datagrams, and every protocol
    /// between two hosts, together.
    IpPair,
}

/// LINKTYPE_ETHERNET.
const LINK_ETHERNET: u32 = 1;
/// LINKTYPE_LINUX_SLL: a 16-byte header, the protocol at bytes 14-15.
const LINK_LINUX_SLL: u32 = 113;
/// LINKTYPE_LINUX_SLL2: a 20-byte header, the protocol at bytes 0-1.
const LINK_LINUX_SLL2: u32 = 276;
/// LINKTYPE_RAW.
const LINK_RAW: u32 = 101;
/// DLT_RAW on most systems.
const LINK_DLT_RAW: u32 = 12;
/// DLT_RAW on OpenBSD.
const LINK_DLT_RAW_OPENBSD: u32 = 14;
/// LINKTYPE_IPV4.
const LINK_IPV4: u32 = 228;
/// LINKTYPE_IPV6.
const LINK_IPV6: u32 = 229;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86DD;

/// VLAN tags skipped before a frame counts as non-IP.
const MAX_VLAN_TAGS: usize = 8;
/// IPv6 extension headers walked before the walk gives up.
const MAX_IPV6_EXTENSIONS: usize = 8;

/// The 32-bit flow hash of one packet of link type `linktype` (a pcap LINKTYPE_ value)
/// whose captured bytes are `data`.
///
/// Equal for both directions of a flow; see the [module](self) for what is hashed. Any
/// bytes are accepted: the function never panics and never reads past `data`.
pub fn hash(linktype: u32, data: &[u8], balance: Balance) -> u32 {
    match linktype {
        LINK_ETHERNET => ethernet(data, balance),
        LINK_LINUX_SLL => cooked(data, 14, 16, balance),
        LINK_LINUX_SLL2 => cooked(data, 0, 20, balance),
        LINK_RAW | LINK_DLT_RAW | LINK_DLT_RAW_OPENBSD => match data.first().map(|b| b >> 4) {
            Some(4) => ipv4(data, balance),
            Some(6) => ipv6(data, balance),
            _ => None,
        }
        .unwrap_or(0),
        LINK_IPV4 => ipv4(data, balance).unwrap_or(0),
        LINK_IPV6 => ipv6(data, balance).unwrap_or(0),
        _ => 0,
    }
}

/// An Ethernet frame: MAC addresses, EtherType, VLAN tags, then the network layer.
fn ethernet(frame: &[u8], balance: Balance) -> u32 {
    let Some(macs) = frame.first_chunk::<12>() else {
        return 0;
    };
    be16(frame, 12)
        .and_then(|ethertype| {
            let (ethertype, at) = untag(frame, ethertype, 14);
            network(ethertype, frame.get(at..).unwrap_or_default(), balance)
        })
        .unwrap_or_else(|| mac_pair(macs))
}

/// A Linux cooked capture: the protocol at `type_at`, the network layer at `payload_at`.
fn cooked(frame: &[u8], type_at: usize, payload_at: usize, balance: Balance) -> u32 {
    let Some(ethertype) = be16(frame, type_at) else {
        return 0;
    };
    let (ethertype, at) = untag(frame, ethertype, payload_at);
    network(ethertype, frame.get(at..).unwrap_or_default(), balance)
        .unwrap_or_else(|| mix(u64::from(ethertype) ^ SEED_PROTOCOL, SEED_WORD))
}

/// Skips the VLAN tags that start at `at` when `ethertype` says there is one: the
/// EtherType after them and where their payload starts. A tag cut short, or a ninth one,
/// is left in place (the frame is then not IP).
#[inline]
fn untag(frame: &[u8], mut ethertype: u16, mut at: usize) -> (u16, usize) {
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ethertype, 0x8100 | 0x88A8 | 0x9100) {
            break;
        }
        // A tag: 2 bytes of TCI, then the next EtherType.
        match be16(frame, at + 2) {
            Some(next) => {
                ethertype = next;
                at += 4;
            }
            None => break,
        }
    }
    (ethertype, at)
}

/// The network layer, when it is one we hash.
#[inline]
fn network(ethertype: u16, payload: &[u8], balance: Balance) -> Option<u32> {
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(payload, balance),
        ETHERTYPE_IPV6 => ipv6(payload, balance),
        ETHERTYPE_ARP => arp(payload),
        _ => None,
    }
}

/// Whether the first 4 bytes of the protocol's header are the source and destination
/// ports: TCP, UDP, DCCP, SCTP, UDP-Lite.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 33 | 132 | 136)
}

/// The port pair at the start of a transport header, if it was captured.
fn ports(l4: Option<&[u8]>) -> Option<(u16, u16)> {
    let p = l4?.first_chunk::<4>()?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// The port pair in canonical order: the port of the lower endpoint (address, then port)
/// first.
fn order_ports<A: Ord>(src: A, dst: A, (sport, dport): (u16, u16)) -> u64 {
    let (a, b) = if (src, sport) <= (dst, dport) {
        (sport, dport)
    } else {
        (dport, sport)
    };
    (u64::from(a) << 16) | u64::from(b)
}

/// An IPv4 packet; `None` when its fixed header is not all there or it is not version 4.
#[inline]
fn ipv4(ip: &[u8], balance: Balance) -> Option<u32> {
    let h = ip.first_chunk::<20>()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let pair = (u64::from(src.min(dst)) << 32) | u64::from(src.max(dst));
    let pair = pair ^ SEED_IPV4;
    if balance == Balance::IpPair {
        return Some(mix(pair, PAIR_ONLY ^ SEED_WORD));
    }
    let protocol = h[9];
    // MF, or a non-zero fragment offset.
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3FFF != 0;
    let ihl = usize::from(h[0] & 0x0F) * 4;
    let ports = if !fragment && ihl >= 20 && has_ports(protocol) {
        ports(ip.get(ihl..))
    } else {
        None
    };
    Some(mix(pair, transport(protocol, src, dst, ports) ^ SEED_WORD))
}

/// An IPv6 packet; `None` when its fixed header is not all there or it is not version 6.
fn ipv6(ip: &[u8], balance: Balance) -> Option<u32> {
    let h = ip.first_chunk::<40>()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let src = be128(h, 8)?;
    let dst = be128(h, 24)?;
    let (lo, hi) = (src.min(dst), src.max(dst));
    // Each address folded to 64 bits on its own (two independent multiplies).
    let pair = fold(((lo >> 64) as u64) ^ SEED_IPV6_A, (lo as u64) ^ SEED_IPV6_B)
        ^ fold(((hi >> 64) as u64) ^ SEED_IPV6_C, (hi as u64) ^ SEED_IPV6_D);
    if balance == Balance::IpPair {
        return Some(mix(pair, PAIR_ONLY ^ SEED_WORD));
    }
    let mut next = h[6];
    let mut at = 40;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if !is_ipv6_extension(next) {
            break;
        }
        // A chain cut by the capture ends the walk on the extension header's number.
        let Some(ext) = ip.get(at..).and_then(|e| e.first_chunk::<2>()) else {
            break;
        };
        match next {
            44 => {
                let Some(frag) = ip.get(at..).and_then(|e| e.first_chunk::<8>()) else {
                    break;
                };
                // A non-zero offset (the top 13 bits) or M (bit 0): a fragment. Its next
                // header is the same in every fragment of the datagram.
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xFFF9 != 0 {
                    fragment = true;
                    next = frag[0];
                    break;
                }
                at += 8;
            }
            51 => at += (usize::from(ext[1]) + 2) * 4,
            _ => at += (usize::from(ext[1]) + 1) * 8,
        }
        next = ext[0];
    }
    let ports = if !fragment && has_ports(next) {
        ports(ip.get(at..))
    } else {
        None
    };
    Some(mix(pair, transport(next, src, dst, ports) ^ SEED_WORD))
}

/// The extension headers [`ipv6`] walks through.
fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// The word that goes with the address pair in [`Balance::Flow`]: the protocol, and the
/// ports when there are.
fn transport<A: Ord>(protocol: u8, src: A, dst: A, ports: Option<(u16, u16)>) -> u64 {
    match ports {
        Some(ports) => (order_ports(src, dst, ports) << 32) | (1 << 8) | u64::from(protocol),
        None => u64::from(protocol),
    }
}

/// ARP for IPv4 over Ethernet: the sender and target protocol addresses, in order.
fn arp(body: &[u8]) -> Option<u32> {
    let a = body.first_chunk::<28>()?;
    // Hardware type Ethernet (1), protocol IPv4, 6-byte and 4-byte addresses.
    if a[..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let sender = u32::from_be_bytes([a[14], a[15], a[16], a[17]]);
    let target = u32::from_be_bytes([a[24], a[25], a[26], a[27]]);
    let pair = (u64::from(sender.min(target)) << 32) | u64::from(sender.max(target));
    Some(mix(pair ^ SEED_ARP, SEED_WORD))
}

/// The MAC address pair of an Ethernet header (destination then source), in order.
fn mac_pair(m: &[u8; 12]) -> u32 {
    let dst = u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]);
    let src = u64::from_be_bytes([0, 0, m[6], m[7], m[8], m[9], m[10], m[11]]);
    mix(dst.min(src) ^ SEED_MAC, dst.max(src) ^ SEED_WORD)
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..)?.first_chunk::<2>()?;
    Some(u16::from_be_bytes(*b))
}

fn be128(data: &[u8], at: usize) -> Option<u128> {
    let b = data.get(at..)?.first_chunk::<16>()?;
    Some(u128::from_be_bytes(*b))
}

// The mixing: the canonical tuple is two 64-bit words (an IPv6 address pair is first
// folded to one), each xored with a constant; their 128-bit product is folded to 64 bits
// (its halves xored), and murmur3's fmix64, whose every output bit depends on every input
// bit, finishes it; the top half is the hash. The words are independent until the
// multiply, so the latency is one multiply deep before the finish. Each kind of tuple has
// its own constant, so an IPv4 pair and a MAC pair of the same value differ.

const SEED_IPV4: u64 = 0x243F_6A88_85A3_08D3;
const SEED_IPV6_A: u64 = 0x1319_8A2E_0370_7344;
const SEED_IPV6_B: u64 = 0xA409_3822_299F_31D0;
const SEED_IPV6_C: u64 = 0x082E_FA98_EC4E_6C89;
const SEED_IPV6_D: u64 = 0x4528_21E6_38D0_1377;
const SEED_MAC: u64 = 0xBE54_66CF_34E9_0C6C;
const SEED_ARP: u64 = 0xC0AC_29B7_C97C_50DD;
const SEED_PROTOCOL: u64 = 0x3F84_D5B5_B547_0917;
/// For the second word of every tuple.
const SEED_WORD: u64 = 0x9216_D5D9_8979_FB1B;
/// The second word of an address pair in [`Balance::IpPair`] (no protocol is 512).
const PAIR_ONLY: u64 = 1 << 9;

/// The 128-bit product of two words, folded to 64 bits.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Two seeded words into the hash.
#[inline(always)]
fn mix(a: u64, b: u64) -> u32 {
    let mut x = fold(a, b);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^= x >> 33;
    (x >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A4: [u8; 4] = [192, 0, 2, 1];
    const B4: [u8; 4] = [198, 51, 100, 7];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
    ];
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn flow(linktype: u32, data: &[u8]) -> u32 {
        hash(linktype, data, Balance::Flow)
    }

    fn pair(linktype: u32, data: &[u8]) -> u32 {
        hash(linktype, data, Balance::IpPair)
    }

    /// An Ethernet frame from `src` to `dst` with these VLAN tag types (outer first).
    fn eth(dst: [u8; 6], src: [u8; 6], tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        for (i, tag) in tags.iter().enumerate() {
            f.extend_from_slice(&tag.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 packet; `frag` is the flags and fragment offset field.
    fn ip4(src: [u8; 4], dst: [u8; 4], protocol: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(20 + payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[64, protocol, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    fn ip6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    /// A transport header with these ports, 20 bytes (a TCP header's length).
    fn l4(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = vec![0; 20];
        h[..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        eth(
            MAC_B,
            MAC_A,
            &[],
            0x0800,
            &ip4(src, dst, TCP, 0, &l4(sport, dport)),
        )
    }

    fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
        eth(
            MAC_B,
            MAC_A,
            &[],
            0x86DD,
            &ip6(src, dst, UDP, &l4(sport, dport)),
        )
    }

    /// A Fragment extension header.
    fn frag6(next: u8, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&tha);
        a.extend_from_slice(&tpa);
        a
    }

    #[test]
    fn both_directions_hash_alike() {
        for (sport, dport) in [(40000, 443), (443, 40000), (53, 53), (1, 65535)] {
            let there = tcp4(A4, B4, sport, dport);
            let back = tcp4(B4, A4, dport, sport);
            assert_eq!(flow(1, &there), flow(1, &back));
            let there = eth(
                MAC_A,
                MAC_B,
                &[],
                0x0800,
                &ip4(A4, B4, UDP, 0, &l4(sport, dport)),
            );
            let back = eth(
                MAC_B,
                MAC_A,
                &[],
                0x0800,
                &ip4(B4, A4, UDP, 0, &l4(dport, sport)),
            );
            assert_eq!(flow(1, &there), flow(1, &back));
            let there = udp6(A6, B6, sport, dport);
            let back = udp6(B6, A6, dport, sport);
            assert_eq!(flow(1, &there), flow(1, &back));
            let there = eth(
                MAC_A,
                MAC_B,
                &[],
                0x86DD,
                &ip6(A6, B6, TCP, &l4(sport, dport)),
            );
            let back = eth(
                MAC_B,
                MAC_A,
                &[],
                0x86DD,
                &ip6(B6, A6, TCP, &l4(dport, sport)),
            );
            assert_eq!(flow(1, &there), flow(1, &back));
        }
        // Same address both ends (loopback): the ports decide the order.
        assert_eq!(
            flow(1, &tcp4(A4, A4, 1000, 2000)),
            flow(1, &tcp4(A4, A4, 2000, 1000))
        );
    }

    #[test]
    fn different_flows_hash_apart() {
        let base = flow(1, &tcp4(A4, B4, 40000, 443));
        assert_ne!(base, flow(1, &tcp4(A4, B4, 40001, 443)));
        assert_ne!(base, flow(1, &tcp4(A4, B4, 443, 40000)));
        assert_ne!(base, flow(1, &tcp4(A4, [198, 51, 100, 8], 40000, 443)));
        let udp = eth(
            MAC_B,
            MAC_A,
            &[],
            0x0800,
            &ip4(A4, B4, UDP, 0, &l4(40000, 443)),
        );
        assert_ne!(base, flow(1, &udp));
        assert_ne!(flow(1, &udp6(A6, B6, 1, 2)), flow(1, &udp6(A6, B6, 1, 3)));
    }

    #[test]
    fn link_layer_does_not_matter() {
        let ip = ip4(A4, B4, TCP, 0, &l4(40000, 443));
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0x0a, 0, 0];
        sll.extend_from_slice(&0x0800u16.to_be_bytes());
        sll.extend_from_slice(&ip);
        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0x0a, 0, 0]);
        sll2.extend_from_slice(&ip);
        let want = flow(1, &tcp4(A4, B4, 40000, 443));
        for (linktype, data) in [
            (113, &sll),
            (276, &sll2),
            (101, &ip),
            (12, &ip),
            (14, &ip),
            (228, &ip),
        ] {
            assert_eq!(flow(linktype, data), want, "linktype {linktype}");
        }
        let ip = ip6(A6, B6, UDP, &l4(5353, 53));
        for linktype in [101, 12, 14, 229] {
            assert_eq!(flow(linktype, &ip), flow(1, &udp6(A6, B6, 5353, 53)));
        }
        // The wrong version for the link type, and unknown link types: 0.
        assert_eq!(flow(229, &ip4(A4, B4, TCP, 0, &l4(1, 2))), 0);
        assert_eq!(flow(228, &ip), 0);
        assert_eq!(flow(147, &ip), 0);
        assert_eq!(pair(u32::MAX, &tcp4(A4, B4, 1, 2)), 0);
    }

    #[test]
    fn vlan_tags_do_not_matter() {
        let ip = ip4(A4, B4, TCP, 0, &l4(40000, 443));
        let v6 = ip6(B6, A6, UDP, &l4(53, 5353));
        let lldp = [0x02u8, 0x07, 0x04, 0, 0, 0, 0, 0, 1];
        for (ethertype, payload) in [(0x0800, &ip[..]), (0x86DD, &v6[..]), (0x88CC, &lldp[..])] {
            let untagged = eth(MAC_A, MAC_B, &[], ethertype, payload);
            for tags in [
                &[0x8100][..],
                &[0x88A8, 0x8100],
                &[0x9100, 0x8100],
                &[0x88A8, 0x8100, 0x8100],
            ] {
                let tagged = eth(MAC_A, MAC_B, tags, ethertype, payload);
                for balance in [Balance::Flow, Balance::IpPair] {
                    assert_eq!(
                        hash(1, &tagged, balance),
                        hash(1, &untagged, balance),
                        "{ethertype:#x} {tags:x?}"
                    );
                }
            }
        }
        // Tags on a cooked capture too.
        let mut sll = vec![0; 14];
        sll.extend_from_slice(&0x8100u16.to_be_bytes());
        sll.extend_from_slice(&[0, 5, 0x08, 0]);
        sll.extend_from_slice(&ip);
        assert_eq!(flow(113, &sll), flow(228, &ip));
        // Nine tags: not looked through (the MAC pair, and no panic).
        let deep = eth(MAC_A, MAC_B, &[0x8100; 9], 0x0800, &ip);
        assert_eq!(
            flow(1, &deep),
            flow(1, &eth(MAC_B, MAC_A, &[], 0x88CC, &lldp))
        );
    }

    #[test]
    fn ipv4_fragments_land_together() {
        // One UDP datagram of 40 bytes in three fragments (offsets in 8-byte units), and
        // one of the reply.
        let udp = [l4(5000, 6000), vec![7; 20]].concat();
        let frags = [
            ip4(A4, B4, UDP, 0x2000, &udp[..16]),
            ip4(A4, B4, UDP, 0x2000 | 2, &udp[16..32]),
            ip4(A4, B4, UDP, 4, &udp[32..]),
            ip4(B4, A4, UDP, 0x2000, &l4(6000, 5000)[..16]),
            ip4(B4, A4, UDP, 2, &[0; 8]),
        ];
        let first = flow(228, &frags[0]);
        for f in &frags {
            assert_eq!(flow(228, f), first);
            assert_eq!(flow(1, &eth(MAC_A, MAC_B, &[0x8100], 0x0800, f)), first);
            assert_eq!(pair(228, f), pair(228, &frags[0]));
        }
        // Address pair and protocol: what another protocol's packet hashes by.
        assert_eq!(first, flow(228, &ip4(B4, A4, UDP, 0x1FFF, &[])));
        assert_ne!(first, flow(228, &ip4(A4, B4, TCP, 0x2000, &udp[..16])));
        // Not a fragment: DF alone.
        let whole = ip4(A4, B4, UDP, 0x4000, &udp);
        assert_ne!(flow(228, &whole), first);
        assert_eq!(flow(228, &whole), flow(228, &ip4(A4, B4, UDP, 0, &udp)));
    }

    #[test]
    fn ipv6_fragments_land_together() {
        let udp = [l4(5000, 6000), vec![7; 20]].concat();
        let hop_by_hop = [44u8, 0, 1, 4, 0, 0, 0, 0];
        let frags = [
            ip6(A6, B6, 44, &frag6(UDP, 0, true, &udp[..16])),
            ip6(A6, B6, 44, &frag6(UDP, 2, true, &udp[16..32])),
            ip6(A6, B6, 44, &frag6(UDP, 4, false, &udp[32..])),
            // The unfragmentable part goes before the Fragment header.
            ip6(
                A6,
                B6,
                0,
                &[&hop_by_hop[..], &frag6(UDP, 4, false, &udp[32..])].concat(),
            ),
            ip6(B6, A6, 44, &frag6(UDP, 0, true, &l4(6000, 5000)[..16])),
        ];
        let first = flow(229, &frags[0]);
        for f in &frags {
            assert_eq!(flow(229, f), first);
            assert_eq!(
                flow(1, &eth(MAC_A, MAC_B, &[0x88A8, 0x8100], 0x86DD, f)),
                first
            );
            assert_eq!(pair(229, f), pair(229, &frags[0]));
        }
        assert_eq!(first, flow(229, &ip6(B6, A6, UDP, &[])));
        // An atomic fragment is a whole datagram.
        let atomic = ip6(A6, B6, 44, &frag6(UDP, 0, false, &udp));
        assert_eq!(
            flow(229, &atomic),
            flow(229, &ip6(B6, A6, UDP, &l4(6000, 5000)))
        );
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let plain = flow(229, &ip6(A6, B6, TCP, &l4(40000, 443)));
        // Hop-by-hop (8 bytes), routing (24), destination options (16), then TCP.
        let mut chain = vec![43u8, 0, 1, 4, 0, 0, 0, 0];
        chain.extend_from_slice(&[60, 2, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[0; 16]);
        chain.extend_from_slice(&[TCP, 1, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[0; 8]);
        chain.extend_from_slice(&l4(40000, 443));
        assert_eq!(flow(229, &ip6(A6, B6, 0, &chain)), plain);
        // AH: its length is in 4-byte units, minus 2 (here 24 bytes).
        let mut ah = vec![TCP, 4, 0, 0];
        ah.extend_from_slice(&[0; 20]);
        ah.extend_from_slice(&l4(40000, 443));
        assert_eq!(flow(229, &ip6(A6, B6, 51, &ah)), plain);
        // ESP is not looked through: address pair and protocol 50.
        let esp = ip6(A6, B6, 50, &[0; 40]);
        assert_eq!(flow(229, &esp), flow(229, &ip6(B6, A6, 50, &[])));
        // More extension headers than the bound: the address pair and the last number.
        let long: Vec<u8> = (0..12).flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0]).collect();
        let long = [long, l4(1, 2)].concat();
        assert_eq!(
            flow(229, &ip6(A6, B6, 60, &long)),
            flow(229, &ip6(B6, A6, 60, &[]))
        );
        // A chain cut by the capture: the same.
        let cut = ip6(A6, B6, 0, &chain);
        assert_eq!(flow(229, &cut[..41]), flow(229, &ip6(B6, A6, 0, &[])));
        assert_eq!(flow(229, &cut[..50]), flow(229, &ip6(B6, A6, 60, &[])));
    }

    #[test]
    fn ip_pair_ignores_ports_and_protocol() {
        let want = pair(1, &tcp4(A4, B4, 40000, 443));
        assert_eq!(pair(1, &tcp4(B4, A4, 1, 2)), want);
        let icmp = eth(MAC_A, MAC_B, &[], 0x0800, &ip4(A4, B4, 1, 0, &[8, 0, 0, 0]));
        assert_eq!(pair(1, &icmp), want);
        assert_eq!(pair(228, &ip4(B4, A4, UDP, 0x2000, &l4(9, 9))), want);
        let want6 = pair(1, &udp6(A6, B6, 5353, 53));
        assert_eq!(pair(1, &udp6(B6, A6, 7, 8)), want6);
        assert_eq!(pair(229, &ip6(B6, A6, 58, &[128, 0, 0, 0])), want6);
        assert_ne!(want, want6);
        // In Flow mode the protocol and ports count.
        assert_ne!(flow(1, &icmp), flow(1, &tcp4(A4, B4, 40000, 443)));
    }

    #[test]
    fn arp_request_and_reply_land_together() {
        const BROADCAST: [u8; 6] = [0xff; 6];
        let request = eth(
            BROADCAST,
            MAC_A,
            &[],
            0x0806,
            &arp(1, MAC_A, A4, [0; 6], B4),
        );
        let reply = eth(MAC_A, MAC_B, &[], 0x0806, &arp(2, MAC_B, B4, MAC_A, A4));
        let tagged = eth(
            MAC_A,
            MAC_B,
            &[0x8100],
            0x0806,
            &arp(2, MAC_B, B4, MAC_A, A4),
        );
        for balance in [Balance::Flow, Balance::IpPair] {
            assert_eq!(hash(1, &request, balance), hash(1, &reply, balance));
            assert_eq!(hash(1, &tagged, balance), hash(1, &reply, balance));
        }
        let other = eth(
            BROADCAST,
            MAC_A,
            &[],
            0x0806,
            &arp(1, MAC_A, A4, [0; 6], [10, 0, 0, 1]),
        );
        assert_ne!(flow(1, &request), flow(1, &other));
    }

    #[test]
    fn other_non_ip_hashes_by_mac_pair() {
        // LLDP, and ARP that is not Ethernet/IPv4: the MAC pair, both ways.
        let lldp = [0x02u8, 0x07, 0x04, 0, 0, 0, 0, 0, 1];
        let there = eth(MAC_A, MAC_B, &[], 0x88CC, &lldp);
        let back = eth(MAC_B, MAC_A, &[], 0x88CC, &lldp);
        assert_eq!(flow(1, &there), flow(1, &back));
        let mut odd_arp = arp(1, MAC_B, B4, MAC_A, A4);
        odd_arp[1] = 6; // IEEE 802 hardware
        assert_eq!(
            flow(1, &eth(MAC_A, MAC_B, &[], 0x0806, &odd_arp)),
            flow(1, &back)
        );
        assert_eq!(pair(1, &there), flow(1, &back));
        assert_ne!(
            flow(1, &there),
            flow(1, &eth(MAC_A, [2, 0, 0, 0, 0, 0x0c], &[], 0x88CC, &lldp))
        );
        // On a cooked capture: the protocol.
        let mut sll = vec![0; 14];
        sll.extend_from_slice(&0x88CCu16.to_be_bytes());
        let sll_lldp = [&sll[..], &lldp].concat();
        let mut other = sll_lldp.clone();
        other[6..12].copy_from_slice(&MAC_B);
        assert_eq!(flow(113, &sll_lldp), flow(113, &other));
        assert_ne!(flow(113, &sll_lldp), flow(113, &sll_lldp[..15]));
    }

    #[test]
    fn truncated_packets_use_what_is_there() {
        let frame = tcp4(A4, B4, 40000, 443);
        let pair_and_protocol = flow(228, &ip4(B4, A4, TCP, 0x2000, &[]));
        let macs = flow(1, &eth(MAC_B, MAC_A, &[], 0x88CC, &[]));
        // The ports (bytes 34-37) cut: the address pair and the protocol.
        for len in 34..38 {
            assert_eq!(flow(1, &frame[..len]), pair_and_protocol, "{len}");
        }
        assert_eq!(flow(1, &frame[..38]), flow(1, &frame));
        // The IP header cut: the MAC pair.
        for len in 12..34 {
            assert_eq!(flow(1, &frame[..len]), macs, "{len}");
        }
        // Not even the MAC addresses: 0.
        for len in 0..12 {
            assert_eq!(flow(1, &frame[..len]), 0);
        }
        // IPv6: ports cut, header cut.
        let v6 = udp6(A6, B6, 5353, 53);
        assert_eq!(flow(1, &v6[..56]), flow(229, &ip6(B6, A6, UDP, &[])));
        assert_eq!(flow(1, &v6[..53]), macs);
        assert_eq!(flow(229, &v6[14..53]), 0);
        // IHL below 5: the address pair and the protocol.
        let mut bad = ip4(A4, B4, TCP, 0, &l4(1, 2));
        bad[0] = 0x44;
        assert_eq!(flow(228, &bad), pair_and_protocol);
        // Every prefix of every kind of frame, both modes: no panic.
        let frames = [
            frame,
            v6,
            eth(
                MAC_A,
                MAC_B,
                &[0x88A8, 0x8100],
                0x0806,
                &arp(1, MAC_A, A4, [0; 6], B4),
            ),
            ip6(
                A6,
                B6,
                0,
                &[44, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 8, 1, 2, 3, 4, 0, 1, 0, 2],
            ),
        ];
        for f in &frames {
            for len in 0..=f.len() {
                for linktype in [1, 113, 276, 101, 228, 229] {
                    hash(linktype, &f[..len], Balance::Flow);
                    hash(linktype, &f[..len], Balance::IpPair);
                }
            }
        }
    }

    /// splitmix64, for reproducible random tuples.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn random_flows_spread_evenly() {
        const FLOWS: usize = 10_000;
        const BUCKETS: usize = 8;
        let mut seed = 42;
        let mut by_modulo = [0usize; BUCKETS];
        let mut by_top_bits = [0usize; BUCKETS];
        for i in 0..FLOWS {
            let r = next(&mut seed);
            let src = (r as u32).to_be_bytes();
            let dst = ((r >> 32) as u32).to_be_bytes();
            let ports = next(&mut seed);
            let (sport, dport) = (ports as u16, (ports >> 16) as u16);
            let h = if i % 2 == 0 {
                flow(1, &tcp4(src, dst, sport, dport))
            } else {
                let mut a = A6;
                let mut b = B6;
                a[8..].copy_from_slice(&r.to_be_bytes());
                b[8..].copy_from_slice(&ports.to_be_bytes());
                flow(1, &udp6(a, b, sport, dport))
            };
            by_modulo[h as usize % BUCKETS] += 1;
            by_top_bits[(h >> 29) as usize] += 1;
        }
        let fair = FLOWS / BUCKETS;
        for counts in [by_modulo, by_top_bits] {
            for n in counts {
                assert!(n.abs_diff(fair) * 5 <= fair, "{counts:?}");
            }
        }
        // Flows that differ in one port only, as from one client: spread too.
        let mut buckets = [0usize; BUCKETS];
        for port in 0..FLOWS as u16 {
            buckets[flow(1, &tcp4(A4, B4, 32768 + port, 443)) as usize % BUCKETS] += 1;
        }
        for n in buckets {
            assert!(n.abs_diff(fair) * 5 <= fair, "{buckets:?}");
        }
    }

    #[test]
    fn one_bit_changes_every_output_bit_with_even_odds() {
        // Flip each bit of the addresses and ports of random TCP flows, one at a time:
        // every bit of the hash should flip about half the time.
        let mut seed = 7;
        for (template, bits) in [
            (tcp4(A4, B4, 1, 2), 26..38),
            (
                eth(MAC_B, MAC_A, &[], 0x86DD, &ip6(A6, B6, TCP, &l4(1, 2))),
                22..58,
            ),
        ] {
            const SAMPLES: usize = 400;
            let mut flips = vec![[0u32; 32]; bits.len() * 8];
            for _ in 0..SAMPLES {
                let mut frame = template.clone();
                for byte in &mut frame[bits.clone()] {
                    *byte = next(&mut seed) as u8;
                }
                let base = flow(1, &frame);
                for (bit, counts) in flips.iter_mut().enumerate() {
                    let at = bits.start + bit / 8;
                    frame[at] ^= 1 << (bit % 8);
                    let changed = flow(1, &frame) ^ base;
                    frame[at] ^= 1 << (bit % 8);
                    for (out, count) in counts.iter_mut().enumerate() {
                        *count += (changed >> out) & 1;
                    }
                }
            }
            for (bit, counts) in flips.iter().enumerate() {
                for (out, &n) in counts.iter().enumerate() {
                    let odds = f64::from(n) / SAMPLES as f64;
                    assert!(
                        (0.35..=0.65).contains(&odds),
                        "input bit {bit}, output bit {out}: {odds}"
                    );
                }
            }
        }
    }

    const LINKTYPES: [u32; 10] = [1, 113, 276, 101, 12, 14, 228, 229, 0, 147];

    proptest! {
        // Fuzzing within the test suite, as for the other decoders of untrusted bytes.
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                       first in prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
                                       ethertype in prop_oneof![Just(0x0800u16), Just(0x86DD),
                                           Just(0x8100), Just(0x0806), any::<u16>()]) {
            // Steer some inputs into the IP paths: an IP version nibble up front (raw IP),
            // an IP EtherType at bytes 12-13 (Ethernet) or 14-15 (SLL) or 0-1 (SLL2).
            let mut steered = bytes.clone();
            if let Some(b) = steered.first_mut() {
                *b = first;
            }
            let mut typed = bytes.clone();
            for at in [0, 12, 14] {
                if typed.len() >= at + 2 {
                    typed[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
                }
            }
            if typed.len() > 16 {
                typed[16] = first;
            }
            for data in [&bytes, &steered, &typed] {
                for linktype in LINKTYPES {
                    hash(linktype, data, Balance::Flow);
                    hash(linktype, data, Balance::IpPair);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_tuple_is_symmetric(a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
                                  sport in any::<u16>(), dport in any::<u16>(),
                                  protocol in prop_oneof![Just(6u8), Just(17), Just(132), any::<u8>()]) {
            let (a4, b4) = ([a[0], a[1], a[2], a[3]], [b[0], b[1], b[2], b[3]]);
            for balance in [Balance::Flow, Balance::IpPair] {
                let there = ip4(a4, b4, protocol, 0, &l4(sport, dport));
                let back = ip4(b4, a4, protocol, 0, &l4(dport, sport));
                prop_assert_eq!(hash(228, &there, balance), hash(228, &back, balance));
                if !is_ipv6_extension(protocol) {
                    let there = ip6(a, b, protocol, &l4(sport, dport));
                    let back = ip6(b, a, protocol, &l4(dport, sport));
                    prop_assert_eq!(hash(229, &there, balance), hash(229, &back, balance));
                }
            }
        }
    }
}
