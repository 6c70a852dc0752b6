//! The chart's RBAC held against the requests the API stand-in recorded: every request an
//! identity made is allowed by the chart, and the rules a test names were all used.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::apiserver::Request;

/// The chart's RBAC rules per user (the service account name, release `s2s`), each with the
/// namespace of its Role (`None` for a ClusterRole).
pub fn chart_rules(operator_namespace: &str) -> HashMap<String, Vec<(Option<String>, Value)>> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/s2s-operator/templates/rbac.yaml"),
    )
    .unwrap()
    .replace("{{ .Release.Name }}", "s2s")
    .replace("{{ .Release.Namespace }}", operator_namespace);
    assert!(
        !text.contains("{{"),
        "rbac.yaml holds template expressions other than the release name and namespace"
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let roles: HashMap<(String, String), (Option<String>, Vec<Value>)> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .map(|d| {
            (
                (
                    d["kind"].as_str().unwrap().to_owned(),
                    d["metadata"]["name"].as_str().unwrap().to_owned(),
                ),
                (
                    d["metadata"]["namespace"].as_str().map(str::to_owned),
                    d["rules"].as_array().unwrap().clone(),
                ),
            )
        })
        .collect();
    let mut by_user: HashMap<String, Vec<(Option<String>, Value)>> = HashMap::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let role = (
            b["roleRef"]["kind"].as_str().unwrap().to_owned(),
            b["roleRef"]["name"].as_str().unwrap().to_owned(),
        );
        let (ns, rules) = roles[&role].clone();
        for s in b["subjects"].as_array().unwrap() {
            let user = s["name"].as_str().unwrap().to_owned();
            for r in &rules {
                by_user
                    .entry(user.clone())
                    .or_default()
                    .push((ns.clone(), r.clone()));
            }
        }
    }
    by_user
}

/// Whether a rule allows a verb on a resource of a group.
pub fn allows(rule: &Value, verb: &str, group: &str, resource: &str) -> bool {
    let has = |k: &str, v: &str| {
        rule[k]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
    };
    has("verbs", verb) && has("apiGroups", group) && has("resources", resource)
}

/// Checks `user`'s recorded requests both ways: each is allowed by the chart, and every
/// (verb, group, resource) the chart grants `user` for which `covered` answers true was used.
pub fn check_both_ways(
    requests: &[Request],
    operator_namespace: &str,
    user: &str,
    covered: impl Fn(&str, &str, &str) -> bool,
) {
    let rules = chart_rules(operator_namespace);
    let user_rules = rules
        .get(user)
        .unwrap_or_else(|| panic!("no rules for {user}"));
    let mut used = std::collections::BTreeSet::new();
    for r in requests.iter().filter(|r| r.user == user) {
        let ok = user_rules.iter().any(|(ns, rule)| {
            ns.as_ref()
                .is_none_or(|ns| r.namespace.as_deref() == Some(ns.as_str()))
                && allows(rule, &r.verb, &r.group, &r.resource)
        });
        assert!(
            ok,
            "{} did {} {}/{} in {:?}, which the chart does not allow",
            r.user, r.verb, r.group, r.resource, r.namespace
        );
        used.insert((r.verb.clone(), r.group.clone(), r.resource.clone()));
    }
    for (_, rule) in user_rules
        .iter()
        .filter(|(_, r)| r.get("nonResourceURLs").is_none())
    {
        for verb in rule["verbs"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    let key = (
                        verb.as_str().unwrap().to_owned(),
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                    );
                    if covered(&key.0, &key.1, &key.2) {
                        assert!(
                            used.contains(&key),
                            "the chart grants {user} {key:?} but the code never used it"
                        );
                    }
                }
            }
        }
    }
}
