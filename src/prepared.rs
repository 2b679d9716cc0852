//! Prepared paths: a path's nodes resolved once and kept, for engines that
//! lock the same table or directory again and again.
//!
//! `LockTree::lock` looks every level of its path up in the node table (a
//! hash of the prefix and a shard read-lock per level) and creates the
//! nodes that are missing; about two thirds of an uncontended depth-4 lock
//! is that lookup. A [`Prepared`] handle does it once: it finds or creates
//! the nodes and *pins* them, so each later `lock` is only the state-word
//! operations, one CAS per level, with no hashing, no epoch pin and no
//! allocation.
//!
//! # Pinning
//!
//! A node's pin count (under the node's queue lock) says how many handles
//! keep it; the state word's `PINNED` bit is set exactly while the count is
//! non-zero. The bit conflicts with no mode, but a word with it is never
//! idle, so the node is never marked dead, never unlinked, and never freed:
//! its pointer stays valid for as long as the handle lives, without the
//! epoch. The first pin sets the bit with a CAS that refuses a dead word (the
//! handle then looks the path up again, finding a fresh node); the last
//! unpin clears it and, if nobody holds or waits on the node, unlinks it
//! like a last release would. The root is never unlinked and is not pinned.
//!
//! A guard taken through a handle is an ordinary [`Guard`]: it holds its
//! nodes by holding the locks, so it may outlive the handle.
//!
//! # Sticky holds
//!
//! When such a guard goes, the handle keeps its holds in one of its two
//! stickies (`sticky.rs`) until a request they are in the way of calls
//! them back; the next `lock` in the same mode on the same thread (or
//! `lock_child` whose intention is that mode) takes them back with one
//! CAS on the sticky's word instead of one per level. That is what brings
//! a handle's lock+unlock down to about a bare `RwLock`'s, at any depth
//! (`docs/bench/benches.md`, "Sticky holds").

use std::ops::Deref;
use std::sync::Arc as StdArc;
use std::time::Duration;

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::bias::{owned_slot, Hold, WINDOWS};
use crate::future::{LockFuture, OwnedLockFuture};
use crate::guard::{Guard, Held, OwnedGuard};
use crate::node::Acquire;
use crate::park::Waiter;
use crate::path::{too_deep, IntoPath, ParsedPath, Path};
use crate::sticky::Sticky;
use crate::sync::Arc;
use crate::table::NodeRef;
use crate::tree::{LockTree, Wait};
use crate::{Error, Mode};

/// Stickies per handle.
const STICKIES: usize = 2;

/// The pinned nodes of one path and the tree they belong to.
struct RawPrepared<T: Deref<Target = LockTree>> {
    tree: T,
    /// Root first. Every node but the root carries one pin of this handle.
    nodes: SmallVec<[NodeRef; 8]>,
    /// The handle's normalized path followed by the separator ("" for the
    /// root): a child's name is this and the child's relative path.
    /// Cached, not derived from the leaf node's path on each call: reading
    /// that through `Path::as_str` and encoding the separator every
    /// `lock_child` made prepared row locks slower than plain ones
    /// (`docs/bench/benches.md`, "The parser and the prepared child path
    /// inlined").
    prefix: CompactString,
    /// The holds the handle keeps between guards (`sticky.rs`): two, so a
    /// long-lived guard through the handle (a transaction's IX on its
    /// table) does not keep the short ones from keeping theirs, and two
    /// threads sharing the handle may each have one.
    stickies: [Arc<Sticky>; STICKIES],
}

// SAFETY: `NodeRef`s are `Send + Sync` (shared pointers to `Sync` nodes);
// the pins they carry are released by whichever thread drops the handle.
unsafe impl<T: Deref<Target = LockTree> + Send> Send for RawPrepared<T> {}
// SAFETY: as above; `&RawPrepared` only reads the node list.
unsafe impl<T: Deref<Target = LockTree> + Sync> Sync for RawPrepared<T> {}

impl<T: Deref<Target = LockTree>> RawPrepared<T> {
    fn new<'p>(tree: T, path: impl IntoPath<'p>) -> Result<Self, Error> {
        let path = tree.parse(path)?;
        let mut prefix = CompactString::new(&path.text);
        if path.depth > 0 {
            prefix.push(path.sep);
        }
        let mut this = RawPrepared {
            nodes: SmallVec::with_capacity(path.depth + 1),
            stickies: [(); STICKIES].map(|()| Sticky::new(&tree, &[], false)),
            tree,
            prefix,
        };
        this.nodes.push(this.tree.root());
        let table = this.tree.table();
        let pin = table.pin();
        for name in path.prefixes() {
            loop {
                let node = this.tree.node(&pin, Some(name));
                // SAFETY: pinned in the epoch since the lookup.
                let n = unsafe { node.get() };
                // On error `this` drops and unpins what it has pinned.
                if n.pin()? {
                    this.nodes.push(node);
                    break;
                }
                table.evict(&pin, n);
            }
        }
        let on = this.tree.sticky();
        this.stickies = [(); STICKIES].map(|()| Sticky::new(&this.tree, &this.nodes, on));
        Ok(this)
    }

    fn path(&self) -> &Path {
        let leaf = *self.nodes.last().expect("the root is always there");
        // SAFETY: pinned (or the root) for as long as `self` lives.
        &unsafe { leaf.get() }.path
    }

    /// The top-down walk over the pinned nodes. Inlined into the public
    /// methods, with the general path out of line, so the guard is built
    /// where the caller keeps it: moving it (88 bytes) out of a call and
    /// into a `Result` cost more than the locking of a depth-1 handle
    /// (store-forwarding stalls; `docs/bench/benches.md`).
    ///
    /// First the handle's sticky (`sticky.rs`): if this thread kept the
    /// path in `mode` since its last guard, one CAS takes it back.
    #[inline(always)]
    fn acquire(&self, mode: Mode, wait: Wait) -> Result<Held, Error> {
        if let Some(held) = self.reuse(mode) {
            return Ok(held);
        }
        let mut held = Held::with_windows();
        let from = self.acquire_quick(&mut held, mode);
        if from < self.nodes.len() {
            self.acquire_rest(&mut held, from, mode, wait)?;
        }
        self.keep(&mut held, mode);
        Ok(held)
    }

    /// The handle's levels through one of its stickies kept in `m` by
    /// this thread, if any.
    #[inline(always)]
    fn reuse(&self, m: Mode) -> Option<Held> {
        let sticky = self.stickies.iter().find(|s| Sticky::reuse(s, m))?;
        Some(Held::stuck(Sticky::ptr(sticky)))
    }

    /// After `held` took the handle's levels (in `m` on the handle's node)
    /// the usual way: keeps them in the first sticky that may.
    #[inline(always)]
    fn keep(&self, held: &mut Held, m: Mode) {
        for sticky in &self.stickies {
            if Sticky::keep(sticky, held, m) != Some(false) {
                break;
            }
        }
    }

    /// `acquire`'s general path, out of line.
    #[inline(never)]
    fn acquire_rest(
        &self,
        held: &mut Held,
        from: usize,
        mode: Mode,
        wait: Wait,
    ) -> Result<(), Error> {
        self.acquire_pinned(held, from, mode, true, wait)
    }

    /// The quick path of `acquire`: takes the pinned levels top-down while
    /// each is granted at once, in the word or in a window on the calling
    /// thread's owned slot (if it has claimed one), and returns how many it
    /// took (all of them, in the common case). The rest are the general
    /// path's (`acquire_pinned`), which may claim a slot, count contention,
    /// revoke, wait or fail.
    ///
    /// Why a path of its own: a handle's levels are the same few nodes
    /// every time, so everything the general walk does per level to handle
    /// the rare cases (claiming a slot, looking the thread's slot up again,
    /// choosing between CAS and window, the waiter closure, the error
    /// plumbing) was most of its cost: 846 instructions for a depth-4
    /// lock+unlock before this path (callgrind; see
    /// `docs/bench/benches.md`).
    #[inline(always)]
    fn acquire_quick(&self, held: &mut Held, mode: Mode) -> usize {
        let mine = owned_slot();
        let table = self.tree.table();
        let last = self.nodes.len() - 1;
        let intention = mode.intention();
        for (level, &node) in self.nodes.iter().enumerate() {
            let m = if level == last { mode } else { intention };
            // SAFETY: pinned by this handle (or the root) for as long as
            // `self` is borrowed.
            let n = unsafe { node.get() };
            match n.acquire_quick(m, mine, table) {
                Some(hold) => {
                    // A slot hold is only ever taken in the thread's slot.
                    if let Some(mine) = mine.filter(|_| hold.is_slot()) {
                        held.slot = mine as u8 | WINDOWS;
                    }
                    held.push(node, m, hold);
                }
                None => return level,
            }
        }
        self.nodes.len()
    }

    /// Parses `rel`, a path relative to this one, and checks the depth of
    /// the whole: `(rel, depth of the child)`.
    fn parse_child<'p>(&self, rel: impl IntoPath<'p>) -> Result<(ParsedPath<'p>, usize), Error> {
        let tree = &*self.tree;
        let rel = rel.into_parsed(tree.separator(), tree.max_depth())?;
        let depth = self.nodes.len() - 1 + rel.depth;
        if depth > tree.max_depth() {
            let sep = tree.separator();
            return Err(too_deep(
                || format!("{}{sep}{}", self.path(), rel.text),
                depth,
                tree.max_depth(),
            ));
        }
        Ok((rel, depth))
    }

    /// Locks `rel`, a path relative to this one: the pinned levels in
    /// `mode`'s intention, then the levels below them looked up as
    /// `LockTree::lock` does.
    fn acquire_child<'p>(
        &self,
        rel: impl IntoPath<'p>,
        mode: Mode,
        wait: Wait,
    ) -> Result<Held, Error> {
        let tree = &*self.tree;
        let sep = tree.separator();
        let (rel, depth) = self.parse_child(rel)?;
        if rel.depth == 0 {
            return self.acquire(mode, wait);
        }
        // The child's normalized text, on the stack when it is short.
        let prefix = self.prefix.as_bytes();
        let total = prefix.len() + rel.text.len();
        let mut stack = [0u8; 192];
        let heap: String;
        let text: &str = if total <= stack.len() {
            stack[..prefix.len()].copy_from_slice(prefix);
            stack[prefix.len()..total].copy_from_slice(rel.text.as_bytes());
            // SAFETY: the bytes are the concatenation of two `str`s, so
            // valid UTF-8 (skipping the check measured about 60
            // instructions per call).
            unsafe { std::str::from_utf8_unchecked(&stack[..total]) }
        } else {
            heap = self.child_text(&rel.text);
            &heap
        };
        // The handle's own text ends where its separator starts.
        let base = self.prefix.len().saturating_sub(sep.len_utf8());
        let full = ParsedPath::from_normalized(text, depth, sep);
        let mut held = self.acquire_intentions(mode.intention(), wait)?;
        let mut pin = tree.table().pin();
        if rel.depth == 1 {
            // A child: looked up by its whole name, no prefix to scan.
            tree.take_level(&mut pin, &mut held, Some(text), mode, wait)?;
        } else {
            let names = full.prefixes_after(base);
            tree.walk(&mut pin, &mut held, &full, names, mode, wait)?;
        }
        Ok(held)
    }

    /// The handle's levels in the intention `m`, for a lock below them:
    /// through a sticky kept in `m` if this thread has one (a sticky kept
    /// by `lock(m)` serves too: the same holds), else taken level by level
    /// and kept if the handle may.
    #[inline]
    fn acquire_intentions(&self, m: Mode, wait: Wait) -> Result<Held, Error> {
        if let Some(held) = self.reuse(m) {
            return Ok(held);
        }
        // With CAS, not windows: the child's lookup overlaps a CAS and
        // pays for a window's chain of loads, as on the plain walk.
        let mut held = Held::new();
        self.acquire_pinned(&mut held, 0, m, false, wait)?;
        self.keep(&mut held, m);
        Ok(held)
    }

    /// The normalized text of the child whose relative text is `rel`.
    fn child_text(&self, rel: &str) -> String {
        [self.prefix.as_str(), rel].concat()
    }

    /// The full path of `rel` below this handle, owned (for futures);
    /// `None` if `rel` is empty (the handle's own path).
    fn child_path<'p>(&self, rel: impl IntoPath<'p>) -> Result<Option<ParsedPath<'static>>, Error> {
        let sep = self.tree.separator();
        let (rel, depth) = self.parse_child(rel)?;
        if rel.depth == 0 {
            return Ok(None);
        }
        let text = self.child_text(&rel.text);
        Ok(Some(
            ParsedPath::from_normalized(&text, depth, sep).into_owned(),
        ))
    }

    /// Takes the pinned levels from `from` (0: the root) down, pushing each
    /// onto `held`: `mode`'s intention on all of them, except `mode` itself
    /// on the last one if `leaf` (the handle's own node is the target). On
    /// error releases everything `held` holds.
    #[inline]
    fn acquire_pinned(
        &self,
        held: &mut Held,
        from: usize,
        mode: Mode,
        leaf: bool,
        wait: Wait,
    ) -> Result<(), Error> {
        let tree = &*self.tree;
        let last = self.nodes.len() - 1;
        for (level, &node) in self.nodes.iter().enumerate().skip(from) {
            let m = if leaf && level == last {
                mode
            } else {
                mode.intention()
            };
            // SAFETY: pinned by this handle (or the root) for as long as
            // `self` is borrowed.
            let n = unsafe { node.get() };
            let granted = match n.acquire(
                None,
                m,
                wait.may_wait(),
                true,
                Some((tree.table(), &mut held.slot)),
                Waiter::for_thread,
            ) {
                Ok(Acquire::Granted(hold)) => Ok(hold),
                Ok(Acquire::Wait(waiter)) => {
                    let mut pin = tree.table().pin();
                    tree.park(&mut pin, n, waiter, wait).map(|_| Hold::WORD)
                }
                Ok(Acquire::Dead) => unreachable!("a pinned node is never marked dead"),
                Err(e) => Err(e),
            };
            match granted {
                Ok(hold) => held.push(node, m, hold),
                Err(e) => {
                    held.release(tree);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<T: Deref<Target = LockTree>> Drop for RawPrepared<T> {
    fn drop(&mut self) {
        // The kept holds first, while the nodes are pinned.
        for sticky in &self.stickies {
            Sticky::drop_handle(sticky);
        }
        let table = self.tree.table();
        let pin = table.pin();
        for node in self.nodes.iter().skip(1).rev() {
            // SAFETY: pinned by this handle until this call.
            unsafe { node.get() }.unpin(table, &pin);
        }
    }
}

/// A path whose nodes are resolved and kept, made by
/// [`LockTree::prepare`]: locking it skips the lookups.
///
/// Each `lock` through the handle is the same request as
/// [`LockTree::lock`] on its path (same modes, fairness, timeouts and
/// guards) without hashing the path or touching the node table. The
/// handle keeps its nodes alive: while it exists they count in
/// [`LockTree::node_count`] even when nobody holds them. Dropping it lets
/// them go.
///
/// ```
/// use hierlock::{LockTree, Mode};
///
/// let tree = LockTree::new();
/// let users = tree.prepare("/db/users")?;       // resolve once
/// for _ in 0..3 {
///     let g = users.lock(Mode::IX)?;             // no lookups
///     let row = tree.lock("/db/users/42", Mode::X)?;
///     drop((row, g));
/// }
/// assert_eq!(tree.node_count(), 2);             // kept by the handle
/// drop(users);
/// assert_eq!(tree.node_count(), 0);
/// # Ok::<(), hierlock::Error>(())
/// ```
pub struct Prepared<'t>(RawPrepared<&'t LockTree>);

/// A [`Prepared`] path that keeps its `Arc<LockTree>` alive: `'static`, for
/// storing in an engine's table or directory handle. Made by
/// [`LockTree::prepare_owned`].
///
/// ```
/// use std::sync::Arc;
/// use hierlock::{LockTree, Mode};
///
/// let tree = Arc::new(LockTree::new());
/// let table = tree.prepare_owned("/db/orders")?;
/// let g = table.lock_owned(Mode::X)?;            // an OwnedGuard
/// std::thread::spawn(move || drop(g)).join().unwrap();
/// assert!(table.try_lock(Mode::S).is_ok());
/// # Ok::<(), hierlock::Error>(())
/// ```
pub struct OwnedPrepared(RawPrepared<StdArc<LockTree>>);

impl LockTree {
    /// Resolves `path` once and keeps its nodes, for repeated locking
    /// without lookups. See [`Prepared`].
    ///
    /// Errors: [`Error::InvalidPath`]; [`Error::TooManyHolders`] if a node
    /// already has `u32::MAX` handles.
    pub fn prepare<'p>(&self, path: impl IntoPath<'p>) -> Result<Prepared<'_>, Error> {
        RawPrepared::new(self, path).map(Prepared)
    }

    /// Like [`prepare`](Self::prepare), keeping the tree alive: the handle
    /// is `'static`.
    pub fn prepare_owned<'p>(
        self: &StdArc<Self>,
        path: impl IntoPath<'p>,
    ) -> Result<OwnedPrepared, Error> {
        RawPrepared::new(self.clone(), path).map(OwnedPrepared)
    }
}

impl<'t> Prepared<'t> {
    fn tree_ref(&self) -> &'t LockTree {
        self.0.tree
    }

    /// The handle's `i`th sticky, for white-box tests.
    #[cfg(test)]
    pub(crate) fn sticky_at(&self, i: usize) -> &Arc<Sticky> {
        &self.0.stickies[i]
    }

    /// The handle's first sticky, for white-box tests.
    #[cfg(test)]
    pub(crate) fn sticky(&self) -> &Arc<Sticky> {
        self.sticky_at(0)
    }
}

impl OwnedPrepared {
    fn tree_ref(&self) -> &LockTree {
        &self.0.tree
    }
}

macro_rules! prepared_methods {
    ([$($lt:lifetime)?] $ty:ty, $guard:ty) => {
        impl<$($lt)?> $ty {
            /// The path this handle locks.
            pub fn path(&self) -> &Path {
                self.0.path()
            }

            /// Locks the path in `mode`, blocking until granted, as
            /// [`LockTree::lock`] does.
            #[inline]
            pub fn lock(&self, mode: Mode) -> Result<$guard, Error> {
                let held = self.0.acquire(mode, Wait::Until(None))?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// Locks the path in `mode` only if no level must wait, as
            /// [`LockTree::try_lock`] does ([`Error::WouldBlock`]).
            #[inline]
            pub fn try_lock(&self, mode: Mode) -> Result<$guard, Error> {
                let held = self.0.acquire(mode, Wait::Never)?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// Locks the path in `mode`, waiting at most `timeout` for the
            /// whole acquisition, as [`LockTree::lock_timeout`] does.
            #[inline]
            pub fn lock_timeout(&self, mode: Mode, timeout: Duration) -> Result<$guard, Error> {
                let held = self.0.acquire(mode, Wait::timeout(timeout))?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// `lock(Mode::S)`.
            pub fn read(&self) -> Result<$guard, Error> {
                self.lock(Mode::S)
            }

            /// `lock(Mode::X)`.
            pub fn write(&self) -> Result<$guard, Error> {
                self.lock(Mode::X)
            }

            /// Locks `child`, a path relative to this one (`"42"`,
            /// `"2024/07"`, `["a", "b"]`), in `mode`, blocking until
            /// granted: the pinned levels take `mode`'s intention with no
            /// lookup, only the levels below are looked up. The same request
            /// as [`LockTree::lock`] on the joined path. An empty `child`
            /// locks this path itself.
            ///
            /// Errors: [`Error::InvalidPath`] (also when the joined path is
            /// deeper than the tree's `max_depth`), [`Error::TooManyHolders`].
            pub fn lock_child<'p>(&self, child: impl IntoPath<'p>, mode: Mode) -> Result<$guard, Error> {
                let held = self.0.acquire_child(child, mode, Wait::Until(None))?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// Like [`lock_child`](Self::lock_child), but
            /// [`Error::WouldBlock`] instead of waiting.
            pub fn try_lock_child<'p>(
                &self,
                child: impl IntoPath<'p>,
                mode: Mode,
            ) -> Result<$guard, Error> {
                let held = self.0.acquire_child(child, mode, Wait::Never)?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// Like [`lock_child`](Self::lock_child), waiting at most
            /// `timeout` for the whole acquisition ([`Error::Timeout`]).
            pub fn lock_child_timeout<'p>(
                &self,
                child: impl IntoPath<'p>,
                mode: Mode,
                timeout: Duration,
            ) -> Result<$guard, Error> {
                let held = self.0.acquire_child(child, mode, Wait::timeout(timeout))?;
                Ok(Guard::new(self.tree_ref(), held))
            }

            /// Locks the path in `mode` from async code, as
            /// [`LockTree::lock_async`] does (cancel-safe; the future
            /// borrows the handle).
            pub fn lock_async(&self, mode: Mode) -> LockFuture<'_> {
                LockFuture::for_nodes(&self.0.tree, self.0.nodes.clone(), Ok(None), mode)
            }

            /// Locks `child`, a path relative to this handle's, from async
            /// code: [`lock_child`](Self::lock_child) as a cancel-safe
            /// future (the handle's levels without lookups, the rest looked
            /// up; the future borrows the handle).
            pub fn lock_child_async<'p>(&self, child: impl IntoPath<'p>, mode: Mode) -> LockFuture<'_> {
                let below = self.0.child_path(child);
                LockFuture::for_nodes(&self.0.tree, self.0.nodes.clone(), below, mode)
            }
        }

        impl<$($lt)?> std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("path", &format_args!("{}", self.path()))
                    .finish()
            }
        }
    };
}

prepared_methods!(['t] Prepared<'t>, Guard<'t>);
prepared_methods!([] OwnedPrepared, Guard<'_>);

impl OwnedPrepared {
    /// The tree this handle belongs to.
    pub fn tree(&self) -> &StdArc<LockTree> {
        &self.0.tree
    }

    /// Like [`lock`](Self::lock), returning a `'static` [`OwnedGuard`].
    pub fn lock_owned(&self, mode: Mode) -> Result<OwnedGuard, Error> {
        let held = self.0.acquire(mode, Wait::Until(None))?;
        Ok(OwnedGuard::new(self.0.tree.clone(), held))
    }

    /// Like [`try_lock`](Self::try_lock), returning an [`OwnedGuard`].
    pub fn try_lock_owned(&self, mode: Mode) -> Result<OwnedGuard, Error> {
        let held = self.0.acquire(mode, Wait::Never)?;
        Ok(OwnedGuard::new(self.0.tree.clone(), held))
    }

    /// Like [`lock_timeout`](Self::lock_timeout), returning an
    /// [`OwnedGuard`].
    pub fn lock_owned_timeout(&self, mode: Mode, timeout: Duration) -> Result<OwnedGuard, Error> {
        let held = self.0.acquire(mode, Wait::timeout(timeout))?;
        Ok(OwnedGuard::new(self.0.tree.clone(), held))
    }

    /// Like [`lock_async`](Self::lock_async), as a `'static` future (for
    /// `tokio::spawn`) resolving to an [`OwnedGuard`]: the future keeps
    /// its own pins on the handle's nodes, so the handle may go first.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use hierlock::{LockTree, Mode};
    ///
    /// let tree = Arc::new(LockTree::new());
    /// let table = tree.prepare_owned("/db/orders")?;
    /// let table_lock = table.lock_owned_async(Mode::IX);
    /// let row_lock = table.lock_child_owned_async("17", Mode::X);
    /// drop(table);
    /// let (t, r) = futures::executor::block_on(async {
    ///     (table_lock.await, row_lock.await)
    /// });
    /// assert_eq!(r?.path().to_string(), "/db/orders/17");
    /// drop(t?);
    /// # Ok::<(), hierlock::Error>(())
    /// ```
    pub fn lock_owned_async(&self, mode: Mode) -> OwnedLockFuture {
        OwnedLockFuture::for_prepared(self.0.tree.clone(), self.duplicate(), Ok(None), mode)
    }

    /// Like [`lock_child_async`](Self::lock_child_async), as a `'static`
    /// future resolving to an [`OwnedGuard`] (see
    /// [`lock_owned_async`](Self::lock_owned_async)).
    pub fn lock_child_owned_async<'p>(
        &self,
        child: impl IntoPath<'p>,
        mode: Mode,
    ) -> OwnedLockFuture {
        let below = self.0.child_path(child);
        OwnedLockFuture::for_prepared(self.0.tree.clone(), self.duplicate(), below, mode)
    }

    /// Another handle on the same nodes, with pins of its own.
    fn duplicate(&self) -> Result<OwnedPrepared, Error> {
        let mut copy = RawPrepared {
            tree: self.0.tree.clone(),
            nodes: SmallVec::with_capacity(self.0.nodes.len()),
            prefix: self.0.prefix.clone(),
            stickies: [(); STICKIES].map(|()| Sticky::new(&self.0.tree, &[], false)),
        };
        copy.nodes.push(self.0.nodes[0]);
        for &node in &self.0.nodes[1..] {
            // SAFETY: pinned by `self`. On error `copy` drops and unpins
            // what it pinned.
            let pinned = unsafe { node.get() }.pin()?;
            debug_assert!(pinned, "a pinned node is never dead");
            copy.nodes.push(node);
        }
        // The copy (a future's) never locks through `acquire`: no sticky.
        Ok(OwnedPrepared(copy))
    }

    /// The pinned nodes, root first.
    pub(crate) fn nodes(&self) -> &SmallVec<[NodeRef; 8]> {
        &self.0.nodes
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Prepared<'static>>();
        assert_send_sync::<OwnedPrepared>();
    }

    #[test]
    fn a_handle_keeps_its_nodes_and_drops_them() {
        let tree = LockTree::new();
        let p = tree.prepare("/a/b/c").unwrap();
        assert_eq!(p.path().to_string(), "/a/b/c");
        assert_eq!(tree.node_count(), 3);
        let g = p.lock(Mode::X).unwrap();
        assert_eq!(
            tree.try_lock("/a/b", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        drop(g);
        assert_eq!(tree.node_count(), 3);
        drop(p);
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn a_guard_may_outlive_its_handle() {
        let tree = LockTree::new();
        let p = tree.prepare("/a/b").unwrap();
        let g = p.lock(Mode::S).unwrap();
        let g2 = tree.lock("/a/b", Mode::S).unwrap();
        drop(p);
        assert_eq!(tree.node_count(), 2, "held nodes stay");
        assert_eq!(g.mode(), Mode::S);
        drop((g, g2));
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn preparing_the_root_pins_nothing() {
        let tree = LockTree::new();
        let p = tree.prepare("/").unwrap();
        assert_eq!(tree.node_count(), 0);
        let g = p.lock(Mode::X).unwrap();
        assert_eq!(
            tree.try_lock("/a", Mode::IS).unwrap_err(),
            Error::WouldBlock
        );
        drop(g);
        assert!(tree.try_lock("/a", Mode::IS).is_ok());
    }

    #[test]
    fn children_take_the_handles_levels_as_intentions() {
        let tree = LockTree::new();
        let users = tree.prepare("/db/users").unwrap();
        let row = users.lock_child("42", Mode::X).unwrap();
        assert_eq!(row.path().to_string(), "/db/users/42");
        assert_eq!(
            tree.try_lock("/db/users", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        assert!(tree.try_lock("/db/users", Mode::IX).is_ok());
        assert_eq!(
            users.try_lock_child("42", Mode::IS).unwrap_err(),
            Error::WouldBlock
        );
        let deep = users.lock_child(["43", "col"], Mode::S).unwrap();
        assert_eq!(deep.path().to_string(), "/db/users/43/col");
        let same = users.lock_child("", Mode::IX).unwrap();
        assert_eq!(same.path().to_string(), "/db/users");
        drop((row, deep, same));
        assert_eq!(tree.node_count(), 2);
        drop(users);
        assert_eq!(tree.node_count(), 0);
    }

    /// The child's name is the handle's text, the separator and the
    /// relative path: with a separator of several bytes, and a child two
    /// levels down, every level is the right node.
    #[test]
    fn children_with_a_multibyte_separator() {
        let tree = LockTree::builder().separator('→').build();
        let t = tree.prepare("db→t").unwrap();
        let g = t.lock_child("r1→c", Mode::X).unwrap();
        assert_eq!(g.path().to_string(), "→db→t→r1→c");
        assert_eq!(g.path().depth(), 4);
        // Its parent holds IX (S refused, IX granted), its sibling is free.
        assert_eq!(
            tree.try_lock("db→t→r1", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        assert!(tree.try_lock("db→t→r1", Mode::IX).is_ok());
        assert!(tree.try_lock("db→t→r2→c", Mode::X).is_ok());
        assert_eq!(
            tree.try_lock("db→t→r1→c", Mode::IS).unwrap_err(),
            Error::WouldBlock
        );
        let direct = t.lock_child("r3", Mode::S).unwrap();
        assert_eq!(direct.path().to_string(), "→db→t→r3");
    }

    #[test]
    fn children_of_the_root_and_depth_limits() {
        let tree = LockTree::builder().max_depth(3).build();
        let root = tree.prepare("/").unwrap();
        assert_eq!(
            root.lock_child("a/b", Mode::X).unwrap().path().to_string(),
            "/a/b"
        );
        let ab = tree.prepare("a/b").unwrap();
        assert!(ab.lock_child("c", Mode::X).is_ok());
        let err = ab.lock_child("c/d", Mode::X).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPath { path, .. } if path == "/a/b/c/d"),
            "{err}"
        );
        assert!(matches!(
            ab.lock_child("c//d", Mode::X).unwrap_err(),
            Error::InvalidPath { .. }
        ));
    }

    #[test]
    fn invalid_paths_are_refused() {
        let tree = LockTree::new();
        assert!(matches!(
            tree.prepare("/a//b").unwrap_err(),
            Error::InvalidPath { .. }
        ));
        assert_eq!(tree.node_count(), 0);
    }
}
