//! The index against the whole-world resolver: random sequences of creates,
//! updates and deletes of trunks, numbers and Secrets (conflicts, missing and
//! malformed Secrets, trunk deletion with numbers left, fallback trunks),
//! compared after every step.
//!
//! `make test` runs a bounded number of cases with a fixed seed; for a longer
//! run: `SWITCHBOARD_PROPTEST_CASES=20000 cargo test -p switchboard-operator
//! --release index_matches_the_whole_world_resolver`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::*;
use crate::routing::{Inputs, resolve};

const NAMESPACES: [&str; 2] = ["a", "b"];
const TRUNKS: [&str; 3] = ["t1", "t2", "t3"];
const NUMBERS: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];
const SECRETS: [&str; 3] = ["s1", "s2", "s3"];

#[derive(Clone, Debug)]
enum Op {
    Trunk(usize, usize, TrunkKind),
    DeleteTrunk(usize, usize),
    Number(usize, usize, NumberKind),
    DeleteNumber(usize, usize),
    Secret(usize, usize, SecretKind),
    DeleteSecret(usize, usize),
}

#[derive(Clone, Debug)]
struct TrunkKind {
    invalid: bool,
    outbound_auth: Option<usize>,
    inbound_auth: Option<usize>,
    default_agent: Option<Option<usize>>,
    egress: bool,
    generation: i64,
}

#[derive(Clone, Debug)]
struct NumberKind {
    number: usize,
    trunk: usize,
    fallback: Option<usize>,
    key: Option<usize>,
    agent: Option<(bool, Option<usize>)>,
    inbound: bool,
    created: Option<i64>,
    generation: i64,
}

#[derive(Clone, Debug)]
enum SecretKind {
    BasicAuth,
    MissingPassword,
    WrongType,
    Token,
    EmptyToken,
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0..NAMESPACES.len();
    let secret = proptest::option::of(0..SECRETS.len());
    let trunk = (
        any::<u8>(),
        secret.clone(),
        secret.clone(),
        proptest::option::of(secret.clone()),
        any::<bool>(),
        0..3i64,
    )
        .prop_map(|(i, o, a, d, egress, generation)| TrunkKind {
            invalid: i % 5 == 0,
            outbound_auth: o,
            inbound_auth: a,
            default_agent: d,
            egress,
            generation,
        });
    let number = (
        (
            0..4usize,
            0..TRUNKS.len(),
            proptest::option::of(0..TRUNKS.len()),
        ),
        proptest::option::of(0..3usize),
        proptest::option::of((any::<bool>(), secret.clone())),
        any::<bool>(),
        proptest::option::of(0..3i64),
        0..3i64,
    )
        .prop_map(
            |((number, trunk, fallback), key, agent, inbound, created, generation)| NumberKind {
                number,
                trunk,
                fallback: fallback.filter(|f| *f != trunk),
                key,
                agent,
                inbound,
                created,
                generation,
            },
        );
    let secret_kind = prop_oneof![
        Just(SecretKind::BasicAuth),
        Just(SecretKind::MissingPassword),
        Just(SecretKind::WrongType),
        Just(SecretKind::Token),
        Just(SecretKind::EmptyToken),
    ];
    prop_oneof![
        3 => (ns.clone(), 0..TRUNKS.len(), trunk).prop_map(|(n, t, k)| Op::Trunk(n, t, k)),
        1 => (ns.clone(), 0..TRUNKS.len()).prop_map(|(n, t)| Op::DeleteTrunk(n, t)),
        5 => (ns.clone(), 0..NUMBERS.len(), number).prop_map(|(n, i, k)| Op::Number(n, i, k)),
        2 => (ns.clone(), 0..NUMBERS.len()).prop_map(|(n, i)| Op::DeleteNumber(n, i)),
        2 => (ns.clone(), 0..SECRETS.len(), secret_kind).prop_map(|(n, s, k)| Op::Secret(n, s, k)),
        1 => (ns, 0..SECRETS.len()).prop_map(|(n, s)| Op::DeleteSecret(n, s)),
    ]
}

fn trunk_input(ns: usize, t: usize, k: &TrunkKind) -> TrunkInput {
    let mut spec = serde_json::json!({
        "inbound": {"allowedSources": ["203.0.113.0/24"]},
        "outbound": {"gateways": [{"host": "sip.example.net"}]},
    });
    if k.invalid {
        spec["inbound"] = serde_json::json!({"enabled": true, "allowedSources": []});
    }
    if let Some(s) = k.outbound_auth {
        spec["outbound"]["auth"] = serde_json::json!({"secretRef": {"name": SECRETS[s]}});
    }
    if let Some(s) = k.inbound_auth
        && !k.invalid
    {
        spec["inbound"]["auth"] = serde_json::json!({"secretRef": {"name": SECRETS[s]}});
    }
    if let Some(d) = &k.default_agent
        && !k.invalid
    {
        let mut a = serde_json::json!({"url": "wss://agent.example.com/ws"});
        if let Some(s) = d {
            a["auth"] = serde_json::json!({"secretRef": {"name": SECRETS[*s]}});
        }
        spec["inbound"]["defaultAgent"] = a;
    }
    if k.egress {
        spec["agentEgress"] = serde_json::json!({"allowedNetworks": ["10.0.0.0/8"]});
    }
    TrunkInput {
        key: ObjectKey::new(NAMESPACES[ns], TRUNKS[t]),
        generation: k.generation,
        spec: serde_json::from_value(spec).expect("trunk spec"),
    }
}

fn number_input(ns: usize, i: usize, k: &NumberKind) -> NumberInput {
    let numbers = ["+15550000001", "+15550000002", "+15550000003", "12345"];
    let mut spec = serde_json::json!({
        "number": numbers[k.number],
        "trunkRef": {"name": TRUNKS[k.trunk]},
        "inbound": k.inbound,
    });
    if let Some(f) = k.fallback {
        spec["fallbackTrunks"] = serde_json::json!([TRUNKS[f]]);
    }
    if let Some(key) = k.key {
        spec["destinationKey"] = serde_json::json!(format!("key{key}"));
    }
    if let Some((insecure, secret)) = k.agent {
        let url = if insecure {
            "ws://agent.example.com/ws"
        } else {
            "wss://agent.example.com/ws"
        };
        let mut a = serde_json::json!({ "url": url });
        if let Some(s) = secret {
            a["auth"] = serde_json::json!({"secretRef": {"name": SECRETS[s]}});
        }
        spec["agent"] = a;
    }
    NumberInput {
        key: ObjectKey::new(NAMESPACES[ns], NUMBERS[i]),
        generation: k.generation,
        created: k
            .created
            .map(|s| jiff::Timestamp::from_second(1_700_000_000 + s).expect("timestamp")),
        spec: serde_json::from_value(spec).expect("number spec"),
    }
}

fn secret_data(k: &SecretKind) -> SecretData {
    let (type_, pairs): (Option<&str>, &[(&str, &str)]) = match k {
        SecretKind::BasicAuth => (
            Some("kubernetes.io/basic-auth"),
            &[("username", "u"), ("password", "p")],
        ),
        SecretKind::MissingPassword => (Some("kubernetes.io/basic-auth"), &[("username", "u")]),
        SecretKind::WrongType => (
            Some("kubernetes.io/tls"),
            &[("username", "u"), ("password", "p")],
        ),
        SecretKind::Token => (None, &[("token", "tok")]),
        SecretKind::EmptyToken => (None, &[("token", "")]),
    };
    SecretData {
        type_: type_.map(str::to_string),
        data: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

/// Applies one operation to the whole-world inputs and to the index.
fn step(inputs: &mut Inputs, all_secrets: &mut BTreeMap<ObjectKey, SecretData>, op: &Op) -> Event {
    match op {
        Op::Trunk(ns, t, k) => {
            let t = trunk_input(*ns, *t, k);
            inputs.trunks.insert(t.key.clone(), t.clone());
            Event::Trunk(Box::new(t))
        }
        Op::DeleteTrunk(ns, t) => {
            let key = ObjectKey::new(NAMESPACES[*ns], TRUNKS[*t]);
            inputs.trunks.remove(&key);
            Event::TrunkDeleted(key)
        }
        Op::Number(ns, i, k) => {
            let n = number_input(*ns, *i, k);
            inputs.numbers.insert(n.key.clone(), n.clone());
            Event::Number(Arc::new(n))
        }
        Op::DeleteNumber(ns, i) => {
            let key = ObjectKey::new(NAMESPACES[*ns], NUMBERS[*i]);
            inputs.numbers.remove(&key);
            Event::NumberDeleted(key)
        }
        Op::Secret(ns, s, k) => {
            let key = ObjectKey::new(NAMESPACES[*ns], SECRETS[*s]);
            let d = secret_data(k);
            all_secrets.insert(key.clone(), d.clone());
            Event::Secret(key, d)
        }
        Op::DeleteSecret(ns, s) => {
            let key = ObjectKey::new(NAMESPACES[*ns], SECRETS[*s]);
            all_secrets.remove(&key);
            Event::SecretDeleted(key)
        }
    }
}

fn check(ops: &[Op], batch: usize) -> Result<(), TestCaseError> {
    let mut inputs = Inputs::default();
    let mut all_secrets = BTreeMap::new();
    let mut index = Index::new();
    for (i, chunk) in ops.chunks(batch.max(1)).enumerate() {
        let events: Vec<Event> = chunk
            .iter()
            .map(|op| step(&mut inputs, &mut all_secrets, op))
            .collect();
        {
            let source = |k: &ObjectKey| all_secrets.get(k).cloned();
            index.apply(events, &source);
        }
        // The whole-world resolver sees only what is referenced, as the
        // operator has always given it.
        inputs.secrets = inputs
            .referenced_secrets()
            .into_iter()
            .filter_map(|k| all_secrets.get(&k).map(|d| (k, d.clone())))
            .collect();
        let want = Snapshot::from_resolution(&resolve(&inputs));
        let got = index.snapshot();
        prop_assert_eq!(
            &got.trunks,
            &want.trunks,
            "trunk verdicts differ after step {}",
            i
        );
        prop_assert_eq!(
            &got.numbers,
            &want.numbers,
            "number verdicts differ after step {}",
            i
        );
        prop_assert_eq!(
            &got.trunk_configs,
            &want.trunk_configs,
            "trunk configs differ after step {}",
            i
        );
        prop_assert_eq!(
            &got.number_configs,
            &want.number_configs,
            "number configs differ after step {}",
            i
        );
        let (tc, nc) = index.counts();
        let count = |vs: &mut dyn Iterator<Item = (bool, bool)>| {
            let mut c = Counts::default();
            for (a, r) in vs {
                c.add(a, r, 1);
            }
            c
        };
        prop_assert_eq!(
            tc,
            count(
                &mut want
                    .trunks
                    .values()
                    .map(|v| (v.accepted.ok, v.resolved_refs.ok))
            )
        );
        prop_assert_eq!(
            nc,
            count(
                &mut want
                    .numbers
                    .values()
                    .map(|v| (v.accepted.ok, v.resolved_refs.ok))
            )
        );
        let mut referenced: Vec<&ObjectKey> = index.referenced_secrets().collect();
        referenced.sort();
        let want_refs = inputs.referenced_secrets();
        prop_assert_eq!(referenced, want_refs.iter().collect::<Vec<_>>());
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("SWITCHBOARD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

#[test]
fn index_matches_the_whole_world_resolver() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: the same cases on every run and machine.
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (proptest::collection::vec(op(), 1..60), 1..4usize);
    if let Err(e) = runner.run(&strategy, |(ops, batch)| check(&ops, batch)) {
        panic!("{e}");
    }
}

#[test]
fn a_deleted_winner_hands_its_number_to_the_next_oldest_claimant() {
    let mut index = Index::new();
    let secrets = |_: &ObjectKey| None;
    let trunk = TrunkKind {
        invalid: false,
        outbound_auth: None,
        inbound_auth: None,
        default_agent: None,
        egress: false,
        generation: 1,
    };
    let claim = |created| NumberKind {
        number: 0,
        trunk: 0,
        fallback: None,
        key: None,
        agent: Some((false, None)),
        inbound: true,
        created: Some(created),
        generation: 1,
    };
    index.apply(
        [
            Event::Trunk(Box::new(trunk_input(0, 0, &trunk))),
            Event::Number(Arc::new(number_input(0, 0, &claim(0)))),
            Event::Number(Arc::new(number_input(0, 1, &claim(2)))),
            Event::Number(Arc::new(number_input(0, 2, &claim(1)))),
        ],
        &secrets,
    );
    let s = index.snapshot();
    assert!(s.number_configs.contains_key("a/n1"));
    assert_eq!(s.number_configs.len(), 1);
    let applied = index.apply([Event::NumberDeleted(ObjectKey::new("a", "n1"))], &secrets);
    let s2 = index.snapshot();
    // n3 is older than n2.
    assert!(s2.number_configs.contains_key("a/n3"), "{s2:?}");
    assert_eq!(s2.number_configs.len(), 1);
    assert_eq!(s2.trunks[&ObjectKey::new("a", "t1")].numbers, 1);
    assert!(applied.numbers_judged <= 3, "{applied:?}");
    // The two snapshots differ only in the numbers involved.
    let changed: Vec<_> = s.number_configs.diff(&s2.number_configs).collect();
    assert_eq!(changed.len(), 2);
}

#[test]
fn a_secret_change_rejudges_only_its_users() {
    let mut index = Index::new();
    let mut all = BTreeMap::new();
    all.insert(
        ObjectKey::new("a", "s1"),
        secret_data(&SecretKind::BasicAuth),
    );
    let mut events = Vec::new();
    for t in 0..TRUNKS.len() {
        events.push(Event::Trunk(Box::new(trunk_input(
            0,
            t,
            &TrunkKind {
                invalid: false,
                outbound_auth: (t == 0).then_some(0),
                inbound_auth: None,
                default_agent: None,
                egress: false,
                generation: 1,
            },
        ))));
    }
    for i in 0..NUMBERS.len() {
        let mut n = number_input(
            0,
            i,
            &NumberKind {
                number: 0,
                trunk: i % TRUNKS.len(),
                fallback: None,
                key: None,
                agent: Some((false, None)),
                inbound: true,
                created: None,
                generation: 1,
            },
        );
        n.spec.number = format!("+1555000010{i}");
        events.push(Event::Number(Arc::new(n)));
    }
    let source = |k: &ObjectKey| all.get(k).cloned();
    index.apply(events, &source);
    assert_eq!(index.snapshot().number_configs.len(), NUMBERS.len());
    let applied = index.apply(
        [Event::Secret(
            ObjectKey::new("a", "s1"),
            secret_data(&SecretKind::MissingPassword),
        )],
        &source,
    );
    // One trunk and its two numbers, nothing else.
    assert_eq!(applied.trunks_judged, 1);
    assert_eq!(applied.numbers_judged, 2);
    let s = index.snapshot();
    assert!(!s.trunks[&ObjectKey::new("a", "t1")].resolved_refs.ok);
    assert_eq!(s.number_configs.len(), NUMBERS.len() - 2);
    // An unreferenced Secret is ignored.
    let applied = index.apply(
        [Event::Secret(
            ObjectKey::new("a", "s3"),
            secret_data(&SecretKind::BasicAuth),
        )],
        &source,
    );
    assert_eq!(applied, Applied::default());
}
