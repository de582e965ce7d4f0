//! ARNs of another partition, which can never match a request here.

/// The first principal or resource ARN of `document` (a policy that
/// parsed) whose partition is neither `partition` nor a wildcard.
pub fn foreign_partition_arn(document: &str, partition: &str) -> Option<String> {
    use serde_json::Value;
    fn strings(value: Option<&Value>) -> Vec<&str> {
        match value {
            Some(Value::String(text)) => vec![text.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    let root: Value = serde_json::from_str(document).ok()?;
    let statements = match root.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    statements.into_iter().find_map(|statement| {
        let mut arns = strings(statement.get("Resource"));
        arns.extend(strings(statement.get("NotResource")));
        for field in ["Principal", "NotPrincipal"] {
            arns.extend(strings(
                statement
                    .get(field)
                    .and_then(|principal| principal.get("AWS")),
            ));
        }
        arns.into_iter()
            .find(|arn| {
                arn.strip_prefix("arn:")
                    .and_then(|rest| rest.split(':').next())
                    .is_some_and(|named| !named.contains(['*', '?']) && named != partition)
            })
            .map(str::to_owned)
    })
}
