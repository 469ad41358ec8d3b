//! A minimal shim: the smallest program that uses sandbox-net the way a container-runtime shim
//! does, with the library alone (`default-features = false`).
//!
//! `minimal-shim NETNS STATE` attaches every interface of the pod namespace NETNS (a name under
//! /run/netns or a path) to a VMM stand-in that keeps the devices it is given, prints what the
//! VMM got, and tears the sandbox down again from its state file STATE, as a restarted shim
//! would. A real shim would pass the queue descriptors to its VMM instead of keeping them.

use std::{process::ExitCode, sync::Mutex};

use sandbox_net::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
    Netns, NetnsSource, Network, NetworkConfig,
};

/// A VMM that is not started yet: it keeps each device until the VM would boot.
#[derive(Debug, Default)]
struct KeepingVmm {
    devices: Mutex<Vec<NetDevice>>,
}

impl KeepingVmm {
    fn keep(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let mut devices = self.devices.lock().map_err(|_| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason: "the device list is poisoned".into(),
        })?;
        devices.push(device);
        Ok(())
    }
}

impl Hypervisor for KeepingVmm {
    fn capabilities(&self) -> Capabilities {
        // Like QEMU: several queue pairs per device, no rate limiter of its own.
        Capabilities {
            multi_queue: true,
            rate_limiter: false,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: 2,
            // The build machines may have no /dev/vhost-net; a real shim keeps the default.
            disable_vhost_net: true,
            ..HypervisorConfig::default()
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.keep(device)
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.keep(device)
    }

    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        if let Ok(mut devices) = self.devices.lock() {
            devices.retain(|device| &device.endpoint != endpoint);
        }
        Ok(())
    }
}

async fn run(netns: &str, state: &str) -> Result<(), Box<dyn std::error::Error>> {
    let vmm = KeepingVmm::default();
    let netns = Netns::open_path_or_name(netns)?;
    let mut network = Network::create(
        state,
        "minimal-shim",
        NetnsSource::Given(netns),
        NetworkConfig::default(),
    )?;
    let (ids, skipped) = network.add_endpoints(&vmm, None).await?;
    println!(
        "attached {} endpoint(s), skipped {}",
        ids.len(),
        skipped.len()
    );
    for device in vmm.devices.lock().map_err(|_| "poisoned")?.iter() {
        let queues = match &device.backend {
            Backend::Tap { queues, .. } | Backend::Macvtap { queues, .. } => queues.len(),
            Backend::VhostUser { .. } | Backend::Vfio { .. } => 0,
        };
        println!(
            "  {} mac {} mtu {} queue descriptors {}",
            device.guest_name, device.mac, device.mtu, queues
        );
    }
    // The shim restarts: everything needed is in the state file.
    drop(network);
    Network::restore(state, NetworkConfig::default())?
        .teardown()
        .await?;
    println!("torn down from {state}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, netns, state] = args.as_slice() else {
        eprintln!("usage: minimal-shim NETNS STATE");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(netns, state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
