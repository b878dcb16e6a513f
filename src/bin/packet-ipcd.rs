//! `packet-ipcd`, the packet-ipc broker daemon: command line, configuration, logging,
//! signals, then [`packet_ipc::broker::daemon::run`]. Built with the library's `daemon`
//! feature (the workspace's programs turn it on; `cargo install packet-ipc --features
//! daemon` installs it alone).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use futures::StreamExt;
use packet_ipc::broker::config;
use packet_ipc::broker::daemon::{self, Control};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// packet-ipc broker daemon: hosts named servers and fans packet batches out to subscribers.
#[derive(Parser)]
#[command(name = "packet-ipcd", version)]
struct Args {
    /// Configuration file (default: $PACKET_IPC_CONFIG, /etc/packet-ipc/packet-ipcd.toml,
    /// else the embedded default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print `ok` or the problem, and exit (78 if invalid).
    #[arg(long)]
    check: bool,
}

const EX_CONFIG: u8 = 78;
const EX_SOFTWARE: u8 = 70;

fn main() -> ExitCode {
    let args = Args::parse();
    let source = config::locate(args.config.as_deref());
    let config = match config::load(&source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("packet-ipcd: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check {
        for warning in daemon::warnings(&config) {
            eprintln!("packet-ipcd: {warning}");
        }
        println!("ok");
        return ExitCode::SUCCESS;
    }
    daemon::init_logging(config.daemon.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("packet-ipcd: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        let signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("packet-ipcd: cannot install signal handlers: {e}");
                return Err(ExitCode::from(EX_SOFTWARE));
            }
        };
        let handle = signals.handle();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut signals = signals;
            while let Some(signal) = signals.next().await {
                let control = if signal == SIGHUP {
                    Control::Reload
                } else {
                    Control::Shutdown
                };
                if tx.send(control).await.is_err() {
                    break;
                }
            }
        });
        let result = daemon::run(source, config, rx).await;
        handle.close();
        result.map_err(|e| {
            tracing::error!(error = %e, "packet-ipcd cannot run");
            eprintln!("packet-ipcd: {e}");
            ExitCode::from(e.exit_code())
        })
    });
    // The hubs and blocking tasks have ended; do not wait for stragglers (a connect to a
    // client that never accepts).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
