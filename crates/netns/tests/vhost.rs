//! vhost-net on the real device, where the kernel has it.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use sandbox_net_netns::{
    VHOST_NET_PATH, open_vhost_net, skip_if_unsupported, testing::require_root,
};

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn opens_real_vhost_net_queues() {
    require_root();
    let fds = skip_if_unsupported!(
        open_vhost_net(Path::new(VHOST_NET_PATH), 2),
        "vhost-net",
        libc::ENOENT
    );
    assert_eq!(fds.unwrap().len(), 2);
}
