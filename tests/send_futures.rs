//! The library's public futures are `Send`: a shim may drive them on a multi-threaded runtime
//! (`tokio::spawn`). This is a compile-time check: if one of them holds something that is not
//! `Send` across an await (a lock guard, an `Rc`, a raw fd wrapper), this file stops compiling.

use sandbox_net::{
    AttachOptions, Endpoint, EndpointId, IfName, MacAddr, Network, Plug, ReopenOptions, Sandbox,
    endpoints::testing::StandInVmm,
};

/// Takes a future without running it and proves it `Send`.
fn send<T: Send>(_: T) {}

/// Never called: building the futures is the check.
#[allow(dead_code, clippy::too_many_arguments)]
fn every_public_future_is_send(
    mut network: Network,
    mut sandbox: Sandbox,
    vmm: &StandInVmm,
    ids: &[EndpointId],
    id: &EndpointId,
    names: &[IfName],
    name: IfName,
    mac: MacAddr,
    endpoint: Endpoint,
    options: &AttachOptions,
    reopen: &ReopenOptions,
) {
    send(network.add_endpoints(vmm, None));
    send(network.remove_endpoints(vmm, Some(ids)));
    send(network.hot_add(vmm, Some(names)));
    send(network.hot_add_tap(vmm, name, mac, 1500));
    send(network.reopen_devices(reopen));
    send(network.hot_remove(vmm, id));
    send(network.check());
    send(network.run(|| 1));
    send(sandbox.attach(endpoint, vmm, options, Plug::Cold));
    send(sandbox.detach(id, vmm, options, Plug::Cold));
    send(sandbox.check());
    send(sandbox.teardown(options));
    send(sandbox.set_owner(None));
    send(sandbox.commit());
    send(sandbox.save());
    send(sandbox.forget());
    send(network.set_owner(None));
    send(network.teardown());
}

#[test]
fn the_library_futures_are_send() {
    // The proof is that this file compiles; the test names it in the suite's output.
    let _ = every_public_future_is_send;
}
