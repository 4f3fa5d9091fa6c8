use super::*;
use crate::crd::{
    AgentSpec, BasicAuth, Gateway, InboundAuth, LocalRef, SecretRef, TrunkInbound, TrunkOutbound,
};

fn trunk_spec() -> SipTrunkSpec {
    serde_json::from_value(serde_json::json!({
        "inbound": {"allowedSources": ["203.0.113.0/24"]},
        "outbound": {
            "gateways": [{"host": "sip.example.net"}],
            "auth": {"secretRef": {"name": "carrier-creds"}}
        }
    }))
    .expect("trunk spec")
}

fn number_spec(number: &str, trunk: &str) -> PhoneNumberSpec {
    serde_json::from_value(serde_json::json!({
        "number": number,
        "trunkRef": {"name": trunk},
        "agent": {"url": "wss://agent.example.com/ws"}
    }))
    .expect("number spec")
}

fn basic_auth(user: &str, pass: &str) -> SecretData {
    SecretData {
        type_: Some("kubernetes.io/basic-auth".into()),
        data: [("username", user), ("password", pass)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

fn inputs() -> Inputs {
    let mut i = Inputs::default();
    let key = ObjectKey::new("ns", "carrier");
    i.trunks.insert(
        key.clone(),
        TrunkInput {
            key,
            generation: 1,
            spec: trunk_spec(),
        },
    );
    i.secrets.insert(
        ObjectKey::new("ns", "carrier-creds"),
        basic_auth("alice", "s3cret-pw"),
    );
    add_number(&mut i, "main", "+14155550100", 10);
    i
}

fn add_number(i: &mut Inputs, name: &str, number: &str, created_secs: i64) {
    let key = ObjectKey::new("ns", name);
    i.numbers.insert(
        key.clone(),
        NumberInput {
            key,
            generation: 1,
            created: Some(jiff::Timestamp::from_second(created_secs).expect("ts")),
            spec: number_spec(number, "carrier"),
        },
    );
}

#[test]
fn valid_trunk_and_number_resolve() {
    let r = resolve(&inputs());
    let t = &r.trunks[&ObjectKey::new("ns", "carrier")];
    assert!(t.accepted.ok && t.resolved_refs.ok, "{t:?}");
    assert_eq!(t.numbers, 1);
    let n = &r.numbers[&ObjectKey::new("ns", "main")];
    assert!(n.usable(), "{n:?}");
    assert_eq!(r.config.trunks.len(), 1);
    let tc = &r.config.trunks[0];
    assert_eq!(tc.id, "ns/carrier");
    let out = tc.outbound.as_ref().expect("outbound");
    assert_eq!(out.auth.as_ref().expect("auth").username, "alice");
    assert_eq!(out.gateways[0].port, 5060);
    let f = out.failover.as_ref().expect("failover");
    assert!(f.on_timeout);
    assert_eq!(f.status_codes, vec![408, 478]);
    assert_eq!(f.status_classes, vec![5]);
    assert_eq!(r.config.numbers.len(), 1);
    assert_eq!(r.config.numbers[0].trunk_id, "ns/carrier");
    assert_eq!(
        tc.media.as_ref().expect("media").codecs,
        vec![pb::Codec::Pcmu as i32, pb::Codec::Pcma as i32]
    );
}

#[test]
fn missing_secret_fails_refs_and_drops_trunk_and_its_numbers() {
    let mut i = inputs();
    i.secrets.clear();
    let r = resolve(&i);
    let t = &r.trunks[&ObjectKey::new("ns", "carrier")];
    assert!(t.accepted.ok);
    assert!(!t.resolved_refs.ok);
    assert_eq!(t.resolved_refs.reason, reason::SECRET_NOT_FOUND);
    assert!(
        t.resolved_refs.message.contains("carrier-creds"),
        "{}",
        t.resolved_refs.message
    );
    let n = &r.numbers[&ObjectKey::new("ns", "main")];
    assert_eq!(n.resolved_refs.reason, reason::TRUNK_NOT_READY);
    assert!(r.config.trunks.is_empty() && r.config.numbers.is_empty());
}

#[test]
fn malformed_secret_is_invalid_and_message_has_no_value() {
    let mut i = inputs();
    let mut s = basic_auth("alice", "s3cret-pw");
    s.data.remove("username");
    i.secrets.insert(ObjectKey::new("ns", "carrier-creds"), s);
    let r = resolve(&i);
    let t = &r.trunks[&ObjectKey::new("ns", "carrier")];
    assert_eq!(t.resolved_refs.reason, reason::INVALID_SECRET);
    assert!(t.resolved_refs.message.contains("username"));
    assert!(
        !format!("{r:?}").contains("s3cret-pw"),
        "secret leaked into Debug output"
    );

    let mut wrong = basic_auth("alice", "s3cret-pw");
    wrong.type_ = Some("kubernetes.io/tls".into());
    i.secrets
        .insert(ObjectKey::new("ns", "carrier-creds"), wrong);
    let r = resolve(&i);
    assert_eq!(
        r.trunks[&ObjectKey::new("ns", "carrier")]
            .resolved_refs
            .reason,
        reason::INVALID_SECRET
    );
}

#[test]
fn number_naming_missing_trunk() {
    let mut i = inputs();
    i.numbers
        .get_mut(&ObjectKey::new("ns", "main"))
        .expect("n")
        .spec
        .trunk_ref = LocalRef {
        name: "nope".into(),
    };
    let r = resolve(&i);
    let n = &r.numbers[&ObjectKey::new("ns", "main")];
    assert!(n.accepted.ok);
    assert_eq!(n.resolved_refs.reason, reason::TRUNK_NOT_FOUND);
    assert!(n.resolved_refs.message.contains("nope"));
    assert!(r.config.numbers.is_empty());
    assert_eq!(r.trunks[&ObjectKey::new("ns", "carrier")].numbers, 0);
}

#[test]
fn trunk_in_other_namespace_does_not_resolve() {
    let mut i = inputs();
    let n = i.numbers.remove(&ObjectKey::new("ns", "main")).expect("n");
    let key = ObjectKey::new("other", "main");
    i.numbers.insert(
        key.clone(),
        NumberInput {
            key: key.clone(),
            ..n
        },
    );
    let r = resolve(&i);
    assert_eq!(
        r.numbers[&key].resolved_refs.reason,
        reason::TRUNK_NOT_FOUND
    );
}

#[test]
fn duplicate_numbers_older_wins_deterministically() {
    let mut i = inputs();
    add_number(&mut i, "a-newer", "+14155550100", 20);
    add_number(&mut i, "z-same-time", "+14155550100", 10);
    for _ in 0..3 {
        let r = resolve(&i);
        assert!(r.numbers[&ObjectKey::new("ns", "main")].usable());
        for loser in ["a-newer", "z-same-time"] {
            let v = &r.numbers[&ObjectKey::new("ns", loser)];
            assert!(!v.accepted.ok);
            assert_eq!(v.accepted.reason, reason::CONFLICT);
            assert!(
                v.accepted.message.contains("ns/main"),
                "{}",
                v.accepted.message
            );
        }
        assert_eq!(r.config.numbers.len(), 1);
        assert_eq!(r.config.numbers[0].id, "ns/main");
    }
}

#[test]
fn same_creation_time_breaks_ties_by_name() {
    let mut i = Inputs::default();
    let key = ObjectKey::new("ns", "carrier");
    i.trunks.insert(
        key.clone(),
        TrunkInput {
            key,
            generation: 1,
            spec: trunk_spec(),
        },
    );
    i.secrets.insert(
        ObjectKey::new("ns", "carrier-creds"),
        basic_auth("alice", "pw"),
    );
    add_number(&mut i, "b", "+14155550100", 5);
    add_number(&mut i, "a", "+14155550100", 5);
    let r = resolve(&i);
    assert!(r.numbers[&ObjectKey::new("ns", "a")].usable());
    assert_eq!(
        r.numbers[&ObjectKey::new("ns", "b")].accepted.reason,
        reason::CONFLICT
    );
}

#[test]
fn invalid_specs_name_the_field() {
    let mut spec = trunk_spec();
    spec.outbound = Some(TrunkOutbound {
        gateways: vec![],
        ..spec.outbound.clone().expect("o")
    });
    assert!(
        validate::trunk(&spec)
            .expect_err("no gateways")
            .contains("spec.outbound.gateways")
    );

    let mut spec = trunk_spec();
    spec.inbound = Some(TrunkInbound {
        enabled: true,
        allowed_sources: vec![],
        auth: None,
        default_agent: None,
        pass_headers: None,
    });
    assert!(
        validate::trunk(&spec)
            .expect_err("no sources")
            .contains("allowedSources")
    );
    spec.inbound = Some(TrunkInbound {
        enabled: true,
        allowed_sources: vec!["10.0.0.0/33".into()],
        auth: None,
        default_agent: None,
        pass_headers: None,
    });
    assert!(
        validate::trunk(&spec)
            .expect_err("bad cidr")
            .contains("allowedSources[0]")
    );
    spec.inbound = Some(TrunkInbound {
        enabled: true,
        allowed_sources: vec![],
        auth: Some(InboundAuth {
            secret_ref: SecretRef { name: "x".into() },
            realm: None,
        }),
        default_agent: None,
        pass_headers: None,
    });
    assert!(validate::trunk(&spec).is_ok(), "auth alone is enough");

    let mut spec = trunk_spec();
    spec.media.codecs = vec![crate::crd::Codec::Pcmu, crate::crd::Codec::Pcmu];
    assert!(
        validate::trunk(&spec)
            .expect_err("dup codecs")
            .contains("spec.media.codecs")
    );

    let mut spec = trunk_spec();
    if let Some(o) = spec.outbound.as_mut() {
        o.gateways.push(Gateway {
            host: "bad host".into(),
            ..o.gateways[0].clone()
        });
        o.auth = Some(BasicAuth {
            secret_ref: SecretRef { name: "c".into() },
        });
    }
    assert!(
        validate::trunk(&spec)
            .expect_err("host")
            .contains("gateways[1].host")
    );

    for bad in [
        "14155550100",
        "+0123456789",
        "+123",
        "+1415555010012345",
        "+1415a550100",
    ] {
        let s = number_spec(bad, "t");
        assert!(
            validate::number(&s).expect_err(bad).contains("spec.number"),
            "{bad}"
        );
    }
    let mut s = number_spec("+14155550100", "t");
    s.fallback_trunks = vec!["t".into()];
    assert!(
        validate::number(&s)
            .expect_err("self fallback")
            .contains("fallbackTrunks")
    );
    s.fallback_trunks = vec![];
    s.agent = Some(AgentSpec {
        url: "http://x".into(),
        ..s.agent.clone().expect("a")
    });
    assert!(
        validate::number(&s)
            .expect_err("url")
            .contains("spec.agent.url")
    );
    // A refused URL's message (status, Events) never shows its path, query
    // or user info: they often carry tokens.
    for (url, webhook) in [
        ("http://user:pw@agent.example/ws?token=s3cret", None),
        ("wss:///ws?token=s3cret", None),
        ("ws token=s3cret", None),
        (
            "wss://agent.example/ws",
            Some("ftp://hooks.example/cb?token=s3cret"),
        ),
        (
            "wss://agent.example/ws",
            Some("https://hooks.example/cb?token=s3cret x"),
        ),
    ] {
        s.agent = Some(AgentSpec {
            url: url.into(),
            status_webhook: webhook.map(String::from),
            ..s.agent.clone().expect("a")
        });
        let e = validate::number(&s).expect_err(url);
        assert!(!e.contains("s3cret") && !e.contains("pw@"), "{url}: {e}");
    }
}

#[test]
fn invalid_number_in_file_gets_accepted_false() {
    let mut i = inputs();
    add_number(&mut i, "bad", "0800-BAD", 30);
    let r = resolve(&i);
    let v = &r.numbers[&ObjectKey::new("ns", "bad")];
    assert_eq!(v.accepted.reason, reason::INVALID);
    assert!(!v.resolved_refs.ok);
}

#[test]
fn fallback_trunks_must_exist_and_resolve_in_order() {
    let mut i = inputs();
    let key = ObjectKey::new("ns", "backup");
    i.trunks.insert(
        key.clone(),
        TrunkInput {
            key,
            generation: 1,
            spec: trunk_spec(),
        },
    );
    let main = ObjectKey::new("ns", "main");
    i.numbers.get_mut(&main).expect("n").spec.fallback_trunks =
        vec!["backup".into(), "missing".into()];
    let r = resolve(&i);
    assert_eq!(
        r.numbers[&main].resolved_refs.reason,
        reason::TRUNK_NOT_FOUND
    );
    assert!(r.numbers[&main].resolved_refs.message.contains("missing"));
    i.numbers.get_mut(&main).expect("n").spec.fallback_trunks = vec!["backup".into()];
    let r = resolve(&i);
    assert!(r.numbers[&main].usable());
    assert_eq!(
        r.config.numbers[0].fallback_trunk_ids,
        vec!["ns/backup".to_string()]
    );
}

#[test]
fn number_without_agent_needs_trunk_default() {
    let mut i = inputs();
    let main = ObjectKey::new("ns", "main");
    i.numbers.get_mut(&main).expect("n").spec.agent = None;
    let r = resolve(&i);
    assert_eq!(r.numbers[&main].resolved_refs.reason, reason::NO_AGENT);
    if let Some(inb) = i
        .trunks
        .get_mut(&ObjectKey::new("ns", "carrier"))
        .and_then(|t| t.spec.inbound.as_mut())
    {
        inb.default_agent = Some(AgentSpec {
            url: "ws://127.0.0.1:9000/".into(),
            protocol: Default::default(),
            auth: None,
            parameters: Default::default(),
            status_webhook: None,
        });
    }
    let r = resolve(&i);
    assert!(r.numbers[&main].usable());
    assert!(r.config.numbers[0].agent.is_none());
}

#[test]
fn agent_token_over_plain_ws_to_a_remote_host_is_reported() {
    let mut i = inputs();
    let main = ObjectKey::new("ns", "main");
    i.secrets.insert(
        ObjectKey::new("ns", "agent-tok"),
        SecretData {
            type_: Some("Opaque".into()),
            data: [("token".into(), b"tok-xyz".to_vec())].into(),
        },
    );
    let with = |url: &str, token: bool| -> PhoneNumberSpec {
        let mut agent = serde_json::json!({"url": url});
        if token {
            agent["auth"] = serde_json::json!({"secretRef": {"name": "agent-tok"}});
        }
        serde_json::from_value(serde_json::json!({
            "number": "+14155550100", "trunkRef": {"name": "carrier"}, "agent": agent
        }))
        .expect("spec")
    };
    for url in [
        "ws://agent.example.com/ws",
        "ws://user:pw@10.0.0.7:8080/ws?x=1",
        "ws://[2001:db8::1]:80/",
    ] {
        i.numbers.get_mut(&main).expect("n").spec = with(url, true);
        let r = resolve(&i);
        let v = &r.numbers[&main].resolved_refs;
        assert_eq!(v.reason, reason::INSECURE_AGENT_URL, "{url}");
        assert!(v.message.contains("wss://"), "{}", v.message);
        assert!(!v.message.contains("pw") && !v.message.contains("tok-xyz"));
        assert!(r.config.numbers.is_empty(), "not routed");
    }
    // Fine: wss://, loopback ws:// (local agents and demos), or no token.
    for (url, token) in [
        ("wss://agent.example.com/ws", true),
        ("ws://127.0.0.1:9000/ws", true),
        ("ws://localhost:9000/ws", true),
        ("ws://[::1]:9000/ws", true),
        ("ws://agent.example.com/ws", false),
    ] {
        i.numbers.get_mut(&main).expect("n").spec = with(url, token);
        let r = resolve(&i);
        assert!(r.numbers[&main].usable(), "{url} token={token}");
    }
    // A trunk's default agent: reported on the numbers that use it; the trunk stays usable.
    i.numbers.get_mut(&main).expect("n").spec.agent = None;
    if let Some(inb) = i
        .trunks
        .get_mut(&ObjectKey::new("ns", "carrier"))
        .and_then(|t| t.spec.inbound.as_mut())
    {
        inb.default_agent = Some(AgentSpec {
            url: "ws://agent.example.com/".into(),
            protocol: Default::default(),
            auth: Some(
                serde_json::from_value(serde_json::json!({"secretRef": {"name": "agent-tok"}}))
                    .expect("auth"),
            ),
            parameters: Default::default(),
            status_webhook: None,
        });
    }
    let r = resolve(&i);
    assert_eq!(
        r.numbers[&main].resolved_refs.reason,
        reason::INSECURE_AGENT_URL
    );
    assert!(
        r.numbers[&main]
            .resolved_refs
            .message
            .contains("defaultAgent")
    );
}

#[test]
fn agent_token_resolves_from_secret_key() {
    let mut i = inputs();
    let main = ObjectKey::new("ns", "main");
    let spec: PhoneNumberSpec = serde_json::from_value(serde_json::json!({
        "number": "+14155550100", "trunkRef": {"name": "carrier"},
        "agent": {"url": "wss://a.example/ws", "auth": {"secretRef": {"name": "agent-tok"}}}
    }))
    .expect("spec");
    i.numbers.get_mut(&main).expect("n").spec = spec;
    let r = resolve(&i);
    assert_eq!(
        r.numbers[&main].resolved_refs.reason,
        reason::SECRET_NOT_FOUND
    );
    i.secrets.insert(
        ObjectKey::new("ns", "agent-tok"),
        SecretData {
            type_: Some("Opaque".into()),
            data: [("token".into(), b"tok-xyz\n".to_vec())].into(),
        },
    );
    let r = resolve(&i);
    assert!(r.numbers[&main].usable());
    assert_eq!(
        r.config.numbers[0]
            .agent
            .as_ref()
            .expect("agent")
            .bearer_token,
        "tok-xyz"
    );
}

#[test]
fn resolve_is_deterministic() {
    let mut i = inputs();
    for k in 0..50 {
        add_number(
            &mut i,
            &format!("n{k}"),
            &format!("+1415555{:04}", 1000 + k),
            100 + k,
        );
    }
    let a = resolve(&i);
    let b = resolve(&i);
    assert_eq!(a.config, b.config);
    assert_eq!(a.config.numbers.len(), 51);
}

#[test]
fn a_source_wider_than_a_slash_8_without_auth_is_refused_with_a_readable_condition() {
    let mut i = inputs();
    let key = ObjectKey::new("ns", "carrier");
    let t = i.trunks.get_mut(&key).expect("trunk");
    t.spec.inbound = Some(TrunkInbound {
        enabled: true,
        allowed_sources: vec!["203.0.113.0/24".into(), "0.0.0.0/7".into()],
        auth: None,
        default_agent: None,
        pass_headers: None,
    });
    let r = resolve(&i);
    let v = &r.trunks[&key];
    assert!(!v.accepted.ok);
    assert_eq!(v.accepted.reason, reason::INVALID);
    let m = &v.accepted.message;
    assert!(
        m.contains("spec.inbound.allowedSources[1]")
            && m.contains("0.0.0.0/7")
            && m.contains("wider than /8")
            && m.contains("inbound.auth"),
        "{m}"
    );
    assert!(
        r.config.trunks.is_empty(),
        "a refused trunk is not programmed"
    );

    for ok in [
        "10.0.0.0/8",
        "198.51.100.7",
        "2001:db8::/32",
        "::ffff:10.0.0.0/104",
    ] {
        let mut spec = trunk_spec();
        spec.inbound.as_mut().expect("inbound").allowed_sources = vec![ok.into()];
        assert_eq!(validate::trunk(&spec), Ok(()), "{ok}");
    }
    for wide in [
        "0.0.0.0/0",
        "128.0.0.0/1",
        "::/0",
        "2000::/3",
        "::ffff:0.0.0.0/100",
    ] {
        let mut spec = trunk_spec();
        spec.inbound.as_mut().expect("inbound").allowed_sources = vec![wide.into()];
        assert!(validate::trunk(&spec).is_err(), "{wide} without auth");
        spec.inbound.as_mut().expect("inbound").auth = Some(InboundAuth {
            secret_ref: SecretRef { name: "x".into() },
            realm: None,
        });
        assert_eq!(validate::trunk(&spec), Ok(()), "{wide} with digest auth");
    }
}

#[test]
fn agent_egress_networks_are_private_ranges_carried_on_every_agent() {
    let mut i = inputs();
    let key = ObjectKey::new("ns", "carrier");
    let t = i.trunks.get_mut(&key).expect("trunk");
    t.spec.agent_egress = Some(crate::crd::AgentEgress {
        allowed_networks: vec!["10.96.0.0/12".into(), "fd00::/8".into()],
    });
    t.spec.inbound.as_mut().expect("inbound").default_agent = Some(AgentSpec {
        url: "ws://agent.ns.svc/".into(),
        ..number_spec("+14155550100", "carrier").agent.expect("agent")
    });
    let r = resolve(&i);
    let want = vec!["10.96.0.0/12".to_string(), "fd00::/8".to_string()];
    let tc = &r.config.trunks[0];
    let default = tc
        .inbound
        .as_ref()
        .and_then(|i| i.default_agent.as_ref())
        .expect("default agent");
    assert_eq!(default.egress_allowed_networks, want);
    let number_agent = r.config.numbers[0].agent.as_ref().expect("agent");
    assert_eq!(number_agent.egress_allowed_networks, want);

    for bad in [
        "127.0.0.0/8",
        "169.254.169.254",
        "0.0.0.0/0",
        "8.8.8.0/24",
        "10.0.0.0/7",
        "fe80::/10",
    ] {
        let mut spec = trunk_spec();
        spec.agent_egress = Some(crate::crd::AgentEgress {
            allowed_networks: vec![bad.into()],
        });
        let err = validate::trunk(&spec).expect_err(bad);
        assert!(err.contains("spec.agentEgress.allowedNetworks[0]"), "{err}");
    }
}

#[test]
fn media_source_defaults_to_any_and_converts() {
    let r = resolve(&inputs());
    let media = r.config.trunks[0].media.clone().expect("media");
    assert_eq!(media.media_source(), pb::MediaSource::Any);
    let mut i = inputs();
    let key = ObjectKey::new("ns", "carrier");
    let t = i.trunks.get_mut(&key).expect("trunk");
    t.spec = serde_json::from_value(serde_json::json!({
        "inbound": {"allowedSources": ["203.0.113.0/24"]},
        "outbound": {
            "gateways": [{"host": "sip.example.net"}],
            "auth": {"secretRef": {"name": "carrier-creds"}}
        },
        "media": {"mediaSource": "signalling-network"}
    }))
    .expect("trunk spec");
    let r = resolve(&i);
    let media = r.config.trunks[0].media.clone().expect("media");
    assert_eq!(media.media_source(), pb::MediaSource::SignallingNetwork);
    assert!(
        serde_json::from_value::<SipTrunkSpec>(
            serde_json::json!({"media": {"mediaSource": "anywhere"}})
        )
        .is_err(),
        "unknown values are refused"
    );
}

#[test]
fn media_encryption_reaches_the_nodes_and_keys_over_plain_sip_are_flagged() {
    use crate::crd::MediaEncryption;
    let key = ObjectKey::new("ns", "carrier");
    for (encryption, allow, reason, want) in [
        (
            MediaEncryption::Disabled,
            true,
            reason::ACCEPTED,
            pb::MediaEncryption::Disabled,
        ),
        (
            MediaEncryption::Optional,
            false,
            reason::ACCEPTED,
            pb::MediaEncryption::Optional,
        ),
        (
            MediaEncryption::Required,
            true,
            reason::SDES_WITHOUT_TLS,
            pb::MediaEncryption::Required,
        ),
    ] {
        let mut i = inputs();
        let t = i.trunks.get_mut(&key).expect("trunk");
        t.spec.media.encryption = encryption;
        t.spec.media.allow_sdes_without_tls = allow;
        let r = resolve(&i);
        let v = &r.trunks[&key];
        assert!(v.usable(), "{v:?}");
        assert_eq!(v.accepted.reason, reason, "{v:?}");
        let media = r.config.trunks[0].media.clone().expect("media");
        assert_eq!(media.encryption(), want);
        assert_eq!(media.allow_sdes_without_tls, allow);
    }
    // The manifest spelling.
    let spec: SipTrunkSpec = serde_json::from_value(serde_json::json!({
        "media": {"encryption": "required", "allowSdesWithoutTls": true}
    }))
    .expect("parses");
    assert_eq!(spec.media.encryption, MediaEncryption::Required);
    assert!(spec.media.allow_sdes_without_tls);
}

#[test]
fn outbound_tls_secrets_reach_the_node_and_missing_ones_are_reported() {
    use crate::crd::{OutboundTls, SecretRef};
    let key = ObjectKey::new("ns", "carrier");
    let mut i = inputs();
    let t = i.trunks.get_mut(&key).expect("trunk");
    t.spec.outbound.as_mut().expect("outbound").tls = Some(OutboundTls {
        ca_secret_ref: Some(SecretRef {
            name: "carrier-ca".into(),
        }),
        client_certificate_secret_ref: Some(SecretRef {
            name: "node-client".into(),
        }),
    });
    // Without the Secrets: ResolvedRefs false, naming the field.
    let r = resolve(&i);
    let v = &r.trunks[&key];
    assert!(!v.resolved_refs.ok, "{v:?}");
    assert_eq!(v.resolved_refs.reason, reason::SECRET_NOT_FOUND);
    assert!(
        v.resolved_refs.message.contains("spec.outbound.tls"),
        "{v:?}"
    );
    let secret = |type_: &str, pairs: &[(&str, &str)]| SecretData {
        type_: Some(type_.into()),
        data: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    };
    i.secrets.insert(
        ObjectKey::new("ns", "carrier-ca"),
        secret("Opaque", &[("ca.crt", "-----BEGIN CERTIFICATE-----\nCA\n")]),
    );
    i.secrets.insert(
        ObjectKey::new("ns", "node-client"),
        secret(
            "kubernetes.io/tls",
            &[("tls.crt", "CERT"), ("tls.key", "PRIVATE-KEY-VALUE")],
        ),
    );
    let r = resolve(&i);
    let v = &r.trunks[&key];
    assert!(v.usable(), "{v:?}");
    let tls = r.config.trunks[0]
        .outbound
        .as_ref()
        .and_then(|o| o.tls.clone())
        .expect("tls");
    assert!(tls.ca_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        (tls.client_cert_pem.as_str(), tls.client_key_pem.as_str()),
        ("CERT", "PRIVATE-KEY-VALUE")
    );
    assert!(
        !format!("{:?}", r.config).contains("PRIVATE-KEY-VALUE"),
        "the key never prints"
    );
    // A client certificate Secret of another type is refused.
    i.secrets.insert(
        ObjectKey::new("ns", "node-client"),
        secret(
            "kubernetes.io/basic-auth",
            &[("tls.crt", "C"), ("tls.key", "K")],
        ),
    );
    let v = &resolve(&i).trunks[&key];
    assert_eq!(v.resolved_refs.reason, reason::INVALID_SECRET, "{v:?}");
}

#[test]
fn a_tls_gateway_without_a_port_uses_5061() {
    use crate::crd::Transport;
    let key = ObjectKey::new("ns", "carrier");
    let mut i = inputs();
    let t = i.trunks.get_mut(&key).expect("trunk");
    let gw = &mut t.spec.outbound.as_mut().expect("outbound").gateways[0];
    gw.port = None;
    gw.transport = Transport::Tls;
    let r = resolve(&i);
    let g = &r.config.trunks[0]
        .outbound
        .as_ref()
        .expect("outbound")
        .gateways[0];
    assert_eq!((g.port, g.transport()), (5061, pb::Transport::Tls));
    let gw = &mut i
        .trunks
        .get_mut(&key)
        .expect("trunk")
        .spec
        .outbound
        .as_mut()
        .expect("o")
        .gateways[0];
    gw.transport = Transport::Udp;
    let r = resolve(&i);
    assert_eq!(
        r.config.trunks[0].outbound.as_ref().expect("o").gateways[0].port,
        5060
    );
}

#[test]
fn transfer_policy_reaches_the_nodes() {
    let mut i = inputs();
    let mut r = resolve(&i);
    assert_eq!(
        r.config.trunks[0].transfer, None,
        "absent: refused on the node"
    );
    for t in i.trunks.values_mut() {
        t.spec.transfer = Some(crate::crd::TrunkTransfer {
            mode: crate::crd::TransferMode::Refer,
            allowed_targets: vec!["+1415".into(), "44207".into()],
            no_progress: true,
            caller_id: "+15550009999".into(),
        });
    }
    r = resolve(&i);
    let t = r.config.trunks[0].transfer.as_ref().expect("transfer");
    assert_eq!(t.mode(), pb::TransferMode::Refer);
    assert_eq!(t.allowed_targets, ["+1415", "44207"]);
    assert!(t.no_progress);
    assert_eq!(t.caller_id, "+15550009999");
}

#[test]
fn an_owned_number_becomes_the_same_input_as_a_borrowed_one() {
    let full: crate::crd::PhoneNumber = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "PhoneNumber",
        "metadata": {"name": "n", "namespace": "ns", "generation": 3,
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"number": "+14155550100", "trunkRef": {"name": "t"},
                 "agent": {"url": "wss://agent.example/ws", "parameters": {"a": "1"}}}
    }))
    .expect("number");
    let bare: crate::crd::PhoneNumber = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "PhoneNumber",
        "metadata": {"name": "m"},
        "spec": {"number": "+14155550101", "trunkRef": {"name": "t"}}
    }))
    .expect("number");
    for n in [full, bare] {
        let borrowed = NumberInput::from_object(&n);
        assert_eq!(NumberInput::from_owned(n), borrowed);
    }
}
