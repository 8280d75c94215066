//! Label selectors, in one place: the object form (`matchLabels`, `matchExpressions`)
//! and kubectl's string form (`-l app=web,tier!=db,env in (a,b),!canary`), which parses
//! into the object form, so that one matcher serves both.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Whether `labels` satisfy the selector (every matchLabels pair and expression).
pub fn matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && s.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// kubectl's selector string: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`
/// and `!k`, joined by commas.
pub fn parse(text: &str) -> Result<LabelSelector, String> {
    let mut expressions = Vec::new();
    for term in split_terms(text) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let req = |key: &str, operator: &str, values: Option<Vec<String>>| {
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("invalid label selector term {term:?}"));
            }
            Ok(LabelSelectorRequirement { key: key.into(), operator: operator.into(), values })
        };
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
            let inner = inner.ok_or_else(|| format!("invalid label selector term {term:?}: expected (values)"))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        };
        let r = if let Some((k, v)) = term.split_once("!=") {
            req(k, "NotIn", Some(vec![v.trim().into()]))?
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            req(k, "In", Some(vec![v.trim().into()]))?
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            req(k, "NotIn", Some(set(rest)?))?
        } else if let Some((k, rest)) = term.split_once(" in ") {
            req(k, "In", Some(set(rest)?))?
        } else if let Some(k) = term.strip_prefix('!') {
            req(k, "DoesNotExist", None)?
        } else {
            req(term, "Exists", None)?
        };
        expressions.push(r);
    }
    Ok(LabelSelector { match_labels: None, match_expressions: Some(expressions) })
}

/// Splits at the commas that are not inside a `( … )` value set.
fn split_terms(text: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert!(matches(&s, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "c")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(!matches(&s, &labels(&[("tier", "a")])));
    }

    #[test]
    fn kubectl_selector_strings() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |s: &str| matches(&parse(s).unwrap(), &l);
        assert!(sel("app=web") && sel("app==web,tier") && sel("app!=db") && sel("!canary"));
        assert!(!sel("app=db") && !sel("app=web,tier=back") && !sel("canary") && !sel("!app"));
        assert!(sel("tier in (front, back)") && sel("app notin (db,cache),tier"));
        assert!(!sel("tier in (back)") && !sel("app notin (web)"));
        assert!(sel(""), "an empty selector selects everything");
        assert!(parse("tier in front").is_err());
        assert!(parse("a b=c").is_err());
    }
}
