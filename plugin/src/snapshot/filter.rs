//! containerd's filter expressions, as `List` (containerd's `Walk`) receives them.
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)?
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := "..." | /.../ | |...|   (backslash escapes)
//! ```
//!
//! Several filters match when any of them does; a filter matches when all its selectors do;
//! no filters (or an empty one) match everything.

use regex::Regex;

use super::SnapshotError;

/// Why a filter does not parse (offsets count characters from 0).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Something else than `expected` at `offset`.
    #[error("expected {expected} at offset {offset}")]
    Expected {
        expected: &'static str,
        offset: usize,
    },
    /// An operator other than `==`, `!=` and `~=`.
    #[error("unknown operator {op:?} at offset {offset}")]
    UnknownOperator { op: String, offset: usize },
    /// A quoted string (or an escape in one) not closed before the end.
    #[error("unterminated {what} at offset {offset}")]
    Unterminated { what: &'static str, offset: usize },
    /// The value of a `~=` is not a regular expression.
    #[error("bad regular expression {pattern:?}: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

/// A parsed list of filters.
#[derive(Debug, Clone)]
pub struct Filter {
    /// `None`: matches everything.
    any: Option<Vec<Vec<Selector>>>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    /// The filter that matches everything.
    pub fn always() -> Self {
        Filter { any: None }
    }

    /// Parses containerd filter strings; a malformed one is an invalid argument.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self, SnapshotError> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                return Ok(Filter::always());
            }
            let selectors = Parser::new(f)
                .selectors()
                .map_err(|source| SnapshotError::Filter {
                    filter: f.to_owned(),
                    source,
                })?;
            any.push(selectors);
        }
        Ok(Filter {
            any: (!any.is_empty()).then_some(any),
        })
    }

    /// Whether the object whose fields `field` gives (by path; `None` when absent) matches.
    pub fn matches(&self, field: &dyn Fn(&[String]) -> Option<String>) -> bool {
        let Some(any) = &self.any else { return true };
        any.iter().any(|all| {
            all.iter().all(|s| {
                let value = field(&s.path);
                match &s.op {
                    Op::Present => value.is_some(),
                    Op::Equal(want) => value.as_deref() == Some(want.as_str()),
                    Op::NotEqual(want) => value.as_deref().unwrap_or("") != want,
                    Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
                }
            })
        })
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

impl Parser {
    fn new(input: &str) -> Self {
        Parser {
            chars: input.chars().collect(),
            pos: 0,
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.pos).copied()
    }

    fn expected(&self, expected: &'static str) -> FilterError {
        FilterError::Expected {
            expected,
            offset: self.pos,
        }
    }

    fn unterminated(&self, what: &'static str) -> FilterError {
        FilterError::Unterminated {
            what,
            offset: self.pos,
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut out = vec![self.selector()?];
        loop {
            match self.peek() {
                None => return Ok(out),
                Some(',') => {
                    self.pos += 1;
                    out.push(self.selector()?);
                }
                Some(_) => return Err(self.expected("',' or the end")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        let op = match self.peek() {
            Some('=' | '!' | '~') => {
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| matches!(c, '=' | '!' | '~'))
                {
                    self.pos += 1;
                }
                let op: String = self.chars[start..self.pos].iter().collect();
                let value = self.value()?;
                match op.as_str() {
                    "==" => Op::Equal(value),
                    "!=" => Op::NotEqual(value),
                    "~=" => match Regex::new(&value) {
                        Ok(re) => Op::Matches(re),
                        Err(source) => {
                            return Err(FilterError::Regex {
                                pattern: value,
                                source,
                            })
                        }
                    },
                    _ => return Err(FilterError::UnknownOperator { op, offset: start }),
                }
            }
            _ => Op::Present,
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some(q) if is_quote(q) => self.quoted(),
            Some(c) if is_field_char(c) => {
                let start = self.pos;
                while self.chars.get(self.pos).copied().is_some_and(is_field_char) {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => Err(self.expected("a field")),
        }
    }

    fn value(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some(q) if is_quote(q) => self.quoted(),
            Some(c) if c != ',' => {
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| *c != ',' && !c.is_whitespace())
                {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => Err(self.expected("a value")),
        }
    }

    fn quoted(&mut self) -> Result<String, FilterError> {
        let quote = self.chars[self.pos];
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(&c) = self.chars.get(self.pos) else {
                return Err(self.unterminated("quoted string"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(&e) = self.chars.get(self.pos) else {
                return Err(self.unterminated("escape"));
            };
            self.pos += 1;
            out.push(match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'a' => '\x07',
                'b' => '\x08',
                'f' => '\x0c',
                'v' => '\x0b',
                other => other,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(path: &[String]) -> Option<String> {
        match path.join(".").as_str() {
            "kind" => Some("active".into()),
            "name" => Some("a-wl".into()),
            "parent" => Some(String::new()),
            "labels.containerd.io/gc.root" => Some("check-walk".into()),
            "labels.l" => Some("1".into()),
            _ => None,
        }
    }

    fn m(filters: &[&str]) -> bool {
        Filter::parse_all(filters).unwrap().matches(&fields)
    }

    #[test]
    fn containerd_suite_filters() {
        assert!(m(&[]));
        assert!(m(&[""]));
        assert!(m(&["labels.\"containerd.io/gc.root\"==check-walk"]));
        assert!(m(&[
            "kind==active,labels.\"containerd.io/gc.root\"==check-walk"
        ]));
        assert!(!m(&[
            "kind==view,labels.\"containerd.io/gc.root\"==check-walk"
        ]));
        assert!(m(&["name==p", "name==a-wl"]));
        assert!(m(&["name==a-wl,labels.l"]));
        assert!(!m(&["parent==p"]));
        assert!(!m(&[
            "parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"
        ]));
        assert!(!m(&["labels.l==2"]));
        assert!(m(&["labels.missing!=x"]));
        assert!(!m(&["labels.missing"]));
        assert!(m(&["name~=^a-"]));
        assert!(m(&["name~=/^a-w.$/"]));
        assert!(m(&[" kind == active , name==a-wl "]));
    }

    #[test]
    fn malformed_filters_are_invalid_arguments() {
        for (bad, text) in [
            ("kind=active", "unknown operator \"=\" at offset 4"),
            ("kind==", "expected a value at offset 6"),
            (",", "expected a field at offset 0"),
            ("name~=(", "bad regular expression \"(\": "),
            ("labels.\"open", "unterminated quoted string at offset 12"),
            ("a b", "expected ',' or the end at offset 2"),
        ] {
            match Filter::parse_all(&[bad]) {
                Err(e @ SnapshotError::Filter { .. }) => {
                    assert_eq!(e.code(), containerd_snapshots::tonic::Code::InvalidArgument);
                    let message = e.to_string();
                    assert!(
                        message.starts_with(&format!("filter {bad:?}: {text}")),
                        "{message}"
                    );
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match Filter::parse_all(&["name~=("]) {
            Err(SnapshotError::Filter {
                source: FilterError::Regex { source, .. },
                ..
            }) => assert!(matches!(source, regex::Error::Syntax(_))),
            other => panic!("{other:?}"),
        }
    }
}
