//! The QMP client against what is not a (cooperative) QEMU: a socket that speaks something
//! else, and a stand-in that refuses `netdev_add`. The success paths run against real QEMU
//! (tests/qemu.rs); QEMU 7.2 itself refuses a valid `netdev_add` only by crashing (a vhost
//! descriptor it cannot initialise trips an assertion in `net_client_init1`), so the refusal
//! comes from a stand-in that speaks the protocol.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    io::{IoSliceMut, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use sandbox_net::{
    NetnsSource, Network, NetworkConfig,
    vmm::{
        qemu::{Qemu, QemuConfig},
        qmp::{Qmp, QmpError},
    },
};
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot, error_chain};
use sandbox_net_persist::IfName;
use serde_json::{Value, json};

/// Serves one connection at `path` with `serve`, on a thread.
fn serve_once(path: &Path, serve: impl FnOnce(UnixStream) + Send + 'static) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream);
    })
}

#[test]
fn a_socket_that_speaks_something_else_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (i, greeting) in [
        "SSH-2.0-OpenSSH_9.2p1\r\n",
        "{\"jsonrpc\": \"2.0\", \"method\": \"hello\"}\n",
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("other-{i}.sock"));
        let server = serve_once(&path, move |mut stream| {
            stream.write_all(greeting.as_bytes()).unwrap();
            // Keep the connection open until the client gives up.
            let _ = std::io::Read::read(&mut stream, &mut [0u8; 64]);
        });
        let err = Qmp::connect(&path).unwrap_err();
        assert!(matches!(err, QmpError::NotQmp { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{} is not a QEMU QMP socket: ", path.display())),
            "{text}"
        );
        server.join().unwrap();
    }
    let missing = dir.path().join("no-such.sock");
    let err = Qmp::connect(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot connect to the QMP socket {}", missing.display())
    );
}

/// What the stand-in saw: each command, and the descriptors that came with it.
#[derive(Debug, Default)]
struct Seen {
    commands: Vec<Value>,
    fds: Vec<OwnedFd>,
}

/// A stand-in for a QEMU whose `netdev_add` fails (which real QEMU 7.2 does only by
/// crashing): it greets, negotiates, takes `getfd` descriptors as `SCM_RIGHTS`, answers
/// `closefd`, refuses `netdev_add` with a `GenericError`, and sends an event before every
/// answer, as QEMU may.
struct QmpStandInRefusingNetdevAdd {
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl QmpStandInRefusingNetdevAdd {
    const REFUSAL: &'static str = "stand-in: this netdev cannot be added";

    fn start(path: PathBuf) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        let thread = serve_once(&path, move |mut stream| {
            writeln!(stream, r#"{{"QMP": {{"version": {{"qemu": {{"major": 7, "minor": 2, "micro": 0}}}}, "capabilities": []}}}}"#).unwrap();
            let mut pending = Vec::new();
            loop {
                let mut buf = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!([RawFd; 4]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    return;
                };
                let n = msg.bytes;
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        let mut seen = record.lock().unwrap();
                        // SAFETY: SCM_RIGHTS installed these descriptors in this process.
                        seen.fds.extend(
                            fds.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let command: Value = serde_json::from_slice(&line).unwrap();
                    record.lock().unwrap().commands.push(command.clone());
                    let id = command["id"].clone();
                    let answer = match command["execute"].as_str().unwrap() {
                        "netdev_add" => json!({
                            "error": {"class": "GenericError", "desc": Self::REFUSAL},
                            "id": id,
                        }),
                        _ => json!({"return": {}, "id": id}),
                    };
                    let event = json!({"event": "RTC_CHANGE", "data": {"offset": 0},
                                       "timestamp": {"seconds": 0, "microseconds": 0}});
                    writeln!(stream, "{event}").unwrap();
                    writeln!(stream, "{answer}").unwrap();
                }
            }
        });
        Self {
            path,
            seen,
            thread: Some(thread),
        }
    }

    fn commands(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .commands
            .iter()
            .map(|c| c["execute"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for QmpStandInRefusingNetdevAdd {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_refused_netdev_add_is_reported_with_qemus_message_and_rolled_back() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let stand_in = QmpStandInRefusingNetdevAdd::start(dir.path().join("qmp.sock"));
    let mut qmp = Qmp::connect(&stand_in.path).unwrap();
    qmp.set_timeout(Duration::from_secs(10));
    let qemu = Qemu::with_qmp(
        QemuConfig {
            vcpus: 2,
            queues: 2,
            ..QemuConfig::default()
        },
        qmp,
    );
    let mut network = Network::create(
        dir.path().join("state.json"),
        "refused",
        NetnsSource::Given(fx.pod.netns().clone()),
        NetworkConfig::default(),
    )
    .unwrap();
    let eth0 = IfName::new("eth0").unwrap();
    let err = network
        .hot_add(&qemu, Some(std::slice::from_ref(&eth0)))
        .await
        .unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.contains(&format!(
            "QEMU refused netdev_add: {} (GenericError)",
            QmpStandInRefusingNetdevAdd::REFUSAL
        )),
        "{text}"
    );
    drop(qemu);
    // One getfd per queue, then the refused netdev_add, then the two descriptors closed.
    assert_eq!(
        stand_in.commands(),
        [
            "qmp_capabilities",
            "getfd",
            "getfd",
            "netdev_add",
            "closefd",
            "closefd"
        ]
    );
    {
        let seen = stand_in.seen.lock().unwrap();
        assert_eq!(seen.fds.len(), 2, "one descriptor with each getfd");
        let names: Vec<&str> = seen.commands[1..3]
            .iter()
            .map(|c| c["arguments"]["fdname"].as_str().unwrap())
            .collect();
        let closed: Vec<&str> = seen.commands[4..6]
            .iter()
            .map(|c| c["arguments"]["fdname"].as_str().unwrap())
            .collect();
        assert_eq!(names, closed);
        assert_eq!(
            seen.commands[3]["arguments"]["fds"],
            format!("{}:{}", names[0], names[1])
        );
        // What it got were the queues of a tap (the descriptors a real QEMU would keep).
        for fd in &seen.fds {
            let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert_eq!(target, Path::new("/dev/net/tun"));
        }
    }
    // Nothing of the attempt is left: not in the pod, not in the state.
    drop(stand_in);
    assert_same_snapshot(&before, &fx.pod.snapshot());
    assert!(
        network
            .sandbox()
            .state()
            .endpoints
            .iter()
            .all(|e| !e.attached && e.steps.is_empty())
    );
}
