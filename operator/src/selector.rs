//! Label selectors, evaluated the way the API server does (`matchLabels` and
//! `matchExpressions` with In, NotIn, Exists, DoesNotExist; all terms ANDed).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches nothing here: the API
/// refuses one, and a release must never reach every pod by accident.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector.match_labels.as_ref();
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if exact.is_none_or(BTreeMap::is_empty) && expressions.is_empty() {
        return false;
    }
    let exact_ok = exact
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact_ok
        && expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "shop")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["web", "api"]),
                expr("canary", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(
            &selector,
            &labels(&[("app", "shop"), ("tier", "web")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "shop"), ("tier", "db")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "shop"), ("tier", "web"), ("canary", "1")])
        ));
        assert!(!matches(&selector, &labels(&[("tier", "web")])));
    }

    #[test]
    fn not_in_and_exists() {
        let selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                expr("env", "NotIn", &["prod"]),
                expr("app", "Exists", &[]),
            ]),
        };
        assert!(matches(&selector, &labels(&[("app", "x")])));
        assert!(matches(&selector, &labels(&[("app", "x"), ("env", "dev")])));
        assert!(!matches(
            &selector,
            &labels(&[("app", "x"), ("env", "prod")])
        ));
    }

    #[test]
    fn empty_selector_matches_nothing() {
        assert!(!matches(
            &LabelSelector::default(),
            &labels(&[("app", "x")])
        ));
    }
}
