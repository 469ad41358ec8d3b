//! vhost-net on the real device, where the kernel has it.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{os::fd::AsFd, path::Path};

use sandbox_net_netns::{
    VHOST_NET_F_VIRTIO_NET_HDR, VHOST_NET_PATH, open_vhost_net, skip_if_unsupported,
    testing::require_root, vhost_features,
};

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn opens_real_vhost_net_queues_and_they_answer_as_vhost_net() {
    require_root();
    for queues in [1, 4] {
        let fds = skip_if_unsupported!(
            open_vhost_net(Path::new(VHOST_NET_PATH), queues),
            "vhost-net",
            libc::ENOENT
        )
        .unwrap();
        assert_eq!(fds.len(), queues);
        for fd in &fds {
            let features = vhost_features(fd.as_fd()).unwrap();
            assert_ne!(
                features & VHOST_NET_F_VIRTIO_NET_HDR,
                0,
                "features {features:#x} of a /dev/vhost-net descriptor"
            );
        }
    }
}
