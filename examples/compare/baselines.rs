//! The lock designs a user would otherwise pick, behind one trait, and
//! hierlock behind the same trait.
//!
//! Every implementation takes one lock on one path in one Gray mode and
//! releases it when the guard drops. What each one *guarantees* differs, and
//! [`Semantics`] says so; the harness checks each claim before measuring
//! (`smoke_check`), so no baseline is faster because it quietly does less
//! than it says.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use hierlock::{LockTree, Mode};
use parking_lot::lock_api::RawRwLock as _;
use parking_lot::{Condvar, Mutex, RawRwLock, RwLock};
use smallvec::SmallVec;

/// What an implementation guarantees, as the harness checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Semantics {
    /// Gray's protocol exactly: intentions on every ancestor.
    Gray,
    /// Correct but serializes every writer (one lock for the whole tree).
    Global,
    /// hilok's: shared locks on ancestors, so a read (S) on a node does not
    /// exclude writers below it.
    HilokRead,
    /// No hierarchy at all: locking `/a` says nothing about `/a/b`.
    /// WRONG semantics for a hierarchy; an upper bound only.
    Flat,
}

/// One lock implementation, measured by the harness.
pub trait Locker: Sync {
    /// A held lock; released on drop.
    type Guard<'a>
    where
        Self: 'a;

    /// Short name for the table and chart.
    const NAME: &'static str;
    /// What it guarantees.
    const SEMANTICS: Semantics;

    /// Locks `path` (normalized with a leading `/`) in `mode`, blocking.
    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a>;

    /// Locks without waiting, `None` if it would have to.
    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>>;

    /// A lock the harness holds for the whole run to keep a subtree's
    /// nodes alive ("warm"). `None` where holding it would block the
    /// workload (one global lock) or makes no difference.
    fn hold_warm<'a>(&'a self, path: &'a str) -> Option<Self::Guard<'a>> {
        Some(self.lock(path, Mode::IS))
    }

    /// Told, before the run, the paths the workload locks again and again
    /// (its tables), for implementations that can resolve them once.
    fn prepare(&mut self, _paths: &[String]) {}
}

/// The proper prefixes of `path` ("/a/b/c" gives "/a", "/a/b"), root excluded.
#[inline]
fn ancestors(path: &str) -> impl Iterator<Item = &str> + Clone {
    path.match_indices('/')
        .skip(1)
        .map(move |(i, _)| &path[..i])
}

/// Whether `mode` needs the exclusive side of a read-write lock.
#[inline]
fn is_write(mode: Mode) -> bool {
    matches!(mode, Mode::IX | Mode::SIX | Mode::X)
}

// ---------------------------------------------------------------- hierlock

/// hierlock's `LockTree`.
#[derive(Default)]
pub struct Hierlock(pub LockTree);

impl Locker for Hierlock {
    type Guard<'a> = hierlock::Guard<'a>;
    const NAME: &'static str = "hierlock";
    const SEMANTICS: Semantics = Semantics::Gray;

    #[inline]
    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a> {
        self.0.lock(path, mode).expect("valid path")
    }

    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        self.0.try_lock(path, mode).ok()
    }
}

/// hierlock with the workload's tables resolved once by
/// `LockTree::prepare`, as an engine keeps one handle per open table: a
/// path under a prepared one is locked through the handle's `lock_child`
/// (only the levels below it are looked up), the table itself through the
/// handle's `lock` (no lookup at all). Finding the handle is a scan of the
/// few prepared prefixes, standing in for the engine's own table object.
#[derive(Default)]
pub struct HierlockPrepared {
    tree: std::sync::Arc<LockTree>,
    /// Longest prefix first.
    handles: Vec<(String, hierlock::OwnedPrepared)>,
}

impl HierlockPrepared {
    #[inline]
    fn find<'a>(&'a self, path: &'a str) -> Option<(&'a hierlock::OwnedPrepared, &'a str)> {
        self.handles.iter().find_map(|(p, h)| {
            let rest = path.strip_prefix(p.as_str())?;
            if rest.is_empty() {
                Some((h, rest))
            } else {
                rest.strip_prefix('/').map(|r| (h, r))
            }
        })
    }
}

impl Locker for HierlockPrepared {
    type Guard<'a> = hierlock::Guard<'a>;
    const NAME: &'static str = "hierlock prepared";
    const SEMANTICS: Semantics = Semantics::Gray;

    #[inline]
    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a> {
        match self.find(path) {
            Some((h, "")) => h.lock(mode),
            Some((h, rest)) => h.lock_child(rest, mode),
            None => self.tree.lock(path, mode),
        }
        .expect("valid path")
    }

    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        match self.find(path) {
            Some((h, "")) => h.try_lock(mode),
            Some((h, rest)) => h.try_lock_child(rest, mode),
            None => self.tree.try_lock(path, mode),
        }
        .ok()
    }

    fn prepare(&mut self, paths: &[String]) {
        for p in paths {
            let h = self.tree.prepare_owned(p.as_str()).expect("valid path");
            self.handles.push((p.clone(), h));
        }
        self.handles
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }
}

// ------------------------------------------------------ (a) global RwLock

/// One `parking_lot::RwLock<()>` for the whole tree: IS and S take it
/// shared, IX, SIX and X exclusive. Correct, and serializes every writer.
#[derive(Default)]
pub struct GlobalRwLock(RwLock<()>);

/// A guard of [`GlobalRwLock`].
pub enum GlobalGuard<'a> {
    /// Shared side.
    Read(#[allow(dead_code)] parking_lot::RwLockReadGuard<'a, ()>),
    /// Exclusive side.
    Write(#[allow(dead_code)] parking_lot::RwLockWriteGuard<'a, ()>),
}

impl Locker for GlobalRwLock {
    type Guard<'a> = GlobalGuard<'a>;
    const NAME: &'static str = "global RwLock";
    const SEMANTICS: Semantics = Semantics::Global;

    #[inline]
    fn lock<'a>(&'a self, _path: &'a str, mode: Mode) -> Self::Guard<'a> {
        if is_write(mode) {
            GlobalGuard::Write(self.0.write())
        } else {
            GlobalGuard::Read(self.0.read())
        }
    }

    fn try_lock<'a>(&'a self, _path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        if is_write(mode) {
            self.0.try_write().map(GlobalGuard::Write)
        } else {
            self.0.try_read().map(GlobalGuard::Read)
        }
    }

    fn hold_warm<'a>(&'a self, _path: &'a str) -> Option<Self::Guard<'a>> {
        // Holding the one lock shared would block every writer of the run.
        None
    }
}

// ------------------------------------------- (b) textbook lock manager

/// Holder counts per mode, indexed by [`mode_index`].
type Counts = [u32; 5];

fn mode_index(m: Mode) -> usize {
    match m {
        Mode::IS => 0,
        Mode::IX => 1,
        Mode::S => 2,
        Mode::SIX => 3,
        Mode::X => 4,
    }
}

const MODES: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];

/// Whether `m` can be granted next to the holders `c`.
#[inline]
fn grantable(c: &Counts, m: Mode) -> bool {
    MODES
        .iter()
        .zip(c)
        .all(|(&held, &n)| n == 0 || held.compatible(m))
}

/// The lock manager of a database textbook: one mutex over a
/// `HashMap<path, counts per mode>`, and a condition variable. A request
/// takes `mode.intention()` on every ancestor prefix and `mode` on the
/// node, all under the one mutex, checking Gray's matrix level by level and
/// undoing on a conflict; it then waits on the condvar and retries.
/// Entries whose counts drop to zero are removed (as hierlock reclaims).
#[derive(Default)]
pub struct Textbook {
    table: Mutex<TextbookState>,
    cond: Condvar,
}

#[derive(Default)]
struct TextbookState {
    counts: HashMap<String, Counts>,
    waiters: usize,
}

/// A guard of [`Textbook`].
pub struct TextbookGuard<'a> {
    mgr: &'a Textbook,
    path: &'a str,
    mode: Mode,
}

impl TextbookState {
    /// Takes every level or none.
    fn try_take(&mut self, path: &str, mode: Mode) -> bool {
        let levels = levels(path, mode);
        for (taken, (name, m)) in levels.clone().enumerate() {
            let c = match self.counts.get_mut(name) {
                Some(c) => c,
                None => self.counts.entry(name.to_owned()).or_default(),
            };
            if !grantable(c, m) {
                self.give_back(levels.take(taken));
                return false;
            }
            c[mode_index(m)] += 1;
        }
        true
    }

    fn give_back<'p>(&mut self, levels: impl Iterator<Item = (&'p str, Mode)>) {
        for (name, m) in levels {
            let c = self.counts.get_mut(name).expect("held level");
            c[mode_index(m)] -= 1;
            if c.iter().all(|&n| n == 0) {
                self.counts.remove(name);
            }
        }
    }
}

/// The levels a request takes, root first: (name, mode). The root's name is "".
fn levels(path: &str, mode: Mode) -> impl Iterator<Item = (&str, Mode)> + Clone {
    let root = path.is_empty() || path == "/";
    let node = if root { "" } else { path };
    std::iter::once("")
        .filter(move |_| !root)
        .chain(ancestors(path))
        .map(move |p| (p, mode.intention()))
        .chain(std::iter::once((node, mode)))
}

impl Locker for Textbook {
    type Guard<'a> = TextbookGuard<'a>;
    const NAME: &'static str = "textbook manager";
    const SEMANTICS: Semantics = Semantics::Gray;

    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a> {
        let mut st = self.table.lock();
        while !st.try_take(path, mode) {
            st.waiters += 1;
            self.cond.wait(&mut st);
            st.waiters -= 1;
        }
        TextbookGuard {
            mgr: self,
            path,
            mode,
        }
    }

    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        if !self.table.lock().try_take(path, mode) {
            return None;
        }
        Some(TextbookGuard {
            mgr: self,
            path,
            mode,
        })
    }
}

impl Drop for TextbookGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.mgr.table.lock();
        st.give_back(levels(self.path, self.mode));
        if st.waiters > 0 {
            self.mgr.cond.notify_all();
        }
    }
}

// ----------------------------------------------------- (c) hilok's design

type NodeLock = Arc<RawRwLock>;

/// hilok's design: one mutex over a map of per-node read-write locks. A
/// request takes the map mutex to find (or create) the node of every prefix,
/// then, outside it, read-locks every ancestor top-down and read-locks (IS,
/// S) or write-locks (IX, SIX, X) the node. On release, nodes nobody else
/// references are removed under the mutex again.
///
/// Its semantics differ from Gray's: a read of `/a` takes `/a` shared, and
/// a writer of `/a/b` takes `/a` shared too, so **a read does not protect
/// the read node's descendants** from writers.
#[derive(Default)]
pub struct HilokDesign {
    nodes: Mutex<HashMap<String, NodeLock>>,
}

/// A guard of [`HilokDesign`].
pub struct HilokGuard<'a> {
    owner: &'a HilokDesign,
    path: &'a str,
    /// The locks taken, root-most first; the last is the node's.
    locks: Levels,
    write: bool,
}

/// The node locks of one request (no heap for depths up to 8).
type Levels = SmallVec<[NodeLock; 8]>;

impl HilokDesign {
    fn nodes_of(&self, path: &str) -> Levels {
        let mut map = self.nodes.lock();
        ancestors(path)
            .chain(std::iter::once(path))
            .map(|p| match map.get(p) {
                Some(l) => l.clone(),
                None => map
                    .entry(p.to_owned())
                    .or_insert_with(|| Arc::new(RawRwLock::INIT))
                    .clone(),
            })
            .collect()
    }
}

impl Locker for HilokDesign {
    type Guard<'a> = HilokGuard<'a>;
    const NAME: &'static str = "hilok design";
    const SEMANTICS: Semantics = Semantics::HilokRead;

    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a> {
        let locks = self.nodes_of(path);
        let write = is_write(mode);
        let (node, ancestors) = locks.split_last().expect("a node");
        for a in ancestors {
            a.lock_shared();
        }
        if write {
            node.lock_exclusive();
        } else {
            node.lock_shared();
        }
        HilokGuard {
            owner: self,
            path,
            locks,
            write,
        }
    }

    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        let locks = self.nodes_of(path);
        let write = is_write(mode);
        let last = locks.len() - 1;
        for (i, l) in locks.iter().enumerate() {
            let ok = if i == last && write {
                l.try_lock_exclusive()
            } else {
                l.try_lock_shared()
            };
            if !ok {
                for t in &locks[..i] {
                    // SAFETY: taken shared just above.
                    unsafe { t.unlock_shared() };
                }
                self.collect(path, locks);
                return None;
            }
        }
        Some(HilokGuard {
            owner: self,
            path,
            locks,
            write,
        })
    }
}

impl HilokDesign {
    /// Drops our references and removes the nodes nobody else references.
    fn collect(&self, path: &str, locks: Levels) {
        drop(locks);
        let mut map = self.nodes.lock();
        // Leaf first, so a parent's only other reference (none: the map
        // holds Arcs, nodes do not point to parents) is gone by its turn.
        let mut prefixes: SmallVec<[&str; 8]> = ancestors(path).collect();
        prefixes.push(path);
        for p in prefixes.into_iter().rev() {
            if map.get(p).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(p);
            }
        }
    }
}

impl Drop for HilokGuard<'_> {
    fn drop(&mut self) {
        let locks = std::mem::take(&mut self.locks);
        if locks.is_empty() {
            return;
        }
        let (node, ancestors) = locks.split_last().expect("a node");
        // SAFETY: taken in `lock`/`try_lock` in exactly these modes.
        unsafe {
            if self.write {
                node.unlock_exclusive();
            } else {
                node.unlock_shared();
            }
            for a in ancestors.iter().rev() {
                a.unlock_shared();
            }
        }
        self.owner.collect(self.path, locks);
    }
}

// ------------------------------------------------- (d) flat DashMap

/// Per-path `RawRwLock`s in a `DashMap`, no hierarchy: IS and S read-lock
/// the path's own lock, IX, SIX and X write-lock it, and ancestors are not
/// touched. **WRONG semantics** for a hierarchy (a writer of `/a` does not
/// exclude a writer of `/a/b`); an upper bound on what any per-path scheme
/// can cost. Entries are never removed (each lock is leaked once per
/// distinct path, so a guard needs no reference count).
#[derive(Default)]
pub struct FlatDashMap {
    map: DashMap<String, &'static RawRwLock>,
}

/// A guard of [`FlatDashMap`].
pub struct FlatGuard {
    lock: &'static RawRwLock,
    write: bool,
}

impl FlatDashMap {
    #[inline]
    fn node(&self, path: &str) -> &'static RawRwLock {
        if let Some(l) = self.map.get(path) {
            return *l;
        }
        *self
            .map
            .entry(path.to_owned())
            .or_insert_with(|| Box::leak(Box::new(RawRwLock::INIT)))
    }
}

impl Locker for FlatDashMap {
    type Guard<'a> = FlatGuard;
    const NAME: &'static str = "flat DashMap (wrong semantics)";
    const SEMANTICS: Semantics = Semantics::Flat;

    #[inline]
    fn lock<'a>(&'a self, path: &'a str, mode: Mode) -> Self::Guard<'a> {
        let lock = self.node(path);
        let write = is_write(mode);
        if write {
            lock.lock_exclusive();
        } else {
            lock.lock_shared();
        }
        FlatGuard { lock, write }
    }

    fn try_lock<'a>(&'a self, path: &'a str, mode: Mode) -> Option<Self::Guard<'a>> {
        let lock = self.node(path);
        let write = is_write(mode);
        let ok = if write {
            lock.try_lock_exclusive()
        } else {
            lock.try_lock_shared()
        };
        ok.then_some(FlatGuard { lock, write })
    }
}

impl Drop for FlatGuard {
    fn drop(&mut self) {
        // SAFETY: taken in `lock`/`try_lock` in this mode.
        unsafe {
            if self.write {
                self.lock.unlock_exclusive();
            } else {
                self.lock.unlock_shared();
            }
        }
    }
}

// --------------------------------------------------------- smoke check

/// One claim: while `held` is held, `request` is (or is not) grantable.
struct Claim {
    held: (&'static str, Mode),
    request: (&'static str, Mode),
    what: &'static str,
    /// Expected grantability under each semantics:
    /// [Gray, Global, HilokRead, Flat].
    expect: [bool; 4],
}

const CLAIMS: &[Claim] = &[
    Claim {
        held: ("/a", Mode::S),
        request: ("/a", Mode::X),
        what: "X on a node read-locked (S)",
        expect: [false, false, false, false],
    },
    Claim {
        held: ("/a", Mode::S),
        request: ("/a/b", Mode::X),
        what: "X under a node read-locked (S)",
        expect: [false, false, true, true],
    },
    Claim {
        held: ("/a", Mode::S),
        request: ("/a/b", Mode::S),
        what: "S under a node read-locked (S)",
        expect: [true, true, true, true],
    },
    Claim {
        held: ("/a/b", Mode::X),
        request: ("/a/c", Mode::X),
        what: "X on a sibling of an X-locked node",
        expect: [true, false, true, true],
    },
    Claim {
        held: ("/a/b", Mode::X),
        request: ("/a", Mode::S),
        what: "S on the parent of an X-locked node",
        expect: [false, false, true, true],
    },
    Claim {
        held: ("/a/b", Mode::X),
        request: ("/a", Mode::X),
        what: "X on the parent of an X-locked node",
        expect: [false, false, false, true],
    },
    Claim {
        held: ("/a/b", Mode::IX),
        request: ("/a/b", Mode::IX),
        what: "IX next to IX on one node",
        expect: [true, false, false, false],
    },
];

fn expected(sem: Semantics, c: &Claim) -> bool {
    c.expect[match sem {
        Semantics::Gray => 0,
        Semantics::Global => 1,
        Semantics::HilokRead => 2,
        Semantics::Flat => 3,
    }]
}

/// Checks every claim with `try_lock`, and that a blocked `lock` really
/// waits and is woken by the release. Panics with the failed claim.
/// Returns the claims that hold, for the report.
pub fn smoke_check<L: Locker + Default>() -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    for c in CLAIMS {
        let mut l = L::default();
        l.prepare(&["/a".to_owned()]);
        let held = l.lock(c.held.0, c.held.1);
        let got = l.try_lock(c.request.0, c.request.1).is_some();
        let want = expected(L::SEMANTICS, c);
        assert_eq!(
            got,
            want,
            "{}: {} ({} {} held, {} {} requested): granted={got}, claimed {want}",
            L::NAME,
            c.what,
            c.held.1,
            c.held.0,
            c.request.1,
            c.request.0
        );
        drop(held);
        out.push((c.what, got));
    }
    // A blocked lock waits, and the release wakes it.
    let l = L::default();
    let held = l.lock("/a", Mode::S);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let g = l.lock("/a", Mode::X);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(g);
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "{}: X granted under a held S",
            L::NAME
        );
        drop(held);
    });
    assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    out
}

/// The claims' descriptions, in order.
pub fn claim_names() -> impl Iterator<Item = String> {
    CLAIMS.iter().map(|c| {
        format!(
            "{} ({} {} held, {} {})",
            c.what, c.held.1, c.held.0, c.request.1, c.request.0
        )
    })
}
