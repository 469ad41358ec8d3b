//! A route-netlink handle bound to one namespace.

use std::{
    io,
    path::{Path, PathBuf},
};

use futures::{Stream, StreamExt, TryStreamExt};
use netlink_packet_core::{NLM_F_DUMP, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::task::JoinHandle;

use crate::{
    Netns,
    error::{NetlinkError, rtnetlink_to_io},
    ext_ack::refusal_to_io,
};

/// An rtnetlink handle whose socket was created inside one network namespace, so every
/// request it sends acts on that namespace, from whichever thread or task sends it.
///
/// The connection task is aborted when the handle is dropped.
#[derive(Debug)]
pub struct Rtnl {
    handle: rtnetlink::Handle,
    netns: PathBuf,
    connection: JoinHandle<()>,
    /// The kernel runs at most one dump per netlink socket and answers a second one with
    /// `EBUSY`; dumps from concurrent tasks sharing this handle take turns.
    dump_turn: tokio::sync::Mutex<()>,
    /// A second socket of the same namespace for link dumps decoded lean.
    lean: crate::lean_dump::LeanSocket,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netns {
    /// Opens an rtnetlink connection inside this namespace. Must be called within a tokio
    /// runtime; the connection runs as a task of that runtime.
    pub async fn rtnl(&self) -> Result<Rtnl, NetlinkError> {
        let netns = self.path().to_path_buf();
        let runtime = tokio::runtime::Handle::current();
        let socket = self
            .run(move || {
                // The socket joins the namespace of the thread that creates it; registering
                // it with the reactor needs the runtime's context, entered here.
                let _runtime = runtime.enter();
                let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
                // Extended acks carry the kernel's explanation of a refused request.
                socket.socket_mut().set_ext_ack(true)?;
                grow_receive_buffer(socket.socket_ref());
                let lean = crate::lean_dump::LeanSocket::new(TokioSocket::new(NETLINK_ROUTE)?)?;
                Ok::<_, std::io::Error>((socket, lean))
            })
            .await
            .map_err(|e| NetlinkError::Socket {
                netns: netns.clone(),
                source: Box::new(e),
            })?
            .map_err(|e| NetlinkError::Socket {
                netns: netns.clone(),
                source: Box::new(e),
            })?;
        let (socket, lean) = socket;
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        let connection = tokio::spawn(connection);
        Ok(Rtnl {
            handle,
            netns,
            connection,
            dump_turn: tokio::sync::Mutex::new(()),
            lean,
        })
    }
}

/// The receive buffer asked for the shared socket, in bytes (the kernel doubles it for its
/// bookkeeping).
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// Makes the socket's receive buffer [`RECEIVE_BUFFER`] large. Every request of a sandbox
/// (hundreds of endpoints' at once) shares this socket, and the kernel drops an answer that
/// does not fit in the receive buffer (the socket's `Drops` in `/proc/net/netlink`): the
/// request that waits for it would wait forever. Each answer costs the buffer a whole socket
/// buffer (about 1 KiB for a 40-byte ACK), so the default of `net.core.rmem_default` (208 KiB)
/// holds some 200 of them. `SO_RCVBUFFORCE` (root, `CAP_NET_ADMIN`) goes past
/// `net.core.rmem_max`; without the capability, `SO_RCVBUF` gets what the limit allows.
fn grow_receive_buffer(socket: &netlink_sys::Socket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the descriptor is the socket's, open for the call; the option's value is
        // a c_int read by the kernel through a pointer and length that describe it.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            return;
        }
    }
    tracing::debug!(error = %io::Error::last_os_error(), "netlink receive buffer left at its default");
}

impl Rtnl {
    /// The rtnetlink handle, for this crate's requests.
    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Sends one request the caller built (`flags`: `NLM_F_REQUEST | NLM_F_ACK` and those of
    /// the operation, `NLM_F_CREATE | NLM_F_EXCL` for an add, `NLM_F_DUMP` for a dump) and
    /// returns the messages the kernel answers with: a get's or a dump's, none for a change.
    /// Every answer is read, so that a refusal arriving after some messages is not missed.
    ///
    /// A refusal is an `io::Error` of the errno's kind that reads as the kernel's reason (its
    /// extended ack, see [`kernel_reason`](crate::kernel_reason)) with the bare errno as its
    /// source. A dump takes its turn with the other dumps of this handle: the kernel runs one
    /// dump per socket at a time and answers a second with `EBUSY`.
    pub async fn exchange(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, io::Error> {
        let _turn = if flags & NLM_F_DUMP == NLM_F_DUMP {
            Some(self.dump_turn.lock().await)
        } else {
            None
        };
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(request).map_err(rtnetlink_to_io)?;
        let mut messages = Vec::new();
        let mut refusal = None;
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    refusal.get_or_insert_with(|| refusal_to_io(answer.header.flags, &e));
                }
                NetlinkPayload::InnerMessage(message) => messages.push(message),
                _ => {}
            }
        }
        match refusal {
            Some(refusal) => Err(refusal),
            None => Ok(messages),
        }
    }

    pub(crate) fn lean(&self) -> &crate::lean_dump::LeanSocket {
        &self.lean
    }

    /// The path of the namespace this handle acts on.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Builds the error for a failed request on `object`.
    pub(crate) fn request_error(
        &self,
        op: &'static str,
        object: impl Into<String>,
        err: rtnetlink::Error,
    ) -> NetlinkError {
        self.request_failed(op, object, rtnetlink_to_io(err))
    }

    /// Builds the error for a failed request on `object`, from the kernel's answer.
    pub(crate) fn request_failed(
        &self,
        op: &'static str,
        object: impl Into<String>,
        source: io::Error,
    ) -> NetlinkError {
        NetlinkError::Request {
            op,
            object: object.into(),
            netns: self.netns.clone(),
            source,
        }
    }

    /// Builds the error for a kernel answer that could not be converted.
    pub(crate) fn decode(&self, object: &str, e: crate::convert::ConvertError) -> NetlinkError {
        NetlinkError::Decode {
            object: object.into(),
            netns: self.netns.clone(),
            what: e.0,
        }
    }

    /// Sends the dump request that `request` builds and drains it into a vector, naming
    /// `object` on failure. The request is built only once this handle's previous dump is
    /// finished: rtnetlink sends a request as soon as it is built.
    pub(crate) async fn dump<T, S>(
        &self,
        op: &'static str,
        object: &str,
        request: impl FnOnce(&rtnetlink::Handle) -> S,
    ) -> Result<Vec<T>, NetlinkError>
    where
        S: Stream<Item = Result<T, rtnetlink::Error>>,
    {
        let _turn = self.dump_turn.lock().await;
        request(&self.handle)
            .try_collect()
            .await
            .map_err(|e| self.request_error(op, object, e))
    }
}
