//! EventBridge-style event pattern matching.
//!
//! An [`EventPattern`] is compiled once from JSON with [`EventPattern::parse`]
//! and then evaluated against any number of events with
//! [`EventPattern::matches`]. The semantics follow Amazon EventBridge:
//!
//! - A pattern is a non-empty JSON object. Every key names a field of the
//!   event and **all** keys must match (AND). A key whose value is an object
//!   descends into the nested event object of the same name.
//! - A leaf is a non-empty array of alternatives and matches when **any**
//!   alternative matches (OR). Alternatives are exact strings, numbers
//!   (matched as written or, within ±5.0e9, by value to six digits after
//!   the point, as EventBridge does: `300` matches `300.0`; `numeric`
//!   compares values within ±5.0e9), `true`/`false`, `null`
//!   or one-key filter objects: `prefix`, `suffix`, `equals-ignore-case`,
//!   `wildcard`, `anything-but`, `numeric`, `exists` and `cidr`.
//! - Matching is type-strict: the string `"1"` never matches the number `1`,
//!   and string filters never match non-string values.
//! - When the event field holds an array, the field matches when any element
//!   matches. For nested patterns, every field of the sub-pattern must be
//!   satisfied by the *same* array element.
//! - Only leaf values (strings, numbers, booleans, `null`) count as present.
//!   A missing field, an empty array or an object-valued field has no leaf
//!   value: it only matches `{"exists": false}` (and `exists: true` does not
//!   match it). `anything-but` needs a present leaf value.
//! - `"$or": [pattern, pattern, ...]` may appear in any pattern object; the
//!   object then matches when its other keys match **and** at least one of the
//!   sub-patterns matches the same event object.
//! - Invalid patterns are rejected with a [`PatternError`] naming the path of
//!   the offending field (the equivalent of `InvalidEventPatternException`).
//!   Limits: [`MAX_PATTERN_BYTES`], [`MAX_DEPTH`], [`MAX_ALTERNATIVES`];
//!   duplicate JSON keys are rejected.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::{Map, Number, Value};

/// Maximum size of a pattern document, in bytes.
pub const MAX_PATTERN_BYTES: usize = 4096;

/// Maximum nesting depth of pattern objects. The top-level object has depth 1;
/// every nested field object and every `$or` branch adds one level. Filter
/// objects such as `{"prefix": "x"}` do not count.
pub const MAX_DEPTH: usize = 10;

/// Maximum number of alternatives in one leaf array, in one `anything-but`
/// list and in one `$or` array.
pub const MAX_ALTERNATIVES: usize = 100;

/// Error returned when a pattern is invalid (AWS `InvalidEventPatternException`).
///
/// `Display` renders as `path: message`, e.g.
/// `detail.eventName[2]: prefix must be a string`, or just `message` when the
/// problem concerns the document as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    path: String,
    message: String,
}

impl PatternError {
    fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Path of the offending field (`detail.eventName[2]`, `$or[1].source`),
    /// empty when the error concerns the whole document.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Description of the problem, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for PatternError {}

/// A compiled, validated EventBridge event pattern.
#[derive(Debug, Clone)]
pub struct EventPattern {
    root: ObjectPattern,
}

impl EventPattern {
    /// Parses and validates a pattern from its JSON text.
    ///
    /// Fails with a [`PatternError`] when the text is not valid JSON, is
    /// larger than [`MAX_PATTERN_BYTES`], contains duplicate keys, or does not
    /// follow the pattern grammar described in the module documentation.
    pub fn parse(json: &str) -> Result<Self, PatternError> {
        if json.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::new(
                "",
                format!(
                    "pattern is {} bytes, which exceeds the limit of {MAX_PATTERN_BYTES} bytes",
                    json.len()
                ),
            ));
        }
        let value: Value = serde_json::from_str(json)
            .map_err(|e| PatternError::new("", format!("pattern is not valid JSON: {e}")))?;
        check_duplicate_keys(json)?;
        let Value::Object(map) = &value else {
            return Err(PatternError::new("", "pattern must be a JSON object"));
        };
        Ok(Self {
            root: compile_object(map, "", 1)?,
        })
    }

    /// Returns `true` when `event` matches this pattern. Never panics.
    pub fn matches(&self, event: &Value) -> bool {
        match_nested(&self.root, Some(event))
    }
}

impl FromStr for EventPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Compiled representation
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ObjectPattern {
    fields: Vec<(String, FieldPattern)>,
    any_of: Vec<ObjectPattern>,
}

#[derive(Debug, Clone)]
enum FieldPattern {
    Nested(ObjectPattern),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone)]
enum Literal {
    Str(String),
    Num(Number),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Literal),
    Prefix(String),
    /// Lower-cased prefix.
    PrefixIgnoreCase(String),
    Suffix(String),
    /// Lower-cased suffix.
    SuffixIgnoreCase(String),
    /// Lower-cased value.
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(AnythingBut),
    Numeric(NumericRange),
    Exists(bool),
    Cidr(Cidr),
}

#[derive(Debug, Clone)]
enum AnythingBut {
    Values(Vec<Literal>),
    Prefix(String),
    Suffix(String),
    /// Lower-cased values.
    EqualsIgnoreCase(Vec<String>),
    Wildcard(Vec<Wildcard>),
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    value: f64,
    inclusive: bool,
}

#[derive(Debug, Clone, Copy)]
struct NumericRange {
    lower: Option<Bound>,
    upper: Option<Bound>,
}

/// A wildcard as the literal pieces between its stars: `a*b*c` is
/// `["a", "b", "c"]`, `*` is `["", ""]`, and one without a star is that one
/// piece, matched whole.
#[derive(Debug, Clone)]
struct Wildcard {
    pieces: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Cidr {
    V4 { network: u32, mask: u32 },
    V6 { network: u128, mask: u128 },
}

// ---------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn compile_object(
    map: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<ObjectPattern, PatternError> {
    if depth > MAX_DEPTH {
        return Err(PatternError::new(
            path,
            format!("pattern nesting depth exceeds the limit of {MAX_DEPTH}"),
        ));
    }
    if map.is_empty() {
        return Err(PatternError::new(path, "pattern object must not be empty"));
    }
    let mut fields = Vec::with_capacity(map.len());
    let mut any_of = Vec::new();
    for (key, value) in map {
        let field_path = join_key(path, key);
        if key == "$or" {
            any_of = compile_or(value, &field_path, depth)?;
            continue;
        }
        let field = match value {
            Value::Object(inner) => {
                FieldPattern::Nested(compile_object(inner, &field_path, depth + 1)?)
            }
            Value::Array(alternatives) => {
                FieldPattern::Leaf(compile_leaf(alternatives, &field_path)?)
            }
            other => {
                return Err(PatternError::new(
                    &field_path,
                    format!(
                        "value must be an array of alternatives or a nested object, not {}",
                        json_type(other)
                    ),
                ));
            }
        };
        fields.push((key.clone(), field));
    }
    Ok(ObjectPattern { fields, any_of })
}

fn compile_or(value: &Value, path: &str, depth: usize) -> Result<Vec<ObjectPattern>, PatternError> {
    let Value::Array(branches) = value else {
        return Err(PatternError::new(
            path,
            "$or must be an array of pattern objects",
        ));
    };
    if branches.len() < 2 {
        return Err(PatternError::new(
            path,
            "$or must contain at least 2 pattern objects",
        ));
    }
    if branches.len() > MAX_ALTERNATIVES {
        return Err(PatternError::new(
            path,
            format!(
                "$or has {} branches, which exceeds the limit of {MAX_ALTERNATIVES}",
                branches.len()
            ),
        ));
    }
    branches
        .iter()
        .enumerate()
        .map(|(i, branch)| {
            let branch_path = format!("{path}[{i}]");
            match branch {
                Value::Object(map) => compile_object(map, &branch_path, depth + 1),
                other => Err(PatternError::new(
                    &branch_path,
                    format!(
                        "$or branch must be a pattern object, not {}",
                        json_type(other)
                    ),
                )),
            }
        })
        .collect()
}

fn compile_leaf(alternatives: &[Value], path: &str) -> Result<Vec<Matcher>, PatternError> {
    if alternatives.is_empty() {
        return Err(PatternError::new(
            path,
            "array of alternatives must not be empty",
        ));
    }
    if alternatives.len() > MAX_ALTERNATIVES {
        return Err(PatternError::new(
            path,
            format!(
                "{} alternatives exceed the limit of {MAX_ALTERNATIVES}",
                alternatives.len()
            ),
        ));
    }
    alternatives
        .iter()
        .enumerate()
        .map(|(i, alternative)| {
            let alt_path = format!("{path}[{i}]");
            match alternative {
                Value::String(s) => Ok(Matcher::Exact(Literal::Str(s.clone()))),
                Value::Number(n) => Ok(Matcher::Exact(Literal::Num(n.clone()))),
                Value::Bool(b) => Ok(Matcher::Exact(Literal::Bool(*b))),
                Value::Null => Ok(Matcher::Exact(Literal::Null)),
                Value::Array(_) => Err(PatternError::new(
                    &alt_path,
                    "nested arrays are not allowed as alternatives",
                )),
                Value::Object(filter) => compile_filter(filter, &alt_path),
            }
        })
        .collect()
}

/// Splits a one-key object into its key and value.
fn single_entry<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    what: &str,
) -> Result<(&'a str, &'a Value), PatternError> {
    let mut entries = map.iter();
    match (entries.next(), entries.next()) {
        (Some((key, value)), None) => Ok((key.as_str(), value)),
        _ => Err(PatternError::new(
            path,
            format!("{what} must have exactly one key, found {}", map.len()),
        )),
    }
}

fn compile_filter(filter: &Map<String, Value>, path: &str) -> Result<Matcher, PatternError> {
    let (name, arg) = single_entry(filter, path, "filter object")?;
    match name {
        "prefix" | "suffix" => {
            let is_prefix = name == "prefix";
            match arg {
                Value::String(s) if is_prefix => Ok(Matcher::Prefix(s.clone())),
                Value::String(s) => Ok(Matcher::Suffix(s.clone())),
                Value::Object(inner) => {
                    let s = equals_ignore_case_arg(inner).ok_or_else(|| {
                        PatternError::new(
                            path,
                            format!(
                                "{name} must be a string or {{\"equals-ignore-case\": <string>}}"
                            ),
                        )
                    })?;
                    let lowered = s.to_lowercase();
                    Ok(if is_prefix {
                        Matcher::PrefixIgnoreCase(lowered)
                    } else {
                        Matcher::SuffixIgnoreCase(lowered)
                    })
                }
                _ => Err(PatternError::new(path, format!("{name} must be a string"))),
            }
        }
        "equals-ignore-case" => match arg {
            Value::String(s) => Ok(Matcher::EqualsIgnoreCase(s.to_lowercase())),
            _ => Err(PatternError::new(
                path,
                "equals-ignore-case must be a string",
            )),
        },
        "wildcard" => match arg {
            Value::String(s) => Ok(Matcher::Wildcard(Wildcard::compile(s, path)?)),
            _ => Err(PatternError::new(path, "wildcard must be a string")),
        },
        "anything-but" => Ok(Matcher::AnythingBut(compile_anything_but(arg, path)?)),
        "numeric" => Ok(Matcher::Numeric(compile_numeric(arg, path)?)),
        "exists" => match arg {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => Err(PatternError::new(path, "exists must be true or false")),
        },
        "cidr" => match arg {
            Value::String(s) => Ok(Matcher::Cidr(Cidr::parse(s, path)?)),
            _ => Err(PatternError::new(path, "cidr must be a string")),
        },
        other => Err(PatternError::new(
            path,
            format!(
                "unknown filter \"{other}\" (expected prefix, suffix, equals-ignore-case, \
                 wildcard, anything-but, numeric, exists or cidr)"
            ),
        )),
    }
}

fn equals_ignore_case_arg(inner: &Map<String, Value>) -> Option<&str> {
    let mut entries = inner.iter();
    match (entries.next(), entries.next()) {
        (Some((key, Value::String(s))), None) if key == "equals-ignore-case" => Some(s.as_str()),
        _ => None,
    }
}

/// Accepts a string or a non-empty list of strings.
fn string_or_strings(arg: &Value, path: &str, what: &str) -> Result<Vec<String>, PatternError> {
    let err = || {
        PatternError::new(
            path,
            format!("{what} must be a string or a non-empty list of strings"),
        )
    };
    match arg {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_ALTERNATIVES => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(err))
            .collect(),
        _ => Err(err()),
    }
}

fn compile_anything_but(arg: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    match arg {
        Value::String(s) => Ok(AnythingBut::Values(vec![Literal::Str(s.clone())])),
        Value::Number(n) => Ok(AnythingBut::Values(vec![Literal::Num(n.clone())])),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(PatternError::new(
                    path,
                    "anything-but list must not be empty",
                ));
            }
            if items.len() > MAX_ALTERNATIVES {
                return Err(PatternError::new(
                    path,
                    format!(
                        "anything-but list has {} values, which exceeds the limit of {MAX_ALTERNATIVES}",
                        items.len()
                    ),
                ));
            }
            let all_strings = items.iter().all(Value::is_string);
            let all_numbers = items.iter().all(Value::is_number);
            if !all_strings && !all_numbers {
                return Err(PatternError::new(
                    path,
                    "anything-but list must contain only strings or only numbers",
                ));
            }
            let values = items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(Literal::Str(s.clone())),
                    Value::Number(n) => Some(Literal::Num(n.clone())),
                    _ => None,
                })
                .collect();
            Ok(AnythingBut::Values(values))
        }
        Value::Object(inner) => {
            let (name, value) = single_entry(inner, path, "anything-but filter")?;
            match name {
                "prefix" | "suffix" => {
                    let Value::String(s) = value else {
                        return Err(PatternError::new(
                            path,
                            format!("anything-but {name} must be a string"),
                        ));
                    };
                    // Every string begins and ends with "": such a rule
                    // would match no string at all, and EventBridge refuses it.
                    if s.is_empty() {
                        return Err(PatternError::new(
                            path,
                            format!("anything-but {name} must not be empty"),
                        ));
                    }
                    Ok(if name == "prefix" {
                        AnythingBut::Prefix(s.clone())
                    } else {
                        AnythingBut::Suffix(s.clone())
                    })
                }
                "equals-ignore-case" => {
                    let values = string_or_strings(value, path, "anything-but equals-ignore-case")?;
                    Ok(AnythingBut::EqualsIgnoreCase(
                        values.iter().map(|s| s.to_lowercase()).collect(),
                    ))
                }
                "wildcard" => {
                    let values = string_or_strings(value, path, "anything-but wildcard")?;
                    let compiled = values
                        .iter()
                        .map(|s| Wildcard::compile(s, path))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(AnythingBut::Wildcard(compiled))
                }
                other => Err(PatternError::new(
                    path,
                    format!(
                        "unknown anything-but filter \"{other}\" (expected prefix, suffix, \
                         equals-ignore-case or wildcard)"
                    ),
                )),
            }
        }
        Value::Bool(_) | Value::Null => Err(PatternError::new(
            path,
            "anything-but must be a string, a number, a list of strings or numbers, \
             or a prefix/suffix/equals-ignore-case/wildcard object",
        )),
    }
}

/// The magnitude numeric matching works within, as in EventBridge: a pattern
/// bound beyond it is refused, and an event value beyond it matches no
/// numeric comparison.
const NUMERIC_LIMIT: f64 = 5.0e9;

fn compile_numeric(arg: &Value, path: &str) -> Result<NumericRange, PatternError> {
    let shape_err = || {
        PatternError::new(
            path,
            "numeric must be an array of one or two operator/number pairs, \
             e.g. [\">\", 0, \"<=\", 5]",
        )
    };
    let Value::Array(items) = arg else {
        return Err(shape_err());
    };
    if items.len() != 2 && items.len() != 4 {
        return Err(shape_err());
    }
    let mut range = NumericRange {
        lower: None,
        upper: None,
    };
    let mut has_equals = false;
    for pair in items.chunks(2) {
        let [op, number] = pair else {
            return Err(shape_err());
        };
        let Value::String(op) = op else {
            return Err(PatternError::new(
                path,
                format!("numeric operator must be a string, not {}", json_type(op)),
            ));
        };
        let value = match number {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            PatternError::new(
                path,
                format!("numeric operator \"{op}\" must be followed by a number"),
            )
        })?;
        if value.abs() > NUMERIC_LIMIT {
            return Err(PatternError::new(
                path,
                format!("numeric values must be between -5.0e9 and 5.0e9, not {value}"),
            ));
        }
        let (slot, bound) = match op.as_str() {
            "=" => {
                if range.lower.is_some() || range.upper.is_some() {
                    return Err(PatternError::new(
                        path,
                        "numeric \"=\" cannot be combined with another comparison",
                    ));
                }
                has_equals = true;
                range.lower = Some(Bound {
                    value,
                    inclusive: true,
                });
                (
                    &mut range.upper,
                    Bound {
                        value,
                        inclusive: true,
                    },
                )
            }
            ">" | ">=" => (
                &mut range.lower,
                Bound {
                    value,
                    inclusive: op == ">=",
                },
            ),
            "<" | "<=" => (
                &mut range.upper,
                Bound {
                    value,
                    inclusive: op == "<=",
                },
            ),
            other => {
                return Err(PatternError::new(
                    path,
                    format!("unknown numeric operator \"{other}\" (expected =, <, <=, > or >=)"),
                ));
            }
        };
        if slot.is_some() {
            return Err(PatternError::new(
                path,
                if has_equals {
                    "numeric \"=\" cannot be combined with another comparison"
                } else {
                    "numeric range needs one lower bound (> or >=) and one upper bound (< or <=)"
                },
            ));
        }
        *slot = Some(bound);
    }
    if let (Some(lower), Some(upper)) = (range.lower, range.upper) {
        let empty = lower.value > upper.value
            || (lower.value == upper.value && !(lower.inclusive && upper.inclusive));
        if empty {
            return Err(PatternError::new(
                path,
                "numeric lower bound must be below the upper bound",
            ));
        }
    }
    Ok(range)
}

impl Wildcard {
    fn compile(pattern: &str, path: &str) -> Result<Self, PatternError> {
        let mut pieces = vec![String::new()];
        let mut after_star = false;
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let literal = match c {
                '*' => {
                    if after_star {
                        return Err(PatternError::new(
                            path,
                            "wildcard must not contain consecutive * characters",
                        ));
                    }
                    after_star = true;
                    pieces.push(String::new());
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => escaped,
                    _ => {
                        return Err(PatternError::new(
                            path,
                            "wildcard has an invalid escape: only \\* and \\\\ are allowed",
                        ));
                    }
                },
                other => other,
            };
            after_star = false;
            if let Some(piece) = pieces.last_mut() {
                piece.push(literal);
            }
        }
        Ok(Self { pieces })
    }

    /// The text begins with the first piece, ends with the last, and holds
    /// the ones between in order without overlapping. Each middle piece is
    /// taken at its leftmost place (which leaves the most room for the
    /// rest), so a match costs one linear substring search a piece, never
    /// the length of the text times the length of the pattern whatever a
    /// rule's author writes.
    fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return text.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == first;
        };
        let Some(between) = text
            .strip_prefix(first.as_str())
            .and_then(|tail| tail.strip_suffix(last.as_str()))
        else {
            return false;
        };
        let mut unsearched = between;
        middle
            .iter()
            .all(|piece| match unsearched.find(piece.as_str()) {
                Some(at) => {
                    unsearched = &unsearched[at + piece.len()..];
                    true
                }
                None => false,
            })
    }
}

impl Cidr {
    fn parse(text: &str, path: &str) -> Result<Self, PatternError> {
        let err = || PatternError::new(path, format!("cidr \"{text}\" is not a valid CIDR block"));
        let (addr, len) = text.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let len: u32 = len.parse().map_err(|_| err())?;
        match addr {
            IpAddr::V4(v4) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                Ok(Cidr::V4 {
                    network: u32::from(v4) & mask,
                    mask,
                })
            }
            IpAddr::V6(v6) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                Ok(Cidr::V6 {
                    network: u128::from(v6) & mask,
                    mask,
                })
            }
            _ => Err(err()),
        }
    }

    fn contains(&self, text: &str) -> bool {
        match (self, text.parse::<IpAddr>()) {
            (Cidr::V4 { network, mask }, Ok(IpAddr::V4(ip))) => u32::from(ip) & mask == *network,
            (Cidr::V6 { network, mask }, Ok(IpAddr::V6(ip))) => u128::from(ip) & mask == *network,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Duplicate-key detection
// ---------------------------------------------------------------------------

enum Frame {
    Object {
        keys: HashSet<String>,
        expecting_key: bool,
        current: Option<String>,
    },
    Array {
        index: usize,
    },
}

fn frames_path(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Object {
                current: Some(key), ..
            } => path = join_key(&path, key),
            Frame::Object { current: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Scans already-validated JSON text and rejects objects with repeated keys
/// (serde_json would silently keep the last one). Keys are compared after
/// unescaping, so `"a"` and `"\u0061"` are duplicates.
fn check_duplicate_keys(json: &str) -> Result<(), PatternError> {
    let bytes = json.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'{' => stack.push(Frame::Object {
                keys: HashSet::new(),
                expecting_key: true,
                current: None,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expecting_key, .. }) = stack.last_mut() {
                    *expecting_key = false;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                if let Some(Frame::Object {
                    keys,
                    expecting_key: true,
                    current,
                }) = stack.last_mut()
                {
                    let key: String = json
                        .get(start..=i)
                        .and_then(|raw| serde_json::from_str(raw).ok())
                        .unwrap_or_default();
                    let duplicate = !keys.insert(key.clone());
                    *current = Some(key);
                    if duplicate {
                        return Err(PatternError::new(&frames_path(&stack), "duplicate key"));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

/// EventBridge matches an exact number both as written and by its value:
/// `300` matches `300.0`, and `1.0000001` matches `1.0000002` (values are
/// compared to six digits after the point). Only numbers within ±5.0e9 have
/// a value to compare; beyond, as written only (an account number, say).
fn numbers_equal(a: &Number, b: &Number) -> bool {
    a.to_string() == b.to_string() || comparable(a).is_some_and(|a| Some(a) == comparable(b))
}

/// A number's value as EventBridge compares it: offset by 5.0e9 and scaled to
/// millionths, the rest cut off; `None` outside ±5.0e9.
fn comparable(number: &Number) -> Option<i64> {
    let value = number
        .as_f64()
        .filter(|value| (-NUMERIC_LIMIT..=NUMERIC_LIMIT).contains(value))?;
    // Within 0..=1.0e16 once offset and scaled: an i64 holds it (the
    // cast cuts the fraction off, as EventBridge's does).
    Some(((NUMERIC_LIMIT + value) * 1e6) as i64)
}

impl Literal {
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (Literal::Str(expected), Value::String(actual)) => expected == actual,
            (Literal::Num(expected), Value::Number(actual)) => numbers_equal(expected, actual),
            (Literal::Bool(expected), Value::Bool(actual)) => expected == actual,
            (Literal::Null, Value::Null) => true,
            _ => false,
        }
    }
}

impl NumericRange {
    fn contains(&self, x: f64) -> bool {
        let above = self.lower.is_none_or(|b| {
            if b.inclusive {
                x >= b.value
            } else {
                x > b.value
            }
        });
        let below = self.upper.is_none_or(|b| {
            if b.inclusive {
                x <= b.value
            } else {
                x < b.value
            }
        });
        above && below
    }
}

impl AnythingBut {
    /// Whether the *excluded* condition holds for `value`.
    fn excludes(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            AnythingBut::Values(values) => values.iter().any(|lit| lit.matches(value)),
            AnythingBut::Prefix(p) => text.is_some_and(|s| s.starts_with(p.as_str())),
            AnythingBut::Suffix(p) => text.is_some_and(|s| s.ends_with(p.as_str())),
            AnythingBut::EqualsIgnoreCase(values) => text.is_some_and(|s| {
                let lowered = s.to_lowercase();
                values.contains(&lowered)
            }),
            AnythingBut::Wildcard(patterns) => {
                text.is_some_and(|s| patterns.iter().any(|w| w.matches(s)))
            }
        }
    }
}

impl Matcher {
    /// Matches one present leaf value (never called for `Exists`).
    fn matches_leaf(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            Matcher::Exact(lit) => lit.matches(value),
            Matcher::Prefix(p) => text.is_some_and(|s| s.starts_with(p.as_str())),
            Matcher::PrefixIgnoreCase(p) => {
                text.is_some_and(|s| s.to_lowercase().starts_with(p.as_str()))
            }
            Matcher::Suffix(p) => text.is_some_and(|s| s.ends_with(p.as_str())),
            Matcher::SuffixIgnoreCase(p) => {
                text.is_some_and(|s| s.to_lowercase().ends_with(p.as_str()))
            }
            Matcher::EqualsIgnoreCase(p) => text.is_some_and(|s| s.to_lowercase() == *p),
            Matcher::Wildcard(w) => text.is_some_and(|s| w.matches(s)),
            Matcher::AnythingBut(ab) => !ab.excludes(value),
            Matcher::Numeric(range) => value
                .as_f64()
                .is_some_and(|x| x.abs() <= NUMERIC_LIMIT && range.contains(x)),
            Matcher::Cidr(cidr) => text.is_some_and(|s| cidr.contains(s)),
            Matcher::Exists(_) => false,
        }
    }
}

/// Leaf values at a field: scalars, with arrays flattened (at any depth) and
/// objects skipped.
fn collect_leaves(value: Option<&Value>) -> Vec<&Value> {
    let mut leaves = Vec::new();
    let mut pending: Vec<&Value> = value.into_iter().collect();
    while let Some(v) = pending.pop() {
        match v {
            Value::Array(items) => pending.extend(items.iter().rev()),
            Value::Object(_) => {}
            scalar => leaves.push(scalar),
        }
    }
    leaves
}

/// Objects at a field, with arrays flattened (at any depth).
fn collect_objects(value: Option<&Value>) -> Vec<&Map<String, Value>> {
    let mut objects = Vec::new();
    let mut pending: Vec<&Value> = value.into_iter().collect();
    while let Some(v) = pending.pop() {
        match v {
            Value::Array(items) => pending.extend(items.iter().rev()),
            Value::Object(map) => objects.push(map),
            _ => {}
        }
    }
    objects
}

fn match_leaf(alternatives: &[Matcher], value: Option<&Value>) -> bool {
    let leaves = collect_leaves(value);
    alternatives.iter().any(|m| match m {
        Matcher::Exists(should_exist) => *should_exist != leaves.is_empty(),
        _ => leaves.iter().any(|leaf| m.matches_leaf(leaf)),
    })
}

fn match_nested(pattern: &ObjectPattern, value: Option<&Value>) -> bool {
    let objects = collect_objects(value);
    if objects.is_empty() {
        // No object here: every field below is absent (only exists:false can match).
        pattern.matches_object(None)
    } else if pattern.only_absences() {
        // Nothing to match picks an element out, so a field is there when
        // any element has it (as EventBridge reads arrays): every element
        // must lack it.
        objects.iter().all(|map| pattern.matches_object(Some(map)))
    } else {
        objects.iter().any(|map| pattern.matches_object(Some(map)))
    }
}

impl ObjectPattern {
    /// Whether every field below asks only that it be absent
    /// (`exists: false`), with no `$or`.
    fn only_absences(&self) -> bool {
        self.any_of.is_empty()
            && self.fields.iter().all(|(_, field)| match field {
                FieldPattern::Nested(nested) => nested.only_absences(),
                FieldPattern::Leaf(alternatives) => {
                    !alternatives.is_empty()
                        && alternatives
                            .iter()
                            .all(|matcher| matches!(matcher, Matcher::Exists(false)))
                }
            })
    }

    fn matches_object(&self, object: Option<&Map<String, Value>>) -> bool {
        let fields_match = self.fields.iter().all(|(key, field)| {
            let child = object.and_then(|map| map.get(key));
            match field {
                FieldPattern::Nested(nested) => match_nested(nested, child),
                FieldPattern::Leaf(alternatives) => match_leaf(alternatives, child),
            }
        });
        fields_match
            && (self.any_of.is_empty()
                || self
                    .any_of
                    .iter()
                    .any(|branch| branch.matches_object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pat(p: &str) -> EventPattern {
        EventPattern::parse(p).unwrap_or_else(|e| panic!("pattern {p} rejected: {e}"))
    }

    fn m(p: &str, event: Value) -> bool {
        pat(p).matches(&event)
    }

    fn err(p: &str) -> String {
        match EventPattern::parse(p) {
            Ok(_) => panic!("pattern {p} unexpectedly accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(p: &str, expected: &str) {
        let e = err(p);
        assert!(e.contains(expected), "error {e:?} lacks {expected:?}");
    }

    fn cloudtrail() -> Value {
        json!({
            "eventSource": "kms.coffer.internal",
            "eventName": "Encrypt",
            "readOnly": false,
            "userIdentity": {
                "type": "IAMUser",
                "arn": "arn:coffer:iam::111122223333:user/alice"
            },
            "resources": [
                {"ARN": "arn:coffer:kms:eu-west-1:111122223333:key/abc"}
            ]
        })
    }

    // --- exact matching -------------------------------------------------

    #[test]
    fn exact_string_matches_and_mismatches() {
        assert!(m(r#"{"a":["x"]}"#, json!({"a":"x"})));
        assert!(!m(r#"{"a":["x"]}"#, json!({"a":"X"})));
        assert!(!m(r#"{"a":["x"]}"#, json!({"a":"xy"})));
    }

    #[test]
    fn alternatives_are_ored() {
        let p = pat(r#"{"a":["x","y",3]}"#);
        assert!(p.matches(&json!({"a":"y"})));
        assert!(p.matches(&json!({"a":3})));
        assert!(!p.matches(&json!({"a":"z"})));
    }

    #[test]
    fn fields_are_anded() {
        let p = pat(r#"{"a":["x"],"b":["y"]}"#);
        assert!(p.matches(&json!({"a":"x","b":"y","c":"ignored"})));
        assert!(!p.matches(&json!({"a":"x","b":"z"})));
        assert!(!p.matches(&json!({"a":"x"})));
    }

    #[test]
    fn nested_objects_match_nested_objects() {
        let p = pat(r#"{"detail":{"state":["running"]}}"#);
        assert!(p.matches(&json!({"detail":{"state":"running"}})));
        assert!(!p.matches(&json!({"detail":{"state":"stopped"}})));
        assert!(!p.matches(&json!({"detail":"running"})));
        assert!(!p.matches(&json!({"state":"running"})));
    }

    /// As EventBridge's matcher does: a number matches as written, or by
    /// its value within ±5.0e9, to six digits after the point.
    #[test]
    fn numbers_match_as_written_or_by_value() {
        assert!(m(r#"{"n":[300]}"#, json!({"n":300})));
        assert!(m(r#"{"n":[300]}"#, json!({"n":300.0})));
        assert!(m(r#"{"n":[300.0]}"#, json!({"n":300})));
        assert!(m(r#"{"n":[3e2]}"#, json!({"n":300})));
        assert!(m(r#"{"n":[-0.5]}"#, json!({"n":-0.5000001})));
        assert!(!m(r#"{"n":[-0.5]}"#, json!({"n":-0.500001})));
        // Beyond ±5.0e9, as written only.
        assert!(m(r#"{"n":[111122223333]}"#, json!({"n":111122223333u64})));
        assert!(!m(r#"{"n":[111122223333]}"#, json!({"n":111122223333.0})));
        assert!(m(r#"{"n":[-1.5]}"#, json!({"n":-1.5})));
        assert!(!m(r#"{"n":[300]}"#, json!({"n":301})));
        assert!(m(
            r#"{"n":[18446744073709551615]}"#,
            json!({"n":18446744073709551615u64})
        ));
        // A range compares values.
        assert!(m(r#"{"n":[{"numeric":["=",300]}]}"#, json!({"n":300.0})));
    }

    #[test]
    fn strings_never_match_numbers() {
        assert!(!m(r#"{"n":["1"]}"#, json!({"n":1})));
        assert!(!m(r#"{"n":[1]}"#, json!({"n":"1"})));
        assert!(!m(r#"{"n":[{"prefix":"1"}]}"#, json!({"n":10})));
        assert!(!m(r#"{"n":[{"numeric":[">",0]}]}"#, json!({"n":"5"})));
    }

    #[test]
    fn booleans_and_null() {
        assert!(m(r#"{"b":[false]}"#, json!({"b":false})));
        assert!(!m(r#"{"b":[false]}"#, json!({"b":"false"})));
        assert!(!m(r#"{"b":[true]}"#, json!({"b":1})));
        assert!(m(r#"{"v":[null]}"#, json!({"v":null})));
        assert!(!m(r#"{"v":[null]}"#, json!({})));
        assert!(!m(r#"{"v":[null]}"#, json!({"v":""})));
    }

    #[test]
    fn empty_string_matches_only_empty_string() {
        assert!(m(r#"{"v":[""]}"#, json!({"v":""})));
        assert!(!m(r#"{"v":[""]}"#, json!({"v":null})));
        assert!(!m(r#"{"v":[""]}"#, json!({})));
    }

    // --- arrays in events -------------------------------------------------

    #[test]
    fn event_array_matches_if_any_element_matches() {
        let p = pat(r#"{"tags":["prod","staging"]}"#);
        assert!(p.matches(&json!({"tags":["dev","staging"]})));
        assert!(!p.matches(&json!({"tags":["dev","test"]})));
        assert!(!p.matches(&json!({"tags":[]})));
        assert!(p.matches(&json!({"tags":[["nested","prod"]]})));
    }

    #[test]
    fn event_array_of_objects_matches_within_one_element() {
        let p = pat(r#"{"items":{"kind":["key"],"state":["enabled"]}}"#);
        assert!(p.matches(&json!({"items":[
            {"kind":"alias","state":"enabled"},
            {"kind":"key","state":"enabled"}
        ]})));
        // "key" and "enabled" come from different elements: no match.
        assert!(!p.matches(&json!({"items":[
            {"kind":"key","state":"disabled"},
            {"kind":"alias","state":"enabled"}
        ]})));
    }

    #[test]
    fn exists_false_in_an_array_of_objects() {
        // Alone, it asks that no element have the field.
        let p = pat(r#"{"a":{"b":[{"exists":false}]}}"#);
        assert!(!p.matches(&json!({"a":[{"b":1},{"c":2}]})));
        assert!(p.matches(&json!({"a":[{"c":1},{"c":2}]})));
        let deeper = pat(r#"{"a":{"b":{"c":[{"exists":false}]}}}"#);
        assert!(!deeper.matches(&json!({"a":[{"b":{"c":1}},{"b":{}}]})));
        assert!(deeper.matches(&json!({"a":[{"b":{}},{"b":{"d":1}}]})));
        // Beside a field that matches, the element it matched has no b.
        let p = pat(r#"{"a":{"b":[{"exists":false}],"c":[2]}}"#);
        assert!(!p.matches(&json!({"a":[{"b":1,"c":2}]})));
        assert!(p.matches(&json!({"a":[{"c":2}]})));
    }

    #[test]
    fn non_object_event_matches_only_exists_false() {
        assert!(!m(r#"{"a":["x"]}"#, json!("x")));
        assert!(m(r#"{"a":[{"exists":false}]}"#, json!(["x"])));
    }

    // --- string filters -------------------------------------------------

    #[test]
    fn prefix_filter() {
        let p = pat(r#"{"time":[{"prefix":"2017-10-02"}]}"#);
        assert!(p.matches(&json!({"time":"2017-10-02T18:43:48Z"})));
        assert!(!p.matches(&json!({"time":"2017-10-03T18:43:48Z"})));
        assert!(!p.matches(&json!({"time":20171002})));
    }

    #[test]
    fn suffix_filter() {
        let p = pat(r#"{"file":[{"suffix":".png"}]}"#);
        assert!(p.matches(&json!({"file":"cat.png"})));
        assert!(!p.matches(&json!({"file":"cat.PNG"})));
        assert!(!p.matches(&json!({"file":"cat.png.gz"})));
    }

    #[test]
    fn prefix_and_suffix_ignore_case() {
        let p = pat(r#"{"s":[{"prefix":{"equals-ignore-case":"EventB"}}]}"#);
        assert!(p.matches(&json!({"s":"eventbridge"})));
        assert!(p.matches(&json!({"s":"EVENTBRIDGE"})));
        assert!(!p.matches(&json!({"s":"bridge"})));
        let p = pat(r#"{"f":[{"suffix":{"equals-ignore-case":".png"}}]}"#);
        assert!(p.matches(&json!({"f":"A.PNG"})));
        assert!(!p.matches(&json!({"f":"A.jpg"})));
    }

    #[test]
    fn equals_ignore_case_filter() {
        let p = pat(r#"{"name":[{"equals-ignore-case":"alice"}]}"#);
        assert!(p.matches(&json!({"name":"ALICE"})));
        assert!(p.matches(&json!({"name":"Alice"})));
        assert!(!p.matches(&json!({"name":"alicia"})));
    }

    #[test]
    fn wildcard_filter() {
        let p = pat(r#"{"arn":[{"wildcard":"arn:coffer:kms:*:key/*"}]}"#);
        assert!(p.matches(&json!({"arn":"arn:coffer:kms:eu-west-1:1111:key/abc"})));
        assert!(!p.matches(&json!({"arn":"arn:coffer:s3:eu-west-1:1111:key/abc"})));
        assert!(m(r#"{"a":[{"wildcard":"*"}]}"#, json!({"a":""})));
        assert!(m(
            r#"{"a":[{"wildcard":"a*b*c"}]}"#,
            json!({"a":"axxbyybc"})
        ));
        assert!(!m(
            r#"{"a":[{"wildcard":"a*b*c"}]}"#,
            json!({"a":"axxbyybcd"})
        ));
        assert!(!m(r#"{"a":[{"wildcard":"abc"}]}"#, json!({"a":"abcd"})));
        // Escapes: \* is a literal star, \\ a literal backslash.
        assert!(m(r#"{"a":[{"wildcard":"x\\*y"}]}"#, json!({"a":"x*y"})));
        assert!(!m(r#"{"a":[{"wildcard":"x\\*y"}]}"#, json!({"a":"xzy"})));
        assert!(m(r#"{"a":[{"wildcard":"x\\\\*"}]}"#, json!({"a":"x\\yz"})));
        assert!(!m(r#"{"a":[{"wildcard":"*"}]}"#, json!({"a":5})));
        // The first and last pieces do not share characters of the text;
        // middle pieces come in order, each after the one before.
        assert!(!m(r#"{"a":[{"wildcard":"ab*ba"}]}"#, json!({"a":"aba"})));
        assert!(m(r#"{"a":[{"wildcard":"ab*ba"}]}"#, json!({"a":"abba"})));
        assert!(!m(r#"{"a":[{"wildcard":"*b*a*"}]}"#, json!({"a":"ab"})));
        assert!(m(r#"{"a":[{"wildcard":"*b*a*"}]}"#, json!({"a":"abca"})));
        assert!(m(r#"{"a":[{"wildcard":"*aab"}]}"#, json!({"a":"aaab"})));
        assert!(m(r#"{"a":[{"wildcard":"é*ü"}]}"#, json!({"a":"éxxü"})));
        assert!(!m(r#"{"a":[{"wildcard":"x*"}]}"#, json!({"a":""})));
        assert!(m(r#"{"a":[{"wildcard":""}]}"#, json!({"a":""})));
        // A pattern that backtracking would try at every place of a long
        // text is answered by substring search.
        let hostile = format!(r#"{{"a":[{{"wildcard":"*{}b*c"}}]}}"#, "a".repeat(1500));
        assert!(!m(
            &hostile,
            json!({"a": format!("{}c", "a".repeat(100_000))})
        ));
    }

    #[test]
    fn cidr_filter() {
        let p = pat(r#"{"ip":[{"cidr":"10.0.0.0/24"}]}"#);
        assert!(p.matches(&json!({"ip":"10.0.0.255"})));
        assert!(!p.matches(&json!({"ip":"10.0.1.0"})));
        assert!(!p.matches(&json!({"ip":"not-an-ip"})));
        assert!(!p.matches(&json!({"ip":"::1"})));
        let p6 = pat(r#"{"ip":[{"cidr":"2001:db8::/32"}]}"#);
        assert!(p6.matches(&json!({"ip":"2001:db8::42"})));
        assert!(!p6.matches(&json!({"ip":"2001:db9::42"})));
        assert!(m(
            r#"{"ip":[{"cidr":"0.0.0.0/0"}]}"#,
            json!({"ip":"8.8.8.8"})
        ));
    }

    // --- anything-but ---------------------------------------------------

    #[test]
    fn anything_but_single_value() {
        let p = pat(r#"{"state":[{"anything-but":"initializing"}]}"#);
        assert!(p.matches(&json!({"state":"running"})));
        assert!(!p.matches(&json!({"state":"initializing"})));
        assert!(
            !p.matches(&json!({})),
            "absent field never matches anything-but"
        );
        let p = pat(r#"{"n":[{"anything-but":123}]}"#);
        assert!(p.matches(&json!({"n":124})));
        assert!(!p.matches(&json!({"n":123})));
        // Numbers compare by value too: 123.0 is excluded as well.
        assert!(!p.matches(&json!({"n":123.0})));
        assert!(p.matches(&json!({"n":123.5})));
    }

    #[test]
    fn anything_but_lists() {
        let p = pat(r#"{"state":[{"anything-but":["stopped","overloaded"]}]}"#);
        assert!(p.matches(&json!({"state":"running"})));
        assert!(!p.matches(&json!({"state":"stopped"})));
        assert!(!p.matches(&json!({"state":"overloaded"})));
        let p = pat(r#"{"n":[{"anything-but":[100,200]}]}"#);
        assert!(p.matches(&json!({"n":150})));
        assert!(!p.matches(&json!({"n":200})));
    }

    #[test]
    fn anything_but_prefix_suffix() {
        let p = pat(r#"{"region":[{"anything-but":{"prefix":"us-"}}]}"#);
        assert!(p.matches(&json!({"region":"eu-west-1"})));
        assert!(!p.matches(&json!({"region":"us-east-1"})));
        let p = pat(r#"{"f":[{"anything-but":{"suffix":".png"}}]}"#);
        assert!(p.matches(&json!({"f":"a.jpg"})));
        assert!(!p.matches(&json!({"f":"a.png"})));
    }

    #[test]
    fn anything_but_ignore_case_and_wildcard() {
        let p = pat(r#"{"s":[{"anything-but":{"equals-ignore-case":["Init","stopped"]}}]}"#);
        assert!(p.matches(&json!({"s":"running"})));
        assert!(!p.matches(&json!({"s":"INIT"})));
        assert!(!p.matches(&json!({"s":"Stopped"})));
        let p = pat(r#"{"path":[{"anything-but":{"wildcard":"*/lib/*"}}]}"#);
        assert!(p.matches(&json!({"path":"/usr/bin/x"})));
        assert!(!p.matches(&json!({"path":"/usr/lib/x"})));
    }

    #[test]
    fn anything_but_on_event_arrays_needs_one_non_excluded_element() {
        let p = pat(r#"{"tags":[{"anything-but":"a"}]}"#);
        assert!(p.matches(&json!({"tags":["a","b"]})));
        assert!(!p.matches(&json!({"tags":["a","a"]})));
        assert!(!p.matches(&json!({"tags":[]})));
    }

    // --- numeric ----------------------------------------------------------

    #[test]
    fn numeric_range_boundaries() {
        let p = pat(r#"{"c":[{"numeric":[">",0,"<=",5]}]}"#);
        assert!(!p.matches(&json!({"c":0})));
        assert!(p.matches(&json!({"c":0.0001})));
        assert!(p.matches(&json!({"c":5})));
        assert!(p.matches(&json!({"c":5.0})));
        assert!(!p.matches(&json!({"c":5.0001})));
        let p = pat(r#"{"c":[{"numeric":[">=",10,"<",20]}]}"#);
        assert!(p.matches(&json!({"c":10})));
        assert!(!p.matches(&json!({"c":20})));
        assert!(!p.matches(&json!({"c":9.99})));
    }

    #[test]
    fn numeric_single_comparisons() {
        assert!(m(r#"{"c":[{"numeric":["=",3.5]}]}"#, json!({"c":3.5})));
        assert!(!m(r#"{"c":[{"numeric":["=",3.5]}]}"#, json!({"c":3.6})));
        assert!(m(r#"{"c":[{"numeric":["<",0]}]}"#, json!({"c":-1})));
        assert!(!m(r#"{"c":[{"numeric":["<",0]}]}"#, json!({"c":0})));
        assert!(m(
            r#"{"c":[{"numeric":[">=",1e9]}]}"#,
            json!({"c":1000000000})
        ));
        // Reversed order of bounds is accepted.
        assert!(m(r#"{"c":[{"numeric":["<",5,">",1]}]}"#, json!({"c":3})));
    }

    #[test]
    fn numeric_matching_works_within_five_billion() {
        let p = pat(r#"{"c":[{"numeric":[">=",-5e9,"<=",5e9]}]}"#);
        assert!(p.matches(&json!({"c":5_000_000_000_i64})));
        assert!(p.matches(&json!({"c":-5e9})));
        assert!(!p.matches(&json!({"c":5_000_000_001_i64})));
        let p = pat(r#"{"c":[{"numeric":[">",0]}]}"#);
        assert!(!p.matches(&json!({"c":1e12})));
        assert!(!p.matches(&json!({"c":u64::MAX})));
        let p = pat(r#"{"c":[{"numeric":["<",0]}]}"#);
        assert!(!p.matches(&json!({"c":-1e12})));
    }

    // --- exists -------------------------------------------------------------

    #[test]
    fn exists_true_and_false() {
        let yes = pat(r#"{"detail":{"c":[{"exists":true}]}}"#);
        let no = pat(r#"{"detail":{"c":[{"exists":false}]}}"#);
        let present = json!({"detail":{"c":null}});
        let absent = json!({"detail":{"d":1}});
        assert!(yes.matches(&present));
        assert!(!no.matches(&present));
        assert!(!yes.matches(&absent));
        assert!(no.matches(&absent));
        // The whole parent is missing: the leaf is absent too.
        assert!(no.matches(&json!({"other":1})));
        assert!(!yes.matches(&json!({"other":1})));
    }

    #[test]
    fn exists_only_sees_leaf_values() {
        let yes = pat(r#"{"detail":[{"exists":true}]}"#);
        let no = pat(r#"{"detail":[{"exists":false}]}"#);
        assert!(!yes.matches(&json!({"detail":{"a":1}})));
        assert!(no.matches(&json!({"detail":{"a":1}})));
        assert!(no.matches(&json!({"detail":[]})));
        assert!(yes.matches(&json!({"detail":["x"]})));
    }

    #[test]
    fn exists_combined_with_values() {
        let p = pat(r#"{"a":["x",{"exists":false}]}"#);
        assert!(p.matches(&json!({"a":"x"})));
        assert!(p.matches(&json!({})));
        assert!(!p.matches(&json!({"a":"y"})));
    }

    // --- $or ------------------------------------------------------------------

    #[test]
    fn or_at_top_level() {
        let p = pat(r#"{"$or":[{"a":["1"]},{"b":[{"numeric":[">",10]}]}]}"#);
        assert!(p.matches(&json!({"a":"1"})));
        assert!(p.matches(&json!({"b":11})));
        assert!(!p.matches(&json!({"a":"2","b":10})));
    }

    #[test]
    fn or_nested_and_combined_with_siblings() {
        let p =
            pat(r#"{"source":["s"],"detail":{"$or":[{"x":["1"]},{"y":{"z":[true]}}],"k":["v"]}}"#);
        assert!(p.matches(&json!({"source":"s","detail":{"x":"1","k":"v"}})));
        assert!(p.matches(&json!({"source":"s","detail":{"y":{"z":true},"k":"v"}})));
        assert!(!p.matches(&json!({"source":"s","detail":{"x":"1"}})));
        assert!(!p.matches(&json!({"source":"t","detail":{"x":"1","k":"v"}})));
        assert!(!p.matches(&json!({"source":"s","detail":{"x":"2","k":"v"}})));
    }

    #[test]
    fn or_inside_or() {
        let p = pat(r#"{"$or":[{"a":["1"]},{"$or":[{"b":["2"]},{"c":["3"]}]}]}"#);
        assert!(p.matches(&json!({"c":"3"})));
        assert!(p.matches(&json!({"b":"2"})));
        assert!(!p.matches(&json!({"d":"4"})));
    }

    // --- CloudTrail-shaped event --------------------------------------------

    #[test]
    fn cloudtrail_exact_and_nested() {
        let e = cloudtrail();
        assert!(
            pat(
                r#"{"eventSource":["kms.coffer.internal"],"eventName":["Encrypt","Decrypt"],
                "userIdentity":{"type":["IAMUser"]}}"#
            )
            .matches(&e)
        );
        assert!(pat(r#"{"readOnly":[false]}"#).matches(&e));
        assert!(!pat(r#"{"readOnly":[true]}"#).matches(&e));
        assert!(!pat(r#"{"readOnly":["false"]}"#).matches(&e));
        assert!(!pat(r#"{"eventName":["Decrypt"]}"#).matches(&e));
    }

    #[test]
    fn cloudtrail_filters() {
        let e = cloudtrail();
        assert!(pat(r#"{"userIdentity":{"arn":[{"suffix":":user/alice"}]}}"#).matches(&e));
        assert!(
            pat(r#"{"resources":{"ARN":[{"wildcard":"arn:coffer:kms:*:111122223333:key/*"}]}}"#)
                .matches(&e)
        );
        assert!(pat(r#"{"eventSource":[{"prefix":"kms."}],"eventName":[{"anything-but":["Decrypt","GenerateDataKey"]}]}"#).matches(&e));
        assert!(!pat(r#"{"eventSource":[{"anything-but":{"prefix":"kms."}}]}"#).matches(&e));
        assert!(
            pat(r#"{"errorCode":[{"exists":false}],"userIdentity":{"arn":[{"exists":true}]}}"#)
                .matches(&e)
        );
        assert!(pat(r#"{"$or":[{"eventName":["Sign"]},{"userIdentity":{"type":[{"equals-ignore-case":"iamuser"}]}}]}"#).matches(&e));
        assert!(!pat(r#"{"resources":{"ARN":[{"prefix":"arn:coffer:s3"}]}}"#).matches(&e));
    }

    // --- error cases ----------------------------------------------------------

    #[test]
    fn error_display_names_path() {
        assert_eq!(
            err(r#"{"detail":{"eventName":["a","b",{"prefix":5}]}}"#),
            "detail.eventName[2]: prefix must be a string"
        );
        let e = EventPattern::parse(r#"{"detail":{"x":5}}"#).unwrap_err();
        assert_eq!(e.path(), "detail.x");
        assert!(e.message().contains("array of alternatives"));
    }

    #[test]
    fn error_invalid_json_and_not_object() {
        assert_err("{", "pattern is not valid JSON");
        assert_err("", "pattern is not valid JSON");
        assert_err(r#"["a"]"#, "pattern must be a JSON object");
        assert_err("\"x\"", "pattern must be a JSON object");
        assert_err("{}", "pattern object must not be empty");
        assert_err(r#"{"a":{}}"#, "a: pattern object must not be empty");
    }

    #[test]
    fn error_too_large() {
        let big = format!(r#"{{"a":["{}"]}}"#, "x".repeat(MAX_PATTERN_BYTES));
        assert_err(&big, "exceeds the limit of 4096 bytes");
        // Just under the limit is fine.
        let ok = format!(r#"{{"a":["{}"]}}"#, "x".repeat(MAX_PATTERN_BYTES - 12));
        assert!(ok.len() <= MAX_PATTERN_BYTES);
        assert!(EventPattern::parse(&ok).is_ok());
    }

    #[test]
    fn error_duplicate_keys() {
        assert_err(r#"{"a":["1"],"a":["2"]}"#, "a: duplicate key");
        assert_err(
            r#"{"detail":{"x":["1"],"y":["2"],"x":["3"]}}"#,
            "detail.x: duplicate key",
        );
        assert_err(r#"{"a":["1"],"\u0061":["2"]}"#, "a: duplicate key");
        assert_err(
            r#"{"a":[{"prefix":"x","prefix":"y"}]}"#,
            "a[0].prefix: duplicate key",
        );
        assert_err(
            r#"{"$or":[{"a":["1"]},{"b":["\"b\""],"b":["2"]}]}"#,
            "$or[1].b: duplicate key",
        );
        // Same key in sibling objects is fine; key text inside values is ignored.
        assert!(EventPattern::parse(r#"{"x":{"a":["a"]},"y":{"a":["a","\"a\":"]}}"#).is_ok());
    }

    #[test]
    fn error_leaf_shapes() {
        assert_err(r#"{"a":[]}"#, "a: array of alternatives must not be empty");
        assert_err(
            r#"{"a":"x"}"#,
            "a: value must be an array of alternatives or a nested object, not a string",
        );
        assert_err(r#"{"a":5}"#, "not a number");
        assert_err(r#"{"a":null}"#, "not null");
        assert_err(r#"{"a":[["x"]]}"#, "a[0]: nested arrays are not allowed");
        let many: Vec<String> = (0..=MAX_ALTERNATIVES).map(|i| i.to_string()).collect();
        assert_err(
            &format!(r#"{{"a":[{}]}}"#, many.join(",")),
            "a: 101 alternatives exceed the limit of 100",
        );
    }

    #[test]
    fn error_filter_objects() {
        assert_err(
            r#"{"a":[{"contains":"x"}]}"#,
            "a[0]: unknown filter \"contains\"",
        );
        assert_err(
            r#"{"a":[{}]}"#,
            "a[0]: filter object must have exactly one key, found 0",
        );
        assert_err(r#"{"a":[{"prefix":"x","suffix":"y"}]}"#, "found 2");
        assert_err(
            r#"{"a":[{"suffix":[".png"]}]}"#,
            "a[0]: suffix must be a string",
        );
        assert_err(
            r#"{"a":[{"prefix":{"foo":"x"}}]}"#,
            "prefix must be a string or",
        );
        assert_err(
            r#"{"a":[{"equals-ignore-case":1}]}"#,
            "equals-ignore-case must be a string",
        );
        assert_err(
            r#"{"a":[{"exists":"yes"}]}"#,
            "a[0]: exists must be true or false",
        );
        assert_err(
            r#"{"a":[{"cidr":"10.0.0.0"}]}"#,
            "is not a valid CIDR block",
        );
        assert_err(
            r#"{"a":[{"cidr":"10.0.0.0/33"}]}"#,
            "is not a valid CIDR block",
        );
        assert_err(
            r#"{"a":[{"cidr":"10.0.0.0/+8"}]}"#,
            "is not a valid CIDR block",
        );
        assert_err(r#"{"a":[{"cidr":7}]}"#, "cidr must be a string");
    }

    #[test]
    fn error_wildcard() {
        assert_err(r#"{"a":[{"wildcard":"a**b"}]}"#, "consecutive * characters");
        assert_err(r#"{"a":[{"wildcard":"a\\b"}]}"#, "invalid escape");
        assert_err(r#"{"a":[{"wildcard":"a\\"}]}"#, "invalid escape");
        assert_err(r#"{"a":[{"wildcard":3}]}"#, "wildcard must be a string");
    }

    #[test]
    fn error_anything_but() {
        assert_err(
            r#"{"a":[{"anything-but":[]}]}"#,
            "anything-but list must not be empty",
        );
        assert_err(
            r#"{"a":[{"anything-but":["x",1]}]}"#,
            "only strings or only numbers",
        );
        assert_err(
            r#"{"a":[{"anything-but":[true]}]}"#,
            "only strings or only numbers",
        );
        assert_err(
            r#"{"a":[{"anything-but":true}]}"#,
            "a[0]: anything-but must be a string",
        );
        assert_err(
            r#"{"a":[{"anything-but":null}]}"#,
            "anything-but must be a string",
        );
        assert_err(
            r#"{"a":[{"anything-but":{"numeric":[">",1]}}]}"#,
            "unknown anything-but filter \"numeric\"",
        );
        assert_err(
            r#"{"a":[{"anything-but":{"prefix":1}}]}"#,
            "anything-but prefix must be a string",
        );
        // Either would exclude every string.
        assert_err(
            r#"{"a":[{"anything-but":{"prefix":""}}]}"#,
            "a[0]: anything-but prefix must not be empty",
        );
        assert_err(
            r#"{"a":[{"anything-but":{"suffix":""}}]}"#,
            "a[0]: anything-but suffix must not be empty",
        );
        assert_err(
            r#"{"a":[{"anything-but":{"wildcard":[]}}]}"#,
            "anything-but wildcard must be a string or a non-empty list",
        );
        assert_err(
            r#"{"a":[{"anything-but":{"wildcard":"**"}}]}"#,
            "consecutive",
        );
    }

    #[test]
    fn error_numeric() {
        assert_err(
            r#"{"a":[{"numeric":[">"]}]}"#,
            "a[0]: numeric must be an array of one or two operator/number pairs",
        );
        assert_err(r#"{"a":[{"numeric":">5"}]}"#, "numeric must be an array");
        assert_err(
            r#"{"a":[{"numeric":[">",1,"<",2,"<",3]}]}"#,
            "numeric must be an array",
        );
        assert_err(
            r#"{"a":[{"numeric":["!=",1]}]}"#,
            "unknown numeric operator \"!=\"",
        );
        assert_err(
            r#"{"a":[{"numeric":[">","1"]}]}"#,
            "numeric operator \">\" must be followed by a number",
        );
        assert_err(
            r#"{"a":[{"numeric":[1,1]}]}"#,
            "numeric operator must be a string",
        );
        assert_err(
            r#"{"a":[{"numeric":["=",1,"<",2]}]}"#,
            "\"=\" cannot be combined",
        );
        assert_err(
            r#"{"a":[{"numeric":[">",1,"=",2]}]}"#,
            "\"=\" cannot be combined",
        );
        assert_err(r#"{"a":[{"numeric":[">",1,">=",2]}]}"#, "one lower bound");
        assert_err(
            r#"{"a":[{"numeric":[">",5000000001]}]}"#,
            "a[0]: numeric values must be between -5.0e9 and 5.0e9, not 5000000001",
        );
        assert_err(
            r#"{"a":[{"numeric":["<",-1e10]}]}"#,
            "between -5.0e9 and 5.0e9",
        );
        assert_err(
            r#"{"a":[{"numeric":[">",5,"<",1]}]}"#,
            "lower bound must be below the upper bound",
        );
        assert_err(
            r#"{"a":[{"numeric":[">",5,"<=",5]}]}"#,
            "lower bound must be below",
        );
        assert!(EventPattern::parse(r#"{"a":[{"numeric":[">=",5,"<=",5]}]}"#).is_ok());
    }

    #[test]
    fn error_or() {
        assert_err(
            r#"{"$or":{"a":["1"]}}"#,
            "$or: $or must be an array of pattern objects",
        );
        assert_err(
            r#"{"$or":[{"a":["1"]}]}"#,
            "$or must contain at least 2 pattern objects",
        );
        assert_err(
            r#"{"$or":[{"a":["1"]},["b"]]}"#,
            "$or[1]: $or branch must be a pattern object",
        );
        assert_err(
            r#"{"d":{"$or":[{"a":["1"]},{"b":[]}]}}"#,
            "d.$or[1].b: array of alternatives must not be empty",
        );
    }

    #[test]
    fn error_depth_limit() {
        let nest = |levels: usize| {
            let mut p = String::from(r#"["x"]"#);
            for _ in 0..levels {
                p = format!(r#"{{"a":{p}}}"#);
            }
            p
        };
        assert!(EventPattern::parse(&nest(MAX_DEPTH)).is_ok());
        assert_err(
            &nest(MAX_DEPTH + 1),
            "nesting depth exceeds the limit of 10",
        );
        let e = EventPattern::parse(&nest(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(e.path(), "a.a.a.a.a.a.a.a.a.a");
        // Deep JSON nesting beyond serde's own limit is an error, not a crash.
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        assert!(EventPattern::parse(&deep).is_err());
    }

    // --- robustness ---------------------------------------------------------

    #[test]
    fn never_panics_on_truncated_or_odd_input() {
        let source = r#"{"a":[{"wildcard":"x\\*"},{"numeric":[">",0,"<",1]},"é\"",{"cidr":"::/0"}],"$or":[{"b":[1]},{"c":{"d":[null]}}]}"#;
        assert!(EventPattern::parse(source).is_ok());
        let events = [
            json!(null),
            json!([]),
            json!({"a": [[[{"x":1}]], "x*", 0.5, "::1"], "b": [2, 1]}),
            json!({"a": {"b": 1}, "c": [{"d": null}]}),
        ];
        for end in 0..=source.len() {
            if let Some(prefix) = source.get(..end)
                && let Ok(p) = EventPattern::parse(prefix)
            {
                for e in &events {
                    let _ = p.matches(e);
                }
            }
        }
        for odd in [
            "\u{0}",
            "{\"a\":[\"\\",
            "{\"\\\"\":[1]}",
            "{\"a\":[1e999]}",
            "nul",
        ] {
            let _ = EventPattern::parse(odd);
        }
        assert!(pat(source).matches(&events[2]));
    }

    #[test]
    fn from_str_is_parse() {
        let p: EventPattern = r#"{"a":["x"]}"#.parse().unwrap();
        assert!(p.matches(&json!({"a":"x"})));
        assert!("[]".parse::<EventPattern>().is_err());
    }
}
