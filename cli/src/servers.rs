//! `packet-ipc servers [--json]`: the servers in the rendezvous file.

use crate::pcap::linktype_text;
use crate::Outcome;

/// Lists the servers of the running daemon.
pub fn run(json: bool) -> Outcome {
    let servers = packet_ipc::list_servers(None)?;
    if json {
        // Every field of the rendezvous entry: name, linktype, snaplen, overflow, the
        // spool directories and the groups.
        return crate::print_json(&servers);
    }
    if servers.is_empty() {
        println!("the daemon has no server");
        return Ok(());
    }
    let rows: Vec<[String; 5]> = servers
        .iter()
        .map(|s| {
            let groups = match (&s.producer_group, &s.subscriber_group) {
                (None, None) => "-".to_owned(),
                (p, sub) => format!(
                    "produce: {}, subscribe: {}",
                    p.as_deref().unwrap_or("anyone"),
                    sub.as_deref().unwrap_or("anyone")
                ),
            };
            [
                s.name.clone(),
                linktype_text(s.linktype),
                s.snaplen.to_string(),
                s.overflow.clone(),
                groups,
            ]
        })
        .collect();
    print_table(
        &["NAME", "LINKTYPE", "SNAPLEN", "OVERFLOW", "GROUPS"],
        &rows,
    );
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    print!("{}", format_table(header, &rows));
}

/// Rows under a header, each column as wide as its widest cell, one line each (with its
/// newline); a row shorter than the header leaves its last cells empty.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
