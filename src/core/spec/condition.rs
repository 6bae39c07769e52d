//! The condition language of metric checks: `result < 0.01`, parsed at validation time, evaluated per measurement.
//!
//! Metric analyses carry conditions such as `successCondition: result < 0.01` or
//! `failureCondition: result > 0.05 || result == 0`. A [`Condition`] is parsed and type-checked
//! once, when the spec is validated, so a bad condition is reported with the byte offset of the
//! problem. Afterwards [`Condition::eval`] decides it for each measured value and cannot fail.
//!
//! # Grammar
//!
//! ```text
//! expression := or
//! or         := and (('||' | 'or') and)*
//! and        := not (('&&' | 'and') not)*
//! not        := ('!' | 'not') not | comparison
//! comparison := sum (('<' | '<=' | '>' | '>=' | '==' | '!=') sum)?
//! sum        := product (('+' | '-') product)*
//! product    := unary (('*' | '/') unary)*
//! unary      := '-' unary | atom
//! atom       := number | 'result' | 'true' | 'false' | '(' expression ')' | call
//! call       := ('isNaN' | 'isInf' | 'abs') '(' expression ')'
//!             | ('min' | 'max') '(' expression ',' expression ')'
//! number     := (digits ('.' digits?)? | '.' digits) (('e' | 'E') ('+' | '-')? digits)?
//! ```
//!
//! - Whitespace between tokens is insignificant; names are case-sensitive.
//! - `result` is the measured value. Numbers must be finite, so `1e400` is rejected.
//! - Types are checked while parsing: the whole condition must be true or false; `+ - * /`,
//!   `<`-style comparisons and the functions take numbers; `&&`, `||` and `!` take true or false;
//!   `==` and `!=` compare two numbers or two truth values, never one of each. `isNaN` and
//!   `isInf` give true or false, `abs`, `min` and `max` give numbers.
//! - Comparisons do not chain: write `0 < result && result < 1`, not `0 < result < 1`.
//! - `!`/`not` binds looser than comparisons: `!result > 1` means `!(result > 1)`.
//! - Evaluation follows IEEE 754: every comparison with NaN is false except `!=`, division by
//!   zero gives an infinity or NaN, and `min`/`max` give NaN if either argument is NaN.
//! - A condition is at most 1024 bytes long and nests `(`, `!`/`not` and unary `-` at most 64
//!   levels deep.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Longest condition text accepted, in bytes.
const MAX_LEN: usize = 1024;
/// Deepest nesting of `(`, `!`/`not` and unary `-` accepted.
const MAX_DEPTH: usize = 64;

const HELP_CONDITION: &str = "conditions compare `result` with a number, e.g. `result < 0.01`";
const HELP_NEEDS_NUMBER: &str =
    "arithmetic, `<`, `<=`, `>`, `>=` and the functions work on numbers such as `result` or `0.5`";
const HELP_NEEDS_BOOL: &str =
    "`&&`, `||` and `!` combine comparisons, e.g. `result > 0 && result < 1`";
const HELP_NUMBER_SYNTAX: &str = "write numbers like `5`, `0.01` or `1e-3`";
const HELP_NAMES: &str = "a condition can use `result`, numbers, `true`, `false`, `and`, `or`, \
                          `not` and the functions `isNaN`, `isInf`, `abs`, `min` and `max`";
const HELP_FUNCTIONS: &str = "the functions are `isNaN`, `isInf`, `abs`, `min` and `max`";

/// Every name the language knows, in order of preference for "did you mean" hints.
const NAMES: &[&str] = &[
    "result", "true", "false", "and", "or", "not", "isNaN", "isInf", "abs", "min", "max",
];
/// The names that can be called.
const FUNCTIONS: &[&str] = &["isNaN", "isInf", "abs", "min", "max"];
/// Common guesses that are too far from the real name for an edit-distance match.
const ALIASES: &[(&str, &str)] = &[
    ("value", "result"),
    ("val", "result"),
    ("v", "result"),
    ("x", "result"),
    ("r", "result"),
    ("res", "result"),
    ("metric", "result"),
    ("measurement", "result"),
    ("nan", "isNaN"),
    ("inf", "isInf"),
    ("infinity", "isInf"),
];

/// A parsed, type-checked metric condition such as `result < 0.01`.
///
/// Build one with [`Condition::parse`], [`str::parse`] or serde (from a string), then decide it
/// for each measurement with [`Condition::eval`].
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The condition text, trimmed.
    source: String,
    /// The syntax tree; its types are checked, so evaluation cannot fail.
    expr: BoolExpr,
}

/// Why a condition could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    /// 0-based byte offset into the condition text where the problem is.
    pub offset: usize,
    /// Lowercase message naming the problem, e.g. "unknown name `reslt`".
    pub message: String,
    /// A hint for the user, e.g. "conditions compare `result` with a number, e.g. `result < 0.01`".
    pub help: String,
}

impl ConditionError {
    fn new(offset: usize, message: impl Into<String>, help: impl Into<String>) -> Self {
        ConditionError {
            offset,
            message: message.into(),
            help: help.into(),
        }
    }
}

impl Condition {
    /// Parses and type-checks a condition.
    ///
    /// Error offsets are byte offsets into `text` as given, before trimming.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        if text.len() > MAX_LEN {
            return Err(ConditionError::new(
                floor_char_boundary(text, MAX_LEN),
                format!(
                    "condition is too long: {} bytes, the limit is {MAX_LEN}",
                    text.len()
                ),
                "split the check into simpler conditions",
            ));
        }
        let source = text.trim();
        if source.is_empty() {
            return Err(ConditionError::new(0, "empty condition", HELP_CONDITION));
        }
        let expr = Parser::new(text)?.condition()?;
        Ok(Condition {
            source: source.to_owned(),
            expr,
        })
    }

    /// Evaluates against a measured value. NaN follows IEEE semantics in comparisons
    /// (every comparison with NaN is false, != is true); division by zero gives inf/NaN per IEEE. Never panics.
    pub fn eval(&self, result: f64) -> bool {
        self.expr.eval(result)
    }

    /// The original text, trimmed.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Condition::parse(text)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ConditionVisitor)
    }
}

/// Deserialises a [`Condition`] from a string, reporting parse errors by their message.
struct ConditionVisitor;

impl Visitor<'_> for ConditionVisitor {
    type Value = Condition;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a condition such as `result < 0.01`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Condition, E> {
        Condition::parse(text).map_err(E::custom)
    }
}

impl schemars::JsonSchema for Condition {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::Condition").into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A condition on the measured value `result` that is true or false, \
                e.g. `result < 0.01` or `result > 0.05 || isNaN(result)`. It may use numbers, \
                `true`, `false`, `+ - * /`, `< <= > >= == !=`, `&&`/`and`, `||`/`or`, `!`/`not`, \
                parentheses and the functions `isNaN`, `isInf`, `abs`, `min` and `max`."
        })
    }
}

/// The largest char boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    (0..=index.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and evaluation
// ---------------------------------------------------------------------------------------------

/// An expression that is true or false.
#[derive(Clone, Debug, PartialEq)]
enum BoolExpr {
    Literal(bool),
    Not(Box<BoolExpr>),
    And(Box<BoolExpr>, Box<BoolExpr>),
    Or(Box<BoolExpr>, Box<BoolExpr>),
    /// `==` between truth values; `!=` is its negation.
    Equals(Box<BoolExpr>, Box<BoolExpr>),
    Compare(CmpOp, Box<NumExpr>, Box<NumExpr>),
    IsNaN(Box<NumExpr>),
    IsInf(Box<NumExpr>),
}

/// An expression that is a number.
#[derive(Clone, Debug, PartialEq)]
enum NumExpr {
    Result,
    Literal(f64),
    Neg(Box<NumExpr>),
    Abs(Box<NumExpr>),
    Binary(BinOp, Box<NumExpr>, Box<NumExpr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

impl BoolExpr {
    fn eval(&self, result: f64) -> bool {
        match self {
            Self::Literal(value) => *value,
            Self::Not(inner) => !inner.eval(result),
            Self::And(a, b) => a.eval(result) && b.eval(result),
            Self::Or(a, b) => a.eval(result) || b.eval(result),
            Self::Equals(a, b) => a.eval(result) == b.eval(result),
            Self::Compare(op, a, b) => op.apply(a.eval(result), b.eval(result)),
            Self::IsNaN(x) => x.eval(result).is_nan(),
            Self::IsInf(x) => x.eval(result).is_infinite(),
        }
    }
}

impl NumExpr {
    fn eval(&self, result: f64) -> f64 {
        match self {
            Self::Result => result,
            Self::Literal(value) => *value,
            Self::Neg(x) => -x.eval(result),
            Self::Abs(x) => x.eval(result).abs(),
            Self::Binary(op, a, b) => op.apply(a.eval(result), b.eval(result)),
        }
    }
}

impl CmpOp {
    fn apply(self, a: f64, b: f64) -> bool {
        match self {
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }

    fn is_equality(self) -> bool {
        matches!(self, Self::Eq | Self::Ne)
    }
}

impl BinOp {
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Self::Add => a + b,
            Self::Sub => a - b,
            Self::Mul => a * b,
            Self::Div => a / b,
            // `f64::min`/`max` ignore NaN; a missing measurement must not hide behind them.
            Self::Min | Self::Max if a.is_nan() || b.is_nan() => f64::NAN,
            Self::Min => a.min(b),
            Self::Max => a.max(b),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    IsNaN,
    IsInf,
    Abs,
    Min,
    Max,
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Self::IsNaN => "isNaN",
            Self::IsInf => "isInf",
            Self::Abs => "abs",
            Self::Min => "min",
            Self::Max => "max",
        }
    }

    fn arity(self) -> &'static str {
        match self {
            Self::IsNaN | Self::IsInf | Self::Abs => "1 argument",
            Self::Min | Self::Max => "2 arguments",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Self::IsNaN => "call it like `isNaN(result)`",
            Self::IsInf => "call it like `isInf(result)`",
            Self::Abs => "call it like `abs(result - 1) < 0.1`",
            Self::Min => "call it like `min(result, 1)`",
            Self::Max => "call it like `max(result, 0)`",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Number(f64),
    Result,
    True,
    False,
    Func(Func),
    /// An identifier the language does not know.
    Name,
    /// `&&` or `and`.
    And,
    /// `||` or `or`.
    Or,
    /// `!` or `not`.
    Not,
    Cmp(CmpOp),
    /// `+`, `-`, `*` or `/`.
    Arith(BinOp),
    LParen,
    RParen,
    Comma,
    End,
}

/// A token and its byte range in the condition text.
#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Shows a token's text for "found …" messages.
struct Found<'a>(&'a str);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("end of input")
        } else {
            write!(f, "`{}`", self.0)
        }
    }
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

fn name_kind(name: &str) -> Kind {
    match name {
        "result" => Kind::Result,
        "true" => Kind::True,
        "false" => Kind::False,
        "and" => Kind::And,
        "or" => Kind::Or,
        "not" => Kind::Not,
        "isNaN" => Kind::Func(Func::IsNaN),
        "isInf" => Kind::Func(Func::IsInf),
        "abs" => Kind::Func(Func::Abs),
        "min" => Kind::Func(Func::Min),
        "max" => Kind::Func(Func::Max),
        _ => Kind::Name,
    }
}

/// What an operand following `kind` should be, for "expected … after …" messages.
fn expected_after(kind: Kind) -> &'static str {
    match kind {
        Kind::Cmp(CmpOp::Eq | CmpOp::Ne) | Kind::LParen => "a value",
        Kind::Cmp(_) | Kind::Arith(_) | Kind::Comma => "a number",
        Kind::And | Kind::Or | Kind::Not => "a condition",
        _ => "a value",
    }
}

/// The known name closest to an unknown one, if any is close enough to suggest.
fn suggest(name: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let alias = ALIASES
        .iter()
        .find(|(alias, target)| alias.eq_ignore_ascii_case(name) && candidates.contains(target));
    if let Some(&(_, target)) = alias {
        return Some(target);
    }
    candidates
        .iter()
        .map(|&candidate| (edit_distance(name, candidate), candidate))
        .filter(|&(distance, candidate)| distance <= if candidate.len() <= 3 { 1 } else { 2 })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Case-insensitive Levenshtein distance from `name` to a short known name; `usize::MAX` when
/// their lengths differ too much to matter.
fn edit_distance(name: &str, known: &str) -> usize {
    const ROW: usize = 8;
    let (a, b) = (name.as_bytes(), known.as_bytes());
    if b.len() >= ROW || a.len().abs_diff(b.len()) > 2 {
        return usize::MAX;
    }
    let mut row = [0; ROW];
    for (j, cell) in row.iter_mut().enumerate() {
        *cell = j;
    }
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(!ca.eq_ignore_ascii_case(cb));
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(diagonal + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// A value produced while parsing, before the caller checks its type.
enum Value {
    Num(NumExpr),
    Bool(BoolExpr),
}

/// A parsed sub-expression and where it starts, for type errors.
struct Operand {
    start: usize,
    value: Value,
}

type ParseResult<T> = Result<T, ConditionError>;

/// A recursive-descent parser over a lazily lexed token stream, one function per grammar rule.
struct Parser<'a> {
    src: &'a str,
    /// Where the lexer continues.
    pos: usize,
    /// The lookahead token.
    tok: Token,
    /// The last consumed token, for "expected … after `x`" messages.
    prev: Option<Token>,
    /// How many `(`, `!` and unary `-` enclose the current position.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> ParseResult<Self> {
        let end = Token {
            kind: Kind::End,
            start: 0,
            end: 0,
        };
        let mut parser = Parser {
            src,
            pos: 0,
            tok: end,
            prev: None,
            depth: 0,
        };
        parser.tok = parser.lex()?;
        Ok(parser)
    }

    /// The whole input: an expression that is true or false, then the end.
    fn condition(&mut self) -> ParseResult<BoolExpr> {
        let operand = self.or()?;
        match self.tok.kind {
            Kind::End => {}
            Kind::RParen => {
                return Err(self.error_here("unmatched `)`", "remove it or add the `(` it closes"));
            }
            _ => {
                let prev = self.prev.map_or("", |prev| self.text(prev));
                return Err(self.error_here(
                    format!(
                        "expected an operator after `{prev}`, found {}",
                        self.found()
                    ),
                    "join conditions with `&&` or `||`, e.g. `result > 0 && result < 1`",
                ));
            }
        }
        match operand.value {
            Value::Bool(expr) => Ok(expr),
            Value::Num(_) => Err(ConditionError::new(
                operand.start,
                "the condition must be true or false, found a number",
                HELP_CONDITION,
            )),
        }
    }

    fn or(&mut self) -> ParseResult<Operand> {
        let mut lhs = self.and()?;
        while self.tok.kind == Kind::Or {
            let op = self.bump()?;
            let rhs = self.and()?;
            lhs = self.logic(op, lhs, rhs, BoolExpr::Or)?;
        }
        Ok(lhs)
    }

    fn and(&mut self) -> ParseResult<Operand> {
        let mut lhs = self.not()?;
        while self.tok.kind == Kind::And {
            let op = self.bump()?;
            let rhs = self.not()?;
            lhs = self.logic(op, lhs, rhs, BoolExpr::And)?;
        }
        Ok(lhs)
    }

    fn logic(
        &self,
        op: Token,
        lhs: Operand,
        rhs: Operand,
        join: fn(Box<BoolExpr>, Box<BoolExpr>) -> BoolExpr,
    ) -> ParseResult<Operand> {
        let start = lhs.start;
        let a = self.want_bool(lhs, op)?;
        let b = self.want_bool(rhs, op)?;
        Ok(Operand {
            start,
            value: Value::Bool(join(Box::new(a), Box::new(b))),
        })
    }

    fn not(&mut self) -> ParseResult<Operand> {
        if self.tok.kind != Kind::Not {
            return self.comparison();
        }
        let op = self.bump()?;
        let inner = self.nested(op, Self::not)?;
        let expr = self.want_bool(inner, op)?;
        Ok(Operand {
            start: op.start,
            value: Value::Bool(BoolExpr::Not(Box::new(expr))),
        })
    }

    fn comparison(&mut self) -> ParseResult<Operand> {
        let lhs = self.sum()?;
        let Kind::Cmp(cmp) = self.tok.kind else {
            return Ok(lhs);
        };
        let op = self.bump()?;
        let rhs = self.sum()?;
        if let Kind::Cmp(_) = self.tok.kind {
            return Err(self.error_here(
                "comparisons cannot be chained",
                "join two comparisons with `&&`, e.g. `0 < result && result < 1`",
            ));
        }
        let (lhs_start, rhs_start) = (lhs.start, rhs.start);
        let expr = match (lhs.value, rhs.value) {
            (Value::Num(a), Value::Num(b)) => BoolExpr::Compare(cmp, Box::new(a), Box::new(b)),
            (Value::Bool(a), Value::Bool(b)) if cmp.is_equality() => {
                let equals = BoolExpr::Equals(Box::new(a), Box::new(b));
                if cmp == CmpOp::Eq {
                    equals
                } else {
                    BoolExpr::Not(Box::new(equals))
                }
            }
            (Value::Num(_), Value::Bool(_)) | (Value::Bool(_), Value::Num(_))
                if cmp.is_equality() =>
            {
                return Err(ConditionError::new(
                    op.start,
                    "cannot compare a number with true or false",
                    "compare numbers with numbers, e.g. `result == 0`",
                ));
            }
            (Value::Bool(_), _) => return Err(self.needs_number(lhs_start, op)),
            (_, Value::Bool(_)) => return Err(self.needs_number(rhs_start, op)),
        };
        Ok(Operand {
            start: lhs_start,
            value: Value::Bool(expr),
        })
    }

    fn sum(&mut self) -> ParseResult<Operand> {
        let mut lhs = self.product()?;
        while let Kind::Arith(bin @ (BinOp::Add | BinOp::Sub)) = self.tok.kind {
            let op = self.bump()?;
            let rhs = self.product()?;
            lhs = self.arith(bin, op, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn product(&mut self) -> ParseResult<Operand> {
        let mut lhs = self.unary()?;
        while let Kind::Arith(bin @ (BinOp::Mul | BinOp::Div)) = self.tok.kind {
            let op = self.bump()?;
            let rhs = self.unary()?;
            lhs = self.arith(bin, op, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn arith(&self, bin: BinOp, op: Token, lhs: Operand, rhs: Operand) -> ParseResult<Operand> {
        let start = lhs.start;
        let a = self.want_num(lhs, op)?;
        let b = self.want_num(rhs, op)?;
        Ok(Operand {
            start,
            value: Value::Num(NumExpr::Binary(bin, Box::new(a), Box::new(b))),
        })
    }

    fn unary(&mut self) -> ParseResult<Operand> {
        if self.tok.kind != Kind::Arith(BinOp::Sub) {
            return self.atom();
        }
        let op = self.bump()?;
        let inner = self.nested(op, Self::unary)?;
        let expr = self.want_num(inner, op)?;
        Ok(Operand {
            start: op.start,
            value: Value::Num(NumExpr::Neg(Box::new(expr))),
        })
    }

    fn atom(&mut self) -> ParseResult<Operand> {
        let token = self.tok;
        let value = match token.kind {
            Kind::Number(value) => Value::Num(NumExpr::Literal(value)),
            Kind::Result => Value::Num(NumExpr::Result),
            Kind::True => Value::Bool(BoolExpr::Literal(true)),
            Kind::False => Value::Bool(BoolExpr::Literal(false)),
            Kind::LParen => return self.parenthesized(),
            Kind::Func(func) => return self.call(func),
            Kind::Name => return Err(self.unknown_name(token)),
            _ => return Err(self.expected_operand()),
        };
        self.bump()?;
        Ok(Operand {
            start: token.start,
            value,
        })
    }

    fn parenthesized(&mut self) -> ParseResult<Operand> {
        let open = self.bump()?;
        let inner = self.nested(open, Self::or)?;
        if self.tok.kind != Kind::RParen {
            return Err(self.error_here(
                format!("expected `)`, found {}", self.found()),
                "every `(` needs a matching `)`",
            ));
        }
        self.bump()?;
        Ok(Operand {
            start: open.start,
            value: inner.value,
        })
    }

    fn call(&mut self, func: Func) -> ParseResult<Operand> {
        let name = self.bump()?;
        if self.tok.kind != Kind::LParen {
            return Err(self.error_here(
                format!(
                    "expected `(` after `{}`, found {}",
                    func.name(),
                    self.found()
                ),
                func.usage(),
            ));
        }
        let open = self.bump()?;
        let value = self.nested(open, |parser| parser.arguments(func, name))?;
        Ok(Operand {
            start: name.start,
            value,
        })
    }

    /// The arguments of a call and its closing `)`.
    fn arguments(&mut self, func: Func, name: Token) -> ParseResult<Value> {
        let first = Box::new(self.argument(func, name, 0)?);
        let value = match func {
            Func::IsNaN => Value::Bool(BoolExpr::IsNaN(first)),
            Func::IsInf => Value::Bool(BoolExpr::IsInf(first)),
            Func::Abs => Value::Num(NumExpr::Abs(first)),
            Func::Min | Func::Max => {
                match self.tok.kind {
                    Kind::Comma => {
                        self.bump()?;
                    }
                    // `argument` reports the missing second argument.
                    Kind::RParen => {}
                    _ => {
                        return Err(self.error_here(
                            format!("expected `,` in `{}(`, found {}", func.name(), self.found()),
                            func.usage(),
                        ));
                    }
                }
                let second = Box::new(self.argument(func, name, 1)?);
                let op = if func == Func::Min {
                    BinOp::Min
                } else {
                    BinOp::Max
                };
                Value::Num(NumExpr::Binary(op, first, second))
            }
        };
        match self.tok.kind {
            Kind::RParen => {
                self.bump()?;
                Ok(value)
            }
            Kind::Comma => Err(self.error_here(
                format!("`{}` takes only {}", func.name(), func.arity()),
                func.usage(),
            )),
            _ => Err(self.error_here(
                format!(
                    "expected `)` to close `{}(`, found {}",
                    func.name(),
                    self.found()
                ),
                func.usage(),
            )),
        }
    }

    /// Argument number `index` (0-based) of a call; all arguments are numbers.
    fn argument(&mut self, func: Func, name: Token, index: usize) -> ParseResult<NumExpr> {
        if self.tok.kind == Kind::RParen {
            return Err(self.error_here(
                format!("`{}` takes {}, found {index}", func.name(), func.arity()),
                func.usage(),
            ));
        }
        let operand = self.or()?;
        self.want_num(operand, name)
    }

    /// Runs `parse` one nesting level deeper; `at` is the token that opened the level.
    fn nested<T>(
        &mut self,
        at: Token,
        parse: impl FnOnce(&mut Self) -> ParseResult<T>,
    ) -> ParseResult<T> {
        if self.depth >= MAX_DEPTH {
            return Err(ConditionError::new(
                at.start,
                format!("condition is nested too deeply: more than {MAX_DEPTH} levels"),
                "simplify the condition; `(`, `!`, `not` and `-` may nest at most 64 levels",
            ));
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn want_bool(&self, operand: Operand, op: Token) -> ParseResult<BoolExpr> {
        match operand.value {
            Value::Bool(expr) => Ok(expr),
            Value::Num(_) => Err(ConditionError::new(
                operand.start,
                format!("`{}` needs true or false, found a number", self.text(op)),
                HELP_NEEDS_BOOL,
            )),
        }
    }

    fn want_num(&self, operand: Operand, op: Token) -> ParseResult<NumExpr> {
        match operand.value {
            Value::Num(expr) => Ok(expr),
            Value::Bool(_) => Err(self.needs_number(operand.start, op)),
        }
    }

    fn needs_number(&self, offset: usize, op: Token) -> ConditionError {
        ConditionError::new(
            offset,
            format!("`{}` needs a number, found true or false", self.text(op)),
            HELP_NEEDS_NUMBER,
        )
    }

    fn expected_operand(&self) -> ConditionError {
        let message = match self.prev {
            None => format!("expected a condition, found {}", self.found()),
            Some(prev) => format!(
                "expected {} after `{}`, found {}",
                expected_after(prev.kind),
                self.text(prev),
                self.found()
            ),
        };
        self.error_here(message, HELP_CONDITION)
    }

    fn unknown_name(&self, token: Token) -> ConditionError {
        let name = self.text(token);
        let is_call = self
            .src
            .get(token.end..)
            .is_some_and(|rest| rest.trim_start().starts_with('('));
        let (message, candidates, names) = if is_call {
            (
                format!("unknown function `{name}`"),
                FUNCTIONS,
                HELP_FUNCTIONS,
            )
        } else {
            (format!("unknown name `{name}`"), NAMES, HELP_NAMES)
        };
        let help = match suggest(name, candidates) {
            Some(known) => format!("did you mean `{known}`? {names}"),
            None => names.to_owned(),
        };
        ConditionError::new(token.start, message, help)
    }

    fn error_here(&self, message: impl Into<String>, help: impl Into<String>) -> ConditionError {
        ConditionError::new(self.tok.start, message, help)
    }

    fn text(&self, token: Token) -> &'a str {
        self.src.get(token.start..token.end).unwrap_or_default()
    }

    fn found(&self) -> Found<'a> {
        Found(self.text(self.tok))
    }

    /// Consumes the lookahead token and lexes the next one.
    fn bump(&mut self) -> ParseResult<Token> {
        let token = self.tok;
        self.tok = self.lex()?;
        self.prev = Some(token);
        Ok(token)
    }

    // -- lexer ---------------------------------------------------------------------------------

    fn lex(&mut self) -> ParseResult<Token> {
        let rest = self.src.get(self.pos..).unwrap_or_default();
        let trimmed = rest.trim_start();
        let start = self.pos + (rest.len() - trimmed.len());
        let bytes = trimmed.as_bytes();
        let Some(&first) = bytes.first() else {
            self.pos = start;
            return Ok(Token {
                kind: Kind::End,
                start,
                end: start,
            });
        };
        let (kind, len) = match (first, bytes.get(1).copied()) {
            (b'<', Some(b'=')) => (Kind::Cmp(CmpOp::Le), 2),
            (b'<', _) => (Kind::Cmp(CmpOp::Lt), 1),
            (b'>', Some(b'=')) => (Kind::Cmp(CmpOp::Ge), 2),
            (b'>', _) => (Kind::Cmp(CmpOp::Gt), 1),
            (b'=', Some(b'=')) => (Kind::Cmp(CmpOp::Eq), 2),
            (b'!', Some(b'=')) => (Kind::Cmp(CmpOp::Ne), 2),
            (b'!', _) => (Kind::Not, 1),
            (b'&', Some(b'&')) => (Kind::And, 2),
            (b'|', Some(b'|')) => (Kind::Or, 2),
            (b'+', _) => (Kind::Arith(BinOp::Add), 1),
            (b'-', _) => (Kind::Arith(BinOp::Sub), 1),
            (b'*', _) => (Kind::Arith(BinOp::Mul), 1),
            (b'/', _) => (Kind::Arith(BinOp::Div), 1),
            (b'(', _) => (Kind::LParen, 1),
            (b')', _) => (Kind::RParen, 1),
            (b',', _) => (Kind::Comma, 1),
            (b'0'..=b'9', _) | (b'.', Some(b'0'..=b'9')) => return self.lex_number(start),
            (b'a'..=b'z' | b'A'..=b'Z' | b'_', _) => {
                let len = bytes.iter().take_while(|&&b| is_name_byte(b)).count();
                let name = trimmed.get(..len).unwrap_or_default();
                (name_kind(name), len)
            }
            _ => return Err(self.unexpected_char(start)),
        };
        self.pos = start + len;
        Ok(Token {
            kind,
            start,
            end: self.pos,
        })
    }

    fn lex_number(&mut self, start: usize) -> ParseResult<Token> {
        let bytes = self.src.as_bytes();
        let skip_digits = |from: usize| {
            let digits = bytes.get(from..).unwrap_or_default();
            from + digits.iter().take_while(|b| b.is_ascii_digit()).count()
        };
        let mut end = skip_digits(start);
        if bytes.get(end) == Some(&b'.') {
            end = skip_digits(end + 1);
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
            let exponent = end + 1 + sign;
            if bytes.get(exponent).is_some_and(u8::is_ascii_digit) {
                end = skip_digits(exponent);
            }
        }
        let invalid = |end: usize| {
            let text = self.src.get(start..end).unwrap_or_default();
            ConditionError::new(
                start,
                format!("invalid number `{text}`"),
                HELP_NUMBER_SYNTAX,
            )
        };
        let tail = bytes.get(end..).unwrap_or_default();
        let junk = tail
            .iter()
            .take_while(|&&b| is_name_byte(b) || b == b'.')
            .count();
        if junk > 0 {
            return Err(invalid(end + junk));
        }
        let text = self.src.get(start..end).unwrap_or_default();
        let value: f64 = text.parse().map_err(|_| invalid(end))?;
        if !value.is_finite() {
            return Err(ConditionError::new(
                start,
                format!("number `{text}` is too large"),
                "numbers must be finite, at most about 1.8e308",
            ));
        }
        self.pos = end;
        Ok(Token {
            kind: Kind::Number(value),
            start,
            end,
        })
    }

    fn unexpected_char(&self, start: usize) -> ConditionError {
        let c = self
            .src
            .get(start..)
            .and_then(|rest| rest.chars().next())
            .unwrap_or(' ');
        let help = match c {
            '=' => "use `==` to test equality, or `<=` and `>=` to compare",
            '&' => "use `&&` or `and` to require both conditions",
            '|' => "use `||` or `or` to accept either condition",
            _ => HELP_CONDITION,
        };
        ConditionError::new(start, format!("unexpected character `{c}`"), help)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` and checks what it evaluates to for `value`.
    fn check(text: &str, value: f64, expected: bool) {
        let condition = Condition::parse(text).unwrap_or_else(|error| {
            panic!(
                "`{text}` failed at {}: {} ({})",
                error.offset, error.message, error.help
            )
        });
        assert_eq!(
            condition.eval(value),
            expected,
            "`{text}` with result = {value}"
        );
    }

    /// Checks that `text` fails to parse at `offset` with a message containing `message`.
    fn check_err(text: &str, offset: usize, message: &str) -> ConditionError {
        let error = match Condition::parse(text) {
            Ok(condition) => panic!("`{text}` parsed as {condition:?}"),
            Err(error) => error,
        };
        assert!(
            error.message.contains(message),
            "`{text}`: message {:?} lacks {message:?}",
            error.message
        );
        assert_eq!(error.offset, offset, "`{text}`: {error:?}");
        assert!(!error.help.is_empty(), "`{text}`: no help");
        error
    }

    #[test]
    fn comparisons() {
        check("result < 0.01", 0.005, true);
        check("result < 0.01", 0.02, false);
        check("result <= 1", 1.0, true);
        check("result > 5", 5.0, false);
        check("result >= 5", 5.0, true);
        check("result == 0", 0.0, true);
        check("result == 0", -0.0, true);
        check("result != 0", 1.0, true);
        check("0.5 > result", 0.1, true);
        check("result>-1", -0.5, true);
        check("result > -1", -2.0, false);
        check("result < 1e-3", 0.0005, true);
        check("result < .5", 0.25, true);
        check("result < 5.", 4.0, true);
        check("result < 1E+2", 99.0, true);
    }

    #[test]
    fn logic() {
        check("result >= 0.99 && result <= 1", 0.995, true);
        check("result >= 0.99 && result <= 1", 0.5, false);
        check("result >= 0.99 and result <= 1", 1.0, true);
        check("result > 5 || result == 0", 0.0, true);
        check("result > 5 || result == 0", 6.0, true);
        check("result > 5 || result == 0", 3.0, false);
        check("result > 5 or result == 0", 3.0, false);
        check("!(result > 1)", 0.5, true);
        check("!(result > 1)", 2.0, false);
        check("not (result > 1)", 0.5, true);
        check("!result > 1", 2.0, false);
        check("!!(result > 1)", 2.0, true);
        check("true", 123.0, true);
        check("false", 123.0, false);
        check("true || false && false", 0.0, true);
        check("(true || false) && false", 0.0, false);
        check("(result > 1) == true", 2.0, true);
        check("(result > 1) != (result > 2)", 1.5, true);
        check("  result < 1\n", 0.0, true);
    }

    #[test]
    fn arithmetic() {
        check("result * 100 < 1", 0.005, true);
        check("result * 100 < 1", 0.02, false);
        check("1 + 2 * 3 == 7", 0.0, true);
        check("(1 + 2) * 3 == 9", 0.0, true);
        check("10 - 2 - 3 == 5", 0.0, true);
        check("8 / 4 / 2 == 1", 0.0, true);
        check("-result == 2", -2.0, true);
        check("--result == 2", 2.0, true);
        check("2 * -result > 0", -1.0, true);
        check("result / 0 > 1e308", 1.0, true);
        check("isInf(result / 0)", 1.0, true);
        check("isNaN(result / 0)", 0.0, true);
    }

    #[test]
    fn functions() {
        check("abs(result - 1) < 0.1", 1.05, true);
        check("abs(result - 1) < 0.1", 0.8, false);
        check("isNaN(result)", f64::NAN, true);
        check("isNaN(result)", 1.0, false);
        check("isInf(result)", f64::NEG_INFINITY, true);
        check("isInf(result)", f64::MAX, false);
        check("min(result, 1) == 1", 5.0, true);
        check("max(result, 0) == 0", -5.0, true);
        check("min( result , 2 ) < max(result, 2)", 1.0, true);
        check("max(result, 0) >= 0", f64::NAN, false);
        check("isNaN(min(result, 1))", f64::NAN, true);
    }

    #[test]
    fn nan_follows_ieee() {
        check("result < 1", f64::NAN, false);
        check("result >= 1", f64::NAN, false);
        check("result == result", f64::NAN, false);
        check("result != 1", f64::NAN, true);
        check("!(result < 1)", f64::NAN, true);
    }

    #[test]
    fn syntax_errors() {
        check_err("", 0, "empty");
        check_err("   ", 0, "empty");
        check_err(
            "result <",
            8,
            "expected a number after `<`, found end of input",
        );
        check_err("result < < 1", 9, "expected a number after `<`, found `<`");
        check_err("result < 1 < 2", 11, "cannot be chained");
        check_err("(result < 1", 11, "expected `)`, found end of input");
        check_err("result < 1)", 10, "unmatched `)`");
        check_err("result < 0.01 garbage", 14, "found `garbage`");
        check_err("result 1", 7, "expected an operator after `result`");
        check_err("result &&", 9, "expected a condition after `&&`");
        check_err("result < 1 && ", 14, "found end of input");
        check_err("result = 1", 7, "unexpected character `=`");
        check_err("result < 1 & true", 11, "unexpected character `&`");
        check_err("result < 1 | true", 11, "unexpected character `|`");
        check_err("result < 1 # comment", 11, "unexpected character `#`");
        check_err("result < é", 9, "unexpected character `é`");
        check_err("()", 1, "expected a value after `(`, found `)`");
        check_err(")", 0, "expected a condition, found `)`");
    }

    #[test]
    fn number_errors() {
        check_err("result < 1e400", 9, "too large");
        check_err("result < 1.2.3", 9, "invalid number `1.2.3`");
        check_err("result < 1e", 9, "invalid number `1e`");
        check_err("result < 5abc", 9, "invalid number `5abc`");
        check_err("result < 0x10", 9, "invalid number `0x10`");
        check_err("result < .", 9, "unexpected character `.`");
    }

    #[test]
    fn name_errors() {
        let error = check_err("reslt < 1", 0, "unknown name `reslt`");
        assert!(error.help.contains("did you mean `result`?"), "{error:?}");
        for guess in ["value", "results", "Result", "x"] {
            let error = check_err(&format!("{guess} < 1"), 0, "unknown name");
            assert!(error.help.contains("`result`?"), "{guess}: {error:?}");
        }
        let error = check_err("result < 1 && zzzzzz", 14, "unknown name `zzzzzz`");
        assert!(!error.help.contains("did you mean"), "{error:?}");
        assert!(error.help.contains("`result`"), "{error:?}");
        let error = check_err("foo(result)", 0, "unknown function `foo`");
        assert!(error.help.contains("`isNaN`"), "{error:?}");
        let error = check_err("isnan(result)", 0, "unknown function `isnan`");
        assert!(error.help.contains("did you mean `isNaN`?"), "{error:?}");
        check_err("result == nan", 10, "unknown name `nan`");
    }

    #[test]
    fn call_errors() {
        check_err("abs < 1", 4, "expected `(` after `abs`");
        check_err("abs() < 1", 4, "`abs` takes 1 argument, found 0");
        check_err("abs(result, 1) < 1", 10, "`abs` takes only 1 argument");
        check_err("min(result) < 1", 10, "`min` takes 2 arguments, found 1");
        check_err("min(result,) < 1", 11, "`min` takes 2 arguments, found 1");
        check_err("min(result 1) < 1", 11, "expected `,` in `min(`");
        check_err("isNaN(result", 12, "expected `)` to close `isNaN(`");
        check_err("isNaN(true)", 6, "`isNaN` needs a number");
    }

    #[test]
    fn type_errors() {
        check_err("result + 1", 0, "the condition must be true or false");
        check_err("5", 0, "the condition must be true or false");
        check_err("abs(result)", 0, "must be true or false");
        check_err(
            "result && true",
            0,
            "`&&` needs true or false, found a number",
        );
        check_err("true or result", 8, "`or` needs true or false");
        check_err("!result", 1, "`!` needs true or false");
        check_err("true + 1 > 0", 0, "`+` needs a number, found true or false");
        check_err("-true", 1, "`-` needs a number");
        check_err("result < true", 9, "`<` needs a number");
        check_err("(result > 1) < 2", 0, "`<` needs a number");
        check_err(
            "result == true",
            7,
            "cannot compare a number with true or false",
        );
    }

    #[test]
    fn limits() {
        let long = "result < 1 && ".repeat(80) + "true";
        assert!(long.len() > MAX_LEN);
        check_err(&long, MAX_LEN, "too long");

        let within = format!("{}result < 1{}", "(".repeat(64), ")".repeat(64));
        check(&within, 0.5, true);
        let deep = format!("{}result < 1{}", "(".repeat(100), ")".repeat(100));
        check_err(&deep, 64, "nested too deeply");
        check_err(&"!".repeat(500), 64, "nested too deeply");
        check_err(
            &format!("{}1 < 0", "-".repeat(500)),
            64,
            "nested too deeply",
        );

        // Long flat chains are bounded by the length limit and evaluate without trouble.
        let chain = format!("{}0 == 500", "1 + ".repeat(250));
        check(&chain, 0.0, false);
        check(&format!("{}0 == 250", "1 + ".repeat(250)), 0.0, true);
    }

    #[test]
    fn display_from_str_and_as_str() {
        let condition: Condition = "  result > 0.05 || isNaN(result) ".parse().expect("parses");
        assert_eq!(condition.as_str(), "result > 0.05 || isNaN(result)");
        assert_eq!(condition.to_string(), "result > 0.05 || isNaN(result)");
        assert_eq!(condition.to_string().parse::<Condition>(), Ok(condition));
    }

    #[test]
    fn serde_round_trip() {
        let condition: Condition = serde_json::from_str(r#""result < 0.01""#).expect("parses");
        assert!(condition.eval(0.0));
        let json = serde_json::to_string(&condition).expect("serialises");
        assert_eq!(json, r#""result < 0.01""#);

        let error = serde_json::from_str::<Condition>(r#""reslt < 0.01""#).expect_err("fails");
        assert!(
            error.to_string().contains("unknown name `reslt`"),
            "{error}"
        );
        let error = serde_json::from_str::<Condition>("0.01").expect_err("fails");
        assert!(error.to_string().contains("a condition"), "{error}");
    }

    #[test]
    fn json_schema() {
        let schema = schemars::schema_for!(Condition);
        let value = schema.as_value();
        assert_eq!(value["type"], "string");
        assert!(
            value["description"]
                .as_str()
                .is_some_and(|d| d.contains("result"))
        );
    }

    /// Parses `text`; on success evaluates it for awkward values and re-parses its text, on
    /// failure checks that the offset points inside the text at a char boundary.
    fn check_total(text: &str) -> bool {
        match Condition::parse(text) {
            Ok(condition) => {
                for value in [0.0, -1.0, 1e308, f64::NAN, f64::INFINITY] {
                    let _ = condition.eval(value);
                }
                assert_eq!(condition.as_str().parse::<Condition>(), Ok(condition));
                true
            }
            Err(error) => {
                assert!(error.offset <= text.len(), "`{text}`: {error:?}");
                assert!(text.is_char_boundary(error.offset), "`{text}`: {error:?}");
                false
            }
        }
    }

    /// Cheap deterministic fuzzing: random token soup never panics.
    #[test]
    fn token_soup_never_panics() {
        const PIECES: &[&str] = &[
            "result", "1", "0.5", "1e3", ".5", "(", ")", "<", "<=", ">", ">=", "==", "!=", "!",
            "&&", "||", "and", "or", "not", "+", "-", "*", "/", "abs", "min", "max", "isNaN",
            "isInf", ",", "true", "false", " ", "reslt", "=", "&", "é", "1e400", "5.", "x(",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % 1024).unwrap_or(0)
        };
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..next() % 12 {
                text.push_str(PIECES[next() % PIECES.len()]);
                if next() % 2 == 0 {
                    text.push(' ');
                }
            }
            check_total(&text);
        }
    }

    /// Every one-character deletion and insertion in valid conditions never panics.
    #[test]
    fn mutations_never_panic() {
        const VALID: &[&str] = &[
            "result < 0.01",
            "result > 0.05 || result == 0",
            "!(abs(result - 1) < 0.1) and isNaN(min(result, -2e-3))",
            "not (max(result, 1) / 0 >= .5 * 3) && (true != false)",
        ];
        const INSERTS: &[char] = &[
            '(', ')', '!', '-', '<', '=', '&', ',', '1', 'e', '.', ' ', 'é',
        ];
        let mut parsed = 0;
        for valid in VALID {
            assert!(check_total(valid), "`{valid}` must parse");
            for (at, c) in valid.char_indices() {
                let mut deleted = (*valid).to_owned();
                deleted.remove(at);
                parsed += usize::from(check_total(&deleted));
                for &insert in INSERTS {
                    let mut inserted = (*valid).to_owned();
                    inserted.insert(at + c.len_utf8(), insert);
                    parsed += usize::from(check_total(&inserted));
                }
            }
        }
        assert!(parsed > 100, "only {parsed} mutants parsed");
    }
}
