//! A QMP client: QEMU's JSON control protocol on a unix socket (`-qmp unix:PATH,server=on`).
//!
//! The protocol: QEMU greets with `{"QMP": {...}}`; the client leaves negotiation mode with
//! `qmp_capabilities`; then each command `{"execute": C, "arguments": A, "id": I}` gets one
//! `{"return": R, "id": I}` or `{"error": {"class": K, "desc": D}, "id": I}`. Asynchronous
//! events (`{"event": E, "data": ...}`) may arrive at any time, also between a command and
//! its answer: they are kept for [`Qmp::wait_event`]. Every message is one line of JSON.
//!
//! Descriptors travel with `getfd`: the descriptor rides as `SCM_RIGHTS` ancillary data on
//! the very message that carries the command, one descriptor per `getfd`, and QEMU keeps it
//! under the given name until a command (`netdev_add`) consumes it or `closefd` drops it.
//!
//! The client is blocking, with a deadline on every wait; async callers run it on a blocking
//! thread.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use serde_json::{Value, json};

/// How long a command's answer is waited for by default.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to.
    #[error("cannot connect to the QMP socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// What answered is not QEMU's QMP.
    #[error("{path} is not a QEMU QMP socket: {what}")]
    NotQmp {
        /// The socket.
        path: PathBuf,
        /// What it sent instead.
        what: String,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket {path}: cannot {op}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP socket {path}: QEMU closed the connection while {waiting_for} was awaited")]
    Closed {
        /// The socket.
        path: PathBuf,
        /// What was awaited.
        waiting_for: String,
    },
    /// QEMU refused a command.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's message.
        desc: String,
    },
    /// Nothing came in time.
    #[error("QMP socket {path}: no {waiting_for} within {} s", .after.as_secs_f32())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What was awaited.
        waiting_for: String,
        /// How long it was awaited.
        after: Duration,
    },
}

impl QmpError {
    /// QEMU's error class when QEMU refused the command.
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Refused { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// A connection to QEMU's QMP, past capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    stream: UnixStream,
    /// Bytes read but not yet split into lines.
    pending: Vec<u8>,
    /// Events that arrived while something else was awaited.
    events: VecDeque<Value>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, checks the greeting is QEMU's and leaves
    /// negotiation mode. Anything else at that path is an error that names it.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, QmpError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| QmpError::Connect {
            path: path.clone(),
            source,
        })?;
        let mut qmp = Self {
            path,
            stream,
            pending: Vec::new(),
            events: VecDeque::new(),
            next_id: 0,
            timeout: COMMAND_TIMEOUT,
        };
        let greeting = qmp
            .read_message(qmp.timeout, "the QMP greeting")
            .map_err(|e| match e {
                QmpError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
                    QmpError::NotQmp {
                        path: qmp.path.clone(),
                        what: source.to_string(),
                    }
                }
                other => other,
            })?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NotQmp {
                path: qmp.path.clone(),
                what: format!("its first message is {}", abbreviate(&greeting.to_string())),
            });
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long a command's answer is waited for (default [`COMMAND_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns its `return`
    /// value. A refusal is [`QmpError::Refused`] with QEMU's class and message.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_with_fd(command, arguments, None)
    }

    /// Registers `fd` under `name` with `getfd`, the descriptor attached to the command as
    /// `SCM_RIGHTS`. QEMU keeps its own copy: the caller may close `fd` afterwards.
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        self.execute_with_fd("getfd", json!({ "fdname": name }), Some(fd))
            .map(drop)
    }

    fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = format!("sbx-{}", self.next_id);
        let mut message = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            message["arguments"] = arguments;
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(b'\n');
        self.write(&bytes, fd)?;
        let deadline = Deadline::after(self.timeout);
        let waiting_for = format!("the answer to {command}");
        loop {
            let message = self.read_message_by(deadline, &waiting_for)?;
            if message.get("event").is_some() {
                self.events.push_back(message);
                continue;
            }
            if message.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                // An answer to a command of an earlier, abandoned wait.
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            let error = message.get("error").cloned().unwrap_or(Value::Null);
            let text = |key: &str| {
                error
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("(none given)")
                    .to_string()
            };
            return Err(QmpError::Refused {
                path: self.path.clone(),
                command: command.to_string(),
                class: text("class"),
                desc: text("desc"),
            });
        }
    }

    /// Waits up to `timeout` for the event `name` whose `data` satisfies `matches`, looking
    /// first at the events that arrived meanwhile. Other events are kept.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let is_it = |event: &Value| {
            event.get("event").and_then(Value::as_str) == Some(name)
                && matches(event.get("data").unwrap_or(&Value::Null))
        };
        if let Some(at) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(at).unwrap_or_default());
        }
        let deadline = Deadline::after(timeout);
        let waiting_for = format!("{name} event");
        loop {
            let message = self.read_message_by(deadline, &waiting_for)?;
            if is_it(&message) {
                return Ok(message);
            }
            if message.get("event").is_some() {
                self.events.push_back(message);
            }
        }
    }

    fn write(&mut self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), QmpError> {
        let io_error = |source| QmpError::Io {
            path: self.path.clone(),
            op: "send a command",
            source,
        };
        match fd {
            None => self.stream.write_all(bytes).map_err(io_error),
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let control = [ControlMessage::ScmRights(&fds)];
                let iov = [IoSlice::new(bytes)];
                let sent = sendmsg::<UnixAddr>(
                    self.stream.as_raw_fd(),
                    &iov,
                    &control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(|e| io_error(e.into()))?;
                // The descriptor went with the first byte; the rest is plain data.
                match bytes.get(sent..) {
                    Some(rest) if !rest.is_empty() => self.stream.write_all(rest).map_err(io_error),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Reads the next message (one JSON line), waiting up to `budget`.
    fn read_message(&mut self, budget: Duration, waiting_for: &str) -> Result<Value, QmpError> {
        self.read_message_by(Deadline::after(budget), waiting_for)
    }

    /// Reads the next message (one JSON line), waiting until `deadline`.
    fn read_message_by(
        &mut self,
        deadline: Deadline,
        waiting_for: &str,
    ) -> Result<Value, QmpError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text).map_err(|e| QmpError::Io {
                    path: self.path.clone(),
                    op: "read a message",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("it sent {} ({e})", abbreviate(text)),
                    ),
                });
            }
            let Some(left) = deadline.left() else {
                return Err(self.timeout_error(waiting_for, deadline));
            };
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| QmpError::Io {
                    path: self.path.clone(),
                    op: "set a read timeout",
                    source,
                })?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        waiting_for: waiting_for.to_string(),
                    });
                }
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout_error(waiting_for, deadline));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(QmpError::Io {
                        path: self.path.clone(),
                        op: "read a message",
                        source,
                    });
                }
            }
        }
    }

    fn timeout_error(&self, waiting_for: &str, deadline: Deadline) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            waiting_for: waiting_for.to_string(),
            after: deadline.budget,
        }
    }
}

/// When a wait ends, and how long it was given.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The time left, if any.
    fn left(&self) -> Option<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// At most 120 characters of `text`, for error messages about what a peer sent.
fn abbreviate(text: &str) -> String {
    let mut out: String = text.chars().take(120).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    format!("{out:?}")
}
