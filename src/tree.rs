//! `LockTree`: the top-down acquisition protocol, timeouts and cancellation.
//!
//! Locking mode `M` on a path of depth `d` walks from the root: IS or IX
//! (`M.intention()`) on levels `0..d`, then `M` on level `d`, each level
//! granted before the next is asked for. A level that must wait parks the
//! thread (or suspends the task) in that node's queue while the levels above
//! stay held. Any error — a `try_` that would block, a deadline, a dropped
//! future, a full counter — releases the levels already taken, bottom-up,
//! and leaves nothing queued.
//!
//! The walk is pinned in the epoch (so node pointers found in the table stay
//! valid) except while parked; a parked request's node cannot be reclaimed
//! because its state word says someone waits.

use std::fmt;
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use crate::bias::{Bias, Hold};
use crate::deadlock::Owners;
use crate::future::{LockFuture, OwnedLockFuture};
use crate::guard::{Guard, Held, OwnedGuard};
use crate::node::{Acquire, Node};
use crate::park::Waiter;
use crate::path::{IntoPath, ParsedPath, Path, Prefixes, DEFAULT_MAX_DEPTH, DEFAULT_SEPARATOR};
use crate::sync::Arc;
use crate::table::{NodeRef, Pin, Table, CHAIN_LEVELS};
use crate::{Error, Mode};

/// How long a request may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Not at all (`try_`).
    Never,
    /// Until the deadline (`None`: forever).
    Until(Option<Instant>),
}

impl Wait {
    pub(crate) fn timeout(timeout: Duration) -> Wait {
        Wait::Until(crate::block::deadline(timeout))
    }

    pub(crate) fn may_wait(self) -> bool {
        matches!(self, Wait::Until(_))
    }
}

/// A tree of hierarchical intention locks on nodes named by paths.
///
/// ```
/// use hierlock::{LockTree, Mode, Error};
///
/// let tree = LockTree::new();
/// let row = tree.lock("/db/users/42", Mode::X)?;      // IX on /, /db, /db/users
/// let other = tree.lock("/db/users/43", Mode::X)?;    // siblings never conflict
/// assert_eq!(tree.try_lock("/db/users", Mode::S).unwrap_err(), Error::WouldBlock);
/// drop((row, other));
/// let table = tree.read("/db/users")?;                // S: the whole subtree
/// assert!(tree.try_lock("/db/users/42", Mode::X).is_err());
/// # Ok::<(), Error>(())
/// ```
pub struct LockTree {
    root: Node,
    table: Table,
    owners: Owners,
    sep: char,
    max_depth: usize,
    sticky: bool,
}

/// Configures a [`LockTree`]: the path separator and the depth limit.
///
/// ```
/// use hierlock::{LockTree, Mode};
/// let tree = LockTree::builder().separator(':').max_depth(8).build();
/// let g = tree.lock("db:users", Mode::S).unwrap();
/// assert_eq!(g.path().to_string(), ":db:users");
/// assert!(tree.lock("a:b:c:d:e:f:g:h:i", Mode::S).is_err());
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build()"]
pub struct Builder {
    sep: char,
    max_depth: usize,
    idle_nodes: usize,
    bias: Bias,
    sticky: bool,
}

/// How many idle nodes a tree keeps for reuse unless its [`Builder`] says
/// otherwise.
pub const DEFAULT_IDLE_NODES: usize = 4096;

impl Builder {
    /// The character that separates components in string paths (default `/`).
    pub fn separator(mut self, sep: char) -> Self {
        self.sep = sep;
        self
    }

    /// The largest number of components a path may have (default 256).
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// How many nodes nobody holds or waits on the tree keeps for reuse
    /// (default [`DEFAULT_IDLE_NODES`]; above 16, rounded up to a multiple
    /// of 16).
    ///
    /// A lock on a path whose node was released recently then finds the
    /// node instead of allocating it again: rows, files and jobs locked
    /// over and over cost a lookup, not an allocation and a free. The
    /// oldest idle node is freed when the cache is full. `0` frees every
    /// node the moment nobody holds or waits on it.
    ///
    /// ```
    /// use hierlock::{LockTree, Mode};
    /// let tree = LockTree::builder().idle_nodes(0).build();
    /// drop(tree.lock("/jobs/7", Mode::X).unwrap());
    /// assert_eq!(tree.idle_node_count(), 0);
    ///
    /// let tree = LockTree::new();
    /// drop(tree.lock("/jobs/7", Mode::X).unwrap());
    /// assert_eq!(tree.node_count(), 0);      // nothing held
    /// assert_eq!(tree.idle_node_count(), 2); // /jobs and /jobs/7, kept
    /// tree.purge_idle();
    /// assert_eq!(tree.idle_node_count(), 0);
    /// ```
    pub fn idle_nodes(mut self, nodes: usize) -> Self {
        self.idle_nodes = nodes;
        self
    }

    /// How hot nodes are biased toward their readers (default
    /// [`Bias::Adaptive`]).
    ///
    /// A biased node takes the compatible modes of one class — {IS, IX}
    /// or {IS, S} — through per-thread slots instead of its one shared
    /// state word, so threads on different cores taking IS on a shared
    /// root, IX on a hot table or S on a hot row stop fighting over one
    /// cache line; through a [`Prepared`](crate::Prepared) handle a slot
    /// hold is taken and given back without any atomic read-modify-write.
    /// A conflicting request (S, SIX or X against {IS, IX}; IX, SIX or X
    /// against {IS, S}) first revokes the bias: on Linux one
    /// `membarrier(2)` call (a few microseconds), then a fold of the slots
    /// into the word, about one cache miss per slot; then it goes on
    /// exactly as on an unbiased node (same matrix, same queue, same
    /// fairness). At most [`MAX_BIASED`](crate::MAX_BIASED) nodes of a tree
    /// are biased at once.
    ///
    /// ```
    /// use hierlock::{Bias, LockTree, Mode};
    /// let tree = LockTree::builder().bias(Bias::Never).build();
    /// let _g = tree.lock("/db/t", Mode::IX).unwrap();
    /// assert_eq!(tree.inspect("/db/t").unwrap().granted[0].mode, Mode::IX);
    /// ```
    pub fn bias(mut self, bias: Bias) -> Self {
        self.bias = bias;
        self
    }

    /// Whether [`Prepared`](crate::Prepared) handles keep their holds
    /// after a guard goes, until another request needs them (default
    /// `true`).
    ///
    /// An engine that locks the same table again and again through one
    /// handle from one thread then pays one compare-and-swap on the
    /// handle's own word to lock and one to unlock, instead of one per
    /// level each way. The holds stay in the nodes while the handle is
    /// idle; a request they are in the way of (an S or X on the table, an
    /// X on the root, a `try_lock`, a timeout, a future alike) first calls
    /// them back, releasing them for the handle, so nobody ever waits for
    /// an idle handle: it only pays the release the handle skipped.
    /// Introspection ([`LockTree::inspect`], [`LockTree::snapshot`]) calls
    /// them back too, so it reports only guards that exist. With `false`,
    /// every guard gives its holds back when it goes.
    ///
    /// ```
    /// use hierlock::{Error, LockTree, Mode};
    /// let tree = LockTree::new();
    /// let users = tree.prepare("/db/users")?;
    /// drop(users.lock(Mode::X)?);            // /db/users stays held, idle
    /// let scan = tree.try_lock("/db", Mode::S)?; // called back, granted
    /// assert_eq!(users.try_lock(Mode::X).unwrap_err(), Error::WouldBlock);
    /// drop(scan);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }

    /// Builds the tree.
    pub fn build(self) -> LockTree {
        LockTree {
            root: Node::new(Path::root(self.sep), true, self.bias),
            table: Table::new(self.idle_nodes, self.bias),
            owners: Owners::default(),
            sep: self.sep,
            max_depth: self.max_depth,
            sticky: self.sticky,
        }
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            sep: DEFAULT_SEPARATOR,
            max_depth: DEFAULT_MAX_DEPTH,
            idle_nodes: DEFAULT_IDLE_NODES,
            bias: Bias::default(),
            sticky: true,
        }
    }
}

impl Default for LockTree {
    fn default() -> Self {
        LockTree::new()
    }
}

impl fmt::Debug for LockTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockTree")
            .field("separator", &self.sep)
            .field("max_depth", &self.max_depth)
            .field("node_count", &self.node_count())
            .field("idle_node_count", &self.idle_node_count())
            .finish()
    }
}

impl LockTree {
    /// An empty tree with separator `/` and `max_depth` 256.
    pub fn new() -> LockTree {
        Builder::default().build()
    }

    /// A builder to choose the separator and depth limit.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The separator of string paths.
    pub fn separator(&self) -> char {
        self.sep
    }

    /// The largest number of components a path may have.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Locks `path` in `mode`, blocking until granted: `mode.intention()` on
    /// every proper ancestor, top-down, then `mode` on the node.
    ///
    /// Waiting is fair: this request queues behind earlier conflicting ones.
    /// Taking a second lock on a thread that already holds one can deadlock
    /// like any nested locking (for example a queued writer between your
    /// two requests); use [`lock_timeout`](Self::lock_timeout) where that
    /// can happen.
    ///
    /// Errors: [`Error::InvalidPath`], [`Error::TooManyHolders`].
    pub fn lock<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Result<Guard<'_>, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::Until(None))?;
        Ok(Guard::new(self, held))
    }

    /// Locks `path` in `mode` only if that needs no waiting at any level;
    /// otherwise [`Error::WouldBlock`] (also when an earlier conflicting
    /// request is queued: `try_lock` never jumps the queue).
    pub fn try_lock<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Result<Guard<'_>, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::Never)?;
        Ok(Guard::new(self, held))
    }

    /// Locks `path` in `mode`, waiting at most `timeout` for the whole
    /// acquisition (all levels together). On [`Error::Timeout`] everything
    /// taken so far is released.
    pub fn lock_timeout<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Guard<'_>, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::timeout(timeout))?;
        Ok(Guard::new(self, held))
    }

    /// `lock(path, Mode::S)`: read the node and everything under it.
    pub fn read<'p>(&self, path: impl IntoPath<'p>) -> Result<Guard<'_>, Error> {
        self.lock(path, Mode::S)
    }

    /// `lock(path, Mode::X)`: own the node and everything under it.
    pub fn write<'p>(&self, path: impl IntoPath<'p>) -> Result<Guard<'_>, Error> {
        self.lock(path, Mode::X)
    }

    /// Locks `path` in `mode` from async code, on any executor.
    ///
    /// The path is checked when this is called: an invalid path makes the
    /// future resolve at once to [`Error::InvalidPath`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves releases every level it had
    /// taken and removes its queue entry; a grant that arrived just before
    /// the drop is released and so handed on to the next waiter. Nothing is
    /// leaked, and no other waiter misses its wake-up. To bound the wait,
    /// race it against your runtime's timer (`tokio::time::timeout`).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use hierlock::{LockTree, Mode};
    /// let tree = LockTree::new();
    /// let g = tree.lock_async("/db", Mode::S).await.unwrap();
    /// assert_eq!(g.mode(), Mode::S);
    /// # });
    /// ```
    pub fn lock_async<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> LockFuture<'_> {
        LockFuture::new(self, self.parse(path).map(ParsedPath::into_owned), mode)
    }

    /// Like [`lock`](Self::lock), returning a `'static` guard that keeps the
    /// tree alive: for guards stored in structs or moved into threads.
    pub fn lock_owned<'p>(
        self: &StdArc<Self>,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> Result<OwnedGuard, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::Until(None))?;
        Ok(OwnedGuard::new(self.clone(), held))
    }

    /// Like [`try_lock`](Self::try_lock), returning an [`OwnedGuard`].
    pub fn try_lock_owned<'p>(
        self: &StdArc<Self>,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> Result<OwnedGuard, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::Never)?;
        Ok(OwnedGuard::new(self.clone(), held))
    }

    /// Like [`lock_timeout`](Self::lock_timeout), returning an [`OwnedGuard`].
    pub fn lock_owned_timeout<'p>(
        self: &StdArc<Self>,
        path: impl IntoPath<'p>,
        mode: Mode,
        timeout: Duration,
    ) -> Result<OwnedGuard, Error> {
        let path = self.parse(path)?;
        let held = self.acquire(&path, mode, Wait::timeout(timeout))?;
        Ok(OwnedGuard::new(self.clone(), held))
    }

    /// Like [`lock_async`](Self::lock_async), resolving to an [`OwnedGuard`];
    /// the future itself is `'static` (spawnable).
    ///
    /// # Cancel safety
    ///
    /// As for [`lock_async`](Self::lock_async).
    pub fn lock_owned_async<'p>(
        self: &StdArc<Self>,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> OwnedLockFuture {
        OwnedLockFuture::new(
            self.clone(),
            self.parse(path).map(ParsedPath::into_owned),
            mode,
        )
    }

    /// The number of live nodes besides the root: nodes somebody holds,
    /// waits on, or keeps with a [`Prepared`](crate::Prepared) handle. It
    /// is 0 once nothing is held, awaited or prepared. Idle nodes kept for
    /// reuse are not counted (see [`idle_node_count`](Self::idle_node_count)).
    pub fn node_count(&self) -> usize {
        let (idle, _) = self.table.idle_counts();
        self.table
            .len()
            .saturating_sub(idle + self.table.kept_only_by_bias())
    }

    /// The number of idle nodes kept for reuse (at most about the
    /// [`Builder::idle_nodes`] capacity).
    pub fn idle_node_count(&self) -> usize {
        self.table.idle_counts().0
    }

    /// Frees every idle node kept for reuse now (for example after a burst
    /// that touched many paths). Nodes in use are not affected.
    pub fn purge_idle(&self) {
        self.table.purge_idle(&self.table.pin());
    }

    pub(crate) fn parse<'p>(&self, path: impl IntoPath<'p>) -> Result<ParsedPath<'p>, Error> {
        path.into_parsed(self.sep, self.max_depth)
    }

    pub(crate) fn table(&self) -> &Table {
        &self.table
    }

    /// Whether prepared handles keep their holds (`Builder::sticky`).
    pub(crate) fn sticky(&self) -> bool {
        self.sticky
    }

    pub(crate) fn owners(&self) -> &Owners {
        &self.owners
    }

    pub(crate) fn root(&self) -> NodeRef {
        NodeRef::from_ref(&self.root)
    }

    /// The node for level `name` (`None`: the root), found or created.
    #[inline]
    pub(crate) fn node(&self, pin: &Pin, name: Option<&str>) -> NodeRef {
        match name {
            None => self.root(),
            Some(name) => self.table.get_or_insert(pin, name, self.sep),
        }
    }

    /// The synchronous walk: every level of `path`, top-down.
    ///
    /// The levels above the node (at most `CHAIN_LEVELS` of them below
    /// the root) come from this thread's chain cache when it has them
    /// (`lookup.rs`, "Chains"): one lookup for all of them instead of one
    /// per level; the node itself is looked up by the whole path.
    /// Otherwise the walk looks up each level and the chain is cached for
    /// next time. The levels are taken with CAS, as before: owner windows
    /// here measured no faster (`docs/bench/benches.md`, "A chain cache").
    #[inline]
    pub(crate) fn acquire(
        &self,
        path: &ParsedPath<'_>,
        mode: Mode,
        wait: Wait,
    ) -> Result<Held, Error> {
        let mut pin = self.table.pin();
        let mut held = Held::new();
        if path.depth == 0 {
            self.walk(&mut pin, &mut held, path, path.prefixes(), mode, wait)?;
            return Ok(held);
        }
        let above = (path.depth - 1).min(CHAIN_LEVELS);
        let name = if above == 0 { "" } else { path.ancestor(above) };
        let chain = if above == 0 {
            None
        } else if let Some(chain) = self.table.find_chain(&pin, name, above) {
            Some(chain)
        } else {
            self.walk(&mut pin, &mut held, path, path.prefixes(), mode, wait)?;
            self.table.remember_chain(name, held.nodes(1..above + 1));
            return Ok(held);
        };
        let m = mode.intention();
        // The chain's pointers are good while the thread stays pinned: a
        // request that parked (unpinned) looks the levels below up again.
        let breaks = pin.breaks();
        for level in 0..=above {
            let node = match &chain {
                Some(chain) if level > 0 => chain.node(level),
                _ => self.root(),
            };
            match self.step(&mut pin, node, None, m, wait, Some(&mut held.slot)) {
                Ok(Some(hold)) => {
                    held.push(node, m, hold);
                    if pin.breaks() != breaks && level < above {
                        return self.walk_rest(pin, held, path, mode, wait);
                    }
                }
                Ok(None) => {
                    // Dead: the walk looks this level up again.
                    self.table.forget_chain(name);
                    // SAFETY: pinned since the chain was found (the node
                    // was found dead, so this request never parked on it).
                    self.table.evict(&pin, unsafe { node.get() });
                    return self.walk_rest(pin, held, path, mode, wait);
                }
                Err(e) => {
                    drop(pin);
                    held.release(self);
                    return Err(e);
                }
            }
        }
        if above + 1 < path.depth {
            let names = path.prefixes_after(name.len());
            self.walk(&mut pin, &mut held, path, names, mode, wait)?;
            return Ok(held);
        }
        // The node itself: its name is the whole path.
        self.take_level(&mut pin, &mut held, Some(&path.text), mode, wait)?;
        Ok(held)
    }

    /// `acquire` from the first level `held` does not have, every level
    /// looked up by name.
    #[cold]
    fn walk_rest(
        &self,
        mut pin: Pin,
        mut held: Held,
        path: &ParsedPath<'_>,
        mode: Mode,
        wait: Wait,
    ) -> Result<Held, Error> {
        let mut names = path.prefixes();
        for _ in 1..held.len() {
            names.next();
        }
        self.walk(&mut pin, &mut held, path, names, mode, wait)?;
        Ok(held)
    }

    /// The level below those `held` has, in `mode`: the node named `name`
    /// (its whole normalized path; `None`: the root), looked up again if
    /// it is found dead. On error everything in `held` is released.
    #[inline(always)]
    pub(crate) fn take_level(
        &self,
        pin: &mut Pin,
        held: &mut Held,
        name: Option<&str>,
        mode: Mode,
        wait: Wait,
    ) -> Result<(), Error> {
        loop {
            let node = self.node(pin, name);
            match self.step(pin, node, None, mode, wait, Some(&mut held.slot)) {
                Ok(Some(hold)) => {
                    held.push(node, mode, hold);
                    return Ok(());
                }
                Ok(None) => {
                    // SAFETY: pinned since `node` was looked up.
                    self.table.evict(pin, unsafe { node.get() });
                }
                Err(e) => {
                    held.release(self);
                    return Err(e);
                }
            }
        }
    }

    /// The walk from the first level `held` does not have yet (`held` has
    /// the levels above it, root first, in `mode`'s intention) down to
    /// `path`'s node; `names` yields the names of the levels below those
    /// (see `ParsedPath::prefixes_after`). The caller is pinned. On error
    /// everything in `held` is released.
    #[inline]
    pub(crate) fn walk(
        &self,
        pin: &mut Pin,
        held: &mut Held,
        path: &ParsedPath<'_>,
        mut names: Prefixes<'_>,
        mode: Mode,
        wait: Wait,
    ) -> Result<(), Error> {
        let start = held.len();
        for level in start..=path.depth {
            let name = if level == 0 { None } else { names.next() };
            let m = if level == path.depth {
                mode
            } else {
                mode.intention()
            };
            self.take_level(pin, held, name, m, wait)?;
        }
        Ok(())
    }

    /// One request on one node, parking the thread if it must wait. A new
    /// request given its guard's `slot` may be held through a bias slot.
    /// `Ok(Some(hold))`: granted (a conversion's always in the word);
    /// `Ok(None)`: the node is dead, look it up again.
    #[inline(always)]
    pub(crate) fn step(
        &self,
        pin: &mut Pin,
        node: NodeRef,
        from: Option<Mode>,
        to: Mode,
        wait: Wait,
        slot: Option<&mut u8>,
    ) -> Result<Option<Hold>, Error> {
        // SAFETY: the caller is pinned since it looked `node` up (or holds
        // it, for a conversion).
        let n = unsafe { node.get() };
        let slots = slot.map(|s| (&self.table, s));
        match n.acquire(from, to, wait.may_wait(), true, slots, Waiter::for_thread)? {
            Acquire::Granted(hold) => Ok(Some(hold)),
            Acquire::Dead => Ok(None),
            Acquire::Wait(waiter) => self
                .park(pin, n, waiter, wait)
                .map(|granted| granted.then_some(Hold::WORD)),
        }
    }

    /// Parks until `waiter` is granted or the deadline passes.
    #[cold]
    pub(crate) fn park(
        &self,
        pin: &mut Pin,
        n: &Node,
        waiter: Arc<Waiter>,
        wait: Wait,
    ) -> Result<bool, Error> {
        let deadline = match wait {
            Wait::Until(d) => d,
            Wait::Never => unreachable!("queued a request that may not wait"),
        };
        // While queued, the node's state word is non-zero, so the node stays
        // allocated without the pin.
        let granted = pin.unpinned(|| waiter.park_until(deadline));
        if granted || n.cancel(&waiter, &self.table, pin) {
            // A grant that raced with the deadline is kept: the caller's
            // next level sees the deadline has passed.
            Ok(true)
        } else {
            Err(Error::Timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<LockTree>();
        assert_send_sync::<Guard<'static>>();
        assert_send_sync::<OwnedGuard>();
        assert_send_sync::<LockFuture<'static>>();
        assert_send_sync::<OwnedLockFuture>();
    }

    /// A node of a thread's cached chain killed (as the idle cache's
    /// eviction does) but not yet out of the index: the next lock of the
    /// path finds it dead and looks that level up again.
    #[cfg(not(loom))]
    #[test]
    fn a_dead_node_in_a_cached_chain_is_looked_up_again() {
        let tree = LockTree::new();
        drop(tree.lock("/a/b/c", Mode::X).unwrap());
        let pin = tree.table.pin();
        let old = tree.table.get(&pin, "a/b").unwrap();
        // SAFETY: pinned. Killed here rather than by the idle cache's
        // eviction, so the cache keeps a stale slot: nothing below pops it.
        assert!(unsafe { old.get() }.state.uncache());
        let g = tree.lock("/a/b/c", Mode::X).unwrap();
        let new = tree.table.get(&pin, "a/b").unwrap();
        assert_ne!(new, old);
        // SAFETY: pinned (and held).
        assert_eq!(unsafe { new.get() }.state.load().count(Mode::IX), 1);
        assert_eq!(
            tree.try_lock("/a/b", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        drop(g);
        assert!(tree.try_lock("/a/b", Mode::X).is_ok());
    }

    #[test]
    fn lock_unlock_reclaims_nodes() {
        let tree = LockTree::new();
        let g = tree.lock("/a/b/c", Mode::X).unwrap();
        assert_eq!(tree.node_count(), 3);
        drop(g);
        assert_eq!(tree.node_count(), 0);
        assert_eq!(tree.root.state.load().0, 0);
    }

    #[test]
    fn failed_try_lock_releases_the_ancestors_it_took() {
        let tree = LockTree::new();
        let x = tree.lock("/a/b", Mode::X).unwrap();
        assert_eq!(
            tree.try_lock("/a/b/c", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        assert_eq!(tree.node_count(), 2);
        let root = tree.root.state.load();
        assert_eq!(root.count(Mode::IX), 1);
        assert_eq!(root.count(Mode::IS), 0);
        drop(x);
        assert_eq!(tree.node_count(), 0);
    }
}
