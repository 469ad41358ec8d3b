//! Who holds a sandbox: a process, named so that a reused pid is never mistaken for it.
//!
//! A pid alone proves nothing: once its process exits the kernel hands the number to the next
//! process that starts. A process is named here by its pid and its start time (field 22 of
//! `/proc/PID/stat`, clock ticks after boot), which together stay unique until the next boot,
//! plus the boot id (`/proc/sys/kernel/random/boot_id`), since the tick count restarts at boot
//! and a state file on disk can outlive a reboot, and the pid namespace the pid is numbered in,
//! since the same number names another process in another pid namespace.

use std::{fmt, fs, io, os::unix::fs::MetadataExt};

use serde::{Deserialize, Serialize};

/// A process that holds a sandbox: the one attaching or detaching it, then the shim or VMM
/// that uses it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its pid, in [`Owner::pid_namespace`].
    pub pid: u32,
    /// When it started: field 22 of `/proc/PID/stat`, clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when recorded (absent if it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The inode of the pid namespace its pid is numbered in (`/proc/self/ns/pid` of the
    /// process that recorded it; absent if it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<u64>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (started at tick {})", self.pid, self.start_time)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A process that cannot be named as an owner.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// There is no process with this pid (or it has exited and waits to be reaped).
    #[error("no running process has pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// Its `/proc/PID/stat` cannot be read or understood.
    #[error("cannot read the start time of pid {pid} from /proc/{pid}/stat")]
    Stat {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Whether a recorded owner still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The same process runs (same pid, start time and boot).
    Alive,
    /// It is gone; the reason says how that is known.
    Gone(String),
    /// It cannot be told (another pid namespace, `/proc` unreadable): treat as alive.
    Unknown(String),
}

impl Owner {
    /// The calling process.
    pub fn current() -> Result<Self, OwnerError> {
        Self::of_pid(std::process::id())
    }

    /// The running process `pid` (numbered in this process's pid namespace).
    pub fn of_pid(pid: u32) -> Result<Self, OwnerError> {
        match read_stat(pid) {
            Ok(stat) if stat.exited() => Err(OwnerError::NoSuchProcess { pid }),
            Ok(stat) => Ok(Self {
                pid,
                start_time: stat.start_time,
                boot_id: boot_id(),
                pid_namespace: pid_namespace(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OwnerError::NoSuchProcess { pid }),
            Err(source) => Err(OwnerError::Stat { pid, source }),
        }
    }

    /// Whether this process still runs, as seen from the calling process. A zombie (exited,
    /// not yet waited for) is gone: its descriptors are closed.
    pub fn liveness(&self) -> Liveness {
        if let (Some(recorded), Some(now)) = (&self.boot_id, boot_id())
            && *recorded != now
        {
            return Liveness::Gone(format!(
                "{self} ran before the last boot (boot id {recorded})"
            ));
        }
        if let (Some(recorded), Some(now)) = (self.pid_namespace, pid_namespace())
            && recorded != now
        {
            return Liveness::Unknown(format!(
                "{self} is numbered in pid namespace pid:[{recorded}], this process runs in pid:[{now}]"
            ));
        }
        match read_stat(self.pid) {
            Ok(stat) if stat.start_time != self.start_time => Liveness::Gone(format!(
                "{self} exited; pid {} is now another process (started at tick {})",
                self.pid, stat.start_time
            )),
            Ok(stat) if stat.exited() => Liveness::Gone(format!(
                "{self} exited (state {}, not yet waited for)",
                stat.state
            )),
            Ok(_) => Liveness::Alive,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Liveness::Gone(format!("{self} exited; no process has pid {}", self.pid))
            }
            Err(e) => Liveness::Unknown(format!("cannot read /proc/{}/stat: {e}", self.pid)),
        }
    }
}

/// What is used of `/proc/PID/stat`.
struct Stat {
    /// Field 3.
    state: char,
    /// Field 22.
    start_time: u64,
}

impl Stat {
    /// Zombie or dead: the process has exited.
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format: {text:?}"),
        )
    })
}

/// Parses `PID (COMM) STATE PPID ...`. The command name may hold spaces and parentheses, so
/// the fields are counted from the last `)`: the state is field 3, the start time field 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// The kernel's id of this boot. Read once: it cannot change while this process runs.
fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
        })
        .clone()
}

/// The pid namespace this process's pids are numbered in. Read once: a process never leaves
/// its pid namespace (`setns` and `unshare` of `CLONE_NEWPID` change only its children's).
fn pid_namespace() -> Option<u64> {
    static PID_NAMESPACE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *PID_NAMESPACE.get_or_init(|| fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as `prctl(PR_SET_NAME)` allows.
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let stat = parse_stat(line).unwrap_or_else(|| panic!("{line} parses"));
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987_654);
        assert!(parse_stat("4242 (cut").is_none());
        assert!(parse_stat("4242 (short) S 1 2").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_gone() {
        let me = Owner::current().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.liveness(), Liveness::Alive);
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(
            matches!(reused.liveness(), Liveness::Gone(ref why) if why.contains("now another process")),
            "{:?}",
            reused.liveness()
        );
        let other_boot = Owner {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..me.clone()
        };
        assert!(matches!(other_boot.liveness(), Liveness::Gone(ref why) if why.contains("boot")));
        let other_pidns = Owner {
            pid_namespace: me.pid_namespace.map(|n| n + 1),
            ..me
        };
        if other_pidns.pid_namespace.is_some() {
            assert!(matches!(other_pidns.liveness(), Liveness::Unknown(_)));
        }
    }

    #[test]
    fn a_pid_without_a_process_cannot_be_an_owner() {
        // Above the largest pid_max the kernel allows (2^22).
        let pid = (1 << 22) + 1;
        assert!(matches!(
            Owner::of_pid(pid),
            Err(OwnerError::NoSuchProcess { pid: p }) if p == pid
        ));
        let gone = Owner {
            pid,
            start_time: 1,
            boot_id: None,
            pid_namespace: None,
        };
        assert!(matches!(gone.liveness(), Liveness::Gone(_)));
    }
}
