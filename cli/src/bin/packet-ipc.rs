//! `packet-ipc`, the command-line tool.

fn main() -> std::process::ExitCode {
    packet_ipc_cli::main()
}
