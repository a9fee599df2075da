//! The SOQL the simulator understands: `SELECT fields FROM object [WHERE expr] [ORDER BY ...]
//! [LIMIT n]`, with `AND`/`OR`/`NOT`, parentheses, comparisons and `IN` over strings,
//! datetimes, booleans, numbers and `NULL`.

use std::cmp::Ordering;

use crate::models::parse_datetime;

/// A value a condition compares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Str(String),
    Ms(i64),
    Bool(bool),
    Num(f64),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(String, CmpOp, Val),
    In(String, Vec<Val>),
    True,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub(crate) fields: Vec<String>,
    pub(crate) object: String,
    pub(crate) filter: Expr,
    pub(crate) limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    let Some(&c) = b.get(i) else {
                        return Err("unterminated string".into());
                    };
                    match c {
                        '\\' => {
                            let n = *b.get(i + 1).ok_or("bad escape")?;
                            v.push(match n {
                                'n' => '\n',
                                'r' => '\r',
                                't' => '\t',
                                o => o,
                            });
                            i += 2;
                        }
                        '\'' => {
                            i += 1;
                            break;
                        }
                        o => {
                            v.push(o);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            '>' | '<' | '=' | '!' => {
                let two: String = b[i..(i + 2).min(b.len())].iter().collect();
                let op = match two.as_str() {
                    ">=" => ">=",
                    "<=" => "<=",
                    "!=" => "!=",
                    "<>" => "!=",
                    _ => match c {
                        '>' => ">",
                        '<' => "<",
                        '=' => "=",
                        _ => return Err("unexpected !".into()),
                    },
                };
                i += if op.len() == 2 || two == "<>" { 2 } else { 1 };
                out.push(Tok::Op(op));
            }
            c if c.is_alphanumeric()
                || c == '_'
                || c == '.'
                || c == '-'
                || c == ':'
                || c == '+' =>
            {
                let start = i;
                while i < b.len()
                    && (b[i].is_alphanumeric() || matches!(b[i], '_' | '.' | '-' | ':' | '+'))
                {
                    i += 1;
                }
                out.push(Tok::Word(b[start..i].iter().collect()));
            }
            '*' => {
                out.push(Tok::Word("*".into()));
                i += 1
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct P {
    toks: Vec<Tok>,
    pos: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
    }
    fn expect_kw(&mut self, k: &str) -> Result<(), String> {
        if self.kw(k) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {k}"))
        }
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            t => Err(format!("expected a name, got {t:?}")),
        }
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.and()?];
        while self.kw("OR") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.unary()?];
        while self.kw("AND") {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.kw("NOT") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("expected )".into());
            }
            return Ok(e);
        }
        let field = self.word()?;
        if self.kw("IN") {
            self.pos += 1;
            if self.next() != Some(Tok::LParen) {
                return Err("expected ( after IN".into());
            }
            let mut vals = Vec::new();
            loop {
                vals.push(self.literal()?);
                match self.next() {
                    Some(Tok::Comma) => continue,
                    Some(Tok::RParen) => break,
                    t => return Err(format!("expected , or ) in IN, got {t:?}")),
                }
            }
            return Ok(Expr::In(field, vals));
        }
        let op = match self.next() {
            Some(Tok::Op(o)) => match o {
                "=" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            },
            t => return Err(format!("expected an operator, got {t:?}")),
        };
        Ok(Expr::Cmp(field, op, self.literal()?))
    }
    fn literal(&mut self) -> Result<Val, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Val::Str(s)),
            Some(Tok::Word(w)) => {
                if w.eq_ignore_ascii_case("true") {
                    Ok(Val::Bool(true))
                } else if w.eq_ignore_ascii_case("false") {
                    Ok(Val::Bool(false))
                } else if w.eq_ignore_ascii_case("null") {
                    Ok(Val::Null)
                } else if let Some(ms) = parse_datetime(&w) {
                    Ok(Val::Ms(ms))
                } else if let Ok(n) = w.parse::<f64>() {
                    Ok(Val::Num(n))
                } else {
                    Err(format!("not a literal: {w}"))
                }
            }
            t => Err(format!("expected a literal, got {t:?}")),
        }
    }
}

/// Parses a query.
pub(crate) fn parse(q: &str) -> Result<Query, String> {
    let mut p = P {
        toks: tokenize(q)?,
        pos: 0,
    };
    p.expect_kw("SELECT")?;
    let mut fields = vec![p.word()?];
    while p.peek() == Some(&Tok::Comma) {
        p.pos += 1;
        fields.push(p.word()?);
    }
    p.expect_kw("FROM")?;
    let object = p.word()?;
    let mut filter = Expr::True;
    if p.kw("WHERE") {
        p.pos += 1;
        filter = p.or()?;
    }
    if p.kw("ORDER") {
        p.pos += 1;
        p.expect_kw("BY")?;
        loop {
            p.word()?;
            if p.kw("ASC") || p.kw("DESC") {
                p.pos += 1;
            }
            if p.peek() == Some(&Tok::Comma) {
                p.pos += 1;
                continue;
            }
            break;
        }
    }
    let mut limit = None;
    if p.kw("LIMIT") {
        p.pos += 1;
        limit = Some(p.word()?.parse::<u64>().map_err(|_| "bad LIMIT")?);
    }
    if p.peek().is_some() {
        return Err(format!("unexpected {:?}", p.peek()));
    }
    Ok(Query {
        fields,
        object,
        filter,
        limit,
    })
}

fn cmp(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.as_str().cmp(y.as_str())),
        (Val::Ms(x), Val::Ms(y)) => Some(x.cmp(y)),
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Null, Val::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

impl Expr {
    /// Evaluates the filter with `get` reading a record's field.
    pub(crate) fn eval(&self, get: &dyn Fn(&str) -> Val) -> bool {
        match self {
            Expr::True => true,
            Expr::And(v) => v.iter().all(|e| e.eval(get)),
            Expr::Or(v) => v.iter().any(|e| e.eval(get)),
            Expr::Not(e) => !e.eval(get),
            Expr::In(f, vals) => {
                let v = get(f);
                vals.iter().any(|x| cmp(&v, x) == Some(Ordering::Equal))
            }
            Expr::Cmp(f, op, lit) => {
                let v = get(f);
                let Some(o) = cmp(&v, lit) else {
                    return *op == CmpOp::Ne;
                };
                match op {
                    CmpOp::Eq => o == Ordering::Equal,
                    CmpOp::Ne => o != Ordering::Equal,
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    CmpOp::Ge => o != Ordering::Less,
                }
            }
        }
    }

    /// The bounds a top-level conjunction puts on datetime `field`: `(lower, upper)`.
    pub(crate) fn bounds(&self, field: &str) -> (Option<i64>, Option<i64>) {
        let mut lo = None;
        let mut hi = None;
        let parts: Vec<&Expr> = match self {
            Expr::And(v) => v.iter().collect(),
            e => vec![e],
        };
        for p in parts {
            if let Expr::Cmp(f, op, Val::Ms(ms)) = p
                && f.eq_ignore_ascii_case(field)
            {
                match op {
                    CmpOp::Ge | CmpOp::Gt => lo = Some(lo.map_or(*ms, |l: i64| l.max(*ms))),
                    CmpOp::Le | CmpOp::Lt => hi = Some(hi.map_or(*ms, |h: i64| h.min(*ms))),
                    CmpOp::Eq => {
                        lo = Some(*ms);
                        hi = Some(*ms);
                    }
                    CmpOp::Ne => {}
                }
            }
        }
        (lo, hi)
    }

    /// The ids a top-level `Id IN (...)` names, when the filter is one.
    pub(crate) fn id_list(&self) -> Option<Vec<String>> {
        match self {
            Expr::In(f, vals) if f.eq_ignore_ascii_case("Id") => Some(
                vals.iter()
                    .filter_map(|v| match v {
                        Val::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_connector_sends() {
        let q = parse("SELECT Id, SystemModstamp, Name FROM Account WHERE SystemModstamp >= 2024-01-01T00:00:00Z AND (SystemModstamp > 2024-01-01T00:00:00Z OR Id > '001\\'x') AND SystemModstamp <= 2024-01-02T00:00:00Z AND IsDeleted = TRUE ORDER BY SystemModstamp ASC, Id ASC").unwrap();
        assert_eq!(q.object, "Account");
        assert_eq!(q.fields.len(), 3);
        let (lo, hi) = q.filter.bounds("SystemModstamp");
        assert_eq!(lo, Some(1_704_067_200_000));
        assert_eq!(hi, Some(1_704_153_600_000));
        let get = |f: &str| match f {
            "SystemModstamp" => Val::Ms(1_704_067_200_000),
            "Id" => Val::Str("001'y".into()),
            "IsDeleted" => Val::Bool(true),
            _ => Val::Null,
        };
        assert!(q.filter.eval(&get));
        let q = parse("SELECT Id FROM Contact WHERE Id IN ('a', 'b')").unwrap();
        assert_eq!(q.filter.id_list(), Some(vec!["a".into(), "b".into()]));
        assert!(parse("SELECT FROM").is_err());
        assert!(parse("SELECT Id FROM X WHERE Id = 'x").is_err());
    }
}
