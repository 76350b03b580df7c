//! The OData expressions SensorThings API clients send: `$filter` and `$orderby`
//! (OGC 18-088 §9.3.3, the OData 4.0 URL conventions they build on).
//!
//! Hand-written because no maintained crate parses what STA needs: `odata-params`
//! 0.4 (the only OData `$filter` parser on crates.io in use) has no arithmetic
//! operators (`add`, `sub`, `mul`, `div`, `mod`) and no `geography'…'` or
//! `duration'…'` literals, both of which STA filters use.

use chrono::{DateTime, Utc};

/// Why an expression could not be read; says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at character {at} of the expression")]
pub struct ParseError {
    pub message: String,
    /// Character offset (1-based) in the expression.
    pub at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    fn keyword(s: &str) -> Option<Self> {
        Some(match s {
            "or" => Self::Or,
            "and" => Self::And,
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "lt" => Self::Lt,
            "le" => Self::Le,
            "add" => Self::Add,
            "sub" => Self::Sub,
            "mul" => Self::Mul,
            "div" => Self::Div,
            "mod" => Self::Mod,
            _ => return None,
        })
    }

    /// Binding power: OData's precedence, loosest first.
    fn power(self) -> u8 {
        match self {
            Self::Or => 1,
            Self::And => 2,
            Self::Eq | Self::Ne => 3,
            Self::Gt | Self::Ge | Self::Lt | Self::Le => 4,
            Self::Add | Self::Sub => 5,
            Self::Mul | Self::Div | Self::Mod => 6,
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Self::Eq | Self::Ne | Self::Gt | Self::Ge | Self::Lt | Self::Le
        )
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Time(DateTime<Utc>),
    /// `duration'P1DT2H'`, in seconds.
    Duration(f64),
    /// `geography'POINT(8 45)'`: the WKT, checked when it is used.
    Geography(String),
    /// A property path: `result`, `Datastream/Thing/name`, `properties/owner`.
    Path(Vec<String>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Time(DateTime<Utc>),
    Typed(String, String),
    Word(String),
    Open,
    Close,
    Comma,
    Slash,
    End,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn err(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            message: message.into(),
            at: at + 1,
        }
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => return Err(self.err(start, "a string that is never closed")),
                Some('\'') if self.chars.get(self.pos + 1) == Some(&'\'') => {
                    out.push('\'');
                    self.pos += 2;
                }
                Some('\'') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(c) => {
                    out.push(*c);
                    self.pos += 1;
                }
            }
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = self.chars.get(self.pos) else {
            return Ok((Tok::End, start));
        };
        let single = match c {
            '(' => Some(Tok::Open),
            ')' => Some(Tok::Close),
            ',' => Some(Tok::Comma),
            '/' => Some(Tok::Slash),
            _ => None,
        };
        if let Some(t) = single {
            self.pos += 1;
            return Ok((t, start));
        }
        if c == '\'' {
            return Ok((Tok::Str(self.quoted()?), start));
        }
        if c == '-'
            && !self
                .chars
                .get(self.pos + 1)
                .is_some_and(char::is_ascii_digit)
        {
            self.pos += 1;
            return Ok((Tok::Word("-".into()), start));
        }
        // A run of what may make a word, a number or a date-time.
        let run_end = |from: usize| {
            let mut i = from;
            while self.chars.get(i).is_some_and(|c| {
                c.is_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-' | '+' | '$')
            }) {
                i += 1;
            }
            i
        };
        let end = run_end(self.pos);
        let word: String = self.chars[self.pos..end].iter().collect();
        if word.is_empty() {
            return Err(self.err(start, format!("unexpected {c:?}")));
        }
        if c.is_ascii_digit() {
            self.pos = end;
            if let Ok(n) = word.parse::<f64>() {
                return Ok((Tok::Num(n), start));
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(&word) {
                return Ok((Tok::Time(t.with_timezone(&Utc)), start));
            }
            return Err(self.err(
                start,
                format!("{word:?} is neither a number nor a date-time with its offset (2024-05-01T00:00:00Z)"),
            ));
        }
        self.pos = end;
        if self.chars.get(self.pos) == Some(&'\'') {
            let body = self.quoted()?;
            return Ok((Tok::Typed(word.to_ascii_lowercase(), body), start));
        }
        Ok((Tok::Word(word), start))
    }
}

struct Parser {
    lex: Lexer,
    tok: Tok,
    at: usize,
}

impl Parser {
    fn new(src: &str) -> Result<Self, ParseError> {
        let mut lex = Lexer {
            chars: src.chars().collect(),
            pos: 0,
        };
        let (tok, at) = lex.next()?;
        Ok(Self { lex, tok, at })
    }

    fn bump(&mut self) -> Result<Tok, ParseError> {
        let (t, at) = self.lex.next()?;
        self.at = at;
        Ok(std::mem::replace(&mut self.tok, t))
    }

    fn err(&self, message: impl Into<String>) -> ParseError {
        self.lex.err(self.at, message)
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ParseError> {
        if self.tok == t {
            self.bump()?;
            Ok(())
        } else {
            Err(self.err(format!("expected {what}")))
        }
    }

    fn binop(&self) -> Option<BinOp> {
        match &self.tok {
            Tok::Word(w) => BinOp::keyword(w),
            _ => None,
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some(op) = self.binop().filter(|op| op.power() > min) {
            self.bump()?;
            let right = self.expr(op.power())?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match &self.tok {
            Tok::Word(w) if w == "not" => {
                self.bump()?;
                // `not` binds tighter than comparisons in OData.
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Tok::Word(w) if w == "-" => {
                self.bump()?;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Tok::Word(w) if w.starts_with('-') && w.len() > 1 => {
                let n: f64 = w
                    .parse()
                    .map_err(|_| self.err(format!("{w:?} is not a number")))?;
                self.bump()?;
                Ok(Expr::Number(n))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let at = self.at;
        match self.bump()? {
            Tok::Num(n) => Ok(Expr::Number(n)),
            Tok::Str(s) => Ok(Expr::String(s)),
            Tok::Time(t) => Ok(Expr::Time(t)),
            Tok::Typed(ty, body) => match ty.as_str() {
                "geography" | "geometry" => Ok(Expr::Geography(body)),
                "duration" => parse_duration(&body).map(Expr::Duration).ok_or_else(|| {
                    self.lex
                        .err(at, format!("{body:?} is not an ISO 8601 duration (P1DT2H)"))
                }),
                _ => Err(self.lex.err(at, format!("unknown literal type {ty:?}"))),
            },
            Tok::Open => {
                let e = self.expr(0)?;
                self.expect(Tok::Close, "')'")?;
                Ok(e)
            }
            Tok::Word(w) => match w.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                _ if self.tok == Tok::Open => {
                    self.bump()?;
                    let mut args = Vec::new();
                    if self.tok != Tok::Close {
                        loop {
                            args.push(self.expr(0)?);
                            if self.tok == Tok::Comma {
                                self.bump()?;
                            } else {
                                break;
                            }
                        }
                    }
                    self.expect(Tok::Close, "')' after the function's arguments")?;
                    Ok(Expr::Call(w.to_ascii_lowercase(), args))
                }
                _ if BinOp::keyword(&w).is_some() => Err(self
                    .lex
                    .err(at, format!("{w:?} needs something on its left"))),
                _ => {
                    let mut path = vec![w];
                    while self.tok == Tok::Slash {
                        self.bump()?;
                        match self.bump()? {
                            Tok::Word(w) => path.push(w),
                            _ => return Err(self.err("expected a property name after '/'")),
                        }
                    }
                    Ok(Expr::Path(path))
                }
            },
            Tok::End => Err(self.lex.err(at, "the expression ends too early")),
            t => Err(self.lex.err(at, format!("unexpected {}", describe(&t)))),
        }
    }
}

fn describe(t: &Tok) -> &'static str {
    match t {
        Tok::Close => "')'",
        Tok::Comma => "','",
        Tok::Slash => "'/'",
        _ => "token",
    }
}

/// `PnDTnHnMnS` (weeks, years and months are refused: their length varies) in seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let s = s.strip_prefix('P')?;
    let (days, time) = s.split_once('T').unwrap_or((s, ""));
    let mut secs = 0.0;
    let take = |mut part: &str, units: &[(char, f64)], secs: &mut f64| -> Option<()> {
        for (u, scale) in units {
            if let Some(i) = part.find(*u) {
                *secs += part[..i].parse::<f64>().ok()? * scale;
                part = &part[i + 1..];
            }
        }
        part.is_empty().then_some(())
    };
    take(days, &[('D', 86_400.0)], &mut secs)?;
    take(time, &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)], &mut secs)?;
    if days.is_empty() && time.is_empty() {
        return None;
    }
    Some(if neg { -secs } else { secs })
}

/// Parses a `$filter` expression.
pub fn parse_filter(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(src)?;
    let e = p.expr(0)?;
    if p.tok != Tok::End {
        return Err(p.err("unexpected text after the expression"));
    }
    Ok(e)
}

/// One `$orderby` key.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderKey {
    pub expr: Expr,
    pub descending: bool,
}

/// Parses `$orderby`: expressions separated by commas, each optionally `asc`/`desc`.
pub fn parse_orderby(src: &str) -> Result<Vec<OrderKey>, ParseError> {
    let mut p = Parser::new(src)?;
    let mut keys = Vec::new();
    loop {
        let expr = p.expr(0)?;
        // Any case: FROST-Server's own Python client sends `ASC` and `DESC`.
        let descending = match &p.tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("desc") => {
                p.bump()?;
                true
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("asc") => {
                p.bump()?;
                false
            }
            _ => false,
        };
        keys.push(OrderKey { expr, descending });
        match p.tok {
            Tok::Comma => {
                p.bump()?;
            }
            Tok::End => return Ok(keys),
            _ => return Err(p.err("expected ',' or the end of $orderby")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BinOp::*;

    fn path(p: &str) -> Box<Expr> {
        Box::new(Expr::Path(p.split('/').map(str::to_owned).collect()))
    }
    fn num(n: f64) -> Box<Expr> {
        Box::new(Expr::Number(n))
    }

    #[test]
    fn precedence_follows_odata() {
        // and binds tighter than or; arithmetic tighter than comparison.
        let e = parse_filter("result add 2 mul 3 gt 10 or result lt 0 and id eq 1").unwrap();
        let want = Expr::Binary(
            Or,
            Box::new(Expr::Binary(
                Gt,
                Box::new(Expr::Binary(
                    Add,
                    path("result"),
                    Box::new(Expr::Binary(Mul, num(2.0), num(3.0))),
                )),
                num(10.0),
            )),
            Box::new(Expr::Binary(
                And,
                Box::new(Expr::Binary(Lt, path("result"), num(0.0))),
                Box::new(Expr::Binary(Eq, path("id"), num(1.0))),
            )),
        );
        assert_eq!(e, want);
    }

    #[test]
    fn the_specs_examples_parse() {
        // OGC 18-088 §9.3.3.5.1 and its table of functions.
        for f in [
            "result le 3.5 and FeatureOfInterest/id eq 1",
            "Thing/Datastreams/Observations/FeatureOfInterest/id eq 'FOI_1' and Datastreams/Observations/resultTime ge 2010-06-01T00:00:00Z",
            "substringof('Sensor Things',description)",
            "startswith(name,'Bin') and length(description) gt 3",
            "tolower(name) eq 'temperature'",
            "year(phenomenonTime) eq 2024 and month(phenomenonTime) eq 5",
            "geo.distance(location, geography'POINT(10.02 45.13)') lt 0.01",
            "st_within(location, geography'POLYGON((10 45, 10.1 45, 10.1 45.2, 10 45.2, 10 45))')",
            "phenomenonTime gt now() sub duration'P1D'",
            "not (result gt 5)",
            "result mod 2 eq 1 and -result lt 0",
            "properties/kind eq 'waste_bin' and result ne null",
        ] {
            parse_filter(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn literals_are_typed() {
        assert_eq!(
            parse_filter("phenomenonTime ge 2024-05-01T10:00:00+02:00").unwrap(),
            Expr::Binary(
                Ge,
                path("phenomenonTime"),
                Box::new(Expr::Time("2024-05-01T08:00:00Z".parse().unwrap()))
            )
        );
        assert_eq!(
            parse_filter("name eq 'O''Brien'").unwrap(),
            Expr::Binary(Eq, path("name"), Box::new(Expr::String("O'Brien".into())))
        );
        assert_eq!(parse_duration("P1DT2H30M"), Some(95_400.0));
        assert_eq!(parse_duration("PT0.5S"), Some(0.5));
        assert_eq!(parse_duration("P1Y"), None);
        assert_eq!(parse_duration("P"), None);
    }

    #[test]
    fn mistakes_say_where() {
        for (f, at) in [
            ("result gt", 10),
            ("(result gt 1", 13),
            ("name eq 'open", 9),
            ("result gt 1 result", 13),
            ("eq 1", 1),
            ("result gt 2024-13-01", 11),
            ("length(name", 12),
            ("time eq duration'P1Y'", 9),
        ] {
            let e = parse_filter(f).unwrap_err();
            assert_eq!(e.at, at, "{f}: {e}");
        }
    }

    #[test]
    fn orderby_keys() {
        let k = parse_orderby("phenomenonTime desc, result").unwrap();
        assert_eq!(k.len(), 2);
        assert!(k[0].descending && !k[1].descending);
        assert!(parse_orderby("result sideways").is_err());
        assert!(parse_orderby("phenomenonTime DESC").unwrap()[0].descending);
        assert!(!parse_orderby("phenomenonTime ASC").unwrap()[0].descending);
    }
}
