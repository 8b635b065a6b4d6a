//! Matching one `PolicyRule` against one request, as upstream's `rbac/v1` helpers
//! (`VerbMatches`, `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`,
//! `NonResourceURLMatches`) and `RuleAllows`.
//!
//! A resource request is matched on the combined `resource/subresource`: a rule listing `pods`
//! does not grant `pods/log`, but `pods/log` or `*/log` or `*` does. Non-resource URLs match
//! exactly, or by prefix when the rule's URL ends in `*` (`/apis/*` covers `/apis/apps/v1`).

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::Attributes;

/// `*` in verbs, apiGroups, resources and nonResourceURLs.
pub const ALL: &str = "*";

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

pub fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == ALL || v == verb)
}

pub fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups)
        .iter()
        .any(|g| g == ALL || g == group)
}

/// `combined` is `resource` or `resource/subresource`; `subresource` lets `*/sub` match.
pub fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|r| {
        r == ALL
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

/// No resourceNames means every name; otherwise the request's name must be listed (so a
/// named rule never grants `list` or `create`, whose requests carry no name).
pub fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

pub fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    list(&rule.non_resource_urls).iter().any(|u| {
        u == ALL || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// Whether `rule` allows the request.
pub fn rule_allows(attrs: &Attributes, rule: &PolicyRule) -> bool {
    if attrs.resource_request {
        let combined = if attrs.subresource.is_empty() {
            std::borrow::Cow::Borrowed(attrs.resource.as_str())
        } else {
            std::borrow::Cow::Owned(format!("{}/{}", attrs.resource, attrs.subresource))
        };
        verb_matches(rule, &attrs.verb)
            && api_group_matches(rule, &attrs.group)
            && resource_matches(rule, &combined, &attrs.subresource)
            && resource_name_matches(rule, &attrs.name)
    } else {
        verb_matches(rule, &attrs.verb) && non_resource_url_matches(rule, &attrs.path)
    }
}

/// Whether any of `rules` allows the request.
pub fn rules_allow(attrs: &Attributes, rules: &[PolicyRule]) -> bool {
    rules.iter().any(|r| rule_allows(attrs, r))
}

/// A rule from string slices (bootstrap policy and tests).
pub fn resource_rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        ..Default::default()
    }
}

/// [`resource_rule`] restricted to `names`.
pub fn named_rule(
    verbs: &[&str],
    groups: &[&str],
    resources: &[&str],
    names: &[&str],
) -> PolicyRule {
    PolicyRule {
        resource_names: Some(strings(names)),
        ..resource_rule(verbs, groups, resources)
    }
}

/// A non-resource rule.
pub fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: Some(strings(urls)),
        ..Default::default()
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(verb: &str, group: &str, resource: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, "default", name)
    }

    #[test]
    fn verbs_exact_and_star() {
        let r = resource_rule(&["get", "list"], &[""], &["pods"]);
        assert!(rule_allows(&res("get", "", "pods", ""), &r));
        assert!(rule_allows(&res("list", "", "pods", ""), &r));
        assert!(!rule_allows(&res("watch", "", "pods", ""), &r));
        let star = resource_rule(&["*"], &[""], &["pods"]);
        assert!(rule_allows(&res("deletecollection", "", "pods", ""), &star));
        // Verbs are case-sensitive, as upstream.
        assert!(!rule_allows(&res("GET", "", "pods", ""), &r));
    }

    #[test]
    fn api_groups_exact_and_star() {
        let core = resource_rule(&["get"], &[""], &["deployments"]);
        assert!(!rule_allows(&res("get", "apps", "deployments", ""), &core));
        let apps = resource_rule(&["get"], &["apps"], &["deployments"]);
        assert!(rule_allows(&res("get", "apps", "deployments", ""), &apps));
        assert!(!rule_allows(&res("get", "", "deployments", ""), &apps));
        let any = resource_rule(&["get"], &["*"], &["deployments"]);
        assert!(rule_allows(
            &res("get", "extensions", "deployments", ""),
            &any
        ));
        // No apiGroups at all matches no resource request.
        let none = PolicyRule {
            verbs: vec!["get".into()],
            resources: Some(vec!["pods".into()]),
            ..Default::default()
        };
        assert!(!rule_allows(&res("get", "", "pods", ""), &none));
    }

    #[test]
    fn resources_subresources_and_star_sub() {
        let pods = resource_rule(&["get"], &[""], &["pods"]);
        assert!(rule_allows(&res("get", "", "pods", ""), &pods));
        assert!(!rule_allows(&res("get", "", "pods/log", ""), &pods));
        let log = resource_rule(&["get"], &[""], &["pods/log"]);
        assert!(rule_allows(&res("get", "", "pods/log", ""), &log));
        assert!(!rule_allows(&res("get", "", "pods", ""), &log));
        assert!(!rule_allows(&res("get", "", "pods/status", ""), &log));
        let star_status = resource_rule(&["get"], &["*"], &["*/status"]);
        assert!(rule_allows(
            &res("get", "", "pods/status", ""),
            &star_status
        ));
        assert!(rule_allows(
            &res("get", "apps", "deployments/status", ""),
            &star_status
        ));
        assert!(!rule_allows(&res("get", "", "pods", ""), &star_status));
        assert!(!rule_allows(&res("get", "", "pods/log", ""), &star_status));
        // `*/status` must not match a longer subresource ending in "status".
        assert!(!rule_allows(
            &res("get", "", "pods/xstatus", ""),
            &star_status
        ));
        let all = resource_rule(&["get"], &[""], &["*"]);
        assert!(rule_allows(&res("get", "", "pods/exec", ""), &all));
        assert!(rule_allows(&res("get", "", "secrets", ""), &all));
    }

    #[test]
    fn resource_names() {
        let r = named_rule(
            &["get", "update", "list"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        );
        assert!(rule_allows(
            &res("get", "coordination.k8s.io", "leases", "kube-scheduler"),
            &r
        ));
        assert!(!rule_allows(
            &res("get", "coordination.k8s.io", "leases", "other"),
            &r
        ));
        // list/create carry no name, so a named rule does not grant them.
        assert!(!rule_allows(
            &res("list", "coordination.k8s.io", "leases", ""),
            &r
        ));
        let unnamed = resource_rule(&["get"], &["coordination.k8s.io"], &["leases"]);
        assert!(rule_allows(
            &res("get", "coordination.k8s.io", "leases", "anything"),
            &unnamed
        ));
    }

    #[test]
    fn non_resource_urls() {
        let r = url_rule(&["get"], &["/healthz", "/apis/*", "/version/"]);
        let nr = |v: &str, p: &str| Attributes::non_resource(v, p);
        assert!(rule_allows(&nr("get", "/healthz"), &r));
        assert!(!rule_allows(&nr("get", "/healthz/etcd"), &r));
        assert!(!rule_allows(&nr("post", "/healthz"), &r));
        assert!(rule_allows(&nr("get", "/apis/apps/v1"), &r));
        assert!(rule_allows(&nr("get", "/apis/"), &r));
        assert!(!rule_allows(&nr("get", "/apis"), &r));
        assert!(rule_allows(&nr("get", "/version/"), &r));
        assert!(!rule_allows(&nr("get", "/version"), &r));
        let all = url_rule(&["*"], &["*"]);
        assert!(rule_allows(&nr("delete", "/anything/at/all"), &all));
        // A bare prefix star.
        let metrics = url_rule(&["get"], &["/metrics*"]);
        assert!(rule_allows(&nr("get", "/metrics/slis"), &metrics));
        assert!(rule_allows(&nr("get", "/metrics"), &metrics));
    }

    #[test]
    fn resource_rules_never_match_urls_and_vice_versa() {
        let res_rule = resource_rule(&["*"], &["*"], &["*"]);
        assert!(!rule_allows(
            &Attributes::non_resource("get", "/healthz"),
            &res_rule
        ));
        let url = url_rule(&["*"], &["*"]);
        assert!(!rule_allows(&res("get", "", "pods", ""), &url));
    }
}
