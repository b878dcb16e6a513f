//! `packet-ipc stats [SERVER] [--json]`: the daemon's live counters, per server and per
//! subscriber, cumulative since each server was created.

use clap::Args;
use packet_ipc::connect;
use packet_ipc::ConnectOptions;

use crate::servers::print_table;
use crate::Outcome;

/// `stats` arguments.
#[derive(Args)]
pub struct StatsArgs {
    /// Only this server.
    server: Option<String>,
    /// Print `{"servers": [...]}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Asks the daemon for its counters and prints them.
pub fn run(args: StatsArgs) -> Outcome {
    let servers = connect::stats(&ConnectOptions::default(), args.server.as_deref())?;
    if args.json {
        return crate::print_json(&serde_json::json!({ "servers": servers }));
    }
    if servers.is_empty() {
        println!("the daemon has no server");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = servers
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.producers.to_string(),
                s.subscribers.len().to_string(),
                s.batches_in.to_string(),
                s.packets_in.to_string(),
                s.unsubscribed_batches.to_string(),
                format!("{} refused, {} dropped", s.refused, s.dropped_clients),
            ]
        })
        .collect();
    print_table(
        &[
            "SERVER",
            "PRODUCERS",
            "SUBSCRIBERS",
            "BATCHES IN",
            "PACKETS IN",
            "UNSUBSCRIBED",
            "CLIENTS",
        ],
        &rows,
    );
    let subscribers: Vec<[String; 9]> = servers
        .iter()
        .flat_map(|s| {
            s.subscribers.iter().map(|sub| {
                [
                    s.name.clone(),
                    sub.id.to_string(),
                    sub.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    sub.batches_out.to_string(),
                    sub.packets_out.to_string(),
                    sub.lost_batches.to_string(),
                    sub.lost_packets.to_string(),
                    sub.queued.to_string(),
                    sub.in_flight.to_string(),
                ]
            })
        })
        .collect();
    if !subscribers.is_empty() {
        println!();
        print_table(
            &[
                "SERVER",
                "SUBSCRIBER",
                "PID",
                "BATCHES OUT",
                "PACKETS OUT",
                "LOST BATCHES",
                "LOST PACKETS",
                "QUEUED",
                "IN FLIGHT",
            ],
            &subscribers,
        );
    }
    Ok(())
}
