//! The metadata stores behind [`MetaStore`]: [`RedbStore`], embedded and transactional on
//! disk (every write transaction is committed durably or not at all, so a crash, even
//! `kill -9` in the middle of a Commit, loses nothing and leaves no half-state), and
//! [`MemStore`], the in-memory fake with the same transactional behaviour.
//!
//! redb schema (file `ROOT/metadata.redb`):
//!
//! | table       | key                      | value                                   |
//! |-------------|--------------------------|-----------------------------------------|
//! | `snapshots` | name (`&str`)            | [`Record`] as JSON (`&[u8]`)            |
//! | `children`  | (parent ID, child ID)    | `()`; Remove refuses while a key has the snapshot's ID first |
//! | `counters`  | `"next_id"`              | the next snapshot ID (`u64`, from 1)    |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableTable, TableDefinition};

use super::meta::{MetaRead, MetaStore, MetaTxn, Record};
use super::SnapshotError;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(u64, u64), ()> = TableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

/// Snapshot metadata in a redb database file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn store_err<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> SnapshotError + '_ {
    move |e| SnapshotError::Store {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|source| SnapshotError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

impl RedbStore {
    /// Opens (or creates) the database at `path`, recovering it after an unclean shutdown.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let db = Database::create(path).map_err(store_err(path))?;
        let txn = db.begin_write().map_err(store_err(path))?;
        txn.open_table(SNAPSHOTS).map_err(store_err(path))?;
        txn.open_table(CHILDREN).map_err(store_err(path))?;
        txn.open_table(COUNTERS).map_err(store_err(path))?;
        txn.commit().map_err(store_err(path))?;
        Ok(RedbStore {
            db,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Tables of one transaction, read-only or read-write.
struct Tables<'p, S, C, N> {
    snapshots: S,
    children: C,
    counters: N,
    path: &'p Path,
}

impl<S, C, N> MetaRead for Tables<'_, S, C, N>
where
    S: ReadableTable<&'static str, &'static [u8]>,
    C: ReadableTable<(u64, u64), ()>,
{
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        match self.snapshots.get(key).map_err(store_err(self.path))? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        let mut out = Vec::new();
        for entry in self.snapshots.iter().map_err(store_err(self.path))? {
            let (k, v) = entry.map_err(store_err(self.path))?;
            let key = k.value().to_owned();
            let record = decode(&key, v.value())?;
            out.push((key, record));
        }
        Ok(out)
    }

    fn has_children(&self, id: u64) -> Result<bool, SnapshotError> {
        let mut range = self
            .children
            .range((id, 0)..=(id, u64::MAX))
            .map_err(store_err(self.path))?;
        Ok(range.next().is_some())
    }
}

type WriteTables<'t, 'p> = Tables<
    'p,
    redb::Table<'t, &'static str, &'static [u8]>,
    redb::Table<'t, (u64, u64), ()>,
    redb::Table<'t, &'static str, u64>,
>;

impl MetaTxn for WriteTables<'_, '_> {
    fn put(&mut self, key: &str, record: &Record) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(record).map_err(|source| SnapshotError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        self.snapshots
            .insert(key, bytes.as_slice())
            .map_err(store_err(self.path))?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), SnapshotError> {
        self.snapshots.remove(key).map_err(store_err(self.path))?;
        Ok(())
    }

    fn link_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError> {
        self.children
            .insert((parent, child), ())
            .map_err(store_err(self.path))?;
        Ok(())
    }

    fn unlink_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError> {
        self.children
            .remove((parent, child))
            .map_err(store_err(self.path))?;
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64, SnapshotError> {
        let id = self
            .counters
            .get(NEXT_ID)
            .map_err(store_err(self.path))?
            .map_or(1, |v| v.value());
        self.counters
            .insert(NEXT_ID, id + 1)
            .map_err(store_err(self.path))?;
        Ok(id)
    }
}

impl MetaStore for RedbStore {
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn MetaRead) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let path = self.path.as_path();
        let txn = self.db.begin_read().map_err(store_err(path))?;
        let tables = Tables {
            snapshots: txn.open_table(SNAPSHOTS).map_err(store_err(path))?,
            children: txn.open_table(CHILDREN).map_err(store_err(path))?,
            counters: (),
            path,
        };
        f(&tables)
    }

    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let path = self.path.as_path();
        let txn = self.db.begin_write().map_err(store_err(path))?;
        let result = {
            let mut tables: WriteTables<'_, '_> = Tables {
                snapshots: txn.open_table(SNAPSHOTS).map_err(store_err(path))?,
                children: txn.open_table(CHILDREN).map_err(store_err(path))?,
                counters: txn.open_table(COUNTERS).map_err(store_err(path))?,
                path,
            };
            f(&mut tables)
        };
        match result {
            Ok(()) => txn.commit().map_err(store_err(path)),
            Err(e) => {
                txn.abort().map_err(store_err(path))?;
                Err(e)
            }
        }
    }
}

/// In-memory metadata: the fake for tests, transactional like the real store (a write
/// works on a copy that replaces the state only when the closure succeeds).
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<MemState>,
}

#[derive(Debug, Default, Clone)]
struct MemState {
    snapshots: BTreeMap<String, Record>,
    children: BTreeSet<(u64, u64)>,
    next_id: u64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetaRead for MemState {
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        Ok(self.snapshots.get(key).cloned())
    }

    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        Ok(self
            .snapshots
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn has_children(&self, id: u64) -> Result<bool, SnapshotError> {
        Ok(self
            .children
            .range((id, 0)..=(id, u64::MAX))
            .next()
            .is_some())
    }
}

impl MetaTxn for MemState {
    fn put(&mut self, key: &str, record: &Record) -> Result<(), SnapshotError> {
        self.snapshots.insert(key.to_owned(), record.clone());
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), SnapshotError> {
        self.snapshots.remove(key);
        Ok(())
    }

    fn link_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError> {
        self.children.insert((parent, child));
        Ok(())
    }

    fn unlink_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError> {
        self.children.remove(&(parent, child));
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64, SnapshotError> {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }
}

impl MetaStore for MemStore {
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn MetaRead) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let state = self.lock();
        f(&*state)
    }

    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let mut state = self.lock();
        let mut copy = state.clone();
        f(&mut copy)?;
        *state = copy;
        Ok(())
    }
}
