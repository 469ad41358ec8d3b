//! Reconcile: after crashes and restarts, adopt or reap every sandbox of a state directory.
//!
//! For every state document under a directory, by the owner it records
//! ([`sandbox_net_persist::Owner`]: pid and start time):
//!
//! - **owner gone** (an attach or detach that died half way, a shim or VMM that exited): the
//!   sandbox is reaped: torn down from its record (the pod's configuration restored, what
//!   sandbox-net made deleted), its state removed. A namespace that is gone took what was in
//!   it along; what lies outside it (PCI functions bound to vfio-pci) is still given back, and
//!   the report says how many recorded steps went with the namespace.
//! - **owner alive**: the kernel is checked against the record and the drift reported;
//!   nothing is changed.
//! - **no owner** (nobody was named, or a document older than owners): kept and reported as
//!   unowned, or reaped when asked for.
//! - **locked** (an attach or detach under way in a live process): left alone, reported busy.
//! - **unreadable** (a foreign file, a newer schema, a namespace path that now holds another
//!   namespace, an owner in another pid namespace): reported by name and left alone.
//!
//! Sandboxes are handled in parallel, each on a worker thread of its own with its own
//! netlink connections, at most [`ReconcileOptions::concurrency`] at once. Deleting links
//! makes the kernel wait for an RCU grace period (tens of milliseconds) in the thread that
//! sent the request; each sandbox's links go in one request (their device group), and the
//! waits of concurrent workers overlap, so a batch of sandboxes pays about one wait, not one
//! per sandbox.
//!
//! Files of the store itself (locks, journals, temporary files of saves) are not documents. A
//! temporary file a crash left behind, and a journal or lock file whose document is gone, are
//! removed once their document's lock is taken.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use sandbox_net_endpoints::{AttachOptions, physical::SysfsPci};
use sandbox_net_interworking::TapOptions;
use sandbox_net_persist::{
    Liveness, Owner,
    endpoint::EndpointId,
    state::parse_document,
    store::{StateStore, StoreError, StoreFile},
};
use serde::Serialize;

use crate::{
    error_chain,
    sandbox::{Sandbox, SandboxError},
};

/// How [`reconcile`] runs.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Report what would be done; change nothing (no teardown, no file removed).
    pub dry_run: bool,
    /// Reap sandboxes that record no owner, too.
    pub reap_unowned: bool,
    /// How many sandboxes are handled at once (at least 1).
    pub concurrency: usize,
    /// Where PCI functions bound to vfio-pci are given back (`SysfsPci::host()`).
    pub sysfs: SysfsPci,
    /// Act on sandboxes recorded in the host's own namespace (refused otherwise).
    pub host_netns: bool,
    /// Fault points of the teardowns (feature `fault-injection`, for tests).
    #[cfg(feature = "fault-injection")]
    pub hooks: sandbox_net_interworking::ApplyHooks,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            reap_unowned: false,
            concurrency: DEFAULT_CONCURRENCY,
            sysfs: SysfsPci::host(),
            host_netns: false,
            #[cfg(feature = "fault-injection")]
            hooks: sandbox_net_interworking::ApplyHooks::default(),
        }
    }
}

/// Sandboxes handled at once by default: enough for the grace periods of link deletions to
/// overlap, few enough that netlink sockets and threads stay cheap.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// The directory itself cannot be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// It does not exist.
    #[error("state directory {dir} does not exist")]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// It is not a directory.
    #[error("{dir} is not a directory")]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// It cannot be listed.
    #[error("cannot list the state directory {dir}")]
    List {
        /// The directory (or a subdirectory).
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What reconcile found in one state file and did with it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    /// The state file.
    pub file: PathBuf,
    /// The sandbox's id, when the file could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The owner it records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// What was found and done.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The outcome for one state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Torn down from the record and its state removed.
    Reaped {
        /// Why it was reaped (how the owner is known to be gone, or that it had none).
        why: String,
        /// Endpoints recorded.
        endpoints: usize,
        /// Whether its namespace was already gone.
        namespace_gone: bool,
        /// Recorded netlink steps that went with the namespace (not undone: nothing is left
        /// of them to undo; a VFIO binding, in sysfs, is undone all the same).
        steps_gone_with_namespace: usize,
    },
    /// Would be reaped (dry run).
    WouldReap {
        /// Why.
        why: String,
        /// Endpoints recorded.
        endpoints: usize,
    },
    /// Owner alive; the kernel matches the record.
    AliveClean {
        /// Endpoints recorded.
        endpoints: usize,
    },
    /// Owner alive; the kernel differs from the record (nothing was changed).
    AliveDrift {
        /// Every difference.
        drifts: Vec<DriftReport>,
    },
    /// No owner recorded: kept.
    Unowned {
        /// Endpoints recorded.
        endpoints: usize,
    },
    /// Locked by a live process (an attach or detach under way): left alone.
    Busy,
    /// Not acted on: the reason names the file and what is wrong.
    Refused {
        /// Why.
        error: String,
    },
    /// Reaped only in part: the state file stays, with what is left, for another try.
    Left {
        /// Why it was being reaped.
        why: String,
        /// Every failure.
        errors: Vec<String>,
    },
}

/// One difference between the kernel and a live sandbox's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// The step, described.
    pub step: String,
    /// What the step made.
    pub expected: String,
    /// What the kernel has.
    pub found: String,
}

impl DriftReport {
    /// The report of one drift of `endpoint`, as `check` returns it.
    pub fn new(endpoint: EndpointId, drift: sandbox_net_interworking::Drift) -> Self {
        Self {
            endpoint,
            step: drift.step,
            expected: drift.expected,
            found: drift.found,
        }
    }
}

/// How many state files ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Reaped.
    pub reaped: usize,
    /// Would be reaped (dry run).
    pub would_reap: usize,
    /// Owner alive, kernel as recorded.
    pub alive_clean: usize,
    /// Owner alive, kernel differs.
    pub alive_drift: usize,
    /// No owner: kept.
    pub unowned: usize,
    /// Locked by a live process.
    pub busy: usize,
    /// Not acted on.
    pub refused: usize,
    /// Reaped in part.
    pub left: usize,
}

/// Everything reconcile found and did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// The state directory.
    pub dir: PathBuf,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One report per state file (and per file that is not one), by path.
    pub sandboxes: Vec<SandboxReport>,
    /// Files of the store left by crashes and removed (temporary files of saves, journals and
    /// lock files whose document was gone).
    pub removed_leftovers: Vec<PathBuf>,
    /// The counts.
    pub summary: Summary,
}

impl ReconcileReport {
    /// Whether everything was handled: nothing refused, nothing left half reaped.
    pub fn complete(&self) -> bool {
        self.summary.refused == 0 && self.summary.left == 0
    }
}

impl Summary {
    fn count(outcomes: &[SandboxReport]) -> Self {
        let mut summary = Self::default();
        for report in outcomes {
            let slot = match report.outcome {
                Outcome::Reaped { .. } => &mut summary.reaped,
                Outcome::WouldReap { .. } => &mut summary.would_reap,
                Outcome::AliveClean { .. } => &mut summary.alive_clean,
                Outcome::AliveDrift { .. } => &mut summary.alive_drift,
                Outcome::Unowned { .. } => &mut summary.unowned,
                Outcome::Busy => &mut summary.busy,
                Outcome::Refused { .. } => &mut summary.refused,
                Outcome::Left { .. } => &mut summary.left,
            };
            *slot += 1;
        }
        summary
    }
}

/// Reconciles every sandbox whose state lies under `dir` (subdirectories included; symbolic
/// links are not followed): see the module documentation. Fails only when `dir` itself
/// cannot be listed; every file's own trouble is in its report.
#[tracing::instrument(name = "network.reconcile", skip_all, fields(dir = %dir.as_ref().display(), dry_run = options.dry_run), err)]
pub async fn reconcile(
    dir: impl AsRef<Path>,
    options: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let dir = dir.as_ref().to_path_buf();
    let listing = Listing::of(&dir)?;
    let mut sandboxes = listing.refused.clone();
    let mut removed_leftovers = Vec::new();
    let jobs: Vec<Job> = listing
        .documents
        .iter()
        .map(|doc| Job::Document {
            file: doc.clone(),
            temporaries: listing.temporaries.get(doc).cloned().unwrap_or_default(),
        })
        .chain(
            listing
                .orphans()
                .map(|(doc, files)| Job::Orphans { doc, files }),
        )
        .collect();
    for (report, removed) in run_parallel(jobs, options).await {
        sandboxes.extend(report);
        removed_leftovers.extend(removed);
    }
    sandboxes.sort_by(|a, b| a.file.cmp(&b.file));
    removed_leftovers.sort();
    let summary = Summary::count(&sandboxes);
    tracing::info!(?summary, "reconciled");
    Ok(ReconcileReport {
        dir,
        dry_run: options.dry_run,
        sandboxes,
        removed_leftovers,
        summary,
    })
}

/// The files under a state directory, sorted out by what they are to the store.
#[derive(Debug, Default)]
struct Listing {
    documents: BTreeSet<PathBuf>,
    journals: BTreeSet<PathBuf>,
    /// The documents of the lock files found.
    locks: BTreeSet<PathBuf>,
    temporaries: BTreeMap<PathBuf, Vec<PathBuf>>,
    refused: Vec<SandboxReport>,
}

impl Listing {
    fn of(dir: &Path) -> Result<Self, ReconcileError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            // A link to a directory is followed for the directory given, never below it.
            Ok(m) if m.file_type().is_symlink() && dir.is_dir() => {}
            Ok(_) => {
                return Err(ReconcileError::NotADirectory {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReconcileError::Missing {
                    dir: dir.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(ReconcileError::List {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
        let mut listing = Self::default();
        listing.walk(dir)?;
        Ok(listing)
    }

    fn walk(&mut self, dir: &Path) -> Result<(), ReconcileError> {
        let list_error = |source| ReconcileError::List {
            dir: dir.to_path_buf(),
            source,
        };
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let path = entry.path();
            let kind = entry.file_type().map_err(list_error)?;
            if kind.is_dir() {
                self.walk(&path)?;
                continue;
            }
            let store_file = StoreFile::of(&path);
            if !kind.is_file() {
                let what = if kind.is_symlink() {
                    "a symbolic link (not followed)"
                } else {
                    "not a regular file"
                };
                self.refuse(&path, format!("{}: {what}; left alone", path.display()));
                continue;
            }
            match store_file {
                StoreFile::Document => {
                    self.documents.insert(path);
                }
                StoreFile::Journal(doc) => {
                    self.journals.insert(doc);
                }
                StoreFile::Lock(doc) => {
                    self.locks.insert(doc);
                }
                StoreFile::Temporary(Some(doc)) => {
                    self.temporaries.entry(doc).or_default().push(path);
                }
                StoreFile::Temporary(None) => self.refuse(
                    &path,
                    format!(
                        "{}: a temporary file of an older sandbox-net's save, which cannot be \
                         told to be stale; left alone (remove it when no older sandbox-net runs)",
                        path.display()
                    ),
                ),
            }
        }
        Ok(())
    }

    fn refuse(&mut self, path: &Path, error: String) {
        self.refused.push(SandboxReport {
            file: path.to_path_buf(),
            sandbox_id: None,
            owner: None,
            outcome: Outcome::Refused { error },
        });
    }

    /// The store's files whose document is gone (journals, lock files and temporary files), by
    /// document. A lock file is one when a teardown was killed between removing the document
    /// and removing its lock.
    fn orphans(&self) -> impl Iterator<Item = (PathBuf, Vec<PathBuf>)> + '_ {
        let mut orphans: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        for doc in self
            .journals
            .iter()
            .filter(|d| !self.documents.contains(*d))
        {
            let mut journal = doc.as_os_str().to_os_string();
            journal.push(".journal");
            orphans
                .entry(doc.clone())
                .or_default()
                .push(PathBuf::from(journal));
        }
        for doc in self.locks.iter().filter(|d| !self.documents.contains(*d)) {
            let mut lock = doc.as_os_str().to_os_string();
            lock.push(".lock");
            orphans
                .entry(doc.clone())
                .or_default()
                .push(PathBuf::from(lock));
        }
        for (doc, temporaries) in &self.temporaries {
            if !self.documents.contains(doc) {
                orphans
                    .entry(doc.clone())
                    .or_default()
                    .extend(temporaries.iter().cloned());
            }
        }
        orphans.into_iter()
    }
}

/// One unit of work.
#[derive(Debug)]
enum Job {
    /// A document, and temporary files of its saves found next to it.
    Document {
        file: PathBuf,
        temporaries: Vec<PathBuf>,
    },
    /// Files of the store whose document is gone.
    Orphans { doc: PathBuf, files: Vec<PathBuf> },
}

/// What one job produced: a report (none for leftovers removed quietly), and the files removed.
type JobResult = (Option<SandboxReport>, Vec<PathBuf>);

/// Runs `jobs` on at most `options.concurrency` worker threads, each with a current-thread
/// runtime of its own: a teardown blocks its thread while the kernel waits for a grace period
/// and while the state is synced to disk, and must not hold up the others (nor the caller's
/// runtime).
async fn run_parallel(jobs: Vec<Job>, options: &ReconcileOptions) -> Vec<JobResult> {
    let total = jobs.len();
    if total == 0 {
        return Vec::new();
    }
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let workers = options.concurrency.clamp(1, total);
    let span = tracing::Span::current();
    for n in 0..workers {
        let (jobs, next, sender, options, span) = (
            Arc::clone(&jobs),
            Arc::clone(&next),
            sender.clone(),
            options.clone(),
            span.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("reconcile-{n}"))
            .spawn(move || {
                let _entered = span.enter();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "reconcile worker without a runtime");
                        return;
                    }
                };
                loop {
                    let at = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(at) else { break };
                    let result = runtime.block_on(run_job(job, &options));
                    if sender.send((at, result)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "a reconcile worker thread could not start");
        }
    }
    drop(sender);
    let mut results: Vec<Option<JobResult>> = (0..total).map(|_| None).collect();
    while let Some((at, result)) = receiver.recv().await {
        results[at] = Some(result);
    }
    // A job no worker finished (its thread could not start, or died) is reported, not lost.
    results
        .into_iter()
        .zip(jobs.iter())
        .map(|(result, job)| {
            result.unwrap_or_else(|| {
                let file = match job {
                    Job::Document { file, .. } => file.clone(),
                    Job::Orphans { doc, .. } => doc.clone(),
                };
                let error = format!("{}: not examined (its worker failed)", file.display());
                (
                    Some(SandboxReport {
                        file,
                        sandbox_id: None,
                        owner: None,
                        outcome: Outcome::Refused { error },
                    }),
                    Vec::new(),
                )
            })
        })
        .collect()
}

async fn run_job(job: &Job, options: &ReconcileOptions) -> JobResult {
    match job {
        Job::Document { file, temporaries } => {
            let mut removed = Vec::new();
            let report = examine(file, temporaries, options, &mut removed).await;
            tracing::info!(file = %file.display(), outcome = ?report.outcome, "reconciled sandbox");
            (Some(report), removed)
        }
        Job::Orphans { doc, files } => remove_orphans(doc, files, options),
    }
}

/// Reconciles the sandbox whose state is `file`.
async fn examine(
    file: &Path,
    temporaries: &[PathBuf],
    options: &ReconcileOptions,
    removed: &mut Vec<PathBuf>,
) -> SandboxReport {
    let mut report = SandboxReport {
        file: file.to_path_buf(),
        sandbox_id: None,
        owner: None,
        outcome: Outcome::Busy,
    };
    // Read before anything else: a file that is not a state document gets no lock file
    // next to it, and is reported as it is.
    let sniffed = match fs::read(file) {
        Ok(bytes) => parse_document(&bytes).map_err(|source| StoreError::Document {
            path: file.to_path_buf(),
            source,
        }),
        Err(source) => Err(StoreError::Io {
            op: "read",
            path: file.to_path_buf(),
            source,
        }),
    };
    if let Err(e) = sniffed {
        report.outcome = refused(&e);
        return report;
    }
    let mut sandbox = match Sandbox::restore(file) {
        Ok((sandbox, warnings)) => {
            for warning in warnings {
                tracing::warn!(file = %file.display(), %warning, "state file");
            }
            sandbox
        }
        Err(SandboxError::Store(StoreError::Locked { .. })) => return report,
        Err(e) => {
            report.outcome = refused(&e);
            return report;
        }
    };
    report.sandbox_id = Some(sandbox.state().sandbox_id.clone());
    report.owner = sandbox.owner().cloned();
    if !options.dry_run {
        for temporary in temporaries {
            match sandbox.store().remove_stale_temporary(temporary) {
                Ok(true) => removed.push(temporary.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "stale temporary file not removed"),
            }
        }
    }
    if !options.host_netns
        && let Some(netns) = sandbox.netns()
        && netns.is_host()
    {
        report.outcome = Outcome::Refused {
            error: format!(
                "{}: the sandbox is recorded in the host's own namespace ({}); left alone \
                 unless the host namespace is asked for",
                file.display(),
                netns.path().display()
            ),
        };
        return report;
    }
    let endpoints = sandbox.state().endpoints.len();
    let why = match sandbox.owner().map(Owner::liveness) {
        None if options.reap_unowned => "it has no owner, and unowned sandboxes are reaped".into(),
        None => {
            report.outcome = Outcome::Unowned { endpoints };
            return report;
        }
        Some(Liveness::Unknown(why)) => {
            report.outcome = Outcome::Refused {
                error: format!(
                    "{}: cannot tell whether its owner runs: {why}",
                    file.display()
                ),
            };
            return report;
        }
        Some(Liveness::Alive) => {
            report.outcome = check(&sandbox, file).await;
            return report;
        }
        Some(Liveness::Gone(why)) => why,
    };
    if options.dry_run {
        report.outcome = Outcome::WouldReap { why, endpoints };
        return report;
    }
    report.outcome = reap(&mut sandbox, why, options).await;
    if matches!(report.outcome, Outcome::Reaped { .. })
        && let Err(e) = sandbox.forget().await
    {
        report.outcome = Outcome::Left {
            why: "the sandbox was torn down".into(),
            errors: vec![error_chain(&e)],
        };
    }
    report
}

/// A live sandbox: compared with the kernel, nothing changed.
async fn check(sandbox: &Sandbox, file: &Path) -> Outcome {
    match sandbox.check().await {
        Ok(drifts) if drifts.is_empty() => Outcome::AliveClean {
            endpoints: sandbox.state().endpoints.len(),
        },
        Ok(drifts) => Outcome::AliveDrift {
            drifts: drifts
                .into_iter()
                .map(|(endpoint, drift)| DriftReport::new(endpoint, drift))
                .collect(),
        },
        Err(e) => Outcome::Refused {
            error: format!(
                "{}: cannot check the live sandbox: {}",
                file.display(),
                error_chain(&e)
            ),
        },
    }
}

/// Tears the sandbox down from its record (the state is removed by the caller).
async fn reap(sandbox: &mut Sandbox, why: String, options: &ReconcileOptions) -> Outcome {
    let state = sandbox.state();
    let endpoints = state.endpoints.len();
    let namespace_gone = sandbox.netns().is_none();
    let steps_gone_with_namespace = if namespace_gone {
        // A PCI function's binding is in sysfs, not the namespace: it is still undone.
        state
            .endpoints
            .iter()
            .flat_map(|e| &e.steps)
            .filter(|s| !s.is_sysfs())
            .count()
    } else {
        0
    };
    let attach = AttachOptions {
        model: state.model,
        tap: TapOptions::default(),
        sysfs: options.sysfs.clone(),
        #[cfg(feature = "fault-injection")]
        hooks: options.hooks,
        link_group: None,
    };
    match sandbox.teardown(&attach).await {
        Ok(()) => Outcome::Reaped {
            why,
            endpoints,
            namespace_gone,
            steps_gone_with_namespace,
        },
        Err(SandboxError::Teardown { failures, .. }) => Outcome::Left {
            why,
            errors: failures.iter().map(|f| error_chain(f)).collect(),
        },
        Err(e) => Outcome::Left {
            why,
            errors: vec![error_chain(&e)],
        },
    }
}

/// Removes the journal, lock and temporary files of a document that no longer exists (a
/// teardown cut short after removing it, or a first save cut short before it was made), under
/// its lock.
fn remove_orphans(doc: &Path, files: &[PathBuf], options: &ReconcileOptions) -> JobResult {
    if options.dry_run {
        return (None, Vec::new());
    }
    let store = match StateStore::open(doc) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => return (None, Vec::new()),
        Err(e) => {
            tracing::warn!(error = %e, "leftovers of a removed state not cleaned");
            return (None, Vec::new());
        }
    };
    if store.exists() {
        // Written since the directory was listed: not an orphan.
        return (None, Vec::new());
    }
    let mut removed = Vec::new();
    for file in files {
        match StoreFile::of(file) {
            StoreFile::Temporary(_) => match store.remove_stale_temporary(file) {
                Ok(true) => removed.push(file.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "stale temporary file not removed"),
            },
            _ => removed.push(file.clone()),
        }
    }
    // Removes the journal, and the lock this took.
    if let Err(e) = store.remove() {
        tracing::warn!(error = %e, "journal of a removed state not removed");
        removed.retain(|f| !matches!(StoreFile::of(f), StoreFile::Journal(_) | StoreFile::Lock(_)));
    }
    (None, removed)
}

fn refused(e: &(dyn std::error::Error + 'static)) -> Outcome {
    Outcome::Refused {
        error: error_chain(e),
    }
}
