//! `kubectl s2s status KIND/NAME` (or `-A`): what a person checks first.
//!
//! The report is built by pure functions from the object, the TokenGrants and AccessTokens
//! naming it and its Events ([`account_report`], [`grant_report`], [`access_token_report`],
//! [`issuer_report`]), so the wording is unit-tested; a materialized token (a grant's
//! `output`, an AccessToken) is described by the same pieces ([`token_facts`],
//! [`token_line`]) since both keep the same status; [`run`] only fetches. With `-A` it lists every object of the kinds with its
//! Ready condition, one line each.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use super::conn::{Kind, Kube, api_code, api_error, connect, parse_ref};
use super::format::{now_unix, relative, table, unix, when};
use super::{CliError, Global, Output, Result, print_structured};
use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::service_account::CredentialType;
use crate::api::{AccessToken, ServiceAccount, TokenGrant, TokenGrantStatus, TrustedIssuer};

/// How many Events a report shows (the newest).
const EVENTS_SHOWN: usize = 10;

/// `kubectl s2s status`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kubectl s2s status serviceaccount/billing-worker -n billing\n  \
                  kubectl s2s status tokengrant/billing-worker -n orders -o yaml\n  \
                  kubectl s2s status accesstoken/orders-token -n billing\n  \
                  kubectl s2s status -A\n  kubectl s2s status tokengrants -A"
)]
pub struct StatusArgs {
    /// `KIND/NAME` (serviceaccount, trustedissuer, tokengrant, accesstoken; short names
    /// s2ssa, tiss, tgrant, s2stoken), or with `-A` just a KIND, or nothing for all four.
    pub target: Option<String>,
    /// Every namespace: one line per object.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// One line of a report's summary.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Fact {
    /// What.
    pub label: String,
    /// Its value.
    pub value: String,
}

/// A condition as shown.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    /// Type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Last transition (RFC 3339).
    pub since: String,
}

/// A TokenGrant naming the account.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantLine {
    /// `namespace/name`.
    pub grant: String,
    /// Audience.
    pub audience: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Ready status and reason.
    pub ready: String,
}

/// A token materialized into a Secret by a TokenGrant's `output`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenLine {
    /// `namespace/name` of the grant.
    pub grant: String,
    /// The Secret holding it.
    pub secret: String,
    /// When it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// When it is renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews: Option<String>,
}

/// An AccessToken kept for the account (in its namespace).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenLine {
    /// Name (in the account's namespace).
    pub name: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// The Secret holding it.
    pub secret: String,
    /// Ready status and reason.
    pub ready: String,
    /// When it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// When it is renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews: Option<String>,
}

/// An Event as shown.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// When (Unix seconds; the newest occurrence).
    pub time: i64,
    /// How many times.
    pub count: i32,
    /// Message.
    pub message: String,
}

/// What `status` prints for one object.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Summary lines.
    pub summary: Vec<Fact>,
    /// Conditions.
    pub conditions: Vec<ConditionLine>,
    /// TokenGrants that let this account reach audiences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantLine>,
    /// Tokens materialized for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenLine>,
    /// AccessTokens in the account's namespace for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_tokens: Vec<AccessTokenLine>,
    /// Recent Events, oldest first.
    pub events: Vec<EventLine>,
    /// What needs attention, and what to do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn fact(label: &str, value: impl Into<String>) -> Fact {
    Fact {
        label: label.into(),
        value: value.into(),
    }
}

fn status_word(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

fn condition_lines(conds: &[Condition], now: i64) -> Vec<ConditionLine> {
    conds
        .iter()
        .map(|c| ConditionLine {
            type_: c.type_.clone(),
            status: status_word(c.status).into(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            since: when(unix(&c.last_transition_time), now),
        })
        .collect()
}

/// Notes common to every kind: no status yet, a stale status, not Ready.
fn readiness_notes(
    kind: Kind,
    generation: Option<i64>,
    observed: Option<i64>,
    conds: &[Condition],
) -> Vec<String> {
    let mut notes = vec![];
    let ready = conds.iter().find(|c| c.type_ == "Ready");
    match (ready, observed) {
        (None, _) => notes.push(format!(
            "no Ready condition yet: the controller has not reconciled this {} (is it running? \
             `kubectl s2s check`)",
            kind.singular()
        )),
        (Some(_), Some(o)) if generation.is_some_and(|g| g > o) => notes.push(format!(
            "the status describes generation {o}, the object is at {}: the controller has not \
             caught up yet (is it running? `kubectl s2s check`)",
            generation.unwrap_or_default()
        )),
        (Some(c), _) if c.status != ConditionStatus::True => notes.push(format!(
            "not Ready ({}): {}",
            c.reason,
            if c.message.is_empty() {
                "see the Events below"
            } else {
                &c.message
            }
        )),
        _ => {}
    }
    notes
}

fn event_lines(events: &[Event]) -> Vec<EventLine> {
    let mut lines: Vec<EventLine> = events
        .iter()
        .map(|e| EventLine {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            time: e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0.as_second()))
                .or_else(|| e.last_timestamp.as_ref().map(unix))
                .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
                .or_else(|| e.first_timestamp.as_ref().map(unix))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(unix))
                .unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
                .max(1),
            message: e.message.clone().unwrap_or_default(),
        })
        .collect();
    lines.sort_by_key(|l| l.time);
    let skip = lines.len().saturating_sub(EVENTS_SHOWN);
    lines.split_off(skip)
}

/// Whether `g` names `sa` as its subject.
pub fn grant_names(g: &TokenGrant, sa_ns: &str, sa_name: &str) -> bool {
    let own = g.namespace().unwrap_or_default();
    g.spec
        .subject
        .service_account
        .as_ref()
        .is_some_and(|r| r.name == sa_name && r.namespace_or(&own) == sa_ns)
}

fn ready_of(conds: &[Condition]) -> String {
    conds
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{} ({})", status_word(c.status), c.reason))
        .unwrap_or_else(|| "Unknown (not reconciled)".into())
}

/// A materialized token's line: whose it is, its Secret, expiry and renewal.
pub fn token_line(owner: String, secret: &str, st: &TokenGrantStatus, now: i64) -> TokenLine {
    TokenLine {
        grant: owner,
        secret: secret.to_owned(),
        expires: st.not_after.as_ref().map(|t| when(unix(t), now)),
        renews: st.renewal_time.as_ref().map(|t| when(unix(t), now)),
    }
}

/// What the status says of a materialized token (a grant's `output`, an AccessToken): when it
/// was issued, its id, expiry (and time left), renewal and revision.
pub fn token_facts(st: &TokenGrantStatus, now: i64) -> Vec<Fact> {
    let mut facts = vec![];
    if let Some(t) = &st.last_issued {
        facts.push(fact("Last issued", when(unix(t), now)));
    }
    if let Some(id) = &st.token_id {
        facts.push(fact("Token ID", id));
    }
    match &st.not_after {
        Some(t) if unix(t) <= now => {
            facts.push(fact("Expires", format!("{}: expired", when(unix(t), now))));
        }
        Some(t) => facts.push(fact("Expires", when(unix(t), now))),
        None => facts.push(fact("Expires", "(no token issued)")),
    }
    if let Some(t) = &st.renewal_time {
        facts.push(fact("Renews", when(unix(t), now)));
    }
    if let Some(r) = st.revision {
        facts.push(fact("Revision", r.to_string()));
    }
    facts
}

/// Whether `t` is for the account `sa_ns/sa_name` (an AccessToken names an account of its
/// own namespace).
pub fn access_token_names(t: &AccessToken, sa_ns: &str, sa_name: &str) -> bool {
    t.namespace().as_deref() == Some(sa_ns) && t.spec.service_account_name == sa_name
}

fn access_token_line(t: &AccessToken, now: i64) -> AccessTokenLine {
    let st = t.status.clone().unwrap_or_default();
    AccessTokenLine {
        name: t.name_any(),
        audiences: t.spec.audiences.clone(),
        secret: t.spec.secret_name.clone(),
        ready: ready_of(&st.conditions),
        expires: st.not_after.as_ref().map(|x| when(unix(x), now)),
        renews: st.renewal_time.as_ref().map(|x| when(unix(x), now)),
    }
}

/// The report of a ServiceAccount, from it, the grants and AccessTokens naming it and its
/// Events.
pub fn account_report(
    sa: &ServiceAccount,
    grants: &[TokenGrant],
    access_tokens: &[AccessToken],
    events: &[Event],
    now: i64,
) -> Report {
    let ns = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let status = sa.status.clone().unwrap_or_default();
    let mut summary = vec![];
    if let Some(id) = &status.client_id {
        summary.push(fact("Client ID", id));
    }
    if sa.spec.disabled {
        summary.push(fact("Disabled", "yes (spec.disabled): no token is issued"));
    }
    let auth = sa.spec.authentication.as_ref();
    let client_secret = auth.and_then(|a| a.client_secret.as_ref());
    let private_key = auth.and_then(|a| a.private_key_jwt.as_ref());
    if let Some(c) = client_secret {
        let every = c
            .rotate_every
            .as_ref()
            .map(|d| format!(", rotates every {d}"))
            .unwrap_or_default();
        summary.push(fact(
            "Client secret",
            format!("in Secret {}{every}", c.secret_name),
        ));
    }
    if let Some(k) = private_key {
        let every = k
            .rotate_every
            .as_ref()
            .map(|d| format!(", rotates every {d}"))
            .unwrap_or_default();
        summary.push(fact(
            "Private key",
            format!("{:?} in Secret {}{every}", k.algorithm, k.secret_name),
        ));
    }
    if let Some(f) = auth.and_then(|a| a.federated.as_ref()) {
        let issuers: Vec<String> = f
            .iter()
            .map(|i| format!("{} as {}", i.issuer_ref.name, i.subject))
            .collect();
        summary.push(fact("Federated", issuers.join(", ")));
    }
    if let Some(api) = &sa.spec.api {
        summary.push(fact("Exposes API", &api.audience));
    }
    if !sa.spec.scopes.is_empty() {
        summary.push(fact("Scopes", sa.spec.scopes.join(" ")));
    }
    if !sa.spec.audiences.is_empty() {
        summary.push(fact("Audiences", sa.spec.audiences.join(" ")));
    }
    let mut notes = vec![];
    match &status.current_credential {
        Some(c) => {
            let what = match c.type_ {
                CredentialType::ClientSecret => "client secret",
                CredentialType::PrivateKey => "private key",
            };
            summary.push(fact(
                "Current credential",
                format!(
                    "{what} {}, created {}",
                    c.id,
                    relative(unix(&c.created), now)
                ),
            ));
            summary.push(fact(
                "Next rotation",
                match &c.expires {
                    Some(t) => when(unix(t), now),
                    None => format!(
                        "on demand only (`kubectl s2s rotate serviceaccount/{name} -n {ns}`)"
                    ),
                },
            ));
        }
        None if client_secret.is_some() || private_key.is_some() => {
            notes.push("no credential issued yet (see the conditions and Events)".into());
        }
        None => {}
    }
    for v in &status.credentials {
        if let Some(until) = &v.not_after
            && unix(until) > now
        {
            let what = match v.type_ {
                CredentialType::ClientSecret => "previous client secret",
                CredentialType::PrivateKey => "previous private key",
            };
            summary.push(fact(
                "Grace",
                format!(
                    "{what} {} still works until {}",
                    v.id,
                    when(unix(until), now)
                ),
            ));
        }
    }
    let mine: Vec<&TokenGrant> = grants
        .iter()
        .filter(|g| grant_names(g, &ns, &name))
        .collect();
    let grant_lines = mine
        .iter()
        .map(|g| {
            let conds = g
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            GrantLine {
                grant: format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any()),
                audience: g.spec.audience.clone(),
                scopes: g.spec.scopes.clone(),
                ready: if g.spec.revoked {
                    "Revoked (spec.revoked)".into()
                } else {
                    ready_of(&conds)
                },
            }
        })
        .collect::<Vec<_>>();
    let tokens = mine
        .iter()
        .filter_map(|g| {
            let out = g.spec.output.as_ref()?;
            let st = g.status.clone().unwrap_or_default();
            let owner = format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any());
            Some(token_line(owner, &out.secret_name, &st, now))
        })
        .collect();
    let access_tokens = access_tokens
        .iter()
        .filter(|t| access_token_names(t, &ns, &name))
        .map(|t| access_token_line(t, now))
        .collect();
    if grant_lines.is_empty() && !sa.spec.disabled && sa.spec.api.is_none() {
        notes.push(format!(
            "no TokenGrant names this account, so it gets no token for any audience (a grant in \
             the API owner's namespace with subject.serviceAccount {{name: {name}, namespace: {ns}}})"
        ));
    }
    let mut all_notes = readiness_notes(
        Kind::ServiceAccount,
        sa.metadata.generation,
        status.observed_generation,
        &status.conditions,
    );
    all_notes.extend(notes);
    Report {
        kind: "ServiceAccount".into(),
        namespace: ns,
        name,
        summary,
        conditions: condition_lines(&status.conditions, now),
        grants: grant_lines,
        tokens,
        access_tokens,
        events: event_lines(events),
        notes: all_notes,
    }
}

/// The report of a TokenGrant.
pub fn grant_report(g: &TokenGrant, events: &[Event], now: i64) -> Report {
    let ns = g.namespace().unwrap_or_default();
    let st = g.status.clone().unwrap_or_default();
    let mut summary = vec![];
    let s = &g.spec.subject;
    if let Some(r) = &s.service_account {
        summary.push(fact(
            "Subject",
            format!("serviceaccount {}/{}", r.namespace_or(&ns), r.name),
        ));
    }
    if let (Some(i), Some(sub)) = (&s.issuer_ref, &s.subject) {
        summary.push(fact(
            "Subject",
            format!(
                "{sub} from trustedissuer {}/{}",
                i.namespace_or(&ns),
                i.name
            ),
        ));
    }
    summary.push(fact("Audience", &g.spec.audience));
    summary.push(fact("Scopes", g.spec.scopes.join(" ")));
    if let Some(t) = &g.spec.tenant {
        summary.push(fact("Tenant", t));
    }
    if let Some(d) = &g.spec.delegation {
        summary.push(fact(
            "Delegation",
            format!(
                "on behalf of {} subject(s) from {} issuer(s)",
                d.subjects.len(),
                d.issuers.len()
            ),
        ));
    }
    if g.spec.revoked {
        summary.push(fact(
            "Revoked",
            "yes (spec.revoked): every token issued under it is void",
        ));
    }
    let mut tokens = vec![];
    if let Some(out) = &g.spec.output {
        summary.push(fact(
            "Output",
            format!("Secret {} (lifetime {})", out.secret_name, out.lifetime),
        ));
        summary.extend(token_facts(&st, now));
        tokens.push(token_line(
            format!("{ns}/{}", g.name_any()),
            &out.secret_name,
            &st,
            now,
        ));
    }
    Report {
        kind: "TokenGrant".into(),
        namespace: ns,
        name: g.name_any(),
        summary,
        conditions: condition_lines(&st.conditions, now),
        grants: vec![],
        tokens,
        access_tokens: vec![],
        events: event_lines(events),
        notes: readiness_notes(
            Kind::TokenGrant,
            g.metadata.generation,
            st.observed_generation,
            &st.conditions,
        ),
    }
}

/// The report of a TrustedIssuer.
pub fn issuer_report(ti: &TrustedIssuer, events: &[Event], now: i64) -> Report {
    let st = ti.status.clone().unwrap_or_default();
    let sp = &ti.spec;
    let mut summary = vec![];
    let source = if let Some(i) = &sp.issuer {
        format!("issuer {i} (discovery)")
    } else if let Some(u) = &sp.jwks_uri {
        format!("JWKS at {u}")
    } else if let Some(j) = &sp.jwks {
        format!("inline JWKS ({} keys)", j.keys.len())
    } else if sp.kubernetes.is_some() {
        "the cluster's service-account issuer".into()
    } else if let Some(a) = &sp.azure {
        format!(
            "Azure AD tenant {} application {}",
            a.tenant_id, a.application_id
        )
    } else {
        "none".into()
    };
    summary.push(fact("Source", source));
    if let Some(i) = &st.issuer {
        summary.push(fact("Issuer", i));
    }
    if let Some(u) = &st.jwks_uri {
        summary.push(fact("JWKS URI", u));
    }
    summary.push(fact(
        "Keys",
        format!(
            "{} {}",
            st.key_count.unwrap_or(0),
            if st.key_ids.is_empty() {
                String::new()
            } else {
                format!("({})", st.key_ids.join(", "))
            }
        )
        .trim_end()
        .to_owned(),
    ));
    if let Some(t) = &st.last_fetch_time {
        summary.push(fact("Last fetch", when(unix(t), now)));
    }
    if let Some(e) = &st.last_error {
        summary.push(fact("Last error", e));
    }
    if !sp.audiences.is_empty() {
        summary.push(fact("Audiences", sp.audiences.join(" ")));
    }
    let mut notes = readiness_notes(
        Kind::TrustedIssuer,
        ti.metadata.generation,
        st.observed_generation,
        &st.conditions,
    );
    if st.key_count == Some(0) {
        notes.push("no keys: no JWT from this issuer can be accepted".into());
    }
    Report {
        kind: "TrustedIssuer".into(),
        namespace: ti.namespace().unwrap_or_default(),
        name: ti.name_any(),
        summary,
        conditions: condition_lines(&st.conditions, now),
        grants: vec![],
        tokens: vec![],
        access_tokens: vec![],
        events: event_lines(events),
        notes,
    }
}

/// The report of an AccessToken: what it asks for, its Secret and the token in it.
pub fn access_token_report(t: &AccessToken, events: &[Event], now: i64) -> Report {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    let st = t.status.clone().unwrap_or_default();
    let sp = &t.spec;
    let mut summary = vec![
        fact(
            "Account",
            format!("serviceaccount {ns}/{}", sp.service_account_name),
        ),
        fact("Audiences", sp.audiences.join(" ")),
        fact(
            "Scopes",
            if sp.scopes.is_empty() {
                "(every scope all the audiences allow)".to_owned()
            } else {
                sp.scopes.join(" ")
            },
        ),
    ];
    let renew = sp
        .renew_before
        .map(|d| format!("renewed {d} before expiry"))
        .unwrap_or_else(|| "renewed a third of it before expiry".into());
    summary.push(fact(
        "Secret",
        format!("{} (lifetime {}, {renew})", sp.secret_name, sp.lifetime),
    ));
    summary.extend(token_facts(&st, now));
    let mut notes = readiness_notes(
        Kind::AccessToken,
        t.metadata.generation,
        st.observed_generation,
        &st.conditions,
    );
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
    if ready.is_some_and(|c| c.reason == crate::api::conditions::reasons::NOT_GRANTED) {
        notes.push(format!(
            "each audience needs a TokenGrant in its owner's namespace with \
             subject.serviceAccount {{name: {}, namespace: {ns}}}",
            sp.service_account_name
        ));
    }
    if let Some(v) = crate::access_token::renewal_request(t, &st) {
        notes.push(format!(
            "renewal requested ({}={v}) and not done yet",
            crate::service_account::ROTATE_ANNOTATION
        ));
    }
    Report {
        kind: "AccessToken".into(),
        namespace: ns,
        name,
        summary,
        conditions: condition_lines(&st.conditions, now),
        grants: vec![],
        tokens: vec![],
        access_tokens: vec![],
        events: event_lines(events),
        notes,
    }
}

/// A report as text.
pub fn render(r: &Report, now: i64) -> String {
    let mut out = format!("{} {}/{}\n", r.kind, r.namespace, r.name);
    let width = r.summary.iter().map(|f| f.label.len()).max().unwrap_or(0);
    for f in &r.summary {
        out.push_str(&format!("  {:width$}  {}\n", f.label, f.value));
    }
    out.push_str("\nConditions:\n");
    if r.conditions.is_empty() {
        out.push_str("  (none yet)\n");
    } else {
        let mut rows = vec![vec![
            "TYPE".into(),
            "STATUS".into(),
            "REASON".into(),
            "SINCE".into(),
            "MESSAGE".into(),
        ]];
        for c in &r.conditions {
            rows.push(vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.since
                    .rsplit_once(" (")
                    .map(|(_, rel)| rel.trim_end_matches(')').to_owned())
                    .unwrap_or_default(),
                c.message.clone(),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    if r.kind == "ServiceAccount" {
        out.push_str("\nTokenGrants (audiences it may reach):\n");
        if r.grants.is_empty() {
            out.push_str("  (none)\n");
        } else {
            let mut rows = vec![vec![
                "GRANT".into(),
                "AUDIENCE".into(),
                "SCOPES".into(),
                "READY".into(),
            ]];
            for g in &r.grants {
                rows.push(vec![
                    g.grant.clone(),
                    g.audience.clone(),
                    g.scopes.join(" "),
                    g.ready.clone(),
                ]);
            }
            out.push_str(&indent(&table(&rows)));
        }
    }
    if !r.access_tokens.is_empty() {
        out.push_str("\nAccessTokens (tokens kept in this namespace):\n");
        let mut rows = vec![vec![
            "NAME".into(),
            "AUDIENCES".into(),
            "SECRET".into(),
            "READY".into(),
            "EXPIRES".into(),
        ]];
        for t in &r.access_tokens {
            rows.push(vec![
                t.name.clone(),
                t.audiences.join(" "),
                t.secret.clone(),
                t.ready.clone(),
                t.expires
                    .clone()
                    .unwrap_or_else(|| "(not issued yet)".into()),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    if !r.tokens.is_empty() {
        out.push_str("\nMaterialized tokens:\n");
        let mut rows = vec![vec![
            "GRANT".into(),
            "SECRET".into(),
            "EXPIRES".into(),
            "RENEWS".into(),
        ]];
        for t in &r.tokens {
            rows.push(vec![
                t.grant.clone(),
                t.secret.clone(),
                t.expires
                    .clone()
                    .unwrap_or_else(|| "(not issued yet)".into()),
                t.renews.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    out.push_str("\nEvents:\n");
    if r.events.is_empty() {
        out.push_str("  (none recent)\n");
    } else {
        let mut rows = vec![vec![
            "TYPE".into(),
            "REASON".into(),
            "AGE".into(),
            "MESSAGE".into(),
        ]];
        for e in &r.events {
            let count = if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            };
            rows.push(vec![
                e.type_.clone(),
                e.reason.clone(),
                relative(e.time, now),
                format!("{}{count}", e.message),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    if !r.notes.is_empty() {
        out.push_str("\nAttention:\n");
        for n in &r.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// One line of `status -A`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Ready status.
    pub ready: String,
    /// Ready reason.
    pub reason: String,
    /// Ready message.
    pub message: String,
}

fn line(kind: &str, ns: String, name: String, conds: &[Condition]) -> Line {
    let c = conds.iter().find(|c| c.type_ == "Ready");
    Line {
        kind: kind.into(),
        namespace: ns,
        name,
        ready: c
            .map(|c| status_word(c.status).to_owned())
            .unwrap_or_else(|| "Unknown".into()),
        reason: c
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "NotReconciled".into()),
        message: c.map(|c| c.message.clone()).unwrap_or_default(),
    }
}

/// `status -A` as text.
pub fn render_lines(lines: &[Line]) -> String {
    if lines.is_empty() {
        return "No s2s.dev objects found.\n".into();
    }
    let mut rows = vec![vec![
        "KIND".into(),
        "NAMESPACE".into(),
        "NAME".into(),
        "READY".into(),
        "REASON".into(),
        "MESSAGE".into(),
    ]];
    for l in lines {
        rows.push(vec![
            l.kind.clone(),
            l.namespace.clone(),
            l.name.clone(),
            l.ready.clone(),
            l.reason.clone(),
            l.message.clone(),
        ]);
    }
    table(&rows)
}

async fn list_raw<K>(kube: &Kube, ns: Option<&str>) -> std::result::Result<Vec<K>, kube::Error>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match ns {
        None => Api::all(kube.client.clone()),
        Some(ns) => Api::namespaced(kube.client.clone(), ns),
    };
    api.list(&ListParams::default()).await.map(|l| l.items)
}

async fn list_all<K>(kube: &Kube, all: bool, kind: Kind) -> Result<Vec<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    list_raw(kube, (!all).then_some(kube.namespace.as_str()))
        .await
        .map_err(|e| {
            api_error(
                e,
                "list",
                kind.resource(),
                None,
                (!all).then_some(kube.namespace.as_str()),
            )
        })
}

async fn events_of(kube: &Kube, ns: &str, uid: Option<&str>) -> Vec<Event> {
    let Some(uid) = uid else { return vec![] };
    let api: Api<Event> = Api::namespaced(kube.client.clone(), ns);
    // Events are a courtesy: without permission to list them the rest still prints.
    api.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The objects of `kind` in `ns` shown beside an account, or none and a note saying why:
/// what the caller may not list (or a cluster without the CRD) is not an error of the report.
async fn listed_beside<K>(kube: &Kube, ns: &str, kind: Kind) -> Result<(Vec<K>, Option<String>)>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let what = format!("{}s", K::kind(&Default::default()));
    let resource = kind.resource();
    match list_raw(kube, Some(ns)).await {
        Ok(items) => Ok((items, None)),
        Err(e) if api_code(&e) == Some(403) => Ok((
            vec![],
            Some(format!(
                "{what} are not shown: you may not list {resource} in {ns}"
            )),
        )),
        Err(e) if api_code(&e) == Some(404) => Ok((
            vec![],
            Some(format!(
                "{what} are not shown: this cluster does not serve {resource} (install this \
                 version's CRDs; `kubectl s2s check`)"
            )),
        )),
        Err(e) => Err(api_error(e, "list", resource, None, Some(ns))),
    }
}

/// Runs `status`.
pub async fn run(g: &Global, a: StatusArgs) -> Result<()> {
    let kube = connect(g).await?;
    let now = now_unix(SystemTime::now());
    let target = a.target.as_deref();
    // A bare KIND (or nothing) lists.
    let list_kind = match target {
        None => Some(None),
        Some(t) if !t.contains('/') => Some(Some(Kind::parse(t).ok_or_else(|| {
            CliError::new(format!("{t:?} is not one of the s2s kinds"))
                .hint("serviceaccount, trustedissuer, tokengrant or accesstoken (or KIND/NAME)")
        })?)),
        Some(_) => None,
    };
    if let Some(only) = list_kind {
        let all = a.all_namespaces;
        let mut lines = vec![];
        for kind in Kind::ALL {
            if only.is_some_and(|k| k != kind) {
                continue;
            }
            match kind {
                Kind::ServiceAccount => {
                    for o in list_all::<ServiceAccount>(&kube, all, kind).await? {
                        let c = o.status.clone().unwrap_or_default().conditions;
                        lines.push(line(
                            "ServiceAccount",
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                            &c,
                        ));
                    }
                }
                Kind::TrustedIssuer => {
                    for o in list_all::<TrustedIssuer>(&kube, all, kind).await? {
                        let c = o.status.clone().unwrap_or_default().conditions;
                        lines.push(line(
                            "TrustedIssuer",
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                            &c,
                        ));
                    }
                }
                Kind::TokenGrant => {
                    for o in list_all::<TokenGrant>(&kube, all, kind).await? {
                        let c = o.status.clone().unwrap_or_default().conditions;
                        lines.push(line(
                            "TokenGrant",
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                            &c,
                        ));
                    }
                }
                Kind::AccessToken => {
                    let ns = (!all).then_some(kube.namespace.as_str());
                    let tokens = match list_raw::<AccessToken>(&kube, ns).await {
                        // A cluster with the older CRDs: the other kinds still list.
                        Err(e) if only.is_none() && api_code(&e) == Some(404) => {
                            eprintln!(
                                "note: this cluster does not serve {}; AccessTokens are not \
                                 listed (`kubectl s2s check`)",
                                kind.resource()
                            );
                            vec![]
                        }
                        r => r.map_err(|e| api_error(e, "list", kind.resource(), None, ns))?,
                    };
                    for o in tokens {
                        let c = o.status.clone().unwrap_or_default().conditions;
                        lines.push(line(
                            "AccessToken",
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                            &c,
                        ));
                    }
                }
            }
        }
        return match a.output {
            Output::Text => {
                print!("{}", render_lines(&lines));
                Ok(())
            }
            o => print_structured(&lines, o),
        };
    }
    if a.all_namespaces {
        return Err(
            CliError::new("-A lists objects; it takes a KIND, not KIND/NAME")
                .hint("drop -A and use -n NAMESPACE for one object"),
        );
    }
    let (kind, name) = parse_ref(target.unwrap_or_default(), &Kind::ALL)?;
    let ns = kube.namespace.clone();
    let report = match kind {
        Kind::ServiceAccount => {
            let api: Api<ServiceAccount> = Api::namespaced(kube.client.clone(), &ns);
            let sa = api
                .get(&name)
                .await
                .map_err(|e| api_error(e, "get", kind.resource(), Some(&name), Some(&ns)))?;
            // Grants live in the API owners' namespaces: all of them if we may, else ours.
            let (grants, note) = match list_all::<TokenGrant>(&kube, true, Kind::TokenGrant).await {
                Ok(g) => (g, None),
                Err(_) => match listed_beside::<TokenGrant>(&kube, &ns, Kind::TokenGrant).await? {
                    (g, Some(n)) => (g, Some(n)),
                    (g, None) => (
                        g,
                        Some(format!(
                            "TokenGrants are shown from namespace {ns} only (you may not list \
                             them in every namespace)"
                        )),
                    ),
                },
            };
            // AccessTokens name an account of their own namespace.
            let (access_tokens, token_note) =
                listed_beside::<AccessToken>(&kube, &ns, Kind::AccessToken).await?;
            let events = events_of(&kube, &ns, sa.metadata.uid.as_deref()).await;
            let mut r = account_report(&sa, &grants, &access_tokens, &events, now);
            r.notes.extend(note);
            r.notes.extend(token_note);
            r
        }
        Kind::AccessToken => {
            let api: Api<AccessToken> = Api::namespaced(kube.client.clone(), &ns);
            let o = api
                .get(&name)
                .await
                .map_err(|e| api_error(e, "get", kind.resource(), Some(&name), Some(&ns)))?;
            let events = events_of(&kube, &ns, o.metadata.uid.as_deref()).await;
            access_token_report(&o, &events, now)
        }
        Kind::TokenGrant => {
            let api: Api<TokenGrant> = Api::namespaced(kube.client.clone(), &ns);
            let o = api
                .get(&name)
                .await
                .map_err(|e| api_error(e, "get", kind.resource(), Some(&name), Some(&ns)))?;
            let events = events_of(&kube, &ns, o.metadata.uid.as_deref()).await;
            grant_report(&o, &events, now)
        }
        Kind::TrustedIssuer => {
            let api: Api<TrustedIssuer> = Api::namespaced(kube.client.clone(), &ns);
            let o = api
                .get(&name)
                .await
                .map_err(|e| api_error(e, "get", kind.resource(), Some(&name), Some(&ns)))?;
            let events = events_of(&kube, &ns, o.metadata.uid.as_deref()).await;
            issuer_report(&o, &events, now)
        }
    };
    match a.output {
        Output::Text => {
            print!("{}", render(&report, now));
            Ok(())
        }
        o => print_structured(&report, o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn t(secs: i64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap()
            .to_string()
    }

    fn account() -> ServiceAccount {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: worker, namespace: billing, generation: 2, uid: u1}}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.example.com"]
  authentication:
    clientSecret: {{secretName: worker-creds, rotateEvery: 720h}}
status:
  observedGeneration: 2
  clientId: 6b1c
  conditions:
  - {{type: Ready, status: "True", reason: Ready, message: "", lastTransitionTime: "{ready}"}}
  currentCredential: {{id: c2, type: ClientSecret, created: "{created}", expires: "{expires}"}}
  credentials:
  - {{id: c2, type: ClientSecret, created: "{created}", secretDigest: "sha256:x"}}
  - {{id: c1, type: ClientSecret, created: "{old}", notAfter: "{grace}", secretDigest: "sha256:y"}}
"#,
            ready = t(NOW - 600),
            created = t(NOW - 3600),
            expires = t(NOW + 29 * 86400),
            old = t(NOW - 40 * 86400),
            grace = t(NOW + 3 * 3600),
        ))
        .unwrap()
    }

    fn grant(ns: &str, name: &str, output: bool) -> TokenGrant {
        let output = if output {
            "\n  output: {secretName: worker-token, lifetime: 1h}"
        } else {
            ""
        };
        serde_yaml::from_str(&format!(
            r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: {name}, namespace: {ns}}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: billing}}}}
  audience: https://orders.example.com
  scopes: ["orders:read"]{output}
status:
  notAfter: "{exp}"
  conditions:
  - {{type: Ready, status: "True", reason: Issued, message: "", lastTransitionTime: "{at}"}}
"#,
            exp = t(NOW + 1800),
            at = t(NOW - 60),
        ))
        .unwrap()
    }

    #[test]
    fn an_account_report_shows_age_rotation_grace_grants_and_tokens() {
        let other: TokenGrant = {
            let mut g = grant("orders", "someone-else", false);
            g.spec.subject.service_account.as_mut().unwrap().name = "other".into();
            g
        };
        let r = account_report(
            &account(),
            &[grant("orders", "worker", true), other],
            &[],
            &[],
            NOW,
        );
        let text = render(&r, NOW);
        assert!(text.contains("Client ID"), "{text}");
        assert!(text.contains("client secret c2, created 1h ago"), "{text}");
        assert!(text.contains("(in 29d)"), "{text}");
        assert!(
            text.contains("previous client secret c1 still works until"),
            "{text}"
        );
        assert!(text.contains("(in 3h)"), "{text}");
        assert!(text.contains("orders/worker"), "{text}");
        assert!(!text.contains("someone-else"), "{text}");
        assert!(text.contains("worker-token"), "{text}");
        assert!(text.contains("(in 30m)"), "{text}");
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        // Nothing secret is in the report: the digests stay out.
        assert!(!serde_json::to_string(&r).unwrap().contains("sha256"));
    }

    #[test]
    fn an_unreconciled_or_stale_account_says_what_to_do() {
        let mut sa = account();
        sa.metadata.generation = Some(3);
        let r = account_report(&sa, &[], &[], &[], NOW);
        assert!(
            r.notes.iter().any(|n| n.contains("has not caught up")),
            "{:?}",
            r.notes
        );
        assert!(r.notes.iter().any(|n| n.contains("no TokenGrant names")));
        sa.status = None;
        let r = account_report(&sa, &[], &[], &[], NOW);
        assert!(r.notes[0].contains("kubectl s2s check"), "{:?}", r.notes);
        assert!(render(&r, NOW).contains("(none yet)"));
    }

    fn access_token(ns: &str, account: &str, ready: &str, reason: &str) -> AccessToken {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: s2s.dev/v1alpha1
kind: AccessToken
metadata: {{name: orders-token, namespace: {ns}, generation: 1}}
spec:
  serviceAccountName: {account}
  audiences: ["https://orders.example.com", "https://stock.example.com"]
  scopes: ["orders:read"]
  secretName: orders-token
  lifetime: 1h
status:
  observedGeneration: 1
  tokenId: jti-7
  revision: 3
  lastIssued: "{issued}"
  notAfter: "{exp}"
  renewalTime: "{renew}"
  conditions:
  - {{type: Ready, status: "{ready}", reason: {reason}, message: "m-{reason}", lastTransitionTime: "{at}"}}
"#,
            issued = t(NOW - 1200),
            exp = t(NOW + 2400),
            renew = t(NOW + 1200),
            at = t(NOW - 60),
        ))
        .unwrap()
    }

    #[test]
    fn the_token_facts_are_id_expiry_time_left_renewal_and_revision() {
        let st = access_token("billing", "worker", "True", "Ready")
            .status
            .unwrap();
        let facts = token_facts(&st, NOW);
        let get = |l: &str| {
            facts
                .iter()
                .find(|f| f.label == l)
                .map(|f| f.value.clone())
                .unwrap_or_else(|| panic!("{l} missing: {facts:?}"))
        };
        assert_eq!(get("Token ID"), "jti-7");
        assert_eq!(get("Expires"), format!("{} (in 40m)", t(NOW + 2400)));
        assert_eq!(get("Renews"), format!("{} (in 20m)", t(NOW + 1200)));
        assert_eq!(get("Revision"), "3");
        assert!(get("Last issued").ends_with("(20m ago)"));
        // Past its expiry it says so; none issued, it says that.
        assert!(token_facts(&st, NOW + 3000)[2].value.ends_with(": expired"));
        let none = token_facts(&TokenGrantStatus::default(), NOW);
        assert_eq!(none, vec![fact("Expires", "(no token issued)")]);
        // The grant's output is described by the same pieces.
        let mut g = grant("orders", "worker", true);
        g.status = Some(st.clone());
        let r = grant_report(&g, &[], NOW);
        assert!(r.summary.iter().any(|f| f.label == "Token ID"), "{r:?}");
        assert_eq!(
            r.tokens,
            vec![token_line("orders/worker".into(), "worker-token", &st, NOW)]
        );
    }

    #[test]
    fn an_access_token_report_shows_account_audiences_secret_and_the_token() {
        let r = access_token_report(
            &access_token("billing", "worker", "True", "Ready"),
            &[],
            NOW,
        );
        let text = render(&r, NOW);
        assert!(
            text.starts_with("AccessToken billing/orders-token\n"),
            "{text}"
        );
        for want in [
            "serviceaccount billing/worker",
            "https://orders.example.com https://stock.example.com",
            "orders:read",
            "orders-token (lifetime 1h, renewed a third of it before expiry)",
            "jti-7",
            "(in 40m)",
            "(in 20m)",
            "Revision",
            "Ready  True    Ready   1m ago  m-Ready",
        ] {
            assert!(text.contains(want), "{want:?} missing: {text}");
        }
        assert!(r.notes.is_empty(), "{:?}", r.notes);

        // Not granted: the reason, its message, and what grant is missing.
        let r = access_token_report(
            &access_token("billing", "worker", "False", "NotGranted"),
            &[],
            NOW,
        );
        assert!(r.notes[0].contains("not Ready (NotGranted): m-NotGranted"));
        assert!(
            r.notes[1].contains("{name: worker, namespace: billing}"),
            "{:?}",
            r.notes
        );

        // A renewal asked for and not done yet.
        let mut t = access_token("billing", "worker", "True", "Ready");
        t.metadata.annotations = Some([("s2s.dev/rotate".to_owned(), "v1".to_owned())].into());
        let r = access_token_report(&t, &[], NOW);
        assert!(
            r.notes.iter().any(|n| n.contains("s2s.dev/rotate=v1")),
            "{:?}",
            r.notes
        );
        t.status.as_mut().unwrap().rotation_request = Some("v1".into());
        assert!(access_token_report(&t, &[], NOW).notes.is_empty());
    }

    #[test]
    fn an_account_report_lists_the_access_tokens_of_its_namespace_naming_it() {
        let tokens = [
            access_token("billing", "worker", "True", "Ready"),
            access_token("billing", "other", "True", "Ready"),
            access_token("elsewhere", "worker", "True", "Ready"),
        ];
        let r = account_report(&account(), &[], &tokens, &[], NOW);
        assert_eq!(r.access_tokens.len(), 1, "{:?}", r.access_tokens);
        let text = render(&r, NOW);
        assert!(
            text.contains("AccessTokens (tokens kept in this namespace):"),
            "{text}"
        );
        assert!(text.contains("orders-token"), "{text}");
        assert!(text.contains("True (Ready)"), "{text}");
        assert!(text.contains("(in 40m)"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["accessTokens"][0]["secret"], "orders-token");
        // None: no section, and no key in -o json.
        let r = account_report(&account(), &[], &[], &[], NOW);
        assert!(!render(&r, NOW).contains("AccessTokens"));
        assert!(
            serde_json::to_value(&r)
                .unwrap()
                .get("accessTokens")
                .is_none()
        );
    }

    #[test]
    fn events_are_the_newest_ten_oldest_first() {
        let events: Vec<Event> = (0..15)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("e{i}")},
                    "involvedObject": {},
                    "type": "Normal",
                    "reason": format!("R{i}"),
                    "message": "m",
                    "lastTimestamp": t(NOW - 1000 + i),
                }))
                .unwrap()
            })
            .collect();
        let lines = event_lines(&events);
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0].reason, "R5");
        assert_eq!(lines[9].reason, "R14");
    }

    #[test]
    fn listing_shows_ready_and_reason() {
        let sa = account();
        let l = line(
            "ServiceAccount",
            "billing".into(),
            "worker".into(),
            &sa.status.unwrap().conditions,
        );
        let text = render_lines(&[l]);
        assert!(text.starts_with("KIND"), "{text}");
        assert!(
            text.contains("ServiceAccount  billing    worker  True   Ready"),
            "{text}"
        );
        assert_eq!(render_lines(&[]), "No s2s.dev objects found.\n");
        let at = access_token("billing", "worker", "False", "NotGranted");
        let text = render_lines(&[line(
            "AccessToken",
            "billing".into(),
            at.name_any(),
            &at.status.unwrap().conditions,
        )]);
        assert!(
            text.contains("AccessToken  billing    orders-token  False  NotGranted  m-NotGranted"),
            "{text}"
        );
    }
}
