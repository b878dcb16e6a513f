//! The daemon's metrics endpoint (`[metrics] listen`): scraped with a plain TCP client,
//! checked with `promtool check metrics` (package `prometheus`) and against
//! `packet-ipc stats --json`; and the Grafana dashboard in contrib/grafana/ against what a
//! daemon exports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{run_json, subscribe, LOOPBACK_PACKETS};
use crate::util::{self, wait_output, wait_stderr_line, Daemon, DEADLINE};

/// The configuration of a daemon with metrics on a free port of 127.0.0.1, and `servers`
/// (TOML tables).
fn with_metrics(servers: &str) -> (String, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", util::free_port()).parse().unwrap();
    (format!("[metrics]\nlisten = \"{addr}\"\n\n{servers}"), addr)
}

/// `GET /metrics`: must answer 200 in the text format 0.0.4.
fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = util::http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    body
}

/// The samples of a scrape: `name{labels}` (as the daemon writes them) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a value: {l:?}"));
            (key.to_owned(), value)
        })
        .collect()
}

/// One sample's value; `labels` in the order the daemon writes them.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    };
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {key}: {samples:#?}"))
}

/// `promtool check metrics` on a scrape (stdin): it must pass. False when promtool is
/// missing (the tools rule).
fn promtool_check(text: &str) -> bool {
    if !util::have_tool("promtool check metrics", "promtool", "prometheus") {
        return false;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = wait_output(child, DEADLINE);
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// `packet-ipc-peer subscribe SERVER --group GROUP`, once subscribed.
fn group_member(daemon: &Daemon, server: &str, group: &str) -> Child {
    let mut child = daemon.peer(&[
        "subscribe",
        server,
        "--group",
        group,
        "--reconnect-wait-ms",
        "0",
    ]);
    let _ = wait_stderr_line(&mut child, &format!("subscribed to {server}"));
    child
}

/// Waits until `done` holds for `packet-ipc stats --json`, and returns that document.
fn stats_when(daemon: &Daemon, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let stats = run_json(daemon.cli(), &["stats", "--json"]);
        if done(&stats) {
            return stats;
        }
        assert!(start.elapsed() < DEADLINE, "stats never got there: {stats}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn server<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name}: {stats}"))
}

#[test]
fn metrics_equal_stats_and_pass_promtool() {
    let (config, addr) = with_metrics(
        "[servers.eth]\nlinktype = 1\n\n[servers.idle]\nlinktype = 1\noverflow = \"block\"\n",
    );
    let daemon = Daemon::start(Some(&config));
    let (plain, _) = subscribe(&daemon, "eth", &["--json"]);
    let member = group_member(&daemon, "eth", "ids");
    // From the repository's root, as a user would.
    let mut cmd = daemon.cli();
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let summary = run_json(
        cmd,
        &[
            "publish",
            "eth",
            "tests/data/loopback-udp.pcap",
            "--batch",
            "10",
            "--json",
        ],
    );
    assert_eq!(summary["packets"], LOOPBACK_PACKETS, "{summary}");
    let stats = stats_when(&daemon, |stats| {
        let eth = server(stats, "eth");
        let subs = eth["subscribers"].as_array().unwrap();
        eth["producers"] == 0
            && subs.len() == 2
            && subs.iter().all(|s| s["packets_out"] == LOOPBACK_PACKETS)
    });
    let text = scrape(addr);
    let checked = promtool_check(&text);
    let samples = samples(&text);

    for s in stats["servers"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let labels = [("server", name)];
        for (metric, key) in [
            ("packet_ipc_packets_in_total", "packets_in"),
            ("packet_ipc_batches_in_total", "batches_in"),
            ("packet_ipc_bytes_in_total", "bytes_in"),
            ("packet_ipc_producers", "producers"),
            ("packet_ipc_lost_packets_total", "lost_packets"),
            ("packet_ipc_lost_batches_total", "lost_batches"),
            ("packet_ipc_dropped_clients_total", "dropped_clients"),
            ("packet_ipc_refused_total", "refused"),
            ("packet_ipc_source_dropped_total", "source_dropped"),
            (
                "packet_ipc_unsubscribed_batches_total",
                "unsubscribed_batches",
            ),
        ] {
            assert_eq!(
                value(&samples, metric, &labels),
                s[key].as_u64().unwrap() as f64,
                "{metric} of {name}; stats: {s}"
            );
        }
        let subscribers = s["subscribers"].as_array().unwrap();
        assert_eq!(
            value(&samples, "packet_ipc_subscribers", &labels),
            subscribers.len() as f64
        );
        for sub in subscribers {
            let id = sub["id"].to_string();
            let group = sub["group"].as_str().unwrap_or("");
            let labels = [
                ("server", name),
                ("subscriber", id.as_str()),
                ("group", group),
            ];
            for (metric, key) in [
                ("packet_ipc_subscriber_packets_out_total", "packets_out"),
                ("packet_ipc_subscriber_lost_packets_total", "lost_packets"),
                ("packet_ipc_subscriber_queued", "queued"),
            ] {
                assert_eq!(
                    value(&samples, metric, &labels),
                    sub[key].as_u64().unwrap() as f64,
                    "{metric} of {labels:?}"
                );
            }
        }
        for g in s["groups"].as_array().unwrap() {
            let labels = [("server", name), ("group", g["name"].as_str().unwrap())];
            for (metric, key) in [
                ("packet_ipc_group_members", "members"),
                ("packet_ipc_group_packets_out_total", "packets_out"),
                ("packet_ipc_group_lost_packets_total", "lost_packets"),
            ] {
                assert_eq!(
                    value(&samples, metric, &labels),
                    g[key].as_u64().unwrap() as f64,
                    "{metric} of {labels:?}"
                );
            }
        }
    }
    // What was published: 38 packets, 39895 captured bytes, in batches of 10.
    let eth = [("server", "eth")];
    assert_eq!(value(&samples, "packet_ipc_packets_in_total", &eth), 38.0);
    assert_eq!(value(&samples, "packet_ipc_batches_in_total", &eth), 4.0);
    assert_eq!(value(&samples, "packet_ipc_bytes_in_total", &eth), 39895.0);
    assert_eq!(value(&samples, "packet_ipc_subscribers", &eth), 2.0);
    let ids = [("server", "eth"), ("group", "ids")];
    assert_eq!(value(&samples, "packet_ipc_group_members", &ids), 1.0);
    assert_eq!(
        value(&samples, "packet_ipc_group_packets_out_total", &ids),
        38.0
    );
    let idle = [("server", "idle")];
    assert_eq!(value(&samples, "packet_ipc_packets_in_total", &idle), 0.0);
    assert!(value(&samples, "packet_ipc_process_resident_bytes", &[]) > 1e6);
    let fds = value(&samples, "packet_ipc_process_open_fds", &[]);
    assert!(
        fds >= 3.0 && fds <= util::open_fds(daemon.pid()) as f64 + 8.0,
        "{fds}"
    );

    for child in [plain, member] {
        util::signal(&child, libc::SIGTERM);
        let _ = wait_output(child, DEADLINE);
    }
    if checked {
        eprintln!("promtool check metrics: passed");
    }
}

#[test]
fn metrics_endpoint_answers_404_elsewhere_and_405_to_other_methods() {
    let (config, addr) = with_metrics("[servers.eth]\nlinktype = 1\n");
    let daemon = Daemon::start(Some(&config));
    for path in ["/", "/metric", "/metrics/", "/metricsx", "/favicon.ico"] {
        let (status, _, body) = util::http_get(addr, path);
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, headers, _) = util::http(addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "allow" && v.contains("GET")));
    let (status, _, body) = util::http(addr, "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""));
    // A query string is not part of the path.
    let (status, _, body) = util::http_get(addr, "/metrics?name[]=x");
    assert_eq!(status, 200);
    assert!(body.contains("packet_ipc_packets_in_total{server=\"eth\"} 0"));
    // A client that connects and says nothing delays no one.
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    assert!(scrape(addr).contains("# TYPE packet_ipc_subscribers gauge"));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn metrics_follow_reloads_and_a_changed_listen_waits_for_restart() {
    let (config, addr) = with_metrics("[servers.a]\nlinktype = 1\n");
    let daemon = Daemon::start(Some(&config));
    assert!(scrape(addr).contains("packet_ipc_packets_in_total{server=\"a\"} 0"));

    // Server a removed, b added, and the endpoint moved: the servers follow at once, the
    // endpoint stays where it is until a restart.
    let other = util::free_port();
    std::fs::write(
        daemon.runtime().join("packet-ipcd.toml"),
        format!("[metrics]\nlisten = \"127.0.0.1:{other}\"\n\n[servers.b]\nlinktype = 1\n"),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let start = Instant::now();
    loop {
        let text = scrape(addr);
        if text.contains("{server=\"b\"}") && !text.contains("{server=\"a\"}") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never reloaded: {text}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", other)).is_err(),
        "the endpoint moved before a restart"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("[metrics] settings change only at restart"),
        "{log}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn a_metrics_address_in_use_stops_the_daemon_with_78_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pipc")
        .tempdir_in("/tmp")
        .unwrap();
    let config = dir.path().join("packet-ipcd.toml");
    std::fs::write(
        &config,
        format!("[metrics]\nlisten = \"{addr}\"\n\n[servers.eth]\nlinktype = 1\n"),
    )
    .unwrap();
    let child = Command::new(util::daemon_bin())
        .arg("--config")
        .arg(&config)
        .env("PACKET_IPC_RUNTIME_DIR", dir.path())
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("packet-ipcd: metrics.listen: ") && last.contains(&addr.to_string()),
        "{stderr}"
    );
    assert!(
        !dir.path().join("rendezvous.json").exists(),
        "a daemon that did not start left a rendezvous file"
    );
    drop(taken);
}

/// Every `packet_ipc_*` name in a text (a dashboard's queries).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("packet_ipc_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every query in a Grafana dashboard (panels, nested rows, templating): `(true, expr)`
/// for a panel's PromQL, `(false, query)` for a variable's.
fn queries(value: &serde_json::Value, out: &mut Vec<(bool, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push((true, s.clone())),
                    ("query" | "definition", serde_json::Value::String(s)) => {
                        out.push((false, s.clone()))
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// `promtool check rules` on every panel query, as recording rules (Grafana's variables
/// replaced): the PromQL must parse. False when promtool is missing.
fn promtool_check_queries(exprs: &[&String]) -> bool {
    if !util::have_tool("promtool check rules", "promtool", "prometheus") {
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$server", ".*");
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed: {}{}\non:\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/packet-ipc.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let used: BTreeSet<String> = all.iter().flat_map(|(_, q)| metric_names(q)).collect();
    assert!(used.len() >= 10, "{used:?}");
    let exprs: Vec<&String> = all.iter().filter(|(e, _)| *e).map(|(_, q)| q).collect();
    promtool_check_queries(&exprs);

    // A daemon with a plain subscriber and a group member exports every family.
    let (config, addr) = with_metrics("[servers.eth]\nlinktype = 1\n");
    let daemon = Daemon::start(Some(&config));
    let (plain, _) = subscribe(&daemon, "eth", &["--json"]);
    let member = group_member(&daemon, "eth", "ids");
    let exported: BTreeSet<String> = scrape(addr)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the daemon does not export: {unknown:?} \
         (exported: {exported:?})"
    );
    for child in [plain, member] {
        util::signal(&child, libc::SIGTERM);
        let _ = wait_output(child, DEADLINE);
    }
}
