//! Where the coordinator keeps nodes and jobs: [`RedbStore`] (one redb file, the embedded
//! store the workspace already uses; no database server) and [`MemoryStore`], its fake.
//! Records are the protocol's JSON, keyed by node name and job ID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};
use shoal_p2p::preheat::proto::JobStatus;

use super::NodeRecord;
use crate::Error;

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// Kept nodes and jobs.
pub trait Store: Send {
    /// Everything kept.
    fn load(&self) -> Result<(Vec<NodeRecord>, Vec<JobStatus>), Error>;
    fn put_node(&self, node: &NodeRecord) -> Result<(), Error>;
    fn put_job(&self, job: &JobStatus) -> Result<(), Error>;
}

/// The redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

fn store_err(path: &Path, what: &'static str, e: impl Into<redb::Error>) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        what,
        source: Box::new(e.into()),
    }
}

impl RedbStore {
    /// Opens (creating) the file at `path`, and its parent directory.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: "creating the preheat state directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| store_err(path, "opening", e))?;
        let tx = db
            .begin_write()
            .map_err(|e| store_err(path, "transaction", e))?;
        tx.open_table(NODES)
            .map_err(|e| store_err(path, "table nodes", e))?;
        tx.open_table(JOBS)
            .map_err(|e| store_err(path, "table jobs", e))?;
        tx.commit().map_err(|e| store_err(path, "commit", e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), Error> {
        let p = &self.path;
        let tx = self
            .db
            .begin_write()
            .map_err(|e| store_err(p, "transaction", e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| store_err(p, "table", e))?;
            t.insert(key, value)
                .map_err(|e| store_err(p, "insert", e))?;
        }
        tx.commit().map_err(|e| store_err(p, "commit", e))
    }

    fn all<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, Error> {
        let p = &self.path;
        let tx = self
            .db
            .begin_read()
            .map_err(|e| store_err(p, "transaction", e))?;
        let t = tx.open_table(table).map_err(|e| store_err(p, "table", e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| store_err(p, "reading", e))? {
            let (key, value) = entry.map_err(|e| store_err(p, "reading", e))?;
            match serde_json::from_slice(value.value()) {
                Ok(v) => out.push(v),
                // A record this version cannot read is skipped, not fatal.
                Err(e) => {
                    tracing::warn!(key = key.value(), path = %p.display(), "unreadable preheat record skipped: {e}")
                }
            }
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<(Vec<NodeRecord>, Vec<JobStatus>), Error> {
        Ok((self.all(NODES)?, self.all(JOBS)?))
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), Error> {
        let json = serde_json::to_vec(node).map_err(|source| Error::Json {
            what: "a preheat node",
            source,
        })?;
        self.put(NODES, &node.info.name, &json)
    }

    fn put_job(&self, job: &JobStatus) -> Result<(), Error> {
        let json = serde_json::to_vec(job).map_err(|source| Error::Json {
            what: "a preheat job",
            source,
        })?;
        self.put(JOBS, &job.id, &json)
    }
}

/// Nodes by name and jobs by ID.
type Kept = (BTreeMap<String, NodeRecord>, BTreeMap<String, JobStatus>);

/// In memory; clones share the contents (a "restart" reopens a clone).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Kept>>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<(Vec<NodeRecord>, Vec<JobStatus>), Error> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok((
            g.0.values().cloned().collect(),
            g.1.values().cloned().collect(),
        ))
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), Error> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.insert(node.info.name.clone(), node.clone());
        Ok(())
    }

    fn put_job(&self, job: &JobStatus) -> Result<(), Error> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.insert(job.id.clone(), job.clone());
        Ok(())
    }
}
