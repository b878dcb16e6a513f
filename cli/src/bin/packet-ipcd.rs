//! `packet-ipcd`, the packet-ipc broker daemon.

fn main() -> std::process::ExitCode {
    packet_ipc_cli::daemon_main::main()
}
