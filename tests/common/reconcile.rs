//! Shared pieces of the reconcile tests: the sandboxes they leave behind and the owners
//! they name.

use std::{
    fs,
    path::Path,
    process::{Child, Command},
};

use sandbox_net::{
    Owner, Plug, Sandbox,
    reconcile::{Outcome, ReconcileReport},
};
use sandbox_net_endpoints::{AttachOptions, testing::StandInVmm};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::Netns;

use super::{endpoints, keeping_vmm, options};

/// What every sandbox of these tests is: eth0 with tcfilter, eth1 with macvtap, both with
/// rx/tx limits (HTB on the tap or macvtap, an IFB each), persistent taps. Returns the
/// sandbox and the stand-in VMM that holds the queue descriptors (a tap loses its carrier,
/// some time later, when they close).
pub async fn attach_pod(netns: &Netns, state: &Path) -> (Sandbox, StandInVmm) {
    attach_pod_with(netns, state, options).await
}

/// [`attach_pod`] with the attach options `options` makes for each model.
pub async fn attach_pod_with(
    netns: &Netns,
    state: &Path,
    options: impl Fn(InterworkingModel) -> AttachOptions,
) -> (Sandbox, StandInVmm) {
    let mut sandbox = Sandbox::create(
        state,
        "reconcile-test",
        netns.clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let vmm = attach_pod_to(&mut sandbox, netns, options).await;
    (sandbox, vmm)
}

/// Attaches the endpoints of [`attach_pod`] to `sandbox`, a sandbox just created for `netns`.
pub async fn attach_pod_to(
    sandbox: &mut Sandbox,
    netns: &Netns,
    options: impl Fn(InterworkingModel) -> AttachOptions,
) -> StandInVmm {
    let vmm = keeping_vmm(10_000_000, 20_000_000);
    let models = [InterworkingModel::TcFilter, InterworkingModel::Macvtap];
    for (endpoint, model) in endpoints(netns).await.into_iter().zip(models) {
        sandbox
            .attach(endpoint, &vmm, &options(model), Plug::Cold)
            .await
            .unwrap();
    }
    vmm
}

/// A sandbox created at `state` for `netns` whose endpoints are all attached in one batch with
/// tcfilter ([`attach_pod_batch_to`]), and the stand-in VMM holding their queues.
pub async fn attach_pod_batch(netns: &Netns, state: &Path) -> (Sandbox, StandInVmm) {
    let mut sandbox = Sandbox::create(
        state,
        "batch-test",
        netns.clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let options = options(InterworkingModel::TcFilter);
    let vmm = attach_pod_batch_to(&mut sandbox, netns, &options).await;
    (sandbox, vmm)
}

/// Attaches every endpoint of `netns` to `sandbox` in one batch with `options` (tcfilter in
/// the tests), with the rx/tx limits of [`attach_pod`].
pub async fn attach_pod_batch_to(
    sandbox: &mut Sandbox,
    netns: &Netns,
    options: &AttachOptions,
) -> StandInVmm {
    let vmm = keeping_vmm(10_000_000, 20_000_000);
    sandbox
        .attach_batch(endpoints(netns).await, &vmm, options)
        .await
        .unwrap();
    vmm
}

/// A process to name as an owner, killed (and waited for) when dropped.
pub struct OwnerProcess(Child);

impl OwnerProcess {
    pub fn start() -> Self {
        Self(Command::new("sleep").arg("1000").spawn().unwrap())
    }

    pub fn owner(&self) -> Owner {
        Owner::of_pid(self.0.id()).unwrap()
    }
}

impl Drop for OwnerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The owner of a process that ran and exited (a VMM that is gone).
pub fn dead_owner() -> Owner {
    let process = OwnerProcess::start();
    let owner = process.owner();
    drop(process);
    owner
}

/// The files under `dir` whose names start with `prefix`.
pub fn files_of(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) || n.starts_with(&format!(".{prefix}")))
        .collect();
    names.sort();
    names
}

/// Runs `f` over `items` on a few threads at once (processes and `ip` commands dominate).
pub fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(8).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// The outcome reported for `file`.
pub fn outcome_of<'a>(report: &'a ReconcileReport, file: &Path) -> &'a Outcome {
    &report
        .sandboxes
        .iter()
        .find(|s| s.file == file)
        .unwrap_or_else(|| panic!("no report for {}: {report:#?}", file.display()))
        .outcome
}
