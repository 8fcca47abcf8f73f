//! The optional disk spool: every accepted item (a trace document, a log event) is appended
//! to `pending.jsonl` before the sender is answered, and the id of every item settled (the
//! destination has taken it, or it was given up on) is appended to `acked.txt`. A restart
//! (even after SIGKILL) sends again what is pending and not settled, so an outage or a crash
//! loses nothing, and an item given up on is not sent again. An item sent just before a
//! crash, whose ack was not yet written, is sent again: X-Ray keeps one segment per trace id
//! and segment id; CloudWatch Logs stores such an event twice (at least once, never lost).
//!
//! Trace documents are spooled in the folder itself, log events in its `logs` folder. The
//! files are compacted at start and whenever most of `pending.jsonl` is acked.

use crate::delivery::Journal;
use crate::logs::{Event, Stream};
use crate::segment::Doc;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// What a spool holds: items with an id, one JSON line each.
pub(crate) trait Spooled: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// Its id, unique among the items held.
    fn id(&self) -> u64;
    /// Writes its line (without the newline).
    fn write_line(&self, w: &mut impl Write) -> std::io::Result<()>;
    /// Reads a line back; `None` for a line cut short by a crash.
    fn read_line(line: String) -> Option<Self>;
}

impl Spooled for Doc {
    fn id(&self) -> u64 {
        self.id
    }

    fn write_line(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(self.json.as_bytes())
    }

    fn read_line(line: String) -> Option<Doc> {
        let Id { id } = serde_json::from_str::<Id<'_>>(&line).ok()?;
        let id = u64::from_str_radix(id, 16).ok()?;
        Some(Doc { id, json: line })
    }
}

/// A log event's line.
#[derive(serde::Serialize, serde::Deserialize)]
struct EventLine<'a> {
    id: String,
    #[serde(borrow)]
    group: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    stream: std::borrow::Cow<'a, str>,
    t: i64,
    #[serde(borrow)]
    m: std::borrow::Cow<'a, str>,
}

impl Spooled for Event {
    fn id(&self) -> u64 {
        self.id
    }

    fn write_line(&self, w: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(
            w,
            &EventLine {
                id: format!("{:016x}", self.id),
                group: self.stream.group.as_str().into(),
                stream: self.stream.name.as_str().into(),
                t: self.timestamp_ms,
                m: self.message.as_str().into(),
            },
        )
        .map_err(std::io::Error::other)
    }

    fn read_line(line: String) -> Option<Event> {
        let l: EventLine<'_> = serde_json::from_str(&line).ok()?;
        let id = u64::from_str_radix(&l.id, 16).ok()?;
        let stream = Arc::new(Stream {
            group: l.group.into_owned(),
            name: l.stream.into_owned(),
        });
        Some(Event::new(stream, id, l.t, l.m.into_owned()))
    }
}

/// The spool of one collector, for one kind of item.
#[derive(Debug)]
pub(crate) struct Spool<T> {
    dir: PathBuf,
    files: Mutex<Files>,
    kind: std::marker::PhantomData<fn() -> T>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.display().to_string(),
        source,
    }
}

impl<T: Spooled> Spool<T> {
    /// Opens the spool in `dir`; returns it and the items still to send (oldest first).
    pub(crate) fn open(dir: &Path) -> Result<(Spool<T>, Vec<T>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pending_path = dir.join("pending.jsonl");
        let acked_path = dir.join("acked.txt");
        let mut acked = HashSet::new();
        if let Ok(f) = File::open(&acked_path) {
            for line in BufReader::new(f).lines() {
                if let Ok(id) = u64::from_str_radix(line.map_err(io(&acked_path))?.trim(), 16) {
                    acked.insert(id);
                }
            }
        }
        let mut left = Vec::new();
        if let Ok(f) = File::open(&pending_path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io(&pending_path))?;
                // A line cut short by a crash is not an item that was accepted.
                let Some(item) = T::read_line(line) else {
                    continue;
                };
                if !acked.contains(&item.id()) {
                    left.push(item);
                }
            }
        }
        // Compact: rewrite pending with what is left, empty acked.
        let tmp = dir.join("pending.jsonl.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
            for d in &left {
                d.write_line(&mut w).map_err(io(&tmp))?;
                w.write_all(b"\n").map_err(io(&tmp))?;
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
                kind: std::marker::PhantomData,
            },
            left,
        ))
    }

    /// Records accepted items; they are in the file (OS buffers) when this returns.
    pub(crate) fn append(&self, docs: &[T]) -> Result<(), SpoolError> {
        let path = self.dir.join("pending.jsonl");
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for d in docs {
            d.write_line(&mut f.pending).map_err(io(&path))?;
            f.pending.write_all(b"\n").map_err(io(&path))?;
        }
        f.pending.flush().map_err(io(&path))?;
        f.pending_count += docs.len();
        Ok(())
    }

    /// Records items settled: the destination has taken them, or they were given up on.
    pub(crate) fn ack(&self, docs: &[&T]) -> Result<(), SpoolError> {
        let path = self.dir.join("acked.txt");
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for d in docs {
            writeln!(f.acked, "{:016x}", d.id()).map_err(io(&path))?;
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
        let (fresh, _) = Spool::<T>::open(&self.dir)?;
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

impl<T: Spooled> Journal<T> for Spool<T> {
    fn append(&self, docs: &[T]) -> Result<(), SpoolError> {
        Spool::append(self, docs)
    }

    fn settled(&self, docs: &[&T]) {
        if let Err(e) = self.ack(docs) {
            // They would be sent again after a restart.
            tracing::error!(error = %e, "cannot record settled items in the spool");
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
            let (s, left) = Spool::<Doc>::open(dir.path()).unwrap();
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
        let (s, left) = Spool::<Doc>::open(dir.path()).unwrap();
        assert_eq!(left, docs[6..].to_vec());
        Journal::settled(&s, &left.iter().collect::<Vec<_>>());
        drop(s);
        let (_, left) = Spool::<Doc>::open(dir.path()).unwrap();
        assert!(left.is_empty());
    }

    #[test]
    fn log_events_come_back_whole_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(Stream {
            group: "/maille/teller".into(),
            name: "host \"1\"".into(),
        });
        let events: Vec<Event> = (0..4)
            .map(|i| {
                Event::new(
                    stream.clone(),
                    i,
                    1_700_000_000_000 + i as i64,
                    format!("{{\"message\":\"line {i}\\n\"}}"),
                )
            })
            .collect();
        {
            let (s, _) = Spool::<Event>::open(dir.path()).unwrap();
            s.append(&events).unwrap();
            s.ack(&[&events[1]]).unwrap();
        }
        let (_, left) = Spool::<Event>::open(dir.path()).unwrap();
        assert_eq!(
            left,
            [events[0].clone(), events[2].clone(), events[3].clone()]
        );
    }
}
