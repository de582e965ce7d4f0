//! Compiled policy-side patterns: `*` (any run of characters, including
//! none, `/` and `:`), `?` (exactly one character) and, in `2012-10-17`
//! documents, policy variables (`${aws:username}`, `${key, 'default'}`,
//! `${*}`, `${?}`, `${$}`).
//!
//! Only the policy side is a pattern. The request side is always literal
//! text: a request value containing `*`, `?`, `/`, `..`, `%2F` or NUL is
//! compared character by character and is never decoded or normalised, so it
//! cannot widen a match. A variable's value is substituted as literal text
//! too. Matching is iterative (one backtrack point, no recursion) and
//! allocates nothing.

use std::fmt;

/// Supplies policy-variable values: the single value of a (lowercased)
/// condition key, or `None` when the key is absent or multi-valued.
pub(crate) trait VariableSource {
    fn variable(&self, lowercase_key: &str) -> Option<&str>;
}

/// A source with no variables, for contexts where none can be resolved.
pub(crate) struct NoVariables;

impl VariableSource for NoVariables {
    fn variable(&self, _lowercase_key: &str) -> Option<&str> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaseMode {
    Sensitive,
    /// ASCII letters compare without case; everything else exactly. Used for
    /// action names, which are ASCII.
    AsciiInsensitive,
}

/// How a pattern is read from policy text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PatternSyntax {
    /// `*` and `?` are wildcards (otherwise literal characters).
    pub(crate) wildcards: bool,
    /// `${...}` is a policy variable (otherwise literal characters).
    pub(crate) variables: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(String),
    AnyRun,
    AnyChar,
    Variable {
        lowercase_key: String,
        default: Option<String>,
    },
}

/// Shortcuts for the shapes almost every policy uses, decided once at parse
/// time so the common cases never enter the general matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `*`
    Anything,
    /// No wildcard, no variable.
    Exact(String),
    /// A literal followed by a single trailing `*` (`kms:Gen*`, `…:key/*`).
    Prefix(String),
    General,
}

/// A compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
    shape: Shape,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Pattern")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// Why a `${...}` policy variable could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VariableSyntaxError(pub(crate) &'static str);

impl Pattern {
    pub(crate) fn compile(text: &str, syntax: PatternSyntax) -> Result<Self, VariableSyntaxError> {
        let tokens = tokenize(text, syntax)?;
        let shape = shape_of(&tokens);
        Ok(Self { tokens, shape })
    }

    /// The keys (lowercased) of this pattern's policy variables, as
    /// decoded: a JSON escape (`\u0024{`) spells one as well as `${` does.
    pub(crate) fn variable_keys(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().filter_map(|token| match token {
            Token::Variable { lowercase_key, .. } => Some(lowercase_key.as_str()),
            Token::Literal(_) | Token::AnyRun | Token::AnyChar => None,
        })
    }

    /// Whether every policy variable of this pattern resolves for the
    /// request (a pattern with none always does).
    pub(crate) fn resolves(&self, variables: &impl VariableSource) -> bool {
        self.shape != Shape::General
            || self.tokens.iter().all(|token| match token {
                Token::Variable {
                    lowercase_key,
                    default,
                } => resolve(variables, lowercase_key, default.as_deref()).is_some(),
                Token::Literal(_) | Token::AnyRun | Token::AnyChar => true,
            })
    }

    #[cfg(test)]
    fn has_variables(&self) -> bool {
        self.tokens
            .iter()
            .any(|token| matches!(token, Token::Variable { .. }))
    }

    /// Whether `text` (literal) matches this pattern as a whole.
    pub(crate) fn matches(
        &self,
        text: &str,
        case: CaseMode,
        variables: &impl VariableSource,
    ) -> bool {
        match &self.shape {
            Shape::Anything => true,
            Shape::Exact(literal) => bytes_equal(text.as_bytes(), literal.as_bytes(), case),
            Shape::Prefix(prefix) => match text.as_bytes().get(..prefix.len()) {
                Some(head) => bytes_equal(head, prefix.as_bytes(), case),
                None => false,
            },
            Shape::General => match_tokens(&self.tokens, text, case, variables),
        }
    }

    /// Whole-string equality ignoring case (Unicode lowercase, character by
    /// character), for patterns compiled without wildcards.
    pub(crate) fn equals_ignoring_case(&self, text: &str, variables: &impl VariableSource) -> bool {
        let unresolvable = self.tokens.iter().any(|token| match token {
            Token::Variable {
                lowercase_key,
                default,
            } => resolve(variables, lowercase_key, default.as_deref()).is_none(),
            _ => false,
        });
        if unresolvable {
            return false;
        }
        let pattern_chars = self
            .tokens
            .iter()
            .map(|token| match token {
                Token::Literal(literal) => literal.as_str(),
                Token::Variable {
                    lowercase_key,
                    default,
                } => resolve(variables, lowercase_key, default.as_deref()).unwrap_or_default(),
                // Compiled without wildcards these cannot occur; they match
                // themselves literally if they ever do.
                Token::AnyRun => "*",
                Token::AnyChar => "?",
            })
            .flat_map(str::chars)
            .flat_map(char::to_lowercase);
        let text_chars = text.chars().flat_map(char::to_lowercase);
        pattern_chars.eq(text_chars)
    }
}

fn resolve<'a>(
    variables: &'a impl VariableSource,
    lowercase_key: &str,
    default: Option<&'a str>,
) -> Option<&'a str> {
    variables.variable(lowercase_key).or(default)
}

fn shape_of(tokens: &[Token]) -> Shape {
    match tokens {
        [Token::AnyRun] => Shape::Anything,
        [] => Shape::Exact(String::new()),
        [Token::Literal(literal)] => Shape::Exact(literal.clone()),
        [Token::Literal(literal), Token::AnyRun] => Shape::Prefix(literal.clone()),
        _ => Shape::General,
    }
}

fn bytes_equal(left: &[u8], right: &[u8], case: CaseMode) -> bool {
    match case {
        CaseMode::Sensitive => left == right,
        CaseMode::AsciiInsensitive => left.eq_ignore_ascii_case(right),
    }
}

/// Byte length of the character starting at `position`, or `None` at the end.
fn char_len_at(text: &str, position: usize) -> Option<usize> {
    text.get(position..)?.chars().next().map(char::len_utf8)
}

/// The classic wildcard algorithm: advance through pattern and text; on a
/// mismatch, return to the most recent `*` and let it swallow one more
/// character. Literal tokens compare as a block, which is equivalent to
/// comparing them character by character because any mismatch inside them
/// also returns to the last `*`.
fn match_tokens(
    tokens: &[Token],
    text: &str,
    case: CaseMode,
    variables: &impl VariableSource,
) -> bool {
    let text_bytes = text.as_bytes();
    let mut token_index = 0;
    let mut position = 0;
    // (token index after the star, text position the star has swallowed to)
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let advanced = match tokens.get(token_index) {
            Some(Token::AnyRun) => {
                backtrack = Some((token_index + 1, position));
                token_index += 1;
                continue;
            }
            Some(Token::AnyChar) => match char_len_at(text, position) {
                Some(length) => {
                    position += length;
                    true
                }
                None => false,
            },
            Some(Token::Literal(literal)) => {
                consume_literal(text_bytes, &mut position, literal.as_bytes(), case)
            }
            Some(Token::Variable {
                lowercase_key,
                default,
            }) => {
                let Some(value) = resolve(variables, lowercase_key, default.as_deref()) else {
                    // An unresolvable variable matches nothing, wherever a
                    // star might stand.
                    return false;
                };
                consume_literal(text_bytes, &mut position, value.as_bytes(), case)
            }
            None => {
                if position == text_bytes.len() {
                    return true;
                }
                false
            }
        };
        if advanced {
            token_index += 1;
            continue;
        }
        let Some((resume_token, swallowed_to)) = backtrack else {
            return false;
        };
        let Some(length) = char_len_at(text, swallowed_to) else {
            return false;
        };
        let next_start = swallowed_to + length;
        backtrack = Some((resume_token, next_start));
        token_index = resume_token;
        position = next_start;
    }
}

fn consume_literal(text: &[u8], position: &mut usize, literal: &[u8], case: CaseMode) -> bool {
    let end = *position + literal.len();
    match text.get(*position..end) {
        Some(slice) if bytes_equal(slice, literal, case) => {
            *position = end;
            true
        }
        _ => false,
    }
}

fn tokenize(text: &str, syntax: PatternSyntax) -> Result<Vec<Token>, VariableSyntaxError> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut literal = String::new();
    let mut characters = text.char_indices().peekable();
    while let Some((offset, character)) = characters.next() {
        match character {
            '*' if syntax.wildcards => {
                flush_literal(&mut tokens, &mut literal);
                // Consecutive stars are one star.
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
            }
            '?' if syntax.wildcards => {
                flush_literal(&mut tokens, &mut literal);
                tokens.push(Token::AnyChar);
            }
            '$' if syntax.variables && matches!(characters.peek(), Some((_, '{'))) => {
                let rest = text.get(offset..).unwrap_or("");
                let (variable, consumed) = read_variable(rest)?;
                match variable {
                    VariableToken::Literal(escaped) => literal.push(escaped),
                    VariableToken::Lookup {
                        lowercase_key,
                        default,
                    } => {
                        flush_literal(&mut tokens, &mut literal);
                        tokens.push(Token::Variable {
                            lowercase_key,
                            default,
                        });
                    }
                }
                let end = offset + consumed;
                while characters.peek().is_some_and(|(next, _)| *next < end) {
                    characters.next();
                }
            }
            other => literal.push(other),
        }
    }
    flush_literal(&mut tokens, &mut literal);
    Ok(tokens)
}

fn flush_literal(tokens: &mut Vec<Token>, literal: &mut String) {
    if !literal.is_empty() {
        tokens.push(Token::Literal(std::mem::take(literal)));
    }
}

enum VariableToken {
    /// `${*}`, `${?}`, `${$}`: the character itself, never a wildcard.
    Literal(char),
    Lookup {
        lowercase_key: String,
        default: Option<String>,
    },
}

/// Reads `${...}` at the start of `text`; returns the token and the number of
/// bytes it spans. Grammar (AWS): `${ key }` or `${ key, 'default' }` where a
/// `'` inside the default is written `''`; whitespace around the key, comma
/// and default is ignored; the key itself has no whitespace.
fn read_variable(text: &str) -> Result<(VariableToken, usize), VariableSyntaxError> {
    let body_start = 2; // after "${"
    let body = text.get(body_start..).unwrap_or("");
    let Some(close) = find_variable_end(body) else {
        return Err(VariableSyntaxError("`${` is not closed by `}`"));
    };
    let inner = body.get(..close).unwrap_or("");
    let consumed = body_start + close + 1;
    let trimmed = inner.trim();
    match trimmed {
        "*" => return Ok((VariableToken::Literal('*'), consumed)),
        "?" => return Ok((VariableToken::Literal('?'), consumed)),
        "$" => return Ok((VariableToken::Literal('$'), consumed)),
        _ => {}
    }
    let (key_part, default_part) = match inner.split_once(',') {
        Some((key, default)) => (key.trim(), Some(default.trim())),
        None => (trimmed, None),
    };
    if key_part.is_empty() {
        return Err(VariableSyntaxError("the variable names no key"));
    }
    if key_part
        .chars()
        .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(VariableSyntaxError(
            "a variable key must not contain whitespace",
        ));
    }
    if key_part.contains(['{', '$', '\'']) {
        return Err(VariableSyntaxError(
            "a variable key must not contain `{`, `$` or `'`",
        ));
    }
    let default = match default_part {
        None => None,
        Some(quoted_default) => Some(read_default(quoted_default)?),
    };
    Ok((
        VariableToken::Lookup {
            lowercase_key: key_part.to_lowercase(),
            default,
        },
        consumed,
    ))
}

/// Finds the `}` that closes a variable body, skipping over a quoted default
/// (which may itself contain `}` and doubled quotes).
fn find_variable_end(body: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut characters = body.char_indices().peekable();
    while let Some((offset, character)) = characters.next() {
        match character {
            '\'' if in_quotes => {
                if matches!(characters.peek(), Some((_, '\''))) {
                    characters.next();
                } else {
                    in_quotes = false;
                }
            }
            '\'' => in_quotes = true,
            '}' if !in_quotes => return Some(offset),
            _ => {}
        }
    }
    None
}

fn read_default(quoted_default: &str) -> Result<String, VariableSyntaxError> {
    let Some(inner) = quoted_default
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    else {
        return Err(VariableSyntaxError(
            "a default value must be written in single quotes: ${key, 'default'}",
        ));
    };
    let mut value = String::with_capacity(inner.len());
    let mut characters = inner.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\'' {
            if characters.peek() == Some(&'\'') {
                characters.next();
                value.push('\'');
                continue;
            }
            return Err(VariableSyntaxError(
                "a single quote inside a default value must be doubled ('')",
            ));
        }
        value.push(character);
    }
    Ok(value)
}

/// Splits a policy-side ARN into its six colon-separated components
/// (`arn:partition:service:region:account:resource`), ignoring colons inside
/// `${...}` variables when `variables` is set. The resource keeps any
/// further colons.
pub(crate) fn split_arn_components(text: &str, variables: bool) -> Option<[&str; 6]> {
    let mut boundaries = [0_usize; 5];
    let mut found = 0;
    let mut characters = text.char_indices().peekable();
    while found < 5 {
        let (offset, character) = characters.next()?;
        if variables && character == '$' && matches!(characters.peek(), Some((_, '{'))) {
            let rest = text.get(offset + 2..).unwrap_or("");
            let Some(close) = find_variable_end(rest) else {
                // Unclosed: let the pattern compiler report it.
                continue;
            };
            let end = offset + 2 + close;
            while characters.peek().is_some_and(|(next, _)| *next <= end) {
                characters.next();
            }
            continue;
        }
        if character == ':' {
            if let Some(slot) = boundaries.get_mut(found) {
                *slot = offset;
            }
            found += 1;
        }
    }
    let [first, second, third, fourth, fifth] = boundaries;
    Some([
        text.get(..first)?,
        text.get(first + 1..second)?,
        text.get(second + 1..third)?,
        text.get(third + 1..fourth)?,
        text.get(fourth + 1..fifth)?,
        text.get(fifth + 1..)?,
    ])
}

/// Whole-string wildcard match of literal `text` against `pattern`, where `*`
/// matches any run of characters (including none, `/` and `:`) and `?`
/// exactly one character. Case-sensitive; no policy variables. Offered for
/// callers that match names against configured patterns (for example the
/// principals an identity policy is attached to) with the policy language's
/// own rules.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let syntax = PatternSyntax {
        wildcards: true,
        variables: false,
    };
    match Pattern::compile(pattern, syntax) {
        Ok(compiled) => compiled.matches(text, CaseMode::Sensitive, &NoVariables),
        // Without variables compilation cannot fail.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const GLOB: PatternSyntax = PatternSyntax {
        wildcards: true,
        variables: false,
    };
    const GLOB_WITH_VARIABLES: PatternSyntax = PatternSyntax {
        wildcards: true,
        variables: true,
    };
    const LITERAL_WITH_VARIABLES: PatternSyntax = PatternSyntax {
        wildcards: false,
        variables: true,
    };

    struct Variables(BTreeMap<&'static str, &'static str>);

    impl VariableSource for Variables {
        fn variable(&self, lowercase_key: &str) -> Option<&str> {
            self.0.get(lowercase_key).copied()
        }
    }

    fn variables(pairs: &[(&'static str, &'static str)]) -> Variables {
        Variables(pairs.iter().copied().collect())
    }

    fn glob(pattern: &str, text: &str) -> bool {
        Pattern::compile(pattern, GLOB)
            .unwrap()
            .matches(text, CaseMode::Sensitive, &NoVariables)
    }

    #[test]
    fn star_matches_any_run_including_separators() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything/at:all"));
        assert!(glob(
            "arn:coffer:kms:*:111122223333:key/*",
            "arn:coffer:kms:eu-west-1:111122223333:key/abc"
        ));
        assert!(glob("a*b", "ab"));
        assert!(glob("a*b", "a/x:y/b"));
        assert!(!glob("a*b", "a/x:y/bc"));
        assert!(glob("a*b*c", "abbbc"));
        assert!(glob("**a**", "xa"));
        assert!(!glob("a*", "ba"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(glob("a?c", "abc"));
        assert!(glob("a?c", "aéc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("???", "日本語"));
        assert!(!glob("??", "日本語"));
        assert!(glob("*?", "é"));
        assert!(!glob("*?", ""));
    }

    #[test]
    fn request_side_metacharacters_are_literal() {
        // A request value never acts as a pattern.
        assert!(!glob("key/abc", "key/*"));
        assert!(!glob("key/abc", "key/???"));
        assert!(!glob("key/a", "key/?"));
        assert!(!glob("team-b/*", "team-a/../team-b/x"));
        assert!(!glob("team-b/*", "team-a%2F..%2Fteam-b/x"));
        assert!(!glob("key/abc", "key/abc\0"));
        assert!(!glob("key/abc", "key/ab\0c"));
        assert!(!glob("key/abc\u{0}", "key/abc"));
        // The policy's own star still covers them, literally.
        assert!(glob("team-a/*", "team-a/../team-b/x"));
        assert!(glob("key/*", "key/*"));
    }

    #[test]
    fn shapes_are_recognised() {
        assert_eq!(Pattern::compile("*", GLOB).unwrap().shape, Shape::Anything);
        assert_eq!(
            Pattern::compile("***", GLOB).unwrap().shape,
            Shape::Anything
        );
        assert_eq!(
            Pattern::compile("kms:Gen*", GLOB).unwrap().shape,
            Shape::Prefix("kms:Gen".to_owned())
        );
        assert_eq!(
            Pattern::compile("kms:Encrypt", GLOB).unwrap().shape,
            Shape::Exact("kms:Encrypt".to_owned())
        );
        assert_eq!(Pattern::compile("a*b", GLOB).unwrap().shape, Shape::General);
        assert_eq!(
            Pattern::compile("", GLOB).unwrap().shape,
            Shape::Exact(String::new())
        );
    }

    #[test]
    fn ascii_case_folding_is_limited_to_ascii() {
        let pattern = Pattern::compile("kms:gen*", GLOB).unwrap();
        assert!(pattern.matches(
            "KMS:GenerateDataKey",
            CaseMode::AsciiInsensitive,
            &NoVariables
        ));
        assert!(!pattern.matches("KMS:GenerateDataKey", CaseMode::Sensitive, &NoVariables));
        let general = Pattern::compile("k?s:*Key", GLOB).unwrap();
        assert!(general.matches(
            "KMS:generatedatakey",
            CaseMode::AsciiInsensitive,
            &NoVariables
        ));
        let unicode = Pattern::compile("é", GLOB).unwrap();
        assert!(!unicode.matches("É", CaseMode::AsciiInsensitive, &NoVariables));
    }

    #[test]
    fn literal_syntax_treats_wildcards_as_characters() {
        let pattern = Pattern::compile("a*b?", LITERAL_WITH_VARIABLES).unwrap();
        assert!(pattern.matches("a*b?", CaseMode::Sensitive, &NoVariables));
        assert!(!pattern.matches("axxbc", CaseMode::Sensitive, &NoVariables));
    }

    #[test]
    fn variables_substitute_literal_text() {
        let values = variables(&[("aws:username", "al*ce")]);
        let pattern = Pattern::compile("home/${aws:username}/*", GLOB_WITH_VARIABLES).unwrap();
        assert!(pattern.has_variables());
        assert!(pattern.matches("home/al*ce/notes", CaseMode::Sensitive, &values));
        // The substituted star is literal: it does not match "alice".
        assert!(!pattern.matches("home/alice/notes", CaseMode::Sensitive, &values));
        // Keys are case-insensitive.
        let upper = Pattern::compile("${AWS:UserName}", GLOB_WITH_VARIABLES).unwrap();
        assert!(upper.matches("al*ce", CaseMode::Sensitive, &values));
    }

    #[test]
    fn unresolved_variables_match_nothing_unless_defaulted() {
        let none = variables(&[]);
        let pattern = Pattern::compile("*${aws:username}*", GLOB_WITH_VARIABLES).unwrap();
        assert!(!pattern.matches("", CaseMode::Sensitive, &none));
        assert!(!pattern.matches("anything", CaseMode::Sensitive, &none));
        let defaulted =
            Pattern::compile("home/${ aws:username , 'nobody' }", GLOB_WITH_VARIABLES).unwrap();
        assert!(defaulted.matches("home/nobody", CaseMode::Sensitive, &none));
        let set = variables(&[("aws:username", "bob")]);
        assert!(defaulted.matches("home/bob", CaseMode::Sensitive, &set));
        assert!(!defaulted.matches("home/nobody", CaseMode::Sensitive, &set));
    }

    #[test]
    fn escapes_and_defaults_parse() {
        let pattern = Pattern::compile("a${*}b${?}c${$}d", GLOB_WITH_VARIABLES).unwrap();
        assert!(pattern.matches("a*b?c$d", CaseMode::Sensitive, &NoVariables));
        assert!(!pattern.matches("axb?c$d", CaseMode::Sensitive, &NoVariables));
        let quoted = Pattern::compile("${k, 'it''s }'}", GLOB_WITH_VARIABLES).unwrap();
        assert!(quoted.matches("it's }", CaseMode::Sensitive, &NoVariables));
        // Without variable syntax `${` is literal.
        let literal = Pattern::compile("${aws:username}", GLOB).unwrap();
        assert!(literal.matches("${aws:username}", CaseMode::Sensitive, &NoVariables));
        // A lone `$` is literal.
        let dollar = Pattern::compile("a$b", GLOB_WITH_VARIABLES).unwrap();
        assert!(dollar.matches("a$b", CaseMode::Sensitive, &NoVariables));
    }

    #[test]
    fn malformed_variables_are_refused() {
        for bad in [
            "${aws:username",
            "${}",
            "${ }",
            "${a b}",
            "${k, default}",
            "${k, 'unterminated}",
            "${k, 'it's'}",
            "${k, }",
        ] {
            assert!(
                Pattern::compile(bad, GLOB_WITH_VARIABLES).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn equality_ignoring_case_is_unicode_aware() {
        let pattern = Pattern::compile("Straße-ÉTÉ", LITERAL_WITH_VARIABLES).unwrap();
        assert!(pattern.equals_ignoring_case("straße-été", &NoVariables));
        assert!(pattern.equals_ignoring_case("STRAßE-été", &NoVariables));
        assert!(!pattern.equals_ignoring_case("STRAßE-ét", &NoVariables));
        let with_variable = Pattern::compile("${aws:username}", LITERAL_WITH_VARIABLES).unwrap();
        assert!(
            with_variable.equals_ignoring_case("ALICE", &variables(&[("aws:username", "alice")]))
        );
        assert!(!with_variable.equals_ignoring_case("", &NoVariables));
    }

    #[test]
    fn arn_components_split_outside_variables() {
        assert_eq!(
            split_arn_components("arn:coffer:kms:eu-west-1:111122223333:key/a:b", false),
            Some([
                "arn",
                "coffer",
                "kms",
                "eu-west-1",
                "111122223333",
                "key/a:b"
            ])
        );
        assert_eq!(
            split_arn_components("arn:aws:iam::${aws:PrincipalAccount}:user/x", true),
            Some(["arn", "aws", "iam", "", "${aws:PrincipalAccount}", "user/x"])
        );
        assert_eq!(split_arn_components("arn:aws:iam::x", false), None);
        assert_eq!(split_arn_components("", false), None);
    }

    #[test]
    fn public_wildcard_match() {
        assert!(wildcard_match("user/team-*", "user/team-a"));
        assert!(!wildcard_match("user/team-*", "user/other"));
        assert!(wildcard_match("${x}", "${x}"));
    }
}
