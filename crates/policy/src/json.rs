//! A strict JSON reader for policy documents.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, so
//! `{"Effect": "Deny", "Effect": "Allow"}` would read as an Allow. This reader
//! builds its own tree through a custom [`Visitor`] that refuses duplicate
//! keys at every level and refuses nesting deeper than
//! [`MAX_NESTING_DEPTH`] before recursing further.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::{PolicyError, quoted};

/// The deepest nesting of arrays and objects a document may have; the
/// top-level object is level 1. A legitimate policy needs at most 6
/// (document → Statement list → statement → Condition → operator → values).
pub const MAX_NESTING_DEPTH: usize = 8;

/// A parsed JSON value. Objects keep their keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonValue {
    Null,
    Bool(bool),
    /// The number in its shortest decimal text form (`10`, `-3`, `1.5`).
    Number(String),
    String(String),
    Array(Vec<JsonValue>),
    Object(Vec<(String, JsonValue)>),
}

/// Reads `text` as one JSON value with no duplicate keys and bounded depth.
pub(crate) fn parse_strict(text: &str) -> Result<JsonValue, PolicyError> {
    let state = ParseState::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = ValueSeed {
        state: &state,
        depth: 1,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(json_error) => {
            Err(state
                .failure
                .into_inner()
                .unwrap_or_else(|| PolicyError::InvalidJson {
                    message: syntax_message(&json_error),
                    line: json_error.line(),
                    column: json_error.column(),
                }))
        }
    }
}

/// serde_json's message without its trailing " at line L column C", which
/// the error carries separately.
fn syntax_message(json_error: &serde_json::Error) -> String {
    let full = json_error.to_string();
    match full.rfind(" at line ") {
        Some(cut) => full.get(..cut).unwrap_or(&full).to_owned(),
        None => full,
    }
}

#[derive(Debug)]
enum PathSegment {
    Key(String),
    Index(usize),
}

#[derive(Default)]
struct ParseState {
    path: RefCell<Vec<PathSegment>>,
    /// The structural error that stopped parsing, if any; serde only carries
    /// a message, so the typed error travels beside it.
    failure: RefCell<Option<PolicyError>>,
}

impl ParseState {
    fn current_path(&self) -> String {
        render_path(&self.path.borrow())
    }

    fn fail<E: de::Error>(&self, error: PolicyError) -> E {
        let message = error.to_string();
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(error);
        }
        E::custom(message)
    }
}

fn render_path(segments: &[PathSegment]) -> String {
    if segments.is_empty() {
        return "the policy document".to_owned();
    }
    let mut rendered = String::new();
    for segment in segments {
        match segment {
            PathSegment::Key(key) => {
                if !rendered.is_empty() {
                    rendered.push('.');
                }
                rendered.push_str(&quoted(key));
            }
            PathSegment::Index(index) => {
                rendered.push_str(&format!("[{index}]"));
            }
        }
    }
    rendered
}

#[derive(Clone, Copy)]
struct ValueSeed<'state> {
    state: &'state ParseState,
    /// The nesting level of the value about to be read (top level = 1).
    depth: usize,
}

impl ValueSeed<'_> {
    fn check_container_depth<E: de::Error>(&self) -> Result<(), E> {
        if self.depth > MAX_NESTING_DEPTH {
            return Err(self.state.fail(PolicyError::NestingTooDeep {
                path: self.state.current_path(),
                limit: MAX_NESTING_DEPTH,
            }));
        }
        Ok(())
    }

    fn child(&self) -> Self {
        Self {
            state: self.state,
            depth: self.depth + 1,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = JsonValue;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<JsonValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = JsonValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<JsonValue, E> {
        Ok(JsonValue::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(value.to_string()))
    }

    /// serde_json reads a number with a fraction or an exponent, or one
    /// past the 64-bit integers, as an `f64`: one it may have rounded is
    /// refused, never compared as the number it was rounded to.
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<JsonValue, E> {
        let text = value.to_string();
        if !kept_exactly(value, &text) {
            return Err(self.state.fail(PolicyError::ImpreciseNumber {
                path: self.state.current_path(),
            }));
        }
        Ok(JsonValue::Number(text))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<JsonValue, E> {
        Ok(JsonValue::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<JsonValue, E> {
        Ok(JsonValue::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<JsonValue, A::Error> {
        self.check_container_depth()?;
        let mut elements = Vec::new();
        loop {
            self.state
                .path
                .borrow_mut()
                .push(PathSegment::Index(elements.len()));
            let element = access.next_element_seed(self.child());
            self.state.path.borrow_mut().pop();
            match element? {
                Some(value) => elements.push(value),
                None => break,
            }
        }
        Ok(JsonValue::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<JsonValue, A::Error> {
        self.check_container_depth()?;
        let mut entries: Vec<(String, JsonValue)> = Vec::new();
        let mut seen_keys: BTreeSet<String> = BTreeSet::new();
        while let Some(key) = access.next_key::<String>()? {
            if !seen_keys.insert(key.clone()) {
                return Err(self.state.fail(PolicyError::DuplicateKey {
                    path: self.state.current_path(),
                    key: quoted(&key),
                }));
            }
            self.state
                .path
                .borrow_mut()
                .push(PathSegment::Key(key.clone()));
            let value = access.next_value_seed(self.child());
            self.state.path.borrow_mut().pop();
            entries.push((key, value?));
        }
        Ok(JsonValue::Object(entries))
    }
}

/// Whether `value`, written `text` (the shortest form that reads back as
/// it), is what any number of up to 15 significant digits below 2^53
/// would have read as: those an `f64` holds exactly, and so the only ones
/// a policy can give unquoted.
fn kept_exactly(value: f64, text: &str) -> bool {
    /// 2^53: from here on, not every integer is an `f64`.
    const INTEGERS_KEPT_BELOW: f64 = 9_007_199_254_740_992.0;
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    value.is_finite() && value.abs() < INTEGERS_KEPT_BELOW && significant <= 15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_value_kinds_in_order() {
        let value = parse_strict(r#"{"b": [1, -2, 1.5, true, null, "x"], "a": {}}"#).unwrap();
        assert_eq!(
            value,
            JsonValue::Object(vec![
                (
                    "b".to_owned(),
                    JsonValue::Array(vec![
                        JsonValue::Number("1".to_owned()),
                        JsonValue::Number("-2".to_owned()),
                        JsonValue::Number("1.5".to_owned()),
                        JsonValue::Bool(true),
                        JsonValue::Null,
                        JsonValue::String("x".to_owned()),
                    ])
                ),
                ("a".to_owned(), JsonValue::Object(vec![])),
            ])
        );
    }

    #[test]
    fn numbers_that_may_have_been_rounded_are_refused() {
        for text in [
            "0.5",
            "1e3",
            "-2.25",
            "123456789012345",
            "0.000001",
            "900719925474099.0",
        ] {
            assert!(
                parse_strict(&format!(r#"{{"n": {text}}}"#)).is_ok(),
                "{text}"
            );
        }
        // Past u64, past 2^53, or more digits than an f64 keeps: each would
        // be compared as another number.
        for text in [
            "18446744073709551617",
            "9007199254740993.0",
            "1e20",
            "0.1234567890123456789",
        ] {
            let error = parse_strict(&format!(r#"{{"a": [{{"n": {text}}}]}}"#)).unwrap_err();
            assert_eq!(
                error,
                PolicyError::ImpreciseNumber {
                    path: "a[0].n".to_owned()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let error =
            parse_strict(r#"{"Statement": [{"Effect": "Deny", "Effect": "Allow"}]}"#).unwrap_err();
        assert_eq!(
            error,
            PolicyError::DuplicateKey {
                path: "Statement[0]".to_owned(),
                key: "Effect".to_owned(),
            }
        );
    }

    #[test]
    fn escaped_duplicates_are_still_duplicates() {
        let error = parse_strict(r#"{"Effect": 1, "Eff\u0065ct": 2}"#).unwrap_err();
        assert_eq!(
            error,
            PolicyError::DuplicateKey {
                path: "the policy document".to_owned(),
                key: "Effect".to_owned(),
            }
        );
    }

    #[test]
    fn depth_is_bounded() {
        let eight = "[[[[[[[[]]]]]]]]";
        assert!(parse_strict(eight).is_ok());
        let nine = "[[[[[[[[[]]]]]]]]]";
        assert_eq!(
            parse_strict(nine).unwrap_err(),
            PolicyError::NestingTooDeep {
                path: "[0][0][0][0][0][0][0][0]".to_owned(),
                limit: MAX_NESTING_DEPTH,
            }
        );
        let very_deep = "[".repeat(100_000);
        assert!(matches!(
            parse_strict(&very_deep).unwrap_err(),
            PolicyError::NestingTooDeep { .. }
        ));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse_strict("{\n  \"a\": x\n}").unwrap_err();
        let PolicyError::InvalidJson { line, message, .. } = error else {
            panic!("expected InvalidJson, got {error:?}");
        };
        assert_eq!(line, 2);
        assert!(!message.contains("at line"), "{message}");
        assert!(matches!(
            parse_strict("{} {}").unwrap_err(),
            PolicyError::InvalidJson { .. }
        ));
        assert!(matches!(
            parse_strict("").unwrap_err(),
            PolicyError::InvalidJson { .. }
        ));
    }
}
