//! The pipelined raw lower bound of an attach and a detach: the kernel changes that the
//! tcfilter model with rx and tx limits makes for N endpoints, and nothing else.
//!
//! Attach, on one thread inside the pod namespace:
//! - a plain `NETLINK_ROUTE` socket (netlink-sys), one link dump to find the pod's veths (their
//!   ifindex and MTU; only `IFLA_IFNAME` and `IFLA_MTU` are read);
//! - the taps by ioctl: `open(/dev/net/tun)`, `TUNSETIFF` (tap, no packet info, virtio-net
//!   header, one queue), `TUNSETPERSIST`; their ifindex by `SIOCGIFINDEX`. The queue
//!   descriptors stay open until the batch is acknowledged, as in `sandbox-net`, which sets its
//!   taps up while it holds them: the taps have carrier when they go up, and the kernel gives
//!   each its IPv6 link-local address and routes; each close then waits for an RCU grace
//!   period (`__tun_detach` calls `synchronize_net`);
//! - then every request in ONE buffer with consecutive sequence numbers, sent by one `send`
//!   (the socket's send buffer is raised to fit with `SO_SNDBUFFORCE`; the buffer is split at
//!   message boundaries only where the kernel's limit refuses that), per endpoint, as
//!   `sandbox-net` makes them (see crates/interworking/src/pair.rs, crates/endpoints/src/
//!   limiter.rs and the HTB encoders of crates/ratelimit):
//!   - `RTM_NEWLINK` on the tap: MTU of the veth, `IFF_UP`, the sandbox's device group;
//!   - `RTM_NEWQDISC` ingress on the veth, then on the tap;
//!   - `RTM_NEWTFILTER` u32 match-all, `mirred egress redirect` veth -> tap (ingress hook,
//!     prio 49152, protocol all, action stolen, sandbox-net's cookie), then tap -> veth;
//!   - the HTB tree on the tap (rx): root qdisc `1:` default `1:2`, class `1:1`, class `1:2`,
//!     with the crate's own encoders (`root_qdisc_message`, `class_message`); then the same
//!     tree on the veth (tx): 11 requests in all.
//!
//!   Only the last request asks for an ACK: the kernel handles the messages of one buffer in
//!   order and answers every refused one with an error whatever its flags, so the ACK of the
//!   last one with no error before it means all were applied. Every error is reported with
//!   the request it answers.
//!
//! Detach: one buffer on the same socket: `RTM_DELLINK` of the device group (the taps, with
//! their qdiscs and filters), then per veth `RTM_DELQDISC` of the root `1:` and of the ingress
//! qdisc (its filters go with it); ACK on the last.

use std::{
    fs::OpenOptions,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkMessage, NlasIterator,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage},
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
        TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcHeader, TcMessage, TcMirror,
        TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
    },
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use sandbox_net_netns::{INGRESS_HOOK, Netns, REDIRECT_COOKIE, REDIRECT_PRIORITY, ifreq_named};
use sandbox_net_persist::IfName;
use sandbox_net_ratelimit::{
    CLASS_1_1, CLASS_1_2, HtbRate, PschedClock, ROOT_HANDLE, TC_H_ROOT, class_message,
    root_qdisc_message,
};

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);
nix::ioctl_read_bad!(get_ifindex, libc::SIOCGIFINDEX, libc::ifreq);

/// `RTM_NEWLINK`, the type of a link dump's messages.
const RTM_NEWLINK: u16 = 16;
/// `IFLA_IFNAME`, `IFLA_MTU`.
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
/// `struct nlmsghdr`, `struct ifinfomsg`, `struct nlmsgerr`'s error code.
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: an extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Receive buffer for dumps and acks (the kernel fills at most 32 KiB per datagram).
const RECEIVE_BUFFER: usize = 64 * 1024;
/// The flags of a request that creates an object and fails if it exists.
const ADD: u16 = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;

/// A pod veth and the tap made for it.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `vb{i}`.
    pub veth_name: String,
    pub veth: u32,
    pub veth_mtu: u32,
    pub tap: u32,
}

/// What an attach of the bound made, for its detach.
#[derive(Debug)]
pub struct Attached {
    socket: Socket,
    sequence: u32,
    group: u32,
    pub pairs: Vec<Pair>,
}

/// Durations of one attach: everything (thread into the namespace, socket, link dump, taps,
/// batch, acks, closes), the changes alone (taps, batch, acks, closes) and their parts; and the
/// batch's shape.
#[derive(Debug, Clone, Copy)]
pub struct AttachTimes {
    pub total: Duration,
    pub changes: Duration,
    /// The taps made by ioctl, their ifindex read.
    pub taps: Duration,
    /// The batch built, sent and acknowledged.
    pub requests: Duration,
    /// The taps' queue descriptors closed.
    pub closes: Duration,
    pub batch: BatchShape,
}

/// What a batch was: its requests, its bytes and the `send` calls that carried it.
#[derive(Debug, Clone, Copy)]
pub struct BatchShape {
    pub requests: usize,
    pub bytes: usize,
    pub sends: usize,
}

/// The attach of the bound for every veth `vb*` of `netns`, the taps in device `group`.
pub fn attach(
    netns: &Netns,
    rate_bits: u64,
    group: u32,
) -> anyhow::Result<(Attached, AttachTimes)> {
    let rate = HtbRate::from_bits(rate_bits)?;
    let clock = PschedClock::read()?;
    let started = Instant::now();
    let (attached, mut times) = netns.run_blocking(move || -> anyhow::Result<_> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
        socket.bind_auto().context("bind the netlink socket")?;
        socket.set_ext_ack(true)?;
        // Errors carry the request's header only, not its whole body back.
        socket.set_cap_ack(true)?;
        let mut sequence = 1;
        let veths = dump_veths(&socket, &mut sequence)?;
        let changes = Instant::now();
        let (pairs, queues) = create_taps(veths)?;
        let taps = changes.elapsed();
        let requests = Instant::now();
        let mut batch = Batch::new(sequence);
        for (i, pair) in pairs.iter().enumerate() {
            add_endpoint(&mut batch, i, pair, group, rate, &clock);
        }
        let (next, shape) = batch.run(&socket)?;
        sequence = next;
        let requests = requests.elapsed();
        let closes = Instant::now();
        drop(queues);
        let closes = closes.elapsed();
        let attached = Attached {
            socket,
            sequence,
            group,
            pairs,
        };
        let times = AttachTimes {
            total: Duration::ZERO,
            changes: changes.elapsed(),
            taps,
            requests,
            closes,
            batch: shape,
        };
        Ok((attached, times))
    })??;
    times.total = started.elapsed();
    Ok((attached, times))
}

/// The detach of the bound: the device group deleted and the veths' qdiscs, in one batch.
pub fn detach(attached: Attached) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut batch = Batch::new(attached.sequence);
    let mut group = LinkMessage::default();
    group.attributes.push(LinkAttribute::Group(attached.group));
    batch.push(
        RouteNetlinkMessage::DelLink(group),
        NLM_F_REQUEST,
        format!("delete device group {}", attached.group),
    );
    for pair in &attached.pairs {
        let qdisc = |handle: u32, parent: u32| {
            let header = TcHeader {
                index: pair.veth as i32,
                handle: TcHandle::from(handle),
                parent: TcHandle::from(parent),
                ..TcHeader::default()
            };
            RouteNetlinkMessage::DelQueueDiscipline(TcMessage::from_parts(header, Vec::new()))
        };
        batch.push(
            qdisc(ROOT_HANDLE, TC_H_ROOT),
            NLM_F_REQUEST,
            format!("delete htb root qdisc of {}", pair.veth_name),
        );
        batch.push(
            qdisc(0xFFFF_0000, u32::from(TcHandle::INGRESS)),
            NLM_F_REQUEST,
            format!("delete ingress qdisc of {}", pair.veth_name),
        );
    }
    batch.run(&attached.socket)?;
    Ok(started.elapsed())
}

/// The veths `vb*` of the namespace, from one link dump: (name, ifindex, MTU), sorted by name
/// as `sandbox-net`'s scan sorts them (Kata's rule), which numbers the taps in that order.
fn dump_veths(socket: &Socket, sequence: &mut u32) -> anyhow::Result<Vec<(String, u32, u32)>> {
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetLink(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.header.sequence_number = *sequence;
    *sequence += 1;
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .context("send the link dump request")?;
    let mut veths = Vec::new();
    let mut receive = Vec::with_capacity(RECEIVE_BUFFER);
    loop {
        receive.clear();
        socket
            .recv(&mut receive, 0)
            .context("receive the link dump")?;
        for (kind, _, body) in messages(&receive)? {
            match kind {
                NLMSG_DONE => {
                    veths.sort();
                    return Ok(veths);
                }
                NLMSG_ERROR => bail!("link dump refused: errno {}", -error_code(body)?),
                RTM_NEWLINK => {
                    if let Some(veth) = veth_of(body)? {
                        veths.push(veth);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Name, ifindex and MTU of a link message whose name starts with `vb`.
fn veth_of(body: &[u8]) -> anyhow::Result<Option<(String, u32, u32)>> {
    ensure!(body.len() >= IFINFOMSG_LEN, "short link message");
    let index = u32::from_ne_bytes(body[4..8].try_into()?);
    let (mut name, mut mtu) = (None, None);
    for nla in NlasIterator::new(&body[IFINFOMSG_LEN..]) {
        let nla = nla.context("bad attribute in a link message")?;
        match nla.kind() {
            IFLA_IFNAME => {
                let value = nla.value();
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            IFLA_MTU => mtu = Some(u32::from_ne_bytes(nla.value().try_into()?)),
            _ => {}
        }
    }
    Ok(match (name, mtu) {
        (Some(name), Some(mtu)) if name.starts_with("vb") => Some((name, index, mtu)),
        _ => None,
    })
}

/// Creates a persistent tap `tap{i}_kata` per veth, on this thread (inside the namespace),
/// and reads its ifindex. Returns the taps' queue descriptors as well.
fn create_taps(veths: Vec<(String, u32, u32)>) -> anyhow::Result<(Vec<Pair>, Vec<OwnedFd>)> {
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let query: OwnedFd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("a socket for SIOCGIFINDEX")?;
    let mut pairs = Vec::with_capacity(veths.len());
    let mut queues = Vec::with_capacity(veths.len());
    for (i, (veth_name, veth, veth_mtu)) in veths.into_iter().enumerate() {
        let name = IfName::new(format!("tap{i}_kata"))?;
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("open /dev/net/tun")?;
        let mut request = ifreq_named(&name);
        request.ifr_ifru.ifru_flags = flags;
        // SAFETY: `request` is an initialised ifreq that outlives the call; `tun` is an open
        // /dev/net/tun descriptor.
        unsafe { tun_set_iff(tun.as_raw_fd(), &request) }
            .with_context(|| format!("TUNSETIFF {name}"))?;
        // SAFETY: an integer-argument ioctl on the attached tun descriptor `tun` owns.
        unsafe { tun_set_persist(tun.as_raw_fd(), 1) }
            .with_context(|| format!("TUNSETPERSIST {name}"))?;
        queues.push(OwnedFd::from(tun));
        let mut request = ifreq_named(&name);
        // SAFETY: `request` is an initialised ifreq the kernel writes the index into; `query`
        // is an open socket.
        unsafe { get_ifindex(query.as_raw_fd(), &mut request) }
            .with_context(|| format!("SIOCGIFINDEX {name}"))?;
        // SAFETY: SIOCGIFINDEX filled ifr_ifindex.
        let tap = unsafe { request.ifr_ifru.ifru_ifindex } as u32;
        pairs.push(Pair {
            veth_name,
            veth,
            veth_mtu,
            tap,
        });
    }
    Ok((pairs, queues))
}

/// The 11 requests of endpoint `i` (see the module's header).
fn add_endpoint(
    batch: &mut Batch,
    i: usize,
    pair: &Pair,
    group: u32,
    rate: HtbRate,
    clock: &PschedClock,
) {
    let tap = format!("tap{i}_kata");
    let veth = &pair.veth_name;
    let mut link = LinkMessage::default();
    link.header.index = pair.tap;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes.push(LinkAttribute::Mtu(pair.veth_mtu));
    link.attributes.push(LinkAttribute::Group(group));
    batch.push(
        RouteNetlinkMessage::NewLink(link),
        NLM_F_REQUEST,
        format!("set {tap} mtu {} group {group} up", pair.veth_mtu),
    );
    for (index, name) in [(pair.veth, veth), (pair.tap, &tap)] {
        batch.push(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            ADD,
            format!("add ingress qdisc to {name}"),
        );
    }
    for (from, to, what) in [
        (pair.veth, pair.tap, format!("redirect {veth} -> {tap}")),
        (pair.tap, pair.veth, format!("redirect {tap} -> {veth}")),
    ] {
        batch.push(
            RouteNetlinkMessage::NewTrafficFilter(redirect(from, to)),
            ADD,
            what,
        );
    }
    for (index, name) in [(pair.tap, &tap), (pair.veth, veth)] {
        batch.push(
            RouteNetlinkMessage::NewQueueDiscipline(root_qdisc_message(index)),
            ADD,
            format!("add htb root qdisc 1: to {name}"),
        );
        for (handle, parent, class) in [
            (CLASS_1_1, ROOT_HANDLE, "1:1"),
            (CLASS_1_2, CLASS_1_1, "1:2"),
        ] {
            batch.push(
                RouteNetlinkMessage::NewTrafficClass(class_message(
                    index, handle, parent, rate, clock,
                )),
                ADD,
                format!("add htb class {class} to {name}"),
            );
        }
    }
}

/// `tc qdisc add dev DEV ingress`.
fn ingress_qdisc(index: u32) -> TcMessage {
    let header = TcHeader {
        index: index as i32,
        handle: TcHandle::from(0xFFFF_0000),
        parent: TcHandle::INGRESS,
        ..TcHeader::default()
    };
    TcMessage::from_parts(header, vec![TcAttribute::Kind("ingress".into())])
}

/// `tc filter add dev FROM ingress protocol all prio 49152 u32 match u32 0 0 action mirred
/// egress redirect dev TO cookie HEX("sandbox-net")` (action stolen), as `sandbox-net` adds
/// it: under the ingress hook `ffff:fff2`, with its cookie on the action.
fn redirect(from: u32, to: u32) -> TcMessage {
    let header = TcHeader {
        index: from as i32,
        parent: TcHandle::from(INGRESS_HOOK),
        // The priority in the high half, the protocol (ETH_P_ALL) in network byte order in the
        // low half.
        info: (u32::from(REDIRECT_PRIORITY) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be()),
        ..TcHeader::default()
    };
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
        TcActionAttribute::Cookie(REDIRECT_COOKIE.to_vec()),
    ];
    TcMessage::from_parts(
        header,
        vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ],
    )
}

/// Requests serialized back to back, consecutive sequence numbers, what each one does.
struct Batch {
    buffer: Vec<u8>,
    /// Where each message starts in `buffer`, and what it does.
    requests: Vec<(usize, String)>,
    first_sequence: u32,
}

impl Batch {
    fn new(first_sequence: u32) -> Self {
        Self {
            buffer: Vec::new(),
            requests: Vec::new(),
            first_sequence,
        }
    }

    fn push(&mut self, message: RouteNetlinkMessage, flags: u16, what: String) {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = flags;
        message.header.sequence_number = self.first_sequence + self.requests.len() as u32;
        message.finalize();
        let at = self.buffer.len();
        self.buffer.resize(at + message.buffer_len(), 0);
        message.serialize(&mut self.buffer[at..]);
        self.requests.push((at, what));
    }

    /// Sends the batch with an ACK asked on its last request, reads the answers up to that
    /// ACK and fails with every refusal. Returns the next free sequence number and what the
    /// batch was.
    fn run(mut self, socket: &Socket) -> anyhow::Result<(u32, BatchShape)> {
        let Some(&(last_at, _)) = self.requests.last() else {
            bail!("an empty batch");
        };
        // nlmsg_flags, at offset 6 of the last message's header.
        let flags = u16::from_ne_bytes(self.buffer[last_at + 6..last_at + 8].try_into()?);
        self.buffer[last_at + 6..last_at + 8].copy_from_slice(&(flags | NLM_F_ACK).to_ne_bytes());
        let last = self.first_sequence + self.requests.len() as u32 - 1;
        // Room for an error of every request (header, code, capped request, an ext-ack text).
        let answers = self.requests.len() * 256 + RECEIVE_BUFFER;
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &answers)
            .context("SO_RCVBUFFORCE")?;
        let chunks = self.chunks(socket)?;
        let shape = BatchShape {
            requests: self.requests.len(),
            bytes: self.buffer.len(),
            sends: chunks.len(),
        };
        for chunk in chunks {
            let sent = socket.send(chunk, 0).context("send the batch")?;
            ensure!(sent == chunk.len(), "sent {sent} of {} bytes", chunk.len());
        }
        let mut refusals = Vec::new();
        let mut receive = Vec::with_capacity(RECEIVE_BUFFER);
        loop {
            receive.clear();
            socket
                .recv(&mut receive, 0)
                .context("receive the batch's answers")?;
            for (kind, sequence, body) in messages(&receive)? {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(body)?;
                if code != 0 {
                    let what = sequence
                        .checked_sub(self.first_sequence)
                        .and_then(|i| self.requests.get(i as usize))
                        .map_or("an unknown request", |(_, what)| what.as_str());
                    refusals.push(format!(
                        "request {sequence} ({what}): {}{}",
                        std::io::Error::from_raw_os_error(-code),
                        ext_ack_text(body).map_or(String::new(), |t| format!(" ({t})"))
                    ));
                }
                if sequence == last {
                    ensure!(
                        refusals.is_empty(),
                        "{} of {} requests refused:\n  {}",
                        refusals.len(),
                        self.requests.len(),
                        refusals.join("\n  ")
                    );
                    return Ok((last + 1, shape));
                }
            }
        }
    }

    /// The buffer in one piece when the send buffer can be raised to hold it (root may, with
    /// `SO_SNDBUFFORCE`), else in pieces of whole messages that fit the send buffer.
    fn chunks(&self, socket: &Socket) -> anyhow::Result<Vec<&[u8]>> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        // The kernel refuses a datagram longer than the send buffer less 32 bytes.
        let want = self.buffer.len() + 64;
        if setsockopt(socket, sockopt::SndBufForce, &want).is_err() {
            let _ = setsockopt(socket, sockopt::SndBuf, &want);
        }
        let limit = getsockopt(socket, sockopt::SndBuf)?.saturating_sub(32);
        if self.buffer.len() <= limit {
            return Ok(vec![&self.buffer]);
        }
        let mut chunks = Vec::new();
        let mut start = 0;
        let ends = self.requests.iter().skip(1).map(|(at, _)| *at);
        let mut previous = 0;
        for end in ends.chain([self.buffer.len()]) {
            ensure!(
                end - previous <= limit,
                "one request exceeds the send buffer"
            );
            if end - start > limit {
                chunks.push(&self.buffer[start..previous]);
                start = previous;
            }
            previous = end;
        }
        chunks.push(&self.buffer[start..]);
        Ok(chunks)
    }
}

/// The netlink messages of a datagram: (type, sequence number, body after the header).
fn messages(datagram: &[u8]) -> anyhow::Result<Vec<(u16, u32, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into()?) as usize;
        ensure!(
            (NLMSG_HDRLEN..=rest.len()).contains(&len),
            "bad netlink message length {len}"
        );
        let kind = u16::from_ne_bytes(rest[4..6].try_into()?);
        let sequence = u32::from_ne_bytes(rest[8..12].try_into()?);
        out.push((kind, sequence, &rest[NLMSG_HDRLEN..len]));
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

/// The error code of an `NLMSG_ERROR` body (0: an ACK, else a negative errno).
fn error_code(body: &[u8]) -> anyhow::Result<i32> {
    let code = body.get(0..4).context("short error message")?;
    Ok(i32::from_ne_bytes(code.try_into()?))
}

/// The extended ack text of an error body: after the code and the request's header (the
/// socket has `NETLINK_CAP_ACK` on, so the request's body is not echoed).
fn ext_ack_text(body: &[u8]) -> Option<String> {
    let tlvs = body.get(4 + NLMSG_HDRLEN..)?;
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
}
