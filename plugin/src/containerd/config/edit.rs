//! Editing containerd's config.toml in place with `toml_edit`: tables found (or made) along a
//! key path, values set only when they differ (so a second run changes nothing), comments on
//! what is added, and type errors that name the key.
//!
//! A table may be written as a `[header]` table, a dotted key (`containerd.snapshotter = ..`)
//! or an inline table (`shoal = { type = "snapshot" }`): all three are read and extended.
//! Comments are only added where TOML allows them on a line of their own: in `[header]`
//! tables, not in dotted or inline ones.

use toml_edit::{ArrayOfTables, InlineTable, Item, Table, TableLike, Value};

use super::ContainerdConfigError;

/// A table of the document being edited, and where it is.
pub(super) struct Tab<'a> {
    table: &'a mut dyn TableLike,
    /// The dotted path of the table (`plugins."io.containerd.cri.v1.images"`), for messages.
    pub(super) path: String,
    /// A `[header]` table: comment lines may be added before its keys.
    commentable: bool,
}

/// What [`Tab::ensure`] did to a key.
#[derive(Debug, PartialEq)]
pub(super) enum Set {
    /// The key was absent and is now set.
    Added,
    /// The key already had the wanted value.
    Kept,
    /// The key had another value (as written in the file).
    Replaced(String),
}

/// `path` as TOML writes a key path: `plugins."io.containerd.cri.v1.images".registry`.
pub(super) fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                (*k).to_owned()
            } else {
                format!("{k:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn wrong_type(key: String, expected: &'static str, found: &'static str) -> ContainerdConfigError {
    ContainerdConfigError::WrongType {
        key,
        expected,
        found,
    }
}

/// The table at `path` under `root`, made (as a `[header]` table, or inline inside an inline
/// one) where missing. A table made here for the last key gets `comment` above its header.
pub(super) fn table<'a>(
    root: &'a mut Table,
    path: &[&str],
    comment: &str,
) -> Result<Tab<'a>, ContainerdConfigError> {
    let mut cur: &'a mut dyn TableLike = root;
    let mut commentable = true;
    for (i, key) in path.iter().enumerate() {
        if cur.get(key).is_none() {
            let mut t = Table::new();
            // Shown only once it has keys: intermediate tables get no header of their own.
            t.set_implicit(true);
            if i + 1 == path.len() && commentable {
                t.decor_mut().set_prefix(comment_lines(comment, "", true));
            }
            // Into an inline table this becomes an inline table.
            cur.insert(key, Item::Table(t));
        }
        cur = match cur.get_mut(key) {
            Some(Item::Table(t)) => {
                commentable = commentable && !t.is_dotted();
                t
            }
            Some(Item::Value(Value::InlineTable(t))) => {
                commentable = false;
                t
            }
            other => {
                let found = other.map_or("nothing", |o| o.type_name());
                return Err(wrong_type(dotted(&path[..=i]), "a table", found));
            }
        };
    }
    Ok(Tab {
        table: cur,
        path: dotted(path),
        commentable,
    })
}

/// The table at `path` if it exists (nothing is made); an error if something else is there.
pub(super) fn find<'a>(
    root: &'a Table,
    path: &[&str],
) -> Result<Option<&'a dyn TableLike>, ContainerdConfigError> {
    let mut cur: &'a dyn TableLike = root;
    for (i, key) in path.iter().enumerate() {
        cur = match cur.get(key) {
            None => return Ok(None),
            Some(item) => item
                .as_table_like()
                .ok_or_else(|| wrong_type(dotted(&path[..=i]), "a table", item.type_name()))?,
        };
    }
    Ok(Some(cur))
}

/// `text` as comment lines, each `indent`ed, ending with a newline and the key's indent; with
/// `blank_line` an empty line first.
fn comment_lines(text: &str, indent: &str, blank_line: bool) -> String {
    let mut out = String::from(if blank_line { "\n" } else { "" });
    for line in text.lines() {
        out.push_str(indent);
        out.push('#');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str(indent);
    out
}

/// Whether `a` and `b` are the same TOML scalar (type and value; formatting ignored).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        _ => false,
    }
}

impl Tab<'_> {
    /// The value at `key`, if it is one (`None` when absent); a table there is an error.
    pub(super) fn value(&self, key: &str) -> Result<Option<&Value>, ContainerdConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Item::Value(v)) => Ok(Some(v)),
            Some(other) => Err(self.wrong(key, "a value", other.type_name())),
        }
    }

    fn wrong(
        &self,
        key: &str,
        expected: &'static str,
        found: &'static str,
    ) -> ContainerdConfigError {
        wrong_type(format!("{}.{}", self.path, dotted(&[key])), expected, found)
    }

    /// The indentation of the table's keys, as the file writes them (none for a new table).
    fn indent(&self) -> String {
        self.table
            .iter()
            .filter(|(_, item)| item.is_value())
            .find_map(|(k, _)| {
                let prefix = self.table.key(k)?.leaf_decor().prefix()?.as_str()?;
                let last = prefix.rsplit('\n').next().unwrap_or_default();
                last.bytes()
                    .all(|b| b == b' ' || b == b'\t')
                    .then(|| last.to_owned())
            })
            .unwrap_or_default()
    }

    /// Sets `key` to `want` unless it already has that value. A key added gets `comment`
    /// above it; a value replaced keeps its decoration (an end-of-line comment stays).
    pub(super) fn ensure(
        &mut self,
        key: &str,
        want: impl Into<Value>,
        comment: &str,
    ) -> Result<Set, ContainerdConfigError> {
        let want = want.into();
        if let Some(have) = self.value(key)? {
            if same(have, &want) {
                return Ok(Set::Kept);
            }
            let old = have.clone();
            let decor = old.decor();
            let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or(" ");
            let suffix = decor.suffix().and_then(|s| s.as_str()).unwrap_or("");
            let new = want.decorated(prefix, suffix);
            self.table.insert(key, Item::Value(new));
            return Ok(Set::Replaced(old.decorated("", "").to_string()));
        }
        let indent = self.indent();
        self.table.insert(key, Item::Value(want));
        if self.commentable {
            if let Some(mut k) = self.table.key_mut(key) {
                k.leaf_decor_mut()
                    .set_prefix(comment_lines(comment, &indent, false));
            }
        }
        Ok(Set::Added)
    }

    /// Removes `item` from the string array at `key`; whether it was there. The key goes
    /// when the array is left empty.
    pub(super) fn remove_from_array(
        &mut self,
        key: &str,
        item: &str,
    ) -> Result<bool, ContainerdConfigError> {
        let Some(value) = self.table.get_mut(key) else {
            return Ok(false);
        };
        let found = value.type_name();
        let Some(array) = value.as_array_mut() else {
            return Err(self.wrong(key, "an array", found));
        };
        let before = array.len();
        array.retain(|v| v.as_str() != Some(item));
        if array.len() == before {
            return Ok(false);
        }
        if array.is_empty() {
            self.table.remove(key);
        } else {
            array.fmt();
        }
        Ok(true)
    }

    /// The list of tables at `key` (`[[key]]` or `key = [{..}, ..]`), made as `[[key]]`
    /// tables when absent.
    pub(super) fn tables_array(&mut self, key: &str) -> Result<Tables<'_>, ContainerdConfigError> {
        let path = format!("{}.{}", self.path, dotted(&[key]));
        if self.table.get(key).is_none() {
            let item = if self.commentable {
                Item::ArrayOfTables(ArrayOfTables::new())
            } else {
                // Inside an inline or dotted table: written inline.
                Item::Value(Value::Array(toml_edit::Array::new()))
            };
            self.table.insert(key, item);
        }
        match self.table.get_mut(key) {
            Some(Item::ArrayOfTables(a)) => Ok(Tables::Headers(a)),
            Some(Item::Value(Value::Array(a))) => {
                if let Some(bad) = a.iter().find(|v| !v.is_inline_table()) {
                    return Err(wrong_type(path, "an array of tables", bad.type_name()));
                }
                Ok(Tables::Inline(a))
            }
            Some(other) => Err(wrong_type(path, "an array of tables", other.type_name())),
            None => Err(wrong_type(path, "an array of tables", "nothing")),
        }
    }
}

/// A list of tables as the file writes it.
pub(super) enum Tables<'a> {
    /// `[[path.key]]` tables.
    Headers(&'a mut ArrayOfTables),
    /// `key = [{ .. }, { .. }]` (every element checked to be an inline table).
    Inline(&'a mut toml_edit::Array),
}

impl Tables<'_> {
    /// The string values of `key` in every table (`None` where absent or not a string).
    pub(super) fn strings(&self, key: &str) -> Vec<Option<String>> {
        let get = |t: &dyn TableLike| t.get(key).and_then(|i| i.as_str()).map(str::to_owned);
        match self {
            Tables::Headers(a) => a.iter().map(|t| get(t)).collect(),
            Tables::Inline(a) => a
                .iter()
                .map(|v| v.as_inline_table().and_then(|t| get(t)))
                .collect(),
        }
    }

    /// Appends a table of string `entries`, with `comment` above it where that can be written.
    pub(super) fn push(&mut self, entries: &[(&str, &str)], comment: &str) {
        match self {
            Tables::Headers(a) => {
                let mut t = Table::new();
                for (k, v) in entries {
                    t.insert(k, toml_edit::value(*v));
                }
                t.decor_mut().set_prefix(comment_lines(comment, "", true));
                a.push(t);
            }
            Tables::Inline(a) => {
                let mut t = InlineTable::new();
                for (k, v) in entries {
                    t.insert(*k, (*v).into());
                }
                a.push(t);
                a.fmt();
            }
        }
    }
}
