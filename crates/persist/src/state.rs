//! The state document of one sandbox: everything teardown needs, and nothing it must guess.
//!
//! One JSON document per sandbox, `schema_version` first. Fields added after version 1 carry
//! `#[serde(default)]`, so older documents keep loading; a document from a newer version is
//! refused, because dropping what it says could leak kernel objects. An endpoint of a kind this
//! version does not know is kept aside, verbatim, and written back unchanged.
//!
//! Versions: 1, the first; 2 adds the sandbox's `owner` (a version 1 document has none) and
//! journal lines that record a change of owner.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    MacAddr, NetnsId,
    endpoint::{EndpointId, EndpointKind},
    owner::Owner,
    pci::PciAddress,
    scan::Interface,
    steps::{InterworkingModel, Step},
};

/// The version this code writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 2;

/// The namespace a sandbox lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRecord {
    /// Its path (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount).
    pub path: PathBuf,
    /// Its identity when recorded: a path that now holds another namespace is refused.
    pub id: NetnsId,
    /// Whether this module created it (and so deletes it at teardown).
    pub created_by_us: bool,
}

/// Everything recorded of one endpoint.
///
/// Records written before the VFIO binding became a step ([`Step::BindVfio`]) carry it in a
/// field of its own, `vfio`; it is read as that step, first among the steps (the binding was
/// made before anything else), so that teardown gives the function back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredEndpointRecord")]
pub struct EndpointRecord {
    /// Its own id.
    pub id: EndpointId,
    /// Its index (names `tap{index}_kata`).
    pub index: u32,
    /// Its kind.
    pub kind: EndpointKind,
    /// The interworking model it was attached with, when it has a pair.
    #[serde(default)]
    pub model: Option<InterworkingModel>,
    /// The pod interface as scanned before attaching: names, MAC, MTU, addresses, routes and
    /// neighbours.
    pub interface: Interface,
    /// The MAC the guest got.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// Queue pairs the device was given.
    #[serde(default)]
    pub queues: u32,
    /// Host-side limit into the VM, bits/s (0: none).
    #[serde(default)]
    pub rx_rate_bits: u64,
    /// Host-side limit out of the VM, bits/s (0: none).
    #[serde(default)]
    pub tx_rate_bits: u64,
    /// The PCI address of a physical endpoint.
    #[serde(default)]
    pub pci: Option<String>,
    /// The vhost-user socket of a vhost-user endpoint.
    #[serde(default)]
    pub vhost_user_socket: Option<PathBuf>,
    /// Every kernel change of the attach (netlink in the pod's namespace, or a PCI function's
    /// binding in sysfs), recorded before it was applied, with the values it overwrites.
    /// Undoing them in reverse is the teardown.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Whether the attach completed (false: it was under way, or failed, when recorded).
    #[serde(default)]
    pub attached: bool,
}

/// An [`EndpointRecord`] as documents and journal lines hold it, in this version's format or
/// an earlier one's.
#[derive(Deserialize)]
struct StoredEndpointRecord {
    id: EndpointId,
    index: u32,
    kind: EndpointKind,
    #[serde(default)]
    model: Option<InterworkingModel>,
    interface: Interface,
    #[serde(default)]
    guest_mac: Option<MacAddr>,
    #[serde(default)]
    queues: u32,
    #[serde(default)]
    rx_rate_bits: u64,
    #[serde(default)]
    tx_rate_bits: u64,
    #[serde(default)]
    pci: Option<String>,
    #[serde(default)]
    vhost_user_socket: Option<PathBuf>,
    #[serde(default)]
    steps: Vec<Step>,
    /// The VFIO binding, as earlier versions recorded it.
    #[serde(default)]
    vfio: Option<StoredVfioBinding>,
    #[serde(default)]
    attached: bool,
}

/// A PCI function bound to vfio-pci, as earlier versions recorded it (`vfio`).
#[derive(Deserialize)]
struct StoredVfioBinding {
    bdf: String,
    original_driver: Option<String>,
    original_override: Option<String>,
}

impl TryFrom<StoredEndpointRecord> for EndpointRecord {
    type Error = String;

    fn try_from(r: StoredEndpointRecord) -> Result<Self, Self::Error> {
        let mut steps = r.steps;
        if let Some(vfio) = r.vfio {
            let bdf = vfio
                .bdf
                .parse::<PciAddress>()
                .map_err(|e| format!("endpoint {}: recorded vfio.bdf: {e}", r.id))?;
            let step = Step::BindVfio {
                bdf,
                original_driver: vfio.original_driver,
                original_override: vfio.original_override,
            };
            if !steps.contains(&step) {
                steps.insert(0, step);
            }
        }
        Ok(Self {
            id: r.id,
            index: r.index,
            kind: r.kind,
            model: r.model,
            interface: r.interface,
            guest_mac: r.guest_mac,
            queues: r.queues,
            rx_rate_bits: r.rx_rate_bits,
            tx_rate_bits: r.tx_rate_bits,
            pci: r.pci,
            vhost_user_socket: r.vhost_user_socket,
            steps,
            attached: r.attached,
        })
    }
}

/// A CNI network run into the sandbox's namespace by sandbox-net (the runtime side): what
/// teardown needs to run the chain's DEL, in this process or a later one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRecord {
    /// The network configuration (a conflist, or one plugin's configuration), as given.
    pub config: Value,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// The directories the plugins were found in (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// The namespace the plugins ran in, when not the caller's (a node namespace).
    #[serde(default)]
    pub node_netns: Option<PathBuf>,
    /// ADD's final result, in the configuration's version; `None` while ADD is under way (a
    /// record written before ADD, so that a crash during it is undone by DEL).
    #[serde(default)]
    pub result: Option<Value>,
}

/// The state of one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    /// [`SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// The sandbox's id, as the runtime knows it.
    pub sandbox_id: String,
    /// Its namespace.
    pub netns: NetnsRecord,
    /// The model endpoints are attached with unless they say otherwise.
    pub model: InterworkingModel,
    /// The device group (`IFLA_GROUP`) of every link this sandbox created, so that teardown
    /// deletes them in one request; 0 for none.
    #[serde(default)]
    pub link_group: u32,
    /// The taps are persistent only so that they outlive the attach: the first VMM handed
    /// their queues (`exec`) clears their persistence, and they go when it closes them
    /// (`attach --no-persist`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub taps_end_with_vmm: bool,
    /// Its endpoints, in attach order.
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    /// Endpoints of kinds this version does not know, kept verbatim and written back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_endpoints: Vec<Value>,
    /// CNI networks sandbox-net ran into the namespace, in order; teardown runs their DEL,
    /// last first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni: Vec<CniRecord>,
    /// The process that holds the sandbox (since version 2): the one attaching or detaching
    /// it while that runs, then the shim or VMM its caller named; none when nobody was named
    /// (or the document is older). A sandbox whose owner is gone may be reaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

impl SandboxState {
    /// A new document for a sandbox.
    pub fn new(
        sandbox_id: impl Into<String>,
        netns: NetnsRecord,
        model: InterworkingModel,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            sandbox_id: sandbox_id.into(),
            netns,
            model,
            link_group: 0,
            taps_end_with_vmm: false,
            endpoints: Vec::new(),
            unknown_endpoints: Vec::new(),
            cni: Vec::new(),
            owner: None,
        }
    }

    /// The endpoint with `id`.
    pub fn endpoint_mut(&mut self, id: &EndpointId) -> Option<&mut EndpointRecord> {
        self.endpoints.iter_mut().find(|e| &e.id == id)
    }

    /// Replaces the record with `record`'s id, or appends `record` when there is none.
    pub fn upsert_endpoint(&mut self, record: EndpointRecord) {
        match self.endpoint_mut(&record.id) {
            Some(existing) => *existing = record,
            None => self.endpoints.push(record),
        }
    }
}

/// One line of the journal next to a document (`<file>.journal`): a change written since the
/// document was, numbered: an endpoint's record, or the sandbox's owner. A document says up
/// to which number it includes the journal (`journal_seq`); the lines after that number are
/// applied over it, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Its number, increasing across the sandbox's life.
    pub seq: u64,
    /// The endpoint's record as of this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointRecord>,
    /// The sandbox's owner as of this entry (since version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerChange>,
}

/// A change of a sandbox's owner, in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChange {
    /// The new owner (none: nobody holds the sandbox).
    pub owner: Option<Owner>,
}

impl JournalEntry {
    /// Applies the entry to `state`.
    pub fn apply_to(self, state: &mut SandboxState) {
        if let Some(endpoint) = self.endpoint {
            state.upsert_endpoint(endpoint);
        }
        if let Some(change) = self.owner {
            state.owner = change.owner;
        }
    }
}

/// Why a document cannot be read (the store adds the file's name).
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or cut short.
    #[error("not a valid JSON document (line {line}, column {column}): {reason}")]
    Json {
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
        /// What it found.
        reason: String,
    },
    /// Written by a newer version of this module.
    #[error(
        "schema version {found} is newer than the {supported} this version reads; upgrade sandbox-net to handle it"
    )]
    NewerVersion {
        /// The document's version.
        found: u64,
        /// The newest this code reads.
        supported: u32,
    },
    /// JSON, but not a sandbox state.
    #[error("not a sandbox state document: {0}")]
    Shape(String),
}

/// A loaded document, and what was set aside while loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The state.
    pub state: SandboxState,
    /// One line per endpoint kept aside (unknown kind), for the caller to log.
    pub warnings: Vec<String>,
    /// The last journal entry the document includes (0: none).
    pub journal_seq: u64,
}

/// Parses a state document. Never panics, whatever the bytes.
pub fn parse_document(bytes: &[u8]) -> Result<Loaded, DocumentError> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| DocumentError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    })?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| DocumentError::Shape("the top level is not an object".into()))?;
    let version = object
        .get("schema_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| DocumentError::Shape("schema_version is missing or not a number".into()))?;
    if version > u64::from(SCHEMA_VERSION) {
        return Err(DocumentError::NewerVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let journal_seq = match object.remove("journal_seq") {
        None => 0,
        Some(seq) => seq
            .as_u64()
            .ok_or_else(|| DocumentError::Shape("journal_seq is not a number".into()))?,
    };
    // Endpoints of kinds this version does not know are set aside before the typed parse.
    let mut warnings = Vec::new();
    let mut unknown = Vec::new();
    if let Some(Value::Array(endpoints)) = object.get_mut("endpoints") {
        let mut known = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints.drain(..) {
            let kind = endpoint.get("kind").cloned().unwrap_or(Value::Null);
            if serde_json::from_value::<EndpointKind>(kind.clone()).is_ok() {
                known.push(endpoint);
            } else {
                let id = endpoint
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                warnings.push(format!(
                    "endpoint {id} of unknown kind {kind} kept aside, untouched"
                ));
                unknown.push(endpoint);
            }
        }
        *endpoints = known;
    }
    let mut state: SandboxState =
        serde_json::from_value(value).map_err(|e| DocumentError::Shape(e.to_string()))?;
    state.unknown_endpoints.extend(unknown);
    Ok(Loaded {
        state,
        warnings,
        journal_seq,
    })
}

/// The document's bytes: compact JSON, newline-terminated (`jq . FILE` shows it indented).
pub fn render_document(state: &SandboxState) -> Vec<u8> {
    render_document_with_journal(state, 0)
}

/// [`render_document`] for a document that includes its journal up to entry `journal_seq`
/// (0: none, and the field is left out).
pub fn render_document_with_journal(state: &SandboxState, journal_seq: u64) -> Vec<u8> {
    let view = DocumentView { state, journal_seq };
    // Serializing our own types to a Vec cannot fail: every map key is a string.
    let mut bytes = serde_json::to_vec(&view).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The document: the state's fields, then the store's account of its journal.
#[derive(Serialize)]
struct DocumentView<'a> {
    #[serde(flatten)]
    state: &'a SandboxState,
    #[serde(skip_serializing_if = "is_zero")]
    journal_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}
