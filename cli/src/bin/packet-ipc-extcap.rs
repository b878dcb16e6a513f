//! `packet-ipc-extcap`: the servers of packet-ipcd as Wireshark capture interfaces.

fn main() -> std::process::ExitCode {
    packet_ipc_cli::extcap::main()
}
