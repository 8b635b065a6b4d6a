//! Label and field selectors, parsed and matched as upstream's `k8s.io/apimachinery/pkg/labels`
//! and `pkg/fields` do.
//!
//! Label selectors use upstream's two-stage design: a lexer turns the text into tokens
//! (identifiers, `in`/`notin`, `=`, `==`, `!=`, `!`, `>`, `<`, parentheses, commas), then a
//! recursive-descent parser builds [`Requirement`]s, validating keys as qualified names and
//! values as label values. Parse errors are upstream's strings (`found ',', expected: ...`,
//! `unable to parse requirement: ...`), which the API server returns in a 400.
//! Requirements are kept sorted by key, so [`Selector`]'s `Display` is upstream's canonical
//! `String()`.
//!
//! Field selectors are simpler: comma-separated `field=value`, `field==value` or
//! `field!=value` terms, where `\`, `,` and `=` in values are escaped with a backslash. A
//! missing field matches as the empty string, as upstream's `fields.Set.Get` does.
//!
//! [`LabelSelector`] is `metav1.LabelSelector` (`matchLabels`/`matchExpressions`), converted
//! like upstream's `LabelSelectorAsSelector` (absent → nothing, empty → everything).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::field;
use crate::validation::{is_qualified_name, is_valid_label_value};

/// A selector that could not be parsed or built; the message is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        ApiError::bad_request(e.0)
    }
}

/// Anything labels or fields can be looked up in.
pub trait Lookup {
    fn lookup(&self, key: &str) -> Option<&str>;
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Lookup for HashMap<String, String> {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Lookup for serde_json::Map<String, Value> {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// A JSON object of strings (e.g. an object's `metadata.labels`); anything else is empty.
impl Lookup for Value {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// A label requirement's operator (upstream's `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One `key op values` term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and de-duplicated, as upstream's `sets.String.List()` gives them.
    pub values: Vec<String>,
}

impl Requirement {
    /// Upstream's `NewRequirement`: validates the key, the value count for the operator, and
    /// each value. Errors are aggregated like upstream's.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(field::invalid_str("key", key, &key_errs.join("; ")).to_string());
        }
        // Upstream prints the slice with %#v.
        let vals_json = || go_string_slice(&values);
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(
                        field::invalid_raw(
                            "values",
                            &vals_json(),
                            "for 'in', 'notin' operators, values set can't be empty",
                        )
                        .to_string(),
                    );
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(
                        field::invalid_raw(
                            "values",
                            &vals_json(),
                            "exact-match compatibility requires one single value",
                        )
                        .to_string(),
                    );
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(
                        field::invalid_raw(
                            "values",
                            &vals_json(),
                            "values set must be empty for exists and does not exist",
                        )
                        .to_string(),
                    );
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(
                        field::invalid_raw(
                            "values",
                            &vals_json(),
                            "for 'Gt', 'Lt' operators, exactly one value is required",
                        )
                        .to_string(),
                    );
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(
                            field::invalid_str(
                                &field::index("values", i),
                                v,
                                "for 'Gt', 'Lt' operators, the value must be an integer",
                            )
                            .to_string(),
                        );
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let v_errs = is_valid_label_value(v);
            if !v_errs.is_empty() {
                let path = field::key(&field::index("values", i), key);
                errs.push(field::invalid_str(&path, v, &v_errs.join("; ")).to_string());
            }
        }
        if let Some(msg) = aggregate_strings(errs) {
            return Err(SelectorError(msg));
        }
        let values: Vec<String> = values
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    fn has_value(&self, v: &str) -> bool {
        self.values.iter().any(|x| x == v)
    }

    /// Upstream's `Requirement.Matches`.
    pub fn matches(&self, labels: &(impl Lookup + ?Sized)) -> bool {
        let got = labels.lookup(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                got.is_some_and(|v| self.has_value(v))
            }
            Operator::NotIn | Operator::NotEquals => got.is_none_or(|v| !self.has_value(v)),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), [want]) = (got, self.values.as_slice()) else {
                    return false;
                };
                match (have.parse::<i64>(), want.parse::<i64>()) {
                    (Ok(h), Ok(w)) => {
                        if self.operator == Operator::GreaterThan {
                            h > w
                        } else {
                            h < w
                        }
                    }
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Go's `%#v` of a `[]string`: `[]string{"a", "b"}`.
fn go_string_slice(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| crate::error::go_quote(v)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// Upstream's `utilerrors.Aggregate` text: one message alone, several as `[a, b]`.
fn aggregate_strings(mut errs: Vec<String>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for e in errs.drain(..) {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    match seen.len() {
        0 => None,
        1 => seen.pop(),
        _ => Some(format!("[{}]", seen.join(", "))),
    }
}

/// A label selector: the AND of its requirements. `nothing` is upstream's `labels.Nothing()`,
/// which matches no object (a `LabelSelector` that is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    /// Matches every object.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Matches no object.
    pub fn nothing() -> Self {
        Selector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Builds a selector from requirements (sorted by key, as upstream's `Add` does).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Selector {
            requirements,
            nothing: false,
        }
    }

    /// Upstream's `labels.Parse`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let tokens = lex(text);
        let mut p = Parser { tokens, pos: 0 };
        let reqs = p.parse()?;
        Ok(Selector::from_requirements(reqs))
    }

    /// Whether the selector places no constraint (matches everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &(impl Lookup + ?Sized)) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches against an object's `metadata.labels` (no labels is the empty set).
    pub fn matches_object(&self, obj: &Value) -> bool {
        let empty = Value::Object(Default::default());
        let labels = obj.pointer("/metadata/labels").unwrap_or(&empty);
        self.matches(labels)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident,
    In,
    NotIn,
    Not,
    NotEquals,
    Equals,
    DoubleEquals,
    GreaterThan,
    LessThan,
    Open,
    Close,
    Comma,
    End,
    Error,
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn symbol(s: &str) -> Option<Tok> {
    Some(match s {
        "!" => Tok::Not,
        "!=" => Tok::NotEquals,
        "=" => Tok::Equals,
        "==" => Tok::DoubleEquals,
        ">" => Tok::GreaterThan,
        "<" => Tok::LessThan,
        "(" => Tok::Open,
        ")" => Tok::Close,
        "," => Tok::Comma,
        _ => return None,
    })
}

/// Upstream's `Lexer`: the whole input as tokens, ending with `End` (or stopping at an error).
fn lex(text: &str) -> Vec<(Tok, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && is_ws(chars[i]) {
            i += 1;
        }
        if i >= chars.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(chars[i]) {
            // Longest run of special characters that is still a known symbol.
            let mut buf = String::new();
            let mut last: Option<(Tok, String)> = None;
            while i < chars.len() && is_special(chars[i]) {
                buf.push(chars[i]);
                if let Some(t) = symbol(&buf) {
                    last = Some((t, buf.clone()));
                    i += 1;
                } else if last.is_some() {
                    break;
                } else {
                    i += 1;
                }
            }
            match last {
                Some(item) => out.push(item),
                None => {
                    out.push((Tok::Error, format!("error expected: keyword found '{buf}'")));
                    return out;
                }
            }
        } else {
            let start = i;
            while i < chars.len() && !is_ws(chars[i]) && !is_special(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            };
            out.push((tok, word));
        }
    }
}

struct Parser {
    tokens: Vec<(Tok, String)>,
    pos: usize,
}

#[derive(PartialEq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

impl Parser {
    fn peek(&self, ctx: Ctx) -> (Tok, String) {
        let (t, l) = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        // In a value position `in`/`notin` are plain words.
        if ctx == Ctx::Values && matches!(t, Tok::In | Tok::NotIn) {
            return (Tok::Ident, l);
        }
        (t, l)
    }

    fn next(&mut self, ctx: Ctx) -> (Tok, String) {
        let item = self.peek(ctx);
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.peek(Ctx::Values);
            match tok {
                Tok::Ident | Tok::Not => {
                    let r = self.parse_requirement().map_err(|e| {
                        SelectorError(format!("unable to parse requirement: {}", e.0))
                    })?;
                    reqs.push(r);
                    let (t, l) = self.next(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.peek(Ctx::Values);
                            if t2 != Tok::Ident && t2 != Tok::Not {
                                return Err(SelectorError(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op) = op {
            return Requirement::new(&key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.next(Ctx::Values);
        if tok == Tok::Not {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.next(Ctx::Values);
        }
        if tok != Tok::Ident {
            return Err(SelectorError(format!(
                "found '{lit}', expected: identifier"
            )));
        }
        let errs = is_qualified_name(&lit);
        if !errs.is_empty() {
            // Upstream validates with a nil field path, which prints as "<nil>".
            return Err(SelectorError(
                field::invalid_str("<nil>", &lit, &errs.join("; ")).to_string(),
            ));
        }
        let (t, _) = self.peek(Ctx::Values);
        if (t == Tok::End || t == Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let (tok, lit) = self.next(Ctx::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => {
                return Err(SelectorError(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, lit) = self.next(Ctx::Values);
        if tok != Tok::Open {
            return Err(SelectorError(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.peek(Ctx::Values);
        match tok {
            Tok::Ident | Tok::Comma => {
                let s = self.parse_identifiers_list()?;
                let (t, _) = self.next(Ctx::Values);
                if t != Tok::Close {
                    return Err(SelectorError(format!("found '{lit}', expected: ')'")));
                }
                Ok(s)
            }
            Tok::Close => {
                self.next(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(SelectorError(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut s: BTreeSet<String> = BTreeSet::new();
        // Every pass consumes a token and the list ends with `End`, so this terminates; the
        // bound is a guard against a logic error, not a limit a real selector meets.
        for _ in 0..=self.tokens.len() {
            let (tok, lit) = self.next(Ctx::Values);
            match tok {
                Tok::Ident => {
                    s.insert(lit);
                    let (t2, l2) = self.peek(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::Close => return Ok(s.into_iter().collect()),
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l2}', expected: ',' or ')'"
                            )))
                        }
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.insert(String::new());
                    }
                    let (t2, _) = self.peek(Ctx::Values);
                    if t2 == Tok::Close {
                        s.insert(String::new());
                        return Ok(s.into_iter().collect());
                    }
                    if t2 == Tok::Comma {
                        self.next(Ctx::Values);
                        s.insert(String::new());
                    }
                }
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )))
                }
            }
        }
        Err(SelectorError("found '', expected: ',' or ')'".into()))
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, _) = self.peek(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.next(Ctx::Values);
        if tok == Tok::Ident {
            return Ok(vec![lit]);
        }
        Err(SelectorError(format!(
            "found '{lit}', expected: identifier"
        )))
    }
}

/// `metav1.LabelSelectorRequirement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `metav1.LabelSelector`, as found in Deployments, Services' owners, PDBs, ...
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Reads a `LabelSelector` JSON value; `null` or absent is `None`.
    pub fn from_value(v: Option<&Value>) -> Result<Option<Self>, SelectorError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| SelectorError(format!("invalid label selector: {e}"))),
        }
    }

    /// Upstream's `LabelSelectorAsSelector` for a present selector: empty matches everything.
    pub fn to_selector(&self) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in &self.match_labels {
            reqs.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
        }
        for e in &self.match_expressions {
            let op = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{} is not a valid label selector operator",
                        crate::error::go_quote(other)
                    )))
                }
            };
            reqs.push(Requirement::new(&e.key, op, e.values.clone())?);
        }
        Ok(Selector::from_requirements(reqs))
    }
}

/// Upstream's `LabelSelectorAsSelector` over JSON: absent/`null` matches nothing, `{}`
/// matches everything.
pub fn label_selector_as_selector(v: Option<&Value>) -> Result<Selector, SelectorError> {
    match LabelSelector::from_value(v)? {
        None => Ok(Selector::nothing()),
        Some(ls) => ls.to_selector(),
    }
}

/// A field selector term's operator (`==` is stored as `=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    Equals,
    NotEquals,
}

/// One `field=value` / `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub op: FieldOp,
    /// Unescaped.
    pub value: String,
}

/// A field selector: the AND of its terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Upstream's `EscapeValue`: backslash-escapes `\`, `,` and `=`.
pub fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Upstream's `UnescapeValue`, with its error strings.
pub fn unescape_field_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    )))
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Upstream prints the rune with %v, i.e. its code point number.
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError(
            "invalid field selector: invalid escape sequence: \\".into(),
        ));
    }
    Ok(out)
}

fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, kind) in [
            ("!=", FieldOp::NotEquals),
            ("==", FieldOp::Equals),
            ("=", FieldOp::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], kind, value));
            }
        }
    }
    None
}

impl FieldSelector {
    /// Matches everything.
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Upstream's `fields.ParseSelector`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(text);
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            terms.push(FieldTerm {
                field: lhs.to_string(),
                op,
                value: unescape_field_value(rhs)?,
            });
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// Upstream's `RequiresExactMatch`: the value an `=` term pins `field` to.
    pub fn exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }

    /// Whether the fields satisfy every term; a missing field reads as `""`.
    pub fn matches(&self, fields: &(impl Lookup + ?Sized)) -> bool {
        self.terms.iter().all(|t| {
            let have = fields.lookup(&t.field).unwrap_or("");
            match t.op {
                FieldOp::Equals => have == t.value,
                FieldOp::NotEquals => have != t.value,
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                let op = if t.op == FieldOp::Equals { "=" } else { "!=" };
                format!("{}{}{}", t.field, op, escape_field_value(&t.value))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_all_operators_and_matches() {
        let s = Selector::parse("env in (prod, staging),tier notin (db),app,!legacy,x=1,y==2,z!=3")
            .unwrap();
        assert_eq!(s.requirements().len(), 7);
        let good = labels(&[
            ("env", "prod"),
            ("tier", "web"),
            ("app", "a"),
            ("x", "1"),
            ("y", "2"),
        ]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("tier".into(), "db".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("z".into(), "3".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.remove("app");
        assert!(!s.matches(&bad));
        // Canonical form: sorted by key, sets sorted.
        assert_eq!(
            s.to_string(),
            "app,env in (prod,staging),!legacy,tier notin (db),x=1,y==2,z!=3"
        );
    }

    #[test]
    fn empty_and_edge_values() {
        let s = Selector::parse("").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        let s = Selector::parse("a=").unwrap();
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[])));
        let s = Selector::parse("a in ()").unwrap();
        assert_eq!(s.requirements()[0].values, vec![String::new()]);
        let s = Selector::parse("a in (in,notin)").unwrap();
        assert_eq!(s.requirements()[0].values, vec!["in", "notin"]);
        let s = Selector::parse("n>5,m<3").unwrap();
        assert!(s.matches(&labels(&[("n", "6"), ("m", "2")])));
        assert!(!s.matches(&labels(&[("n", "5"), ("m", "2")])));
        assert!(!s.matches(&labels(&[("n", "x"), ("m", "2")])));
        let s = Selector::parse("  a  =  b  ").unwrap();
        assert_eq!(s.to_string(), "a=b");
    }

    #[test]
    fn parse_errors_are_upstreams() {
        let cases = [
            ("a=b,", "found '', expected: identifier after ','"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            (
                "a in b",
                "unable to parse requirement: found 'b' expected: '('",
            ),
            (
                "a in (b",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            (
                "a (",
                "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt",
            ),
            (
                "a>=1",
                "unable to parse requirement: found '=', expected: identifier",
            ),
            (
                "a=(",
                "unable to parse requirement: found '(', expected: identifier",
            ),
            (
                "!",
                "unable to parse requirement: found '', expected: identifier",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Selector::parse(text).unwrap_err().0, want, "{text:?}");
        }
        let e = Selector::parse("-a=b").unwrap_err().0;
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of"),
            "{e}"
        );
        let e = Selector::parse("a=-b").unwrap_err().0;
        assert!(
            e.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be"),
            "{e}"
        );
        let e = Selector::parse("a>b").unwrap_err().0;
        assert_eq!(
            e,
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        // A selector error becomes a 400.
        let api: ApiError = Selector::parse("a b").unwrap_err().into();
        assert_eq!(api.code, 400);
    }

    #[test]
    fn matches_json_labels_and_objects() {
        let s = Selector::parse("app=web").unwrap();
        assert!(s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!s.matches_object(&json!({"metadata": {}})));
        assert!(Selector::everything().matches_object(&json!({})));
        assert!(!Selector::nothing().matches_object(&json!({})));
    }

    #[test]
    fn metav1_label_selector() {
        let v = json!({"matchLabels": {"app": "web"},
                       "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                                            {"key": "old", "operator": "DoesNotExist"}]});
        let s = label_selector_as_selector(Some(&v)).unwrap();
        assert_eq!(s.to_string(), "app=web,!old,tier in (be,fe)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("old", "1")])));
        assert!(label_selector_as_selector(Some(&json!({})))
            .unwrap()
            .is_empty());
        let none = label_selector_as_selector(None).unwrap();
        assert!(!none.matches(&labels(&[])));
        let e = label_selector_as_selector(Some(
            &json!({"matchExpressions": [{"key": "a", "operator": "Gt"}]}),
        ))
        .unwrap_err();
        assert_eq!(e.0, "\"Gt\" is not a valid label selector operator");
        let e = label_selector_as_selector(Some(
            &json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
        ))
        .unwrap_err();
        assert_eq!(
            e.0,
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
        );
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("metadata.name=web,status.phase!=Failed").unwrap();
        assert_eq!(s.exact_match("metadata.name"), Some("web"));
        assert_eq!(s.exact_match("status.phase"), None);
        let f = labels(&[("metadata.name", "web"), ("status.phase", "Running")]);
        assert!(s.matches(&f));
        let f2 = labels(&[("metadata.name", "web"), ("status.phase", "Failed")]);
        assert!(!s.matches(&f2));
        // Missing fields read as "".
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&labels(&[])));
        assert!(FieldSelector::parse("spec.nodeName==")
            .unwrap()
            .matches(&labels(&[])));
        assert!(FieldSelector::parse("").unwrap().is_empty());

        let s = FieldSelector::parse(r"a=x\,y\=z\\").unwrap();
        assert_eq!(s.terms()[0].value, r"x,y=z\");
        assert_eq!(s.to_string(), r"a=x\,y\=z\\");

        assert_eq!(
            FieldSelector::parse("abc").unwrap_err().0,
            "invalid selector: 'abc'; can't understand 'abc'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=\q").unwrap_err().0,
            r"invalid field selector: invalid escape sequence: \q"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().0,
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err().0,
            r"invalid field selector: invalid escape sequence: \"
        );
    }
}
