//! Offline admission: the checks the API server runs on one object, from the very CRD schema
//! usher installs — structure (types, required, enums, lengths, counts, ranges, unknown fields,
//! unique list keys) here, CEL rules through kube's CEL validator.

use std::collections::HashSet;

use serde_json::Value;

/// One problem, with the field path the API server would name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// e.g. `spec.email`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn problem(path: &str, message: String) -> FieldProblem {
    FieldProblem {
        path: path.trim_start_matches('.').to_string(),
        message,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The fields an object schema requires.
pub(crate) fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether an object schema takes fields it does not name.
pub(crate) fn open(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || schema.get("additionalProperties").is_some()
}

/// Whether the API server takes `text` as a `format: date-time` string: kube-openapi's
/// `strfmt.IsDateTime`, rule for rule. Lowercased and split at each `t`: the part before the
/// first is a calendar date (`2006-01-02`, the day within its month), the part after it (and
/// only that part) `hh:mm:ss`, an optional fraction after any one character, and `z` or
/// `±hh:mm`, with hours up to 23 and minutes and seconds up to 59.
pub(crate) fn is_date_time(text: &str) -> bool {
    if text.len() < 4 {
        return false;
    }
    let lower = text.to_lowercase();
    let mut parts = lower.split('t');
    let (Some(date), Some(time)) = (parts.next(), parts.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let two = |s: &str| s.len() == 2 && digits(s);
    // The date, as Go's time.Parse("2006-01-02") takes it.
    let date_ok = {
        let d: Vec<&str> = date.split('-').collect();
        d.len() == 3 && d[0].len() == 4 && digits(d[0]) && two(d[1]) && two(d[2]) && {
            let (y, m, day): (i16, i8, i8) = (
                d[0].parse().unwrap_or(-1),
                d[1].parse().unwrap_or(-1),
                d[2].parse().unwrap_or(-1),
            );
            jiff::civil::Date::new(y, m, day).is_ok()
        }
    };
    if !date_ok {
        return false;
    }
    // ^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$
    let Some(rest) = time.get(8..) else {
        return false;
    };
    let clock = &time[..8];
    let c: Vec<&str> = clock.split(':').collect();
    if c.len() != 3 || !c.iter().all(|p| two(p)) || c[0] > "23" || c[1] > "59" || c[2] > "59" {
        return false;
    }
    let zone_ok = |z: &str| match z.as_bytes() {
        b"z" => true,
        [sign, h1, h2, b':', m1, m2] => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit())
        }
        _ => false,
    };
    if zone_ok(rest) {
        return true;
    }
    // A fraction: any one character but a newline, then digits, then the zone.
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) if c != '\n' => {}
        _ => return false,
    }
    let after = chars.as_str();
    let n = after.bytes().take_while(u8::is_ascii_digit).count();
    n > 0 && zone_ok(&after[n..])
}

/// Check `value` at `path` (empty at the root) against `schema`. The envelope (apiVersion, kind,
/// metadata) is the caller's business.
pub fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldProblem>) {
    if value.is_null() {
        if !schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            out.push(problem(
                path,
                "Invalid value: null: must not be null".into(),
            ));
        }
        return;
    }
    let expected = schema.get("type").and_then(Value::as_str);
    let actual = type_name(value);
    let type_ok = match expected {
        None => true,
        Some("number") => matches!(actual, "number" | "integer"),
        Some(t) => t == actual,
    };
    if !type_ok {
        out.push(problem(
            path,
            format!(
                "Invalid value: {actual}: must be of type {}",
                expected.unwrap_or("?")
            ),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        out.push(problem(
            path,
            format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    match value {
        Value::String(s) => {
            // In characters, as kube-openapi counts (utf8.RuneCount), not bytes.
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.push(problem(
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.push(problem(
                    path,
                    format!("Invalid value: {value}: should be at least {min} chars long"),
                ));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_date_time(s)
            {
                let field = path.trim_start_matches('.');
                out.push(problem(
                    path,
                    format!(
                        "Invalid value: {value}: {field} in body must be of type date-time: {value}; use RFC 3339, e.g. 2027-03-31T23:59:59Z"
                    ),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                out.push(problem(
                    path,
                    format!("Invalid value: {n}: should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                out.push(problem(
                    path,
                    format!("Invalid value: {n}: should be less than or equal to {max}"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                out.push(problem(
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                out.push(problem(
                    path,
                    format!("Invalid value: {n}: should have at least {min} items"),
                ));
            }
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            // By serialized identity (keys sort, so equal values serialize alike): a list of
            // thousands of items must not cost millions of comparisons.
            let mut seen: HashSet<String> = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let here = format!("{path}[{i}]");
                let identity = match list_type {
                    Some("set") => Some(item.clone()),
                    Some("map") => Some(Value::Array(
                        keys.iter()
                            .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                            .collect(),
                    )),
                    _ => None,
                };
                if let Some(id) = identity
                    && !seen.insert(id.to_string())
                {
                    out.push(problem(&here, format!("Duplicate value: {id}")));
                }
                if let Some(item_schema) = schema.get("items") {
                    check(item_schema, item, &here, out);
                }
            }
        }
        Value::Object(map) => {
            // The API server's words for a map with too many entries.
            let n = map.len() as u64;
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && n > max
            {
                out.push(problem(
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for req in required(schema) {
                if !map.contains_key(req) {
                    out.push(problem(&format!("{path}.{req}"), "Required value".into()));
                }
            }
            let open = open(schema);
            for (key, child) in map {
                let here = format!("{path}.{key}");
                // The API server owns the envelope; the CRD schema leaves it out.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match props.and_then(|p| p.get(key)) {
                    Some(child_schema) => check(child_schema, child, &here, out),
                    None if !open && props.is_some() => {
                        out.push(problem(
                            &here,
                            format!("unknown field \"{}\"", here.trim_start_matches('.')),
                        ));
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(schema: Value, value: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema, &value, "", &mut out);
        out.into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn structure_is_checked_like_the_api_server_does() {
        let schema = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "maxLength": 3},
            "n": {"type": "integer", "minimum": 1},
            "e": {"type": "string", "enum": ["X", "Y"]},
            "s": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "m": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                  "items": {"type": "object", "properties": {"id": {"type": "string"}}}}
        }});
        assert!(problems(schema.clone(), json!({"a": "abc"})).is_empty());
        let p = problems(
            schema,
            json!({"n": 0, "e": "Z", "s": ["x", "x"], "m": [{"id": "1"}, {"id": "1"}], "typo": 1, "a": "abcd"}),
        );
        for expected in [
            "a: Too long",
            "n: Invalid value: 0",
            "e: Unsupported value",
            "s[1]: Duplicate value",
            "m[1]: Duplicate value",
            "typo: unknown field",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(expected)),
                "{expected} not in {p:?}"
            );
        }
        let missing = problems(
            json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}),
            json!({}),
        );
        assert_eq!(missing, ["a: Required value"]);
    }
}
