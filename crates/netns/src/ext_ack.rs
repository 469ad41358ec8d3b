//! The kernel's reason for refusing a netlink request: the text of its extended ack.
//!
//! Every socket this crate opens sets `NETLINK_EXT_ACK`, so that a refusal (`NLMSG_ERROR`
//! with a negative errno) also carries the kernel's explanation (`NLMSGERR_ATTR_MSG`, e.g.
//! "Exclusivity flag on, cannot modify"). The errno alone often says little (`EINVAL` for a
//! dozen different mistakes); the errors of this crate carry both.

use std::io;

use netlink_packet_core::{ErrorMessage, NLM_F_ACK_TLVS, NLM_F_CAPPED, NlasIterator};

/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// The text of an extended ack, if the kernel sent one. `flags` are those of the
/// `NLMSG_ERROR` message: the error's payload after its code is the request's header, the
/// request's body unless `NLM_F_CAPPED`, then the attributes if `NLM_F_ACK_TLVS`.
pub fn ext_ack_text(flags: u16, err: &ErrorMessage) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(err.header.get(0..4)?.try_into().ok()?) as usize
    };
    let tlvs = err.header.get(echoed.checked_add(3)? & !3..)?;
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
        .filter(|text| !text.is_empty())
}

/// The kernel's explanation of a refusal, with the refusal's errno as its source.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct KernelReason {
    reason: String,
    #[source]
    errno: io::Error,
}

/// The kernel's refusal `err` (answered with `flags`) as an `io::Error`: of the errno's kind,
/// reading as the kernel's reason when it gave one, with the bare errno as its source (so
/// that [`errno_in_chain`](crate::errno_in_chain) finds it).
pub fn refusal_to_io(flags: u16, err: &ErrorMessage) -> io::Error {
    let errno = err.to_io();
    match ext_ack_text(flags, err) {
        Some(reason) => io::Error::new(errno.kind(), KernelReason { reason, errno }),
        None => errno,
    }
}

/// The kernel's reason carried by an error made by this crate, if it gave one.
pub fn kernel_reason(err: &io::Error) -> Option<&str> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<KernelReason>())
        .map(|k| k.reason.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroI32;

    use super::*;

    fn error_message(code: i32, header: Vec<u8>) -> ErrorMessage {
        let mut err = ErrorMessage::default();
        err.code = NonZeroI32::new(code);
        err.header = header;
        err
    }

    fn msg_tlv(text: &str) -> Vec<u8> {
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        let len = 4 + value.len();
        let mut out = (len as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        out.extend_from_slice(&value);
        out.resize(len.next_multiple_of(4), 0);
        out
    }

    #[test]
    fn ext_ack_after_an_echoed_request() {
        // The echoed request: a 16-byte header with nlmsg_len 36 and a 20-byte body.
        let mut header = 36u32.to_ne_bytes().to_vec();
        header.resize(36, 0xAA);
        header.extend(msg_tlv("Invalid handle."));
        let err = error_message(-libc::EINVAL, header);
        assert_eq!(
            ext_ack_text(NLM_F_ACK_TLVS, &err).as_deref(),
            Some("Invalid handle.")
        );
        assert_eq!(ext_ack_text(0, &err), None);
    }

    #[test]
    fn ext_ack_after_a_capped_request() {
        let mut header = 999u32.to_ne_bytes().to_vec();
        header.resize(16, 0);
        header.extend(msg_tlv(
            "quantum of class 10002 is big. Consider r2q change.",
        ));
        let err = error_message(-libc::EINVAL, header);
        assert_eq!(
            ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &err).as_deref(),
            Some("quantum of class 10002 is big. Consider r2q change.")
        );
    }

    #[test]
    fn ext_ack_never_panics_on_short_payloads() {
        for len in 0..40 {
            let err = error_message(-1, vec![0xFF; len]);
            let _ = ext_ack_text(NLM_F_ACK_TLVS, &err);
            let _ = ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &err);
        }
    }

    #[test]
    fn a_refusal_reads_as_the_reason_and_keeps_its_errno() {
        let mut header = 16u32.to_ne_bytes().to_vec();
        header.resize(16, 0);
        header.extend(msg_tlv("Exclusivity flag on, cannot modify"));
        let err = refusal_to_io(NLM_F_ACK_TLVS, &error_message(-libc::EEXIST, header));
        assert_eq!(err.to_string(), "Exclusivity flag on, cannot modify");
        assert_eq!(
            kernel_reason(&err),
            Some("Exclusivity flag on, cannot modify")
        );
        assert_eq!(crate::errno_in_chain(&err), Some(libc::EEXIST));
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            crate::error_chain(&err),
            format!(
                "Exclusivity flag on, cannot modify: {}",
                io::Error::from_raw_os_error(libc::EEXIST)
            )
        );

        let bare = refusal_to_io(NLM_F_ACK_TLVS, &error_message(-libc::ENODEV, vec![0; 16]));
        assert_eq!(bare.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(kernel_reason(&bare), None);
    }
}
