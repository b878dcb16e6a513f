//! The `packet-ipcd` program of this package: it starts, checks configurations and says
//! what is wrong with one. The daemon's behaviour with real clients is tested with the
//! other programs, in `cli/tests` (which run this binary).

use std::process::{Command, Output};

fn packet_ipcd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_packet-ipcd"))
        .args(args)
        .env_remove("PACKET_IPC_CONFIG")
        .output()
        .expect("run packet-ipcd")
}

#[test]
fn the_shipped_configuration_checks_ok() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/packet-ipcd.toml");
    let out = packet_ipcd(&["--config", config, "--check"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn a_broken_configuration_exits_78_naming_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[servers.x]\nqueue-depth = \"deep\"\n").unwrap();
    let file = path.to_str().unwrap();
    let out = packet_ipcd(&["--config", file, "--check"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [file, "line 2", "servers.x.queue-depth"] {
        assert!(err.contains(part), "{part:?} in {err:?}");
    }
    assert_eq!(err.lines().count(), 1, "{err:?}");
}

#[test]
fn it_names_itself() {
    let out = packet_ipcd(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("packet-ipcd "));
}
