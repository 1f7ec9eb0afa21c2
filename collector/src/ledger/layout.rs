//! Where things live in a data directory.
//!
//! ```text
//! LOCK                      held (flock) by the one server writing here
//! HEAD                      signed: the last durable record (sequence, chain)
//! seal.key, seal.pub        the seal key pair, when `serve` made it (no --key)
//! segments/<n>.seg          frames; the highest-numbered one is open
//! seals/<n>.seal            one per closed segment; kept after retention
//! index/<n>.json            sessions of a sealed segment (rebuilt at start)
//! quarantine/<n>.txt        what was found damaged in segment n, and when
//! ```
//! Numbers are zero-padded to 20 digits so names sort in order.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn segment(&self, n: u64) -> PathBuf {
        self.root.join("segments").join(format!("{n:020}.seg"))
    }
    pub fn seal(&self, n: u64) -> PathBuf {
        self.root.join("seals").join(format!("{n:020}.seal"))
    }
    pub fn index(&self, n: u64) -> PathBuf {
        self.root.join("index").join(format!("{n:020}.json"))
    }
    pub fn quarantine(&self, n: u64) -> PathBuf {
        self.root.join("quarantine").join(format!("{n:020}.txt"))
    }
    pub fn head(&self) -> PathBuf {
        self.root.join("HEAD")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }
    pub fn default_key(&self) -> (PathBuf, PathBuf) {
        (self.root.join("seal.key"), self.root.join("seal.pub"))
    }

    /// Relative path for messages, e.g. `segments/…0003.seg`.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    pub fn create_dirs(&self) -> Result<()> {
        for d in ["segments", "seals", "index", "quarantine"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        sync_dir(&self.root)
    }

    /// Whether `root` looks like a data directory at all.
    pub fn exists(&self) -> bool {
        self.root.join("segments").is_dir()
    }

    /// Numbers of the files `<n>.<ext>` in `dir`, ascending.
    fn numbers(&self, dir: &str, ext: &str) -> Result<Vec<u64>> {
        let path = self.root.join(dir);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", path.display())),
        };
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(ext)
                .and_then(|s| s.strip_suffix('.'))
                .and_then(|s| s.parse().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn segments(&self) -> Result<Vec<u64>> {
        self.numbers("segments", "seg")
    }
    pub fn seals(&self) -> Result<Vec<u64>> {
        self.numbers("seals", "seal")
    }
}

/// Makes a directory's entries (a created, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of directory {}", dir.display()))
}

/// Writes a whole file atomically: temporary file, fsync, rename, directory
/// fsync. Readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()
            .with_context(|| format!("fsync of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}
