use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

const T0: u64 = 1_800_000_000;

fn policy() -> Policy {
    Policy {
        ca_lifetime: Duration::from_secs(300),
        cert_lifetime: Duration::from_secs(90),
        propagation: Duration::from_secs(10),
    }
}

/// Whether a client trusting `bundle` accepts `leaf` for `name` at `now`, as rustls (the
/// token server's clients and the agent) decides it.
fn verifies(bundle: &str, leaf: &Leaf, name: &str, now: u64) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let end = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &end,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(now)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn names() -> Vec<String> {
    vec![
        "s2s-operator-webhook.s2s-system.svc".into(),
        "127.0.0.1".into(),
    ]
}

#[test]
fn an_issued_certificate_verifies_for_its_dns_and_ip_names_only() {
    let ca = Authority::new(T0, Duration::from_secs(3600)).unwrap();
    let leaf = ca.issue(&names(), T0, Duration::from_secs(600)).unwrap();
    verifies(
        &ca.cert_pem,
        &leaf,
        "s2s-operator-webhook.s2s-system.svc",
        T0 + 1,
    )
    .unwrap();
    verifies(&ca.cert_pem, &leaf, "127.0.0.1", T0 + 1).unwrap();
    assert!(verifies(&ca.cert_pem, &leaf, "other.svc", T0 + 1).is_err());
    assert!(verifies(&ca.cert_pem, &leaf, "127.0.0.1", T0 + 601).is_err());
    let other = Authority::new(T0, Duration::from_secs(3600)).unwrap();
    assert!(verifies(&other.cert_pem, &leaf, "127.0.0.1", T0 + 1).is_err());

    // What the manager reads back is what it issued.
    let read = Leaf::parse(&leaf.cert_pem, &leaf.key_pem, &leaf.issued_by).unwrap();
    assert_eq!(read, leaf);
    assert_eq!(read.names, names());
    let ca_read = Authority::parse(&ca.cert_pem, &ca.key_pem).unwrap();
    assert_eq!(ca_read, ca);
    // A certificate never outlives its CA.
    let capped = ca
        .issue(&names(), T0 + 3500, Duration::from_secs(600))
        .unwrap();
    assert_eq!(capped.not_after, T0 + 3600);
}

#[test]
fn the_ca_secret_round_trips_and_an_unreadable_one_is_replaced() {
    let p = policy();
    let r = apply_ca(T0, &CaAction::Create("NoCA"), None, &p).unwrap();
    let back = CaRecord::from_data(&r.to_data()).unwrap();
    assert_eq!(back, r);
    let mut broken = r.to_data();
    broken.insert(ca_keys::KEY.into(), "not a key".into());
    let err = CaRecord::from_data(&broken).unwrap_err();
    assert!(!err.to_string().contains("not a key"), "{err}");
    assert_eq!(
        ca_action(T0, Some(&Err(err)), &[], &p),
        CaAction::Create("CAUnreadable")
    );
    assert_eq!(ca_action(T0, None, &[], &p), CaAction::Create("NoCA"));
    assert_eq!(
        ca_action(T0 + 300, Some(&Ok(r)), &[], &p),
        CaAction::Create("CAExpired")
    );
}

#[test]
fn names_changed_or_renewal_due_reissue() {
    let p = policy();
    let r = apply_ca(T0, &CaAction::Create("NoCA"), None, &p).unwrap();
    let leaf = r.current.issue(&names(), T0, p.cert_lifetime).unwrap();
    assert_eq!(reissue_reason(T0 + 1, Some(&leaf), &names(), &r, &p), None);
    assert_eq!(
        reissue_reason(T0 + 1, None, &names(), &r, &p),
        Some("Missing")
    );
    assert_eq!(
        reissue_reason(T0 + 1, Some(&leaf), &["x.svc".into()], &r, &p),
        Some("NamesChanged")
    );
    assert_eq!(
        reissue_reason(T0 + 60, Some(&leaf), &names(), &r, &p),
        Some("RenewalDue")
    );
}

/// A day of a cluster's life at 1 s steps with short lifetimes: CA rotations, renewals.
/// Servers load a new certificate and clients learn a new bundle up to `propagation - 1` s
/// late (both at once, the worst case); at every second every such client must accept every
/// such server, and the bundle must be back to one CA between rotations.
#[test]
fn across_ca_rotations_every_lagging_client_accepts_every_lagging_server() {
    let p = policy();
    let lag = p.propagation.as_secs() - 1;
    let names = vec![
        names(),
        vec!["s2s-operator-token-server.s2s-system.svc".into()],
    ];
    let mut record: Option<CaRecord> = None;
    let mut leaves: Vec<Option<Leaf>> = vec![None, None];
    // (time, bundle, leaves) after each pass.
    let mut history: Vec<(u64, String, Vec<Leaf>)> = vec![];
    let (mut rotations, mut single_again, mut issued) = (0, 0, 0);
    for now in T0..T0 + 1200 {
        let plan = plan(now, record.clone().map(Ok), leaves.clone(), &names, &p).unwrap();
        match plan.ca {
            CaAction::Rotate => rotations += 1,
            CaAction::DropPrevious => single_again += 1,
            _ => {}
        }
        issued += plan.issued.iter().flatten().count();
        leaves = plan.leaves.iter().cloned().map(Some).collect();
        history.push((now, plan.record.bundle(), plan.leaves.clone()));
        record = Some(plan.record);

        let at = |t: u64| &history[(t.max(T0) - T0) as usize];
        for server_lag in [0, lag] {
            for client_lag in [0, lag] {
                let (_, bundle, _) = at(now.saturating_sub(client_lag));
                let (_, _, served) = at(now.saturating_sub(server_lag));
                for (leaf, n) in served.iter().zip(&names) {
                    verifies(bundle, leaf, &n[0], now).unwrap_or_else(|e| {
                        panic!(
                            "at +{}s a client {client_lag}s behind refuses a server {server_lag}s behind: {e}",
                            now - T0
                        )
                    });
                }
            }
        }
    }
    assert!(rotations >= 5, "{rotations} CA rotations");
    assert_eq!(single_again, rotations, "every overlap ended");
    assert!(issued >= 2 * 1200 / 60, "{issued} certificates");
}
