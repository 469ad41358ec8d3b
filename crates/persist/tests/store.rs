//! The state document and its store: round trips, bad input, locking, atomic writes.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use proptest::prelude::*;
use sandbox_net_persist::{
    AddressScope, IfName, NeighbourState, NetnsId, Owner, RouteProtocol, RouteType,
    endpoint::{EndpointId, EndpointKind},
    scan::{Address, Interface, Link, Neighbour, Route},
    state::{EndpointRecord, NetnsRecord, SCHEMA_VERSION, SandboxState, parse_document},
    steps::{InterworkingModel, Step},
    store::{StateStore, StoreError, StoreFile},
};

const KINDS: [EndpointKind; 8] = [
    EndpointKind::Veth,
    EndpointKind::Macvlan,
    EndpointKind::Ipvlan,
    EndpointKind::Macvtap,
    EndpointKind::Tap,
    EndpointKind::Tuntap,
    EndpointKind::Physical,
    EndpointKind::VhostUser,
];
const MODELS: [Option<InterworkingModel>; 4] = [
    None,
    Some(InterworkingModel::TcFilter),
    Some(InterworkingModel::Macvtap),
    Some(InterworkingModel::None),
];

fn name(n: &str) -> IfName {
    IfName::new(n).unwrap()
}

fn interface() -> Interface {
    Interface {
        link: Link {
            name: name("eth0"),
            index: 2,
            kind: Some("veth".into()),
            mtu: 1500,
            mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
            up: true,
            lower_up: true,
            loopback: false,
            parent_index: Some(3),
            parent_netnsid: Some(0),
            txqueuelen: 1000,
            tuntap: None,
            netkit: None,
        },
        addresses: vec![Address {
            prefix: "10.200.0.2/24".parse().unwrap(),
            peer: None,
            broadcast: None,
            scope: AddressScope::GLOBAL,
            flags: 0x80,
            label: Some("eth0".into()),
            route_metric: None,
            protocol: None,
            valid_lifetime: None,
            preferred_lifetime: None,
        }],
        routes: vec![Route {
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.200.0.1".parse().unwrap()),
            device_index: Some(2),
            source: None,
            scope: AddressScope::GLOBAL,
            protocol: RouteProtocol::BOOT,
            kind: RouteType::UNICAST,
            table: 254,
            metric: None,
            ..Route::default()
        }],
        all_routes: vec![],
        neighbours: vec![Neighbour {
            ip: "10.200.0.1".parse().unwrap(),
            mac: Some("02:00:0a:c8:00:01".parse().unwrap()),
            state: NeighbourState::PERMANENT,
            device_index: 2,
        }],
    }
}

/// One of each step.
fn all_steps() -> Vec<Step> {
    let iface = interface();
    vec![
        Step::CreateTap {
            name: name("tap0_kata"),
            queues: 4,
            vnet_hdr: true,
            owner: Some(1000),
            group: None,
            persist: true,
        },
        Step::CreateMacvtap {
            name: name("tap1_kata"),
            parent: name("eth1"),
            mac: "02:00:00:00:00:09".parse().unwrap(),
        },
        Step::SetMtu {
            link: name("tap0_kata"),
            mtu: 9000,
            original: 1500,
        },
        Step::SetMac {
            link: name("eth1"),
            mac: "06:00:00:00:00:01".parse().unwrap(),
            original: "02:00:00:00:00:09".parse().unwrap(),
        },
        Step::SetUp {
            link: name("tap0_kata"),
            original_up: false,
        },
        Step::SetAllmulticast {
            link: name("tap1_kata"),
        },
        Step::AddIngressQdisc { link: name("eth0") },
        Step::AddRedirect {
            from: name("eth0"),
            to: name("tap0_kata"),
            priority: 49152,
        },
        Step::CreateIfb {
            name: name("sbx0123456789ab"),
        },
        Step::AddHtb {
            link: name("sbx0123456789ab"),
            rate_bits: 40_000_000_000,
        },
        Step::ClearAddresses {
            link: name("eth1"),
            addresses: iface.addresses,
            routes: iface.routes,
            neighbours: iface.neighbours,
            all_routes: false,
        },
        Step::BindVfio {
            bdf: "0000:00:03.0".parse().unwrap(),
            original_driver: Some("e1000e".into()),
            original_override: None,
        },
    ]
}

fn record(
    id: [u8; 8],
    kind: EndpointKind,
    model: Option<InterworkingModel>,
    steps: Vec<Step>,
    rates: (u64, u64),
    attached: bool,
) -> EndpointRecord {
    EndpointRecord {
        id: EndpointId::from_bytes(id),
        index: 0,
        kind,
        model,
        interface: interface(),
        guest_mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
        queues: 4,
        rx_rate_bits: rates.0,
        tx_rate_bits: rates.1,
        pci: (kind == EndpointKind::Physical).then(|| "0000:00:03.0".into()),
        vhost_user_socket: (kind == EndpointKind::VhostUser)
            .then(|| "/tmp/vhostuser_10.200.0.2/vhu.sock".into()),
        steps,
        attached,
    }
}

fn state(endpoints: Vec<EndpointRecord>) -> SandboxState {
    let netns = NetnsRecord {
        path: "/run/netns/pod".into(),
        id: NetnsId {
            dev: 4,
            ino: 4026532177,
        },
        created_by_us: false,
    };
    let mut state = SandboxState::new("sandbox-1", netns, InterworkingModel::TcFilter);
    state.endpoints = endpoints;
    state
}

proptest! {
    #[test]
    fn every_kind_and_model_round_trips(
        picks in proptest::collection::vec((0usize..8, 0usize..4, any::<[u8; 8]>(), proptest::sample::subsequence(all_steps(), 0..=12), any::<(u64, u64)>(), any::<bool>()), 0..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state.json")).unwrap();
        let endpoints = picks
            .into_iter()
            .map(|(k, m, id, steps, rates, attached)| record(id, KINDS[k], MODELS[m], steps, rates, attached))
            .collect();
        let original = state(endpoints);
        store.save(&original).unwrap();
        let loaded = store.load().unwrap();
        prop_assert_eq!(loaded.state, original);
        prop_assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn the_loader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_document(&bytes);
    }

    #[test]
    fn the_loader_never_panics_on_mangled_documents(cut in 0usize..4000, flip in any::<(usize, u8)>()) {
        let mut bytes = serde_json::to_vec(&state(vec![record([1; 8], EndpointKind::Veth, MODELS[1], all_steps(), (1, 2), true)])).unwrap();
        let at = flip.0 % bytes.len();
        bytes[at] = flip.1;
        bytes.truncate(cut.min(bytes.len()));
        let _ = parse_document(&bytes);
    }
}

fn saved(dir: &Path) -> (StateStore, std::path::PathBuf) {
    let path = dir.join("state.json");
    let store = StateStore::open(&path).unwrap();
    store
        .save(&state(vec![record(
            [7; 8],
            EndpointKind::Veth,
            MODELS[1],
            all_steps(),
            (0, 0),
            true,
        )]))
        .unwrap();
    (store, path)
}

#[test]
fn the_document_is_private_and_no_temporary_file_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, path) = saved(dir.path());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["state.json", "state.json.lock"]);
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(&format!("{{\"schema_version\":{SCHEMA_VERSION},")),
        "{text}"
    );
}

#[test]
fn bad_documents_are_errors_naming_the_file_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = saved(dir.path());
    let good = fs::read_to_string(&path).unwrap();
    let p = path.display();
    let cases: Vec<(String, String)> = vec![
        (
            good[..good.len() / 2].to_string(),
            format!("state file {p} cannot be loaded"),
        ),
        (
            "{ this is not json".to_string(),
            format!("state file {p} cannot be loaded"),
        ),
        (
            good.replacen(
                &format!("\"schema_version\":{SCHEMA_VERSION}"),
                &format!("\"schema_version\":{}", SCHEMA_VERSION + 1),
                1,
            ),
            format!("state file {p} cannot be loaded"),
        ),
        (
            "[1, 2, 3]".to_string(),
            format!("state file {p} cannot be loaded"),
        ),
    ];
    let causes = [
        "not a valid JSON document",
        "not a valid JSON document",
        "schema version 3 is newer than the 2 this version reads; upgrade sandbox-net to handle it",
        "not a sandbox state document: the top level is not an object",
    ];
    for ((content, message), cause) in cases.into_iter().zip(causes) {
        fs::write(&path, &content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = store.load().unwrap_err();
        assert_eq!(err.to_string(), message);
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.starts_with(cause), "{source}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            content,
            "the file is left as it was"
        );
    }

    fs::write(&path, &good).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, StoreError::TooOpen { mode: 0o644, .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{p} has mode 644; the files of a sandbox's state must have mode 600, readable and writable by their owner only (chmod 600)"
        )
    );
    assert!(path.exists());

    fs::remove_file(&path).unwrap();
    let err = store.load().unwrap_err();
    assert_eq!(err.to_string(), format!("state file {p} does not exist"));
}

#[test]
fn a_second_process_cannot_take_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = saved(dir.path());
    let err = StateStore::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state file {} is locked by another process (lock {}.lock)",
            path.display(),
            path.display()
        )
    );
    drop(store);
    assert!(
        StateStore::open(&path).is_ok(),
        "the lock goes with the store"
    );
}

#[test]
fn endpoints_of_unknown_kinds_are_kept_aside_and_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = saved(dir.path());
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let mut alien = doc["endpoints"][0].clone();
    alien["kind"] = "quantum_link".into();
    alien["id"] = "00000000000000aa".into();
    doc["endpoints"].as_array_mut().unwrap().push(alien.clone());
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.state.endpoints.len(), 1);
    assert_eq!(
        loaded.warnings,
        ["endpoint 00000000000000aa of unknown kind \"quantum_link\" kept aside, untouched"]
    );
    store.save(&loaded.state).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(again["unknown_endpoints"][0], alien, "nothing is lost");
}

#[test]
fn fields_added_after_version_one_may_be_absent() {
    let doc = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "sandbox_id": "s",
        "netns": { "path": "/run/netns/x", "id": { "dev": 4, "ino": 5 }, "created_by_us": true },
        "model": "macvtap",
        "endpoints": [{ "id": "0102030405060708", "index": 0, "kind": "veth", "interface": serde_json::to_value(interface()).unwrap() }]
    });
    let loaded = parse_document(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let e = &loaded.state.endpoints[0];
    assert!(e.steps.is_empty() && !e.attached && e.model.is_none() && e.rx_rate_bits == 0);
}

#[test]
fn a_vfio_binding_recorded_by_an_earlier_version_loads_as_the_first_step() {
    let bind = Step::BindVfio {
        bdf: "0000:00:03.0".parse().unwrap(),
        original_driver: Some("e1000e".into()),
        original_override: Some("ixgbe".into()),
    };
    let document = |vfio: serde_json::Value, steps: Vec<Step>| {
        let doc = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "sandbox_id": "s",
            "netns": { "path": "/run/netns/x", "id": { "dev": 4, "ino": 5 }, "created_by_us": false },
            "model": "tcfilter",
            "endpoints": [{
                "id": "0102030405060708", "index": 0, "kind": "physical",
                "interface": serde_json::to_value(interface()).unwrap(),
                "pci": "0000:00:03.0", "steps": steps, "vfio": vfio, "attached": true,
            }]
        });
        parse_document(&serde_json::to_vec(&doc).unwrap())
    };
    // What versions before the step wrote: the binding in `vfio`, no steps.
    let old = serde_json::json!({"bdf": "0000:00:03.0", "original_driver": "e1000e", "original_override": "ixgbe"});
    let loaded = document(old.clone(), vec![]).unwrap();
    let e = &loaded.state.endpoints[0];
    assert_eq!(e.steps, std::slice::from_ref(&bind));
    // Written back as the step alone, and read again the same.
    let text =
        String::from_utf8(sandbox_net_persist::state::render_document(&loaded.state)).unwrap();
    assert!(!text.contains("\"vfio\""), "{text}");
    assert_eq!(parse_document(text.as_bytes()).unwrap().state, loaded.state);
    // Before the other steps (it was made first), and not twice.
    let redirect = all_steps()[7].clone();
    let loaded = document(old.clone(), vec![redirect.clone()]).unwrap();
    assert_eq!(loaded.state.endpoints[0].steps, [bind.clone(), redirect]);
    let loaded = document(old, vec![bind.clone()]).unwrap();
    assert_eq!(loaded.state.endpoints[0].steps, [bind]);
    // A binding of an address that is none: the document is refused, naming the endpoint.
    let bad =
        serde_json::json!({"bdf": "eth0", "original_driver": null, "original_override": null});
    let err = document(bad, vec![]).unwrap_err().to_string();
    assert!(
        err.contains("endpoint 0102030405060708: recorded vfio.bdf: invalid PCI address \"eth0\""),
        "{err}"
    );
}

/// A veth endpoint's record as planned: every step recorded, not attached yet.
fn planned_veth() -> EndpointRecord {
    record(
        [1; 8],
        EndpointKind::Veth,
        MODELS[1],
        all_steps(),
        (0, 0),
        false,
    )
}

fn journal_of(path: &Path) -> std::path::PathBuf {
    path.with_file_name("state.json.journal")
}

#[test]
fn journal_entries_are_read_over_the_document_and_folded_into_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let first = planned_veth();
    let second = record(
        [2; 8],
        EndpointKind::Tap,
        MODELS[3],
        Vec::new(),
        (5, 6),
        false,
    );
    let mut expected = state(vec![first.clone()]);
    {
        let store = StateStore::open(&path).unwrap();
        store.save(&expected).unwrap();
        let document = fs::read(&path).unwrap();
        // The first endpoint done, a second one planned: two lines, the document untouched.
        let mut done = first.clone();
        done.attached = true;
        expected.upsert_endpoint(done.clone());
        store.save_endpoint(&expected, &done).unwrap();
        expected.upsert_endpoint(second.clone());
        store.save_endpoint(&expected, &second).unwrap();
        assert_eq!(fs::read(&path).unwrap(), document);
        let journal = fs::read_to_string(journal_of(&path)).unwrap();
        assert_eq!(journal.lines().count(), 2, "{journal}");
        assert_eq!(
            fs::metadata(journal_of(&path))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    // A new process (the store above is gone, as after a crash) reads both entries.
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, expected);
    // The next save includes them and empties the journal; the result loads the same.
    store.save(&expected).unwrap();
    assert_eq!(fs::metadata(journal_of(&path)).unwrap().len(), 0);
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, expected);
    store.remove().unwrap();
    assert!(!journal_of(&path).exists(), "remove takes the journal too");
}

#[test]
fn entries_the_document_includes_are_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let planned = planned_veth();
    let mut done = planned.clone();
    done.attached = true;
    let store = StateStore::open(&path).unwrap();
    let mut current = state(Vec::new());
    store.save(&current).unwrap();
    current.upsert_endpoint(planned.clone());
    store.save_endpoint(&current, &planned).unwrap();
    let stale = fs::read(journal_of(&path)).unwrap();
    current.upsert_endpoint(done.clone());
    store.save(&current).unwrap();
    drop(store);
    // A crash between the document's rename and the journal's emptying leaves the old entry.
    fs::write(journal_of(&path), &stale).unwrap();
    let store = StateStore::open(&path).unwrap();
    let loaded = store.load().unwrap().state;
    assert!(loaded.endpoints[0].attached, "the older plan did not win");
    assert_eq!(loaded, current);
}

#[test]
fn a_torn_last_line_is_ignored_and_a_bad_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let planned = planned_veth();
    let mut current = state(Vec::new());
    {
        let store = StateStore::open(&path).unwrap();
        store.save(&current).unwrap();
        current.upsert_endpoint(planned.clone());
        store.save_endpoint(&current, &planned).unwrap();
    }
    let journal = journal_of(&path);
    let good = fs::read(&journal).unwrap();
    // A second entry cut short by a crash: never acted on, ignored.
    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"seq":2,"endpoint":{"id":"#);
    fs::write(&journal, &torn).unwrap();
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, current);
    drop(store);
    // A complete line that is not an entry: an error naming the journal and the line.
    let mut bad = good.clone();
    bad.extend_from_slice(b"not json\n");
    bad.extend_from_slice(&good);
    fs::write(&journal, &bad).unwrap();
    let store = StateStore::open(&path).unwrap();
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, StoreError::Journal { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("state.json.journal"), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn a_new_sandbox_does_not_read_a_stale_journal_left_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let foreign = record(
        [9; 8],
        EndpointKind::Veth,
        MODELS[1],
        all_steps(),
        (0, 0),
        false,
    );
    let line = serde_json::json!({"seq": 5, "endpoint": foreign});
    fs::write(journal_of(&path), format!("{line}\n")).unwrap();
    fs::set_permissions(journal_of(&path), fs::Permissions::from_mode(0o600)).unwrap();
    let fresh = state(Vec::new());
    {
        let store = StateStore::open(&path).unwrap();
        store.save(&fresh).unwrap();
    }
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, fresh);
}

#[test]
fn a_version_one_document_loads_with_no_owner_and_the_owner_round_trips() {
    let mut doc = serde_json::to_value(state(vec![planned_veth()])).unwrap();
    doc["schema_version"] = 1.into();
    assert!(doc.get("owner").is_none(), "nobody named: no owner key");
    let loaded = parse_document(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(loaded.state.owner, None);
    assert_eq!(loaded.state.endpoints, [planned_veth()]);

    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path().join("state.json")).unwrap();
    let mut owned = state(Vec::new());
    owned.owner = Some(Owner::current().unwrap());
    store.save(&owned).unwrap();
    let loaded = store.load().unwrap().state;
    assert_eq!(loaded.owner, owned.owner);
    assert_eq!(loaded.schema_version, SCHEMA_VERSION);
}

#[test]
fn a_change_of_owner_is_a_journal_line_read_over_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let me = Owner::current().unwrap();
    let vmm = Owner {
        pid: 1,
        ..me.clone()
    };
    let mut current = state(vec![planned_veth()]);
    current.owner = Some(me);
    {
        let store = StateStore::open(&path).unwrap();
        store.save(&current).unwrap();
        let document = fs::read(&path).unwrap();
        current.owner = Some(vmm.clone());
        store.save_owner(&current).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            document,
            "one line, not a rewrite"
        );
        assert_eq!(
            fs::read_to_string(journal_of(&path))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state.owner, Some(vmm));
    // Handing it to nobody is recorded too.
    current.owner = None;
    store.save_owner(&current).unwrap();
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, current);
}

/// Runs as root (the tests of this crate do not need to): changing a file's owner needs it.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn symlinked_state_lock_and_journal_are_refused_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "the node's own file\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();

    // The lock: refused when the store is opened.
    let path = dir.path().join("a.json");
    std::os::unix::fs::symlink(&victim, dir.path().join("a.json.lock")).unwrap();
    let err = StateStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Symlink { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "state lock {}/a.json.lock is a symbolic link; refusing to follow it",
            dir.path().display()
        )
    );

    // The document: refused when loaded.
    let path = dir.path().join("b.json");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let store = StateStore::open(&path).unwrap();
    let err = store.load().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state file {} is a symbolic link; refusing to follow it",
            path.display()
        )
    );
    drop(store);

    // The journal: refused when loaded, and when appended to.
    let (store, path) = saved(dir.path());
    let journal = journal_of(&path);
    std::os::unix::fs::symlink(&victim, &journal).unwrap();
    let err = store.load().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state journal {} is a symbolic link; refusing to follow it",
            journal.display()
        )
    );
    let loaded_state = state(vec![planned_veth()]);
    let err = store
        .save_endpoint(&loaded_state, &planned_veth())
        .unwrap_err();
    assert!(matches!(err, StoreError::Symlink { .. }), "{err:?}");
    // A full save empties the journal: not through the link either.
    store.save(&loaded_state).unwrap();
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "the node's own file\n"
    );
    assert!(
        fs::symlink_metadata(&journal)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn state_files_of_another_owner_or_mode_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = saved(dir.path());
    let planned = planned_veth();
    let current = state(vec![planned.clone()]);
    store.save_endpoint(&current, &planned).unwrap();
    drop(store);
    let journal = journal_of(&path);
    let lock = dir.path().join("state.json.lock");

    // Wrong mode, each file in turn.
    for (file, what) in [(&path, "document"), (&journal, "journal"), (&lock, "lock")] {
        for mode in [0o640, 0o400, 0o700] {
            fs::set_permissions(file, fs::Permissions::from_mode(mode)).unwrap();
            let err = StateStore::open(&path)
                .and_then(|store| store.load().map(|_| ()))
                .unwrap_err();
            assert!(
                matches!(&err, StoreError::TooOpen { path: p, mode: m } if p == file && *m == mode),
                "{what} {mode:o}: {err:?}"
            );
            fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    StateStore::open(&path).unwrap().load().unwrap();

    // Another owner (root can make one).
    if is_root() {
        for (file, what) in [
            (&path, "state file"),
            (&journal, "state journal"),
            (&lock, "state lock"),
        ] {
            std::os::unix::fs::chown(file, Some(4242), None).unwrap();
            let err = StateStore::open(&path)
                .and_then(|store| store.load().map(|_| ()))
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{what} {} is owned by uid 4242, not by this process's uid 0",
                    file.display()
                )
            );
            std::os::unix::fs::chown(file, Some(0), None).unwrap();
        }
    }

    // Not a regular file.
    fs::remove_file(&journal).unwrap();
    fs::create_dir(&journal).unwrap();
    let store = StateStore::open(&path).unwrap();
    let err = store.load().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("state journal {} is not a regular file", journal.display())
    );
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    for mode in [0o777, 0o1777, 0o775, 0o757] {
        fs::set_permissions(&shared, fs::Permissions::from_mode(mode)).unwrap();
        let err = StateStore::open(shared.join("state.json")).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsafeDirectory { .. }),
            "{mode:o}: {err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "state directory {} (mode {mode:o}",
                shared.display()
            )),
            "{err}"
        );
        assert_eq!(fs::read_dir(&shared).unwrap().count(), 0, "nothing created");
    }
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    StateStore::open(shared.join("state.json")).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&shared, Some(4242), None).unwrap();
        let err = StateStore::open(shared.join("other.json")).unwrap_err();
        assert!(err.to_string().contains("owner uid 4242"), "{err}");
    }
}

#[test]
fn a_torn_last_line_is_cut_off_before_the_next_entry_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let planned = planned_veth();
    let mut current = state(Vec::new());
    {
        let store = StateStore::open(&path).unwrap();
        store.save(&current).unwrap();
        current.upsert_endpoint(planned.clone());
        store.save_endpoint(&current, &planned).unwrap();
    }
    let journal = journal_of(&path);
    let mut torn = fs::read(&journal).unwrap();
    let good_length = torn.len();
    torn.extend_from_slice(br#"{"seq":2,"endpoint":{"id":"#);
    fs::write(&journal, &torn).unwrap();
    // A new process loads (the torn line is ignored) and appends.
    let mut attached = planned.clone();
    attached.attached = true;
    {
        let store = StateStore::open(&path).unwrap();
        let mut loaded = store.load().unwrap().state;
        loaded.upsert_endpoint(attached.clone());
        store.save_endpoint(&loaded, &attached).unwrap();
        current = loaded;
    }
    let text = fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(!text.contains(r#"{"seq":2,"endpoint":{"id":{"#), "{text}");
    assert!(fs::metadata(&journal).unwrap().len() > good_length as u64);
    // The next process reads both entries.
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, current);
}

#[test]
fn files_of_the_store_are_told_apart_by_name_and_a_stale_temporary_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("sb-1.json");
    let at = |name: &str| dir.path().join(name);
    assert_eq!(StoreFile::of(&doc), StoreFile::Document);
    assert_eq!(
        StoreFile::of(&at("sb-1.json.lock")),
        StoreFile::Lock(doc.clone())
    );
    assert_eq!(
        StoreFile::of(&at("sb-1.json.journal")),
        StoreFile::Journal(doc.clone())
    );
    assert_eq!(
        StoreFile::of(&at(".sb-1.json.Xy12Zq.tmp")),
        StoreFile::Temporary(Some(doc.clone()))
    );
    assert_eq!(
        StoreFile::of(&at(".state-Ab12Cd")),
        StoreFile::Temporary(None)
    );
    assert_eq!(StoreFile::of(&at("README.txt")), StoreFile::Document);

    // A save's temporary file is named after its document, and gone once the save is done.
    let store = StateStore::open(&doc).unwrap();
    store.save(&state(Vec::new())).unwrap();
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "no temporary file left: {names:?}"
    );
    // One left by a crash is removed by the lock's holder; another document's is not.
    let stale = at(".sb-1.json.Qw34Er.tmp");
    let other = at(".sb-2.json.Qw34Er.tmp");
    fs::write(&stale, b"{").unwrap();
    fs::write(&other, b"{").unwrap();
    assert!(store.remove_stale_temporary(&stale).unwrap());
    assert!(!stale.exists());
    assert!(!store.remove_stale_temporary(&other).unwrap());
    assert!(other.exists());
}

#[test]
fn a_forked_child_does_not_keep_the_lock_after_the_store_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = saved(dir.path());
    // A child forked while the store is held, as a process spawning another (a shim starting
    // a VMM) does: until it execs or exits it shares every descriptor of its parent.
    // SAFETY: the child calls only async-signal-safe functions (nanosleep, _exit).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        let pause = libc::timespec {
            tv_sec: 30,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec; _exit ends the child without running the parent's code.
        unsafe {
            libc::nanosleep(&pause, std::ptr::null_mut());
            libc::_exit(0);
        }
    }
    drop(store);
    let again = StateStore::open(&path);
    // SAFETY: plain syscalls on the child's pid.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    assert!(
        again.is_ok(),
        "the store let go, the forked child holds nothing: {:?}",
        again.err()
    );
    // And within one process two stores still exclude each other.
    let again = again.unwrap();
    assert!(matches!(
        StateStore::open(&path),
        Err(StoreError::Locked { .. })
    ));
    drop(again);
    assert!(StateStore::open(&path).is_ok());
}

#[test]
fn removing_a_document_takes_every_file_of_it_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let (store, path) = saved(dir.path());
    // A journal line, and the temporary files of saves killed before their rename: this
    // document's and another's.
    store
        .save_endpoint(&state(vec![planned_veth()]), &planned_veth())
        .unwrap();
    assert!(journal_of(&path).exists());
    for name in [
        ".state.json.Qw34Er.tmp",
        ".state.json.Zx56Cv.tmp",
        ".other.json.Qw34Er.tmp",
        "other.json",
    ] {
        fs::write(at(name), b"{").unwrap();
    }
    store.remove().unwrap();
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".other.json.Qw34Er.tmp", "other.json"]);
}

#[test]
fn deferred_writes_are_read_by_the_next_store_and_a_commit_folds_them_into_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut current = state(Vec::new());
    let planned = planned_veth();
    {
        let store = StateStore::open(&path).unwrap();
        store.defer_syncs(true);
        store.save(&current).unwrap();
        current.upsert_endpoint(planned.clone());
        store.save_endpoint(&current, &planned).unwrap();
        let mut done = planned.clone();
        done.attached = true;
        current.upsert_endpoint(done.clone());
        store.save_endpoint(&current, &done).unwrap();
        // A process killed here: the next one reads every record written.
    }
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, current);
    store.defer_syncs(true);
    let mut again = current.clone();
    again.endpoints[0].attached = false;
    let record = again.endpoints[0].clone();
    store.save_endpoint(&again, &record).unwrap();
    assert_eq!(
        fs::read_to_string(journal_of(&path))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // This store opened the journal with syncs deferred: its entry in the directory is not
    // known to be on the disk, so the commit writes the document anew, synced, and the
    // journal is emptied (the document includes it).
    store.commit(&again).unwrap();
    assert_eq!(fs::read_to_string(journal_of(&path)).unwrap(), "");
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().state, again);
}
