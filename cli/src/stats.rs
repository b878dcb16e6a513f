//! `packet-ipc stats [SERVER] [--json] [--watch [--interval SECS]]`: the daemon's live
//! counters, per server, producer, group and subscriber, cumulative since each server
//! was created.
//!
//! `--watch` redraws the tables on a terminal every second (clearing the screen), with
//! rates per second computed from the difference between two snapshots (packets in, out
//! and lost per server; out and lost per subscriber), until Ctrl-C (exit 0). When stdout
//! is not a terminal it prints the tables once, as without `--watch`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use packet_ipc::connect;
use packet_ipc::stats::{ServerStats, Stats, SubscriberStats};
use packet_ipc::ConnectOptions;

use crate::servers::format_table;
use crate::{exit, parse_seconds, stop_flag, Failure, Outcome};

/// How often `--watch` redraws, unless `--interval` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `--watch` sleeps at once, so that Ctrl-C is noticed promptly.
const SLICE: Duration = Duration::from_millis(100);
/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// `stats` arguments.
#[derive(Args)]
pub struct StatsArgs {
    /// Only this server.
    server: Option<String>,
    /// Print `{"servers": [...]}` as JSON.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// On a terminal, redraw the tables every second with rates per second, until Ctrl-C
    /// (otherwise print them once).
    #[arg(long)]
    watch: bool,
    /// Seconds between two redraws of --watch [default: 1].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, requires = "watch")]
    interval: Option<Duration>,
}

/// Asks the daemon for its counters and prints them.
pub fn run(args: StatsArgs) -> Outcome {
    if args.watch && std::io::stdout().is_terminal() {
        return watch(&args);
    }
    let servers = fetch(&args)?;
    if args.json {
        return crate::print_json(&Stats { servers });
    }
    print!("{}", render(&servers, None));
    Ok(())
}

fn fetch(args: &StatsArgs) -> Outcome<Vec<ServerStats>> {
    Ok(connect::stats(
        &ConnectOptions::default(),
        args.server.as_deref(),
    )?)
}

/// Redraws the tables until Ctrl-C. A daemon that goes away (a restart) is waited for, the
/// screen saying so; only the first request must succeed.
fn watch(args: &StatsArgs) -> Outcome {
    let stop = stop_flag()?;
    let interval = args.interval.unwrap_or(DEFAULT_INTERVAL).max(SLICE);
    let mut previous: Option<(Instant, Vec<ServerStats>)> = None;
    let mut first = true;
    let mut out = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let body = match fetch(args) {
            Ok(servers) => {
                let rates = previous
                    .as_ref()
                    .map(|(at, before)| (before.as_slice(), now.duration_since(*at)));
                let text = render(&servers, rates);
                previous = Some((now, servers));
                text
            }
            Err(f) if first => return Err(f),
            Err(f) => {
                previous = None;
                format!("packet-ipc: {} (trying again)\n", f.message)
            }
        };
        first = false;
        let frame = format!(
            "{CLEAR}packet-ipc stats: every {}, Ctrl-C to stop; {} UTC\n\n{body}",
            crate::human::duration(interval),
            clock()
        );
        if let Err(e) = out.write_all(frame.as_bytes()).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Failure::new(
                exit::IOERR,
                format!("cannot write stdout: {e}"),
            ));
        }
        while now.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(SLICE.min(interval.saturating_sub(now.elapsed())));
        }
    }
    Ok(())
}

/// The time of day, UTC, `HH:MM:SS`.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Counter growth per second between two snapshots; a counter that went back (its server
/// was restarted) counts from zero.
fn rate(now: u64, before: u64, elapsed: Duration) -> String {
    let grown = if now >= before { now - before } else { now };
    format!("{:.0}", crate::human::per_second(grown, elapsed))
}

/// A subscriber's snapshot in an earlier list, by id (`None` for a new subscriber).
fn earlier(before: &[SubscriberStats], id: u64) -> Option<&SubscriberStats> {
    before.iter().find(|s| s.id == id)
}

/// Every table: servers, then producers, groups and subscribers when there are any. With
/// `rates` (the previous snapshot and how long ago it was taken), the rate columns too.
fn render(servers: &[ServerStats], rates: Option<(&[ServerStats], Duration)>) -> String {
    if servers.is_empty() {
        return "the daemon has no server\n".to_owned();
    }
    let before = |name: &str| {
        rates.and_then(|(list, elapsed)| list.iter().find(|s| s.name == name).map(|s| (s, elapsed)))
    };
    let dash = || "-".to_owned();
    let pid = |p: Option<u32>| p.map_or_else(dash, |p| p.to_string());

    let mut header = vec![
        "SERVER",
        "PRODUCERS",
        "SUBSCRIBERS",
        "BATCHES IN",
        "PACKETS IN",
        "BYTES IN",
        "LOST PACKETS",
        "SOURCE DROPPED",
        "UNSUBSCRIBED",
        "CLIENTS",
    ];
    if rates.is_some() {
        header.extend(["IN/s", "OUT/s", "LOST/s"]);
    }
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                s.producers.to_string(),
                s.subscribers.len().to_string(),
                s.batches_in.to_string(),
                s.packets_in.to_string(),
                s.bytes_in.to_string(),
                s.lost_packets.to_string(),
                s.source_dropped.to_string(),
                s.unsubscribed_batches.to_string(),
                format!("{} refused, {} dropped", s.refused, s.dropped_clients),
            ];
            if rates.is_some() {
                match before(&s.name) {
                    Some((b, elapsed)) => {
                        // Out: what the subscribers connected now received since (a new
                        // one: since it came).
                        let (now_out, then_out) = s.subscribers.iter().fold((0, 0), |acc, sub| {
                            let then = earlier(&b.subscribers, sub.id)
                                .map_or(0, |e| e.packets_out.min(sub.packets_out));
                            (acc.0 + sub.packets_out, acc.1 + then)
                        });
                        row.extend([
                            rate(s.packets_in, b.packets_in, elapsed),
                            rate(now_out, then_out, elapsed),
                            rate(s.lost_packets, b.lost_packets, elapsed),
                        ]);
                    }
                    None => row.extend([dash(), dash(), dash()]),
                }
            }
            row
        })
        .collect();
    let mut out = format_table(&header, &rows);

    let producers: Vec<Vec<String>> = servers
        .iter()
        .flat_map(|s| {
            s.producer_list.iter().map(|p| {
                vec![
                    s.name.clone(),
                    p.id.to_string(),
                    pid(p.pid),
                    p.batches.to_string(),
                    p.packets.to_string(),
                    p.source_dropped.to_string(),
                ]
            })
        })
        .collect();
    if !producers.is_empty() {
        out.push('\n');
        out.push_str(&format_table(
            &[
                "SERVER",
                "PRODUCER",
                "PID",
                "BATCHES",
                "PACKETS",
                "SOURCE DROPPED",
            ],
            &producers,
        ));
    }

    let groups: Vec<Vec<String>> = servers
        .iter()
        .flat_map(|s| {
            s.groups.iter().map(|g| {
                vec![
                    s.name.clone(),
                    g.name.clone(),
                    g.members.to_string(),
                    g.packets_out.to_string(),
                    g.lost_packets.to_string(),
                ]
            })
        })
        .collect();
    if !groups.is_empty() {
        out.push('\n');
        out.push_str(&format_table(
            &["SERVER", "GROUP", "MEMBERS", "PACKETS OUT", "LOST PACKETS"],
            &groups,
        ));
    }

    let mut header = vec![
        "SERVER",
        "SUBSCRIBER",
        "PID",
        "GROUP",
        "BATCHES OUT",
        "PACKETS OUT",
        "LOST BATCHES",
        "LOST PACKETS",
        "QUEUED",
        "IN FLIGHT",
        "SKIPPED",
    ];
    if rates.is_some() {
        header.extend(["OUT/s", "LOST/s"]);
    }
    let subscribers: Vec<Vec<String>> = servers
        .iter()
        .flat_map(|s| {
            let b = before(&s.name);
            s.subscribers.iter().map(move |sub| {
                let mut row = vec![
                    s.name.clone(),
                    sub.id.to_string(),
                    pid(sub.pid),
                    sub.group.clone().unwrap_or_else(dash),
                    sub.batches_out.to_string(),
                    sub.packets_out.to_string(),
                    sub.lost_batches.to_string(),
                    sub.lost_packets.to_string(),
                    sub.queued.to_string(),
                    sub.in_flight.to_string(),
                    sub.skipped.to_string(),
                ];
                if rates.is_some() {
                    match b {
                        Some((b, elapsed)) => {
                            let e = earlier(&b.subscribers, sub.id);
                            row.extend([
                                rate(sub.packets_out, e.map_or(0, |e| e.packets_out), elapsed),
                                rate(sub.lost_packets, e.map_or(0, |e| e.lost_packets), elapsed),
                            ]);
                        }
                        None => row.extend([dash(), dash()]),
                    }
                }
                row
            })
        })
        .collect();
    if !subscribers.is_empty() {
        out.push('\n');
        out.push_str(&format_table(&header, &subscribers));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet_ipc::stats::{GroupStats, ProducerStats};

    fn server(packets_in: u64, sub_out: u64) -> ServerStats {
        ServerStats {
            name: "eth".into(),
            producers: 1,
            packets_in,
            bytes_in: packets_in * 100,
            producer_list: vec![ProducerStats {
                id: 1,
                pid: None,
                batches: 1,
                packets: packets_in,
                source_dropped: 4,
            }],
            groups: vec![GroupStats {
                name: "ids".into(),
                members: 1,
                packets_out: sub_out,
                lost_packets: 0,
            }],
            subscribers: vec![SubscriberStats {
                id: 2,
                pid: Some(42),
                group: Some("ids".into()),
                packets_out: sub_out,
                skipped: 3,
                ..SubscriberStats::default()
            }],
            ..ServerStats::default()
        }
    }

    #[test]
    fn tables_show_every_counter_and_hidden_pids_as_dashes() {
        let text = render(&[server(10, 10)], None);
        for word in [
            "PACKETS IN",
            "BYTES IN",
            "SOURCE DROPPED",
            "PRODUCER",
            "GROUP",
            "MEMBERS",
            "SKIPPED",
            "ids",
        ] {
            assert!(text.contains(word), "{word}: {text}");
        }
        assert!(!text.contains("/s"), "no rates without a previous snapshot");
        let mut lines = text.lines().skip_while(|l| !l.contains("PRODUCER "));
        let producer: Vec<&str> = lines.nth(1).unwrap().split_whitespace().collect();
        assert_eq!(producer, ["eth", "1", "-", "1", "10", "4"], "{text}");
    }

    #[test]
    fn rates_are_differences_per_second() {
        let before = [server(10, 10)];
        let text = render(&[server(110, 60)], Some((&before, Duration::from_secs(2))));
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        // ... IN/s OUT/s LOST/s at the end.
        assert_eq!(&cells[cells.len() - 3..], ["50", "25", "0"], "{text}");
        let sub: Vec<&str> = text.lines().last().unwrap().split_whitespace().collect();
        assert_eq!(&sub[sub.len() - 2..], ["25", "0"], "{text}");
    }
}
