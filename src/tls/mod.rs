//! The operator's own TLS: a private CA and the serving certificates of the token server and
//! the injection webhook, issued by the controller with rcgen.
//!
//! Data model. The CA lives in one operator-owned Secret in the operator namespace (only
//! the controller reads it): `ca.crt`, `ca.key`, and during a CA rotation `previous.crt`
//! and `rotated-at`. Every serving certificate is a `kubernetes.io/tls` Secret beside it:
//! `tls.crt`, `tls.key` and `ca.crt` — the trust bundle (current CA, plus the previous one
//! during the overlap), which is also what the MutatingWebhookConfiguration's `caBundle`
//! gets.
//!
//! Rotation never leaves a client that trusts the bundle without a working chain:
//! 1. a new CA is made at 2/3 of the old one's life; the bundle becomes new + old, and the
//!    serving certificates stay as they are;
//! 2. once the bundle had `propagation` to reach every client (the apiserver reads
//!    `caBundle` at once, kubelets update mounted Secrets within a minute or two), the
//!    serving certificates are re-issued by the new CA;
//! 3. once every serving certificate comes from the new CA and had `propagation` to be
//!    loaded by the servers, the old CA leaves the bundle.
//!
//! A serving certificate is also re-issued at 2/3 of its life (cert-manager's default) and
//! when its names change. Every decision below is a pure function of the clock and what the
//! Secrets hold; [`manager`] does the reading and writing.

pub mod manager;
pub mod serve;

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Keys of the CA Secret.
pub mod ca_keys {
    /// The current CA certificate (PEM).
    pub const CERT: &str = "ca.crt";
    /// The current CA key (PKCS#8 PEM).
    pub const KEY: &str = "ca.key";
    /// The CA it replaced, still trusted during the overlap.
    pub const PREVIOUS: &str = "previous.crt";
    /// When the current CA replaced the previous one (Unix seconds).
    pub const ROTATED_AT: &str = "rotated-at";
}

/// Keys of a serving-certificate Secret (`kubernetes.io/tls`, plus the trust bundle).
pub mod tls_keys {
    /// The certificate (PEM).
    pub const CERT: &str = "tls.crt";
    /// Its key (PKCS#8 PEM).
    pub const KEY: &str = "tls.key";
    /// The CAs a client should trust (PEM, one or two certificates).
    pub const CA: &str = "ca.crt";
}

/// Annotation on a serving-certificate Secret: the fingerprint of the CA that issued it.
pub const ISSUED_BY: &str = "s2s.dev/issued-by";

/// What can go wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A stored certificate or key is unreadable.
    #[error("{0}")]
    Invalid(String),
}

/// Lifetimes and the overlap.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Life of a CA.
    pub ca_lifetime: Duration,
    /// Life of a serving certificate (capped by its CA's).
    pub cert_lifetime: Duration,
    /// How long a new trust bundle (and a new serving certificate) takes to reach every
    /// client and server.
    pub propagation: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ca_lifetime: Duration::from_secs(365 * 24 * 3600),
            cert_lifetime: Duration::from_secs(90 * 24 * 3600),
            propagation: Duration::from_secs(5 * 60),
        }
    }
}

/// Where 2/3 of a validity period lies.
pub fn renewal_time(not_before: u64, not_after: u64) -> u64 {
    not_before + not_after.saturating_sub(not_before) * 2 / 3
}

/// A CA this process can sign with.
#[derive(Clone, Debug, PartialEq)]
pub struct Authority {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Key, PKCS#8 PEM.
    pub key_pem: String,
    /// Validity (Unix seconds).
    pub not_before: u64,
    /// Validity (Unix seconds).
    pub not_after: u64,
}

impl Authority {
    /// A new self-signed CA valid from `now` for `lifetime`.
    pub fn new(now: u64, lifetime: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "s2s-operator");
        // A CN per CA, so two generations are told apart in any tool's output.
        dn.push(DnType::CommonName, format!("s2s-operator CA {now}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now)?;
        params.not_after = at(now + lifetime.as_secs())?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before: now,
            not_after: now + lifetime.as_secs(),
        })
    }

    /// The CA stored as `cert_pem` and `key_pem`.
    pub fn parse(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let (not_before, not_after, _) = validity(cert_pem)?;
        // Fails on a key that is not PEM PKCS#8 (the error names no content).
        KeyPair::from_pem(key_pem).map_err(|_| TlsError::Invalid("CA key unreadable".into()))?;
        Ok(Authority {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_before,
            not_after,
        })
    }

    /// A short fingerprint of the certificate (hex of the first 16 bytes of its SHA-256).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_pem)
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid from `now` for
    /// `lifetime` or until this CA expires, whichever is first.
    pub fn issue(&self, names: &[String], now: u64, lifetime: Duration) -> Result<Leaf, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "s2s-operator");
        if let Some(first) = names.first() {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = (now + lifetime.as_secs()).min(self.not_after);
        params.not_before = at(now)?;
        params.not_after = at(not_after)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before: now,
            not_after,
            names: names.to_vec(),
            issued_by: self.fingerprint(),
        })
    }
}

/// A serving certificate as issued or as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Key, PKCS#8 PEM.
    pub key_pem: String,
    /// Validity (Unix seconds).
    pub not_before: u64,
    /// Validity (Unix seconds).
    pub not_after: u64,
    /// Its subject alternative names, as given to [`Authority::issue`].
    pub names: Vec<String>,
    /// [`Authority::fingerprint`] of its issuer.
    pub issued_by: String,
}

impl Leaf {
    /// The certificate stored as `cert_pem` (its key is not checked here: the servers do).
    pub fn parse(cert_pem: &str, key_pem: &str, issued_by: &str) -> Result<Self, TlsError> {
        let (not_before, not_after, names) = validity(cert_pem)?;
        Ok(Leaf {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_before,
            not_after,
            names,
            issued_by: issued_by.to_owned(),
        })
    }
}

/// The CA Secret's content.
#[derive(Clone, Debug, PartialEq)]
pub struct CaRecord {
    /// The CA that signs.
    pub current: Authority,
    /// The CA it replaced (certificate PEM), trusted until step 3 of the rotation.
    pub previous: Option<String>,
    /// When `current` replaced `previous`.
    pub rotated_at: u64,
}

impl CaRecord {
    /// The trust bundle: the current CA, then the previous one.
    pub fn bundle(&self) -> String {
        let mut b = self.current.cert_pem.trim_end().to_owned();
        b.push('\n');
        if let Some(p) = &self.previous {
            b.push_str(p.trim_end());
            b.push('\n');
        }
        b
    }

    /// The Secret data.
    pub fn to_data(&self) -> std::collections::BTreeMap<String, String> {
        let mut d = std::collections::BTreeMap::new();
        d.insert(ca_keys::CERT.into(), self.current.cert_pem.clone());
        d.insert(ca_keys::KEY.into(), self.current.key_pem.clone());
        d.insert(ca_keys::ROTATED_AT.into(), self.rotated_at.to_string());
        if let Some(p) = &self.previous {
            d.insert(ca_keys::PREVIOUS.into(), p.clone());
        }
        d
    }

    /// Reads the Secret data back.
    pub fn from_data(d: &std::collections::BTreeMap<String, String>) -> Result<Self, TlsError> {
        let get = |k: &str| {
            d.get(k)
                .ok_or_else(|| TlsError::Invalid(format!("CA Secret has no {k}")))
        };
        let current = Authority::parse(get(ca_keys::CERT)?, get(ca_keys::KEY)?)?;
        let rotated_at = d
            .get(ca_keys::ROTATED_AT)
            .and_then(|s| s.parse().ok())
            .unwrap_or(current.not_before);
        let previous = d.get(ca_keys::PREVIOUS).filter(|p| validity(p).is_ok());
        Ok(CaRecord {
            current,
            previous: previous.cloned(),
            rotated_at,
        })
    }
}

/// What to do with the CA.
#[derive(Debug, PartialEq)]
pub enum CaAction {
    /// Nothing.
    Keep,
    /// No usable CA: make one (nothing can be trusted yet, so no overlap).
    Create(&'static str),
    /// Make a new CA; the current one becomes `previous`.
    Rotate,
    /// The overlap is over: the previous CA leaves the bundle.
    DropPrevious,
}

/// The CA decision. `leaves` are the serving certificates as they are now; `record` is
/// `Err` when the Secret exists but cannot be read.
pub fn ca_action(
    now: u64,
    record: Option<&Result<CaRecord, TlsError>>,
    leaves: &[Option<Leaf>],
    policy: &Policy,
) -> CaAction {
    let r = match record {
        None => return CaAction::Create("NoCA"),
        Some(Err(_)) => return CaAction::Create("CAUnreadable"),
        Some(Ok(r)) => r,
    };
    if now >= r.current.not_after {
        return CaAction::Create("CAExpired");
    }
    if let Some(prev) = &r.previous {
        let prev_expired = validity(prev).is_ok_and(|(_, na, _)| now >= na);
        let current = r.current.fingerprint();
        let switched = leaves.iter().all(|l| {
            l.as_ref().is_some_and(|l| {
                l.issued_by == current && now >= l.not_before + policy.propagation.as_secs()
            })
        });
        if prev_expired || switched {
            return CaAction::DropPrevious;
        }
        // One rotation at a time.
        return CaAction::Keep;
    }
    if now >= renewal_time(r.current.not_before, r.current.not_after) {
        return CaAction::Rotate;
    }
    CaAction::Keep
}

/// Applies a CA decision to what the Secret held.
pub fn apply_ca(
    now: u64,
    action: &CaAction,
    record: Option<CaRecord>,
    policy: &Policy,
) -> Result<CaRecord, TlsError> {
    let fresh = || -> Result<CaRecord, TlsError> {
        Ok(CaRecord {
            current: Authority::new(now, policy.ca_lifetime)?,
            previous: None,
            rotated_at: now,
        })
    };
    match (action, record) {
        (CaAction::Create(_), _) | (_, None) => fresh(),
        (CaAction::Keep, Some(r)) => Ok(r),
        (CaAction::Rotate, Some(r)) => Ok(CaRecord {
            current: Authority::new(now, policy.ca_lifetime)?,
            previous: Some(r.current.cert_pem),
            rotated_at: now,
        }),
        (CaAction::DropPrevious, Some(r)) => Ok(CaRecord {
            previous: None,
            ..r
        }),
    }
}

/// Why a serving certificate must be (re-)issued, or `None`.
pub fn reissue_reason(
    now: u64,
    leaf: Option<&Leaf>,
    names: &[String],
    ca: &CaRecord,
    policy: &Policy,
) -> Option<&'static str> {
    let Some(l) = leaf else {
        return Some("Missing");
    };
    if now >= l.not_after {
        return Some("Expired");
    }
    let mut have = l.names.clone();
    let mut want = names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Some("NamesChanged");
    }
    let by_current = l.issued_by == ca.current.fingerprint();
    let new_ca_trusted = now >= ca.rotated_at + policy.propagation.as_secs();
    if !by_current && (new_ca_trusted || ca.previous.is_none()) {
        // Issued by a CA that is no longer in the bundle (or about to leave it).
        return Some("IssuerRotated");
    }
    // A renewal by the current CA waits while a new CA is still propagating: the old CA's
    // key is gone, and a certificate from the new one could reach a client before its CA.
    if now >= renewal_time(l.not_before, l.not_after) && (by_current || new_ca_trusted) {
        return Some("RenewalDue");
    }
    None
}

/// One pass of decisions: what the CA Secret and each serving certificate should become.
#[derive(Debug)]
pub struct Plan {
    /// The CA record in force after this pass.
    pub record: CaRecord,
    /// What happened to the CA (`Keep`: its Secret stays as it is).
    pub ca: CaAction,
    /// Per target: the reason a new certificate was issued, or `None` if it keeps its own.
    pub issued: Vec<Option<&'static str>>,
    /// Per target: the certificate it holds after this pass.
    pub leaves: Vec<Leaf>,
}

/// Decides one pass from what the Secrets hold: `record` is `Err` for a CA Secret that
/// cannot be read, `leaves[i]` what target `i` holds, `names[i]` the names it must carry.
pub fn plan(
    now: u64,
    record: Option<Result<CaRecord, TlsError>>,
    leaves: Vec<Option<Leaf>>,
    names: &[Vec<String>],
    policy: &Policy,
) -> Result<Plan, TlsError> {
    let ca = ca_action(now, record.as_ref(), &leaves, policy);
    let record = apply_ca(now, &ca, record.and_then(Result::ok), policy)?;
    let mut issued = vec![];
    let mut held = vec![];
    for (leaf, names) in leaves.into_iter().zip(names) {
        match (
            reissue_reason(now, leaf.as_ref(), names, &record, policy),
            leaf,
        ) {
            (None, Some(kept)) => {
                held.push(kept);
                issued.push(None);
            }
            (reason, _) => {
                held.push(record.current.issue(names, now, policy.cert_lifetime)?);
                issued.push(Some(reason.unwrap_or("Missing")));
            }
        }
    }
    Ok(Plan {
        record,
        ca,
        issued,
        leaves: held,
    })
}

/// When something may next change, for the manager's sleep.
pub fn next_check(now: u64, ca: &CaRecord, leaves: &[Leaf], policy: &Policy) -> u64 {
    let mut t = vec![
        renewal_time(ca.current.not_before, ca.current.not_after),
        ca.current.not_after,
    ];
    if ca.previous.is_some() {
        t.push(ca.rotated_at + policy.propagation.as_secs());
    }
    for l in leaves {
        t.push(renewal_time(l.not_before, l.not_after));
        t.push(l.not_before + policy.propagation.as_secs());
        t.push(l.not_after);
    }
    t.into_iter().filter(|&x| x > now).min().unwrap_or(now + 60)
}

fn at(unix: u64) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .map_err(|e| TlsError::Invalid(e.to_string()))
}

/// Validity and names of the first certificate in a PEM text.
fn validity(cert_pem: &str) -> Result<(u64, u64, Vec<String>), TlsError> {
    use x509_parser::extensions::GeneralName;
    let bad = || TlsError::Invalid("certificate unreadable".into());
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| bad())?;
    let cert = pem.parse_x509().map_err(|_| bad())?;
    let unix = |t: &x509_parser::time::ASN1Time| t.timestamp().max(0) as u64;
    let v = cert.validity();
    let mut names = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        names.push(IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        names.push(IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok((unix(&v.not_before), unix(&v.not_after), names))
}

/// Hex of the first 16 bytes of the SHA-256 of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|d| d.to_vec())
        .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
