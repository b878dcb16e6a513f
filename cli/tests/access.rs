//! Access control: the producer and subscriber groups of a server, enforced by the spool
//! directories' group and mode, with clients run as real, different users.

use std::process::Stdio;

use crate::util::{
    peer_as, summary, users, wait_output, wait_stderr_line, Daemon, ALLOWED, DEADLINE, DENIED,
    GROUP,
};

#[test]
fn only_the_configured_group_may_produce_and_subscribe() {
    if !users("group access as real users") {
        return;
    }
    let daemon = Daemon::start(Some(&format!(
        "[servers.secure]\nproducer-group = \"{GROUP}\"\nsubscriber-group = \"{GROUP}\"\n\
         [servers.open]\n"
    )));

    // A member subscribes and produces.
    let mut sub = peer_as(
        &daemon,
        ALLOWED,
        &[
            "subscribe",
            "secure",
            "--count",
            "256",
            "--reconnect-wait-ms",
            "0",
        ],
    );
    let sub_err = wait_stderr_line(&mut sub, "subscribed to");
    let producer = peer_as(
        &daemon,
        ALLOWED,
        &[
            "produce",
            "secure",
            "--batches",
            "1",
            "--reconnect-wait-ms",
            "0",
        ],
    );
    let out = wait_output(producer, DEADLINE);
    assert!(out.status.success(), "{out:?}");
    let out = wait_output(sub, DEADLINE);
    assert!(out.status.success(), "{}", sub_err.text());
    assert_eq!(summary(&out)["packets"], 256);

    // Someone else is told why, naming the server and the group, in both roles.
    for role in ["subscribe", "produce"] {
        let other = peer_as(
            &daemon,
            DENIED,
            &[role, "secure", "--reconnect-wait-ms", "0"],
        );
        let out = wait_output(other, DEADLINE);
        assert!(!out.status.success(), "{role} as {DENIED} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("permission denied") && err.contains("secure") && err.contains(GROUP),
            "{role}: {err}"
        );
    }

    // A server without groups is open to everyone.
    let mut sub = peer_as(&daemon, DENIED, &["subscribe", "open", "--count", "1"]);
    wait_stderr_line(&mut sub, "subscribed to");
    let producer = peer_as(&daemon, ALLOWED, &["produce", "open", "--batches", "1"]);
    assert!(wait_output(producer, DEADLINE).status.success());
    assert!(wait_output(sub, DEADLINE).status.success());

    // Nobody but the daemon writes the runtime directory or the rendezvous file.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(daemon.runtime())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o022, 0, "runtime directory mode {mode:o}");
    let touch = crate::util::as_user(DENIED, "touch")
        .arg(daemon.runtime().join("rendezvous.json"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !touch.success(),
        "another user could write the rendezvous file"
    );
}
