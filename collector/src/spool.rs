//! The optional disk spool: every accepted document is appended to `pending.jsonl` before
//! the sender is answered, and the id of every document settled (X-Ray has taken it, or it
//! was given up on) is appended to `acked.txt`. A restart (even after SIGKILL) sends again
//! what is pending and not settled, so an outage or a crash loses nothing, and a document
//! given up on is not sent again. A document sent just before a crash, whose ack was not yet
//! written, is sent again: X-Ray keeps one segment per trace id and segment id.
//!
//! The files are compacted at start and whenever most of `pending.jsonl` is acked.

use crate::delivery::Journal;
use crate::segment::Doc;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Compact when at least this many documents are acked and they are most of the file.
const COMPACT_AFTER: usize = 10_000;

/// A spool failure, with the file.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {source}")]
pub(crate) struct SpoolError {
    /// The file or folder.
    path: String,
    /// Why.
    source: std::io::Error,
}

#[derive(Debug)]
struct Files {
    pending: BufWriter<File>,
    acked: BufWriter<File>,
    pending_count: usize,
    acked_count: usize,
}

/// The spool of one collector.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    files: Mutex<Files>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.display().to_string(),
        source,
    }
}

impl Spool {
    /// Opens the spool in `dir`; returns it and the documents still to send (oldest first).
    pub(crate) fn open(dir: &Path) -> Result<(Spool, Vec<Doc>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pending_path = dir.join("pending.jsonl");
        let acked_path = dir.join("acked.txt");
        let mut acked = HashSet::new();
        if let Ok(f) = File::open(&acked_path) {
            for line in BufReader::new(f).lines() {
                acked.insert(line.map_err(io(&acked_path))?);
            }
        }
        let mut left = Vec::new();
        if let Ok(f) = File::open(&pending_path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io(&pending_path))?;
                // A line cut short by a crash is not a document that was accepted.
                let Ok(Id { id }) = serde_json::from_str::<Id<'_>>(&line) else {
                    continue;
                };
                let Ok(n) = u64::from_str_radix(id, 16) else {
                    continue;
                };
                if !acked.contains(id) {
                    left.push(Doc { id: n, json: line });
                }
            }
        }
        // Compact: rewrite pending with what is left, empty acked.
        let tmp = dir.join("pending.jsonl.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
            for d in &left {
                writeln!(w, "{}", d.json).map_err(io(&tmp))?;
            }
            w.flush().map_err(io(&tmp))?;
            w.get_ref().sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &pending_path).map_err(io(&pending_path))?;
        File::create(&acked_path).map_err(io(&acked_path))?;
        let files = Files {
            pending: BufWriter::new(
                OpenOptions::new()
                    .append(true)
                    .open(&pending_path)
                    .map_err(io(&pending_path))?,
            ),
            acked: BufWriter::new(
                OpenOptions::new()
                    .append(true)
                    .open(&acked_path)
                    .map_err(io(&acked_path))?,
            ),
            pending_count: left.len(),
            acked_count: 0,
        };
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                files: Mutex::new(files),
            },
            left,
        ))
    }

    /// Records accepted documents; they are in the file (OS buffers) when this returns.
    pub(crate) fn append(&self, docs: &[Doc]) -> Result<(), SpoolError> {
        let path = self.dir.join("pending.jsonl");
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for d in docs {
            writeln!(f.pending, "{}", d.json).map_err(io(&path))?;
        }
        f.pending.flush().map_err(io(&path))?;
        f.pending_count += docs.len();
        Ok(())
    }

    /// Records documents settled: X-Ray has taken them, or they were given up on.
    pub(crate) fn ack(&self, docs: &[&Doc]) -> Result<(), SpoolError> {
        let path = self.dir.join("acked.txt");
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for d in docs {
            writeln!(f.acked, "{:016x}", d.id).map_err(io(&path))?;
        }
        f.acked.flush().map_err(io(&path))?;
        f.acked_count += docs.len();
        if f.acked_count >= COMPACT_AFTER && f.acked_count * 2 >= f.pending_count {
            drop(f);
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&self) -> Result<(), SpoolError> {
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.pending.flush();
        let _ = f.acked.flush();
        let (fresh, _) = Spool::open(&self.dir)?;
        let fresh = fresh.files.into_inner().unwrap_or_else(|e| e.into_inner());
        *f = fresh;
        Ok(())
    }
}

/// The id of a spooled document, read without parsing the rest of it.
#[derive(serde::Deserialize)]
struct Id<'a> {
    id: &'a str,
}

impl Journal<Doc> for Spool {
    fn append(&self, docs: &[Doc]) -> Result<(), SpoolError> {
        Spool::append(self, docs)
    }

    fn settled(&self, docs: &[&Doc]) {
        if let Err(e) = self.ack(docs) {
            // They would be sent again after a restart; X-Ray keeps one copy.
            tracing::error!(error = %e, "cannot record settled documents in the spool");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_acked_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Doc> = (0..10)
            .map(|i| Doc {
                id: i,
                json: format!(r#"{{"id":"{i:016x}","name":"n"}}"#),
            })
            .collect();
        {
            let (s, left) = Spool::open(dir.path()).unwrap();
            assert!(left.is_empty());
            s.append(&docs).unwrap();
            s.ack(&docs[..6].iter().collect::<Vec<_>>()).unwrap();
        }
        // A crash mid-line leaves a torn last line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("pending.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\": \"00000000000").unwrap();
        drop(f);
        let (s, left) = Spool::open(dir.path()).unwrap();
        assert_eq!(left, docs[6..].to_vec());
        Journal::settled(&s, &left.iter().collect::<Vec<_>>());
        drop(s);
        let (_, left) = Spool::open(dir.path()).unwrap();
        assert!(left.is_empty());
    }
}
