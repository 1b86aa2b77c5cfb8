//! The spool's view of a filesystem: the handful of operations it needs, a
//! real implementation over `std::fs`, and [`FaultyFs`], an in-memory one
//! that can crash at any write, for the crash-model tests.
//!
//! # Why a trait
//!
//! The spool's promises are about what survives a crash: every record that a
//! completed [`Spool::sync`](super::Spool::sync) covered, and never a corrupt
//! record. A real disk cannot be made to lose power at a chosen byte, so the
//! spool does all of its file access through [`SpoolFs`] and the tests swap in
//! [`FaultyFs`], which models the page cache and durable storage separately.
//!
//! **Invariant:** the spool touches the disk only through this trait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The operations the spool performs on a directory of append-only files.
///
/// Paths are always a file directly inside the spool directory, or the
/// directory itself.
pub trait SpoolFs: Send + 'static {
    type File: SpoolFile;

    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files directly inside `dir` (not subdirectories).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for appending and reading, creating it empty if missing.
    /// A newly created name is durable only after [`SpoolFs::sync_dir`].
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Fills `buf` from `path` at `offset`; an error if the file is shorter.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Removes the name `path`. The removal is durable only after
    /// [`SpoolFs::sync_dir`].
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes every create and remove of a name inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open append-only file.
pub trait SpoolFile: Send + 'static {
    /// Appends `buf` at the end of the file with one `write()`. Once it
    /// returns, the bytes survive the process dying, not the OS.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the file's content (and length) durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes. Durable only after [`SpoolFile::sync_data`].
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`; an error if the file is shorter.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A second handle that syncs this file's data from another thread,
    /// while this one goes on appending (the host's timed fsync).
    fn syncer(&self) -> io::Result<Self::Syncer>;

    /// See [`SpoolFile::syncer`].
    type Syncer: FileSync;
}

/// A handle that only makes its file's content durable: what
/// [`SpoolFile::syncer`] returns.
pub trait FileSync: Send + Sync + 'static {
    /// As [`SpoolFile::sync_data`]: everything written to the file before
    /// the call is durable when it returns.
    fn sync_data(&self) -> io::Result<()>;
}

/// The real filesystem. What [`Spool::open`](super::Spool::open) uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl SpoolFs for StdFs {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).read(true).append(true).open(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        File::open(path)?.read_exact_at(buf, offset)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SpoolFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    type Syncer = File;

    fn syncer(&self) -> io::Result<File> {
        self.try_clone()
    }
}

impl FileSync for File {
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// An in-memory filesystem that keeps what the running system sees (the
/// page cache) apart from what is on durable storage, and can crash.
///
/// # The model
///
/// - **File content.** Each file has a *volatile* content, which every read
///   and write sees, and a *durable* content. `write_all` and `set_len`
///   change only the volatile content; `sync_data` copies it to the durable
///   content. The file's unsynced `write_all` calls are remembered, so a
///   crash knows where each one began.
/// - **Names.** Creating and removing a name changes only the volatile
///   directory. `sync_dir(dir)` makes the volatile names of `dir` durable.
///   Before that, a pending create or remove may or may not survive a crash,
///   each one independently (the crash decides). A file's content belongs to
///   the file, not the name: a synced file whose name was never made durable
///   is lost, and a removed file whose removal was not made durable comes
///   back with its content.
/// - **Directories** made by `create_dir_all` are durable at once; the spool
///   only ever makes its one directory.
/// - **Crashing.** [`FaultyFs::crash_at_op`] arms a crash at the n-th
///   mutating operation (`open_append` that creates, `write_all`, `sync_data`,
///   `set_len`, `remove`, `sync_dir`; counting from 0). That operation fails,
///   except that a crashing `write_all` first lands its bytes in the volatile
///   content: the machine died while the write was in flight. From then on
///   every call, through any handle, fails like a dead disk. [`FaultyFs::crash_now`]
///   crashes at once.
/// - **Rebooting.** [`FaultyFs::reboot`] resolves the crash with choices
///   drawn from a seed: every name with a pending change is kept as durable
///   or as volatile; every file becomes its durable content plus a prefix,
///   of any length, of the bytes appended since its last sync (a torn write),
///   and if that prefix ends inside a `write_all`, that write's surviving
///   bytes may be garbled (as when a file's length reached the disk before
///   its data did). A file truncated since its last sync comes back as its
///   durable content: the truncation and all that followed it are lost.
///   Handles opened before the reboot stay dead.
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Names as the running system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as they are on durable storage.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Mutating operations performed so far (since creation, across reboots).
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    /// Bumped by each reboot, so that handles from before it stay dead.
    generation: u64,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Start offsets of the `write_all` calls since the last sync.
    unsynced_writes: Vec<usize>,
}

/// An open file of a [`FaultyFs`].
#[derive(Debug)]
pub struct FaultyFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
}

fn crashed() -> io::Error {
    io::Error::other("FaultyFs: the machine has crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("FaultyFs: no file {}", path.display()))
}

fn short_read() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "FaultyFs: read past the end of the file")
}

impl State {
    /// Fails if the machine is down. Otherwise counts a mutating operation
    /// and returns whether it is the one that crashes the machine.
    fn tick(&mut self) -> io::Result<bool> {
        if self.crashed {
            return Err(crashed());
        }
        let n = self.ops;
        self.ops += 1;
        if self.crash_at == Some(n) {
            self.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed { Err(crashed()) } else { Ok(()) }
    }

    fn inode(&self, path: &Path) -> io::Result<&Inode> {
        let ino = self.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(&self.inodes[ino])
    }
}

fn read_into(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| short_read())?;
    let src = data.get(start..start + buf.len()).ok_or_else(short_read)?;
    buf.copy_from_slice(src);
    Ok(())
}

/// A tiny deterministic generator (splitmix64) for a reboot's choices, so a
/// crash is reproducible from its seed.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

impl FaultyFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a crash at mutating operation number `n` (see the model).
    pub fn crash_at_op(&self, n: u64) {
        self.lock().crash_at = Some(n);
    }

    /// Crashes the machine now.
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// Whether the machine has crashed and not yet rebooted.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Resolves a crash (see the model) with choices drawn from `seed`, and
    /// brings the machine back up. Without a crash first, it crashes now.
    pub fn reboot(&self, seed: u64) {
        let mut s = self.lock();
        let mut rng = Choices(seed);
        let paths: BTreeSet<PathBuf> = s.names.keys().chain(s.durable_names.keys()).cloned().collect();
        let mut names = BTreeMap::new();
        for p in paths {
            let (vol, dur) = (s.names.get(&p).copied(), s.durable_names.get(&p).copied());
            let pick = if vol == dur || rng.coin() { dur } else { vol };
            if let Some(ino) = pick {
                names.insert(p, ino);
            }
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        for inode in s.inodes.values_mut() {
            let content = if inode.volatile.starts_with(&inode.durable) {
                let base = inode.durable.len();
                let keep = base + rng.below(inode.volatile.len() - base + 1);
                let mut content = inode.volatile[..keep].to_vec();
                // The write the crash cut through, if any.
                let torn = inode.unsynced_writes.iter().copied().filter(|&w| w < keep).max();
                let ends =
                    |w: usize| inode.unsynced_writes.iter().copied().find(|&x| x > w).unwrap_or(inode.volatile.len());
                if let Some(w) = torn.filter(|&w| ends(w) > keep)
                    && rng.coin()
                {
                    for b in &mut content[w.max(base)..] {
                        *b ^= (rng.next() as u8) | 1;
                    }
                }
                content
            } else {
                inode.durable.clone()
            };
            inode.durable = content.clone();
            inode.volatile = content;
            inode.unsynced_writes.clear();
        }
        s.durable_names = names.clone();
        s.names = names;
        s.crashed = false;
        s.crash_at = None;
        s.generation += 1;
    }

    /// The volatile content of `path`, for tests that inspect the bytes.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|ino| s.inodes[ino].volatile.clone())
    }

    /// Overwrites the volatile content of `path`, as bit rot or a buggy
    /// writer would. For tests.
    pub fn set_contents(&self, path: &Path, bytes: &[u8]) {
        let mut s = self.lock();
        if let Some(&ino) = s.names.get(path) {
            let inode = s.inodes.get_mut(&ino).expect("named inodes exist");
            inode.volatile = bytes.to_vec();
            inode.durable = bytes.to_vec();
            inode.unsynced_writes.clear();
        }
    }
}

impl SpoolFs for FaultyFs {
    type File = FaultyFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        for d in dir.ancestors() {
            s.dirs.insert(d.to_owned());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open_append(&self, path: &Path) -> io::Result<FaultyFile> {
        let mut s = self.lock();
        s.alive()?;
        let ino = match s.names.get(path) {
            Some(&ino) => ino,
            None => {
                if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
                    return Err(not_found(path));
                }
                if s.tick()? {
                    return Err(crashed());
                }
                let ino = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_owned(), ino);
                ino
            }
        };
        Ok(FaultyFile { state: self.state.clone(), inode: ino, generation: s.generation })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        s.alive()?;
        Ok(s.inode(path)?.volatile.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        s.alive()?;
        read_into(&s.inode(path)?.volatile, offset, buf)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        if !s.names.contains_key(path) {
            return Err(not_found(path));
        }
        if s.tick()? {
            return Err(crashed());
        }
        s.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(crashed());
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let volatile: Vec<(PathBuf, u64)> =
            s.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, &i)| (p.clone(), i)).collect();
        s.durable_names.retain(|p, _| !in_dir(p));
        s.durable_names.extend(volatile);
        Ok(())
    }
}

impl FaultyFile {
    /// Runs `f` on this file's inode if the machine is up and the handle is
    /// from the current boot. `mutating` operations count toward a crash.
    fn with<T>(&self, mutating: bool, f: impl FnOnce(&mut Inode, bool) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation != self.generation {
            return Err(crashed());
        }
        let crashing = if mutating { s.tick()? } else { s.alive().map(|_| false)? };
        let inode = s.inodes.get_mut(&self.inode).expect("open files keep their inode");
        f(inode, crashing)
    }
}

impl FileSync for FaultyFile {
    fn sync_data(&self) -> io::Result<()> {
        self.with(true, |inode, crashing| {
            if crashing {
                return Err(crashed());
            }
            inode.durable = inode.volatile.clone();
            inode.unsynced_writes.clear();
            Ok(())
        })
    }
}

impl SpoolFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(true, |inode, crashing| {
            // Even a crashing write may have reached the page cache, in part
            // or in whole: the reboot picks how much of it survives.
            inode.unsynced_writes.push(inode.volatile.len());
            inode.volatile.extend_from_slice(buf);
            if crashing { Err(crashed()) } else { Ok(()) }
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        FileSync::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(true, |inode, crashing| {
            if crashing {
                return Err(crashed());
            }
            let len = usize::try_from(len).map_err(io::Error::other)?;
            inode.volatile.resize(len, 0);
            inode.unsynced_writes.retain(|&w| w < len);
            Ok(())
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(false, |inode, _| read_into(&inode.volatile, offset, buf))
    }

    type Syncer = FaultyFile;

    fn syncer(&self) -> io::Result<FaultyFile> {
        Ok(FaultyFile { state: self.state.clone(), inode: self.inode, generation: self.generation })
    }
}
