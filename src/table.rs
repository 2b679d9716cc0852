//! The table of live nodes, and their reclamation.
//!
//! Nodes other than the root live in an [`Index`] (`index.rs`) keyed by
//! their normalized path, so every ancestor of a path is found by looking
//! up a prefix of the path's own text (no allocation). The entry *is* the
//! node: the index holds node pointers and compares names through them, so
//! a node costs no entry allocation and no second copy of its name. In
//! front of the index sits each thread's lookup cache (`lookup.rs`).
//!
//! # Life of a node
//!
//! 1. `get_or_insert` finds the node or allocates and inserts it. The caller
//!    is pinned (crossbeam-epoch), so the node's memory stays valid until it
//!    unpins, whatever else happens to the node.
//! 2. The caller's CAS on the state word makes it a holder or a waiter;
//!    a node with a holder or a waiter has a non-zero state word and is
//!    never reclaimed.
//! 3. Whoever brings the word to 0 (last release, last waiter leaving)
//!    calls [`Table::unlink`]. With the idle-node cache on (the default;
//!    see `idle.rs`) the node is parked there and only the cache's eviction
//!    takes the next step, for the oldest node of a full shard; with it off,
//!    at once: the CAS `0 -> DEAD` (from the cache: `CACHED -> DEAD`) marks
//!    it dead forever, then it is taken out of the index *if the index
//!    still holds this node*.
//! 4. An acquirer that found the node before step 3 fails its CAS on `DEAD`,
//!    calls [`Table::evict`] itself (in case it won the race to the index),
//!    and looks the path up again, finding a fresh node.
//! 5. Exactly one [`Index::remove`] succeeds for a given node; that thread
//!    invalidates the lookup caches' pointers to it (a stamp bump, see
//!    `lookup.rs`), then defers the node's destruction to the epoch, so it
//!    is freed only once every thread that might have read the pointer has
//!    unpinned.
//!
//! # Why not `dashmap`, and not `papaya`
//!
//! The design notes put the nodes in a `DashMap`; measurements moved them.
//!
//! - **`dashmap`** (until this index): a lookup read-locks its shard, two
//!   atomic read-modify-writes on a lock word that every thread looking up
//!   that shard writes (`index.rs` has the two-thread figures). Replacing
//!   it by the index took a lock+unlock of a random one of 1024 rows from
//!   227 to 180 ns on one thread, X at depth 4 from 195 to 180 ns, depth 1
//!   from 110 to 98 ns (a timing loop of 3 M ops, this 2-core VM), and the
//!   comparison harness's database mix from 2.48x to 2.67x the textbook
//!   manager. It did not make that mix scale on two threads (0.79x, as
//!   before): what limits it there is the table's state word, whose bias
//!   the 1% S on the table keeps revoking (without that S it scales
//!   1.48x; with the bias off, 0.55x).
//! - **`papaya`** (a lock-free map whose lookups also write nothing) was
//!   tried earlier: as fast on warm paths, but a node created and
//!   reclaimed per lock cost 524-590 ns against 320-353 ns, because it
//!   allocates every entry and retires it through its own collector (2.2
//!   allocations per new node instead of 1). The index's entry is the
//!   node, retired through the same epoch.
//!
//! Under `cfg(loom)` the table is a mutex-protected `HashMap` and removed
//! nodes are kept until the table drops (loom cannot model the epoch
//! collector); the state-word and queue protocol above is unchanged. (With
//! the index there, each lookup's loads became scheduling points and one
//! model ran for over 15 minutes; the index has loom models of its own, in
//! `index.rs`.)

use std::ptr::NonNull;

use std::collections::VecDeque;

use crate::bias::{Bias, Slots, MAX_BIASED};
use crate::idle::IdleCache;
#[cfg(not(loom))]
use crate::index::Index;
use crate::node::Node;
use crate::state::StateWord;
use crate::sync::{Mutex, Ordering};

/// A pointer to a live node.
///
/// Only the table makes these, while the caller is pinned. A `NodeRef` may
/// be dereferenced (through [`NodeRef::get`]) while the caller is pinned,
/// while the caller holds or waits on the node or a live prepared handle
/// pins it (its state word is then non-zero, so it cannot have been
/// unlinked and freed), or while the node sits in the idle cache and the
/// caller holds its shard lock or has popped it and not settled it yet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct NodeRef(NonNull<Node>);

// SAFETY: a `NodeRef` is a shared pointer to a `Node`, which is `Sync`
// (atomics and a mutex); sending or sharing the pointer between threads is
// sending a `&Node`, and its validity is governed by holding/pinning, which
// is not tied to a thread.
unsafe impl Send for NodeRef {}
// SAFETY: as above.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    pub(crate) fn from_ref(node: &Node) -> Self {
        NodeRef(NonNull::from(node))
    }

    pub(crate) fn as_non_null(self) -> NonNull<Node> {
        self.0
    }

    pub(crate) fn from_non_null(ptr: NonNull<Node>) -> Self {
        NodeRef(ptr)
    }

    /// The node's state word alone, without making a reference to the
    /// whole node: for a release that may be the last thing this thread
    /// does with the node (another thread may free it right after the
    /// CAS, which is allowed under a reference to atomics only).
    ///
    /// # Safety
    ///
    /// As for [`NodeRef::get`], at the time of the call.
    #[inline]
    pub(crate) unsafe fn state<'a>(self) -> &'a StateWord {
        // SAFETY: by the caller's contract the node is alive now; the
        // place is projected from the raw pointer, so no `&Node` is made.
        unsafe { &(*self.0.as_ptr()).state }
    }

    /// The node's slots, without making a reference to the whole node (as
    /// for [`NodeRef::state`]: a release through a slot may be the last
    /// thing this thread does with the node).
    ///
    /// # Safety
    ///
    /// As for [`NodeRef::get`], at the time of the call.
    #[inline]
    pub(crate) unsafe fn slots<'a>(self) -> Option<&'a Slots> {
        // SAFETY: by the caller's contract the node is alive now; the
        // place is projected from the raw pointer, so no `&Node` is made.
        let p = unsafe { &(*self.0.as_ptr()).slots }.load(Ordering::Acquire);
        // SAFETY: the slots live as long as the node (see `Node::slots`).
        unsafe { p.as_ref() }
    }

    /// The node.
    ///
    /// # Safety
    ///
    /// The caller must be pinned since it obtained this `NodeRef` from the
    /// table, or hold or wait on the node (see the type's docs), or have
    /// popped it from the idle cache and not settled it yet, for all of
    /// `'a`.
    #[inline]
    pub(crate) unsafe fn get<'a>(self) -> &'a Node {
        // SAFETY: by the caller's contract the node has not been freed and
        // will not be for `'a`; nodes are never mutated except through
        // their interior-mutable fields.
        unsafe { self.0.as_ref() }
    }
}

#[cfg(not(loom))]
mod imp {
    use super::*;
    use crate::lookup::{self, Stamps};
    pub(crate) use crate::lookup::{Chain, CHAIN_LEVELS};

    /// Proof that the current thread is pinned in the epoch.
    pub(crate) struct Pin {
        guard: crossbeam_epoch::Guard,
        /// Times [`unpinned`](Self::unpinned) ran: node pointers found
        /// before a change of this count may have been freed since.
        breaks: u32,
    }

    impl Pin {
        /// Pins the current thread (re-entrant: cheap if already pinned).
        #[inline]
        pub(crate) fn new() -> Self {
            Pin {
                guard: crossbeam_epoch::pin(),
                breaks: 0,
            }
        }

        /// Runs `f` unpinned (to park without holding back reclamation);
        /// only `NodeRef`s of nodes the caller holds or waits on stay valid.
        pub(crate) fn unpinned<R>(&mut self, f: impl FnOnce() -> R) -> R {
            self.breaks = self.breaks.wrapping_add(1);
            self.guard.repin_after(f)
        }

        /// Changes whenever the pin is broken (see `unpinned`): a pointer
        /// found under one value must not be followed under another
        /// unless something else keeps its node.
        #[inline]
        pub(crate) fn breaks(&self) -> u32 {
            self.breaks
        }

        /// Drops the box at `ptr` once every thread pinned now has
        /// unpinned: for what was just made unreachable (a removed node, a
        /// replaced index array) and may still be used by pinned threads.
        /// The box is remade only then: a `Box` asserts it is the only
        /// pointer, which is not true while others may still use it.
        ///
        /// # Safety
        ///
        /// `ptr` must come from `Box::into_raw` or `Box::leak` (with that
        /// pointer's provenance), be unreachable for threads that pin from
        /// now on, and be freed by no one else.
        pub(crate) unsafe fn defer_drop<T: Send + 'static>(&self, ptr: NonNull<T>) {
            /// The owning pointer, sent to whichever thread runs the drop.
            struct Owned<T>(NonNull<T>);
            // SAFETY: sending it sends the `T` it owns, which is `Send`.
            unsafe impl<T: Send> Send for Owned<T> {}
            impl<T> Owned<T> {
                /// # Safety
                ///
                /// Nobody else uses the pointee any more.
                unsafe fn drop_now(self) {
                    // SAFETY: by the caller and `defer_drop`'s contract.
                    drop(unsafe { Box::from_raw(self.0.as_ptr()) });
                }
            }
            let owned = Owned(ptr);
            // SAFETY: the epoch runs this after every thread pinned now has
            // unpinned, and threads pinning later cannot reach `ptr`.
            self.guard.defer(move || unsafe { owned.drop_now() });
        }
    }

    /// The node table.
    pub(crate) struct Table {
        index: Index,
        /// This table's part of the per-thread lookup cache.
        stamps: Stamps,
        pub(super) idle: IdleCache,
        pub(super) biased: Mutex<VecDeque<NodeRef>>,
        pub(super) bias: Bias,
    }

    impl Table {
        pub(crate) fn new(idle_capacity: usize, bias: Bias) -> Self {
            Table {
                index: Index::new(),
                stamps: Stamps::new(),
                idle: IdleCache::new(idle_capacity),
                biased: Mutex::new(VecDeque::new()),
                bias,
            }
        }

        #[inline]
        pub(crate) fn pin(&self) -> Pin {
            Pin::new()
        }

        /// The node named `name`, if it is in the table (possibly dead).
        pub(crate) fn get(&self, pin: &Pin, name: &str) -> Option<NodeRef> {
            self.index.get(pin, name)
        }

        /// Every node in the table (possibly dead ones), for snapshots.
        pub(crate) fn nodes(&self, pin: &Pin) -> Vec<NodeRef> {
            self.index.nodes(pin)
        }

        /// The node named `name` (normalized, non-root), created if missing.
        /// It may be dead; the caller's CAS finds out.
        #[inline(always)]
        pub(crate) fn get_or_insert(&self, pin: &Pin, name: &str, sep: char) -> NodeRef {
            let h = lookup::hash(name);
            // The caller is pinned.
            if let Some(node) = self.stamps.find(name, h) {
                return node;
            }
            let ticket = self.stamps.ticket(h);
            let node = self
                .index
                .get_or_insert(pin, name, || Node::boxed(name, sep, self.bias));
            self.stamps.remember(ticket, h, node);
            node
        }

        /// This thread's cached nodes of the first `len` levels of the
        /// path whose level `len` is named `name` (`1..=CHAIN_LEVELS`),
        /// if they are all still in the table (some may be dead; the
        /// caller's CASes find out).
        #[inline]
        pub(crate) fn find_chain(&self, _pin: &Pin, name: &str, len: usize) -> Option<Chain> {
            // The caller is pinned.
            self.stamps.find_chain(name, lookup::hash(name), len)
        }

        /// Caches `nodes`, levels 1 to `nodes.len()` of a path whose level
        /// `nodes.len()` is named `name`, for [`find_chain`](Self::find_chain).
        /// The caller holds every one of them.
        pub(crate) fn remember_chain(
            &self,
            name: &str,
            nodes: impl ExactSizeIterator<Item = NodeRef>,
        ) {
            self.stamps.remember_chain(lookup::hash(name), nodes);
        }

        /// Drops this thread's cached chain for `name`: one of its nodes is
        /// dead.
        pub(crate) fn forget_chain(&self, name: &str) {
            self.stamps.forget_chain(lookup::hash(name));
        }

        /// Takes `node` out of the index if it is still there, and if so
        /// schedules its destruction. `node` must be dead.
        pub(crate) fn evict(&self, pin: &Pin, node: &Node) {
            debug_assert!(node.state.load().is_dead());
            let target = NodeRef::from_ref(node);
            let h = lookup::hash(node.path.as_str());
            self.stamps.forget(h, target);
            if let Some(owned) = self.index.remove(pin, target, node.path.as_str()) {
                self.stamps.invalidate(h);
                // SAFETY: the node was taken out of the index by this call
                // (exactly one removal succeeds per node), every cached
                // pointer to it was invalidated, and it came from `Box::new`
                // in `Node::boxed` (`owned` is the index's pointer, with the
                // allocation's provenance): we own it. No new thread can
                // find it; threads that found it earlier are pinned, and
                // the epoch drops it only after they all unpin.
                unsafe { pin.defer_drop(owned.as_non_null()) };
            }
        }

        /// Number of nodes in the table (dead ones not yet removed included).
        pub(crate) fn len(&self) -> usize {
            self.index.len()
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            // Nodes still here are idle ones kept by the idle cache, nodes
            // kept by a guard or prepared handle leaked with `mem::forget`,
            // or dead entries; nobody can reach them any more.
            let pin = self.pin();
            for n in self.index.nodes(&pin) {
                // SAFETY: `&mut self`: no other thread uses the table, and
                // each node is in the index exactly once.
                drop(unsafe { Box::from_raw(n.as_non_null().as_ptr()) });
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    use std::collections::HashMap;

    use super::*;

    /// Under loom there is no epoch: a unit proof.
    pub(crate) struct Pin;

    impl Pin {
        pub(crate) fn unpinned<R>(&mut self, f: impl FnOnce() -> R) -> R {
            f()
        }

        /// No epoch, nothing freed under loom.
        pub(crate) fn breaks(&self) -> u32 {
            0
        }
    }

    /// The node map, for loom: a mutex-protected `HashMap`; unlinked nodes
    /// stay allocated until the table drops.
    pub(crate) struct Table {
        map: Mutex<HashMap<Box<str>, NodeRef>>,
        graveyard: Mutex<Vec<NodeRef>>,
        pub(super) idle: IdleCache,
        pub(super) biased: Mutex<VecDeque<NodeRef>>,
        pub(super) bias: Bias,
    }

    impl Table {
        pub(crate) fn new(idle_capacity: usize, bias: Bias) -> Self {
            Table {
                map: Mutex::new(HashMap::new()),
                graveyard: Mutex::new(Vec::new()),
                idle: IdleCache::new(idle_capacity),
                biased: Mutex::new(VecDeque::new()),
                bias,
            }
        }

        pub(crate) fn pin(&self) -> Pin {
            Pin
        }

        pub(crate) fn get(&self, _pin: &Pin, name: &str) -> Option<NodeRef> {
            self.map.lock().get(name).copied()
        }

        pub(crate) fn nodes(&self, _pin: &Pin) -> Vec<NodeRef> {
            self.map.lock().values().copied().collect()
        }

        pub(crate) fn get_or_insert(&self, _pin: &Pin, name: &str, sep: char) -> NodeRef {
            let mut map = self.map.lock();
            if let Some(n) = map.get(name) {
                return *n;
            }
            let fresh = NodeRef(NonNull::from(Box::leak(Node::boxed(name, sep, self.bias))));
            map.insert(name.into(), fresh);
            fresh
        }

        pub(crate) fn evict(&self, _pin: &Pin, node: &Node) {
            assert!(node.state.load().is_dead(), "evicting a live node");
            let target = NodeRef::from_ref(node);
            let mut map = self.map.lock();
            if map.get(node.path.as_str()) == Some(&target) {
                map.remove(node.path.as_str());
                self.graveyard.lock().push(target);
            }
        }

        pub(crate) fn len(&self) -> usize {
            self.map.lock().len()
        }

        /// No per-thread cache under loom (it relies on the epoch).
        pub(crate) fn find_chain(&self, _pin: &Pin, _name: &str, _len: usize) -> Option<Chain> {
            None
        }

        pub(crate) fn remember_chain(
            &self,
            _name: &str,
            _nodes: impl ExactSizeIterator<Item = NodeRef>,
        ) {
        }

        pub(crate) fn forget_chain(&self, _name: &str) {}
    }

    /// Never made under loom.
    pub(crate) enum Chain {}

    impl Chain {
        pub(crate) fn node(&self, _level: usize) -> NodeRef {
            match *self {}
        }
    }

    pub(crate) const CHAIN_LEVELS: usize = 6;

    impl Drop for Table {
        fn drop(&mut self) {
            let live = self.map.lock().drain().map(|(_, n)| n).collect::<Vec<_>>();
            for n in live.into_iter().chain(self.graveyard.lock().drain(..)) {
                // SAFETY: `&mut self`: nobody else can reach the table.
                drop(unsafe { Box::from_raw(n.0.as_ptr()) });
            }
        }
    }
}

pub(crate) use imp::{Pin, Table, CHAIN_LEVELS};

impl Table {
    /// Retires `node` if it is idle: into the idle cache (evicting the
    /// oldest node of a full shard), or, with the cache off, marks it dead
    /// and removes it from the map.
    pub(crate) fn unlink(&self, pin: &Pin, node: &Node) {
        if !self.idle.enabled() {
            if node.state.try_kill() {
                self.evict(pin, node);
            }
            return;
        }
        if !node.state.try_cache() {
            return;
        }
        if let Some(out) = self.idle.push(NodeRef::from_ref(node)) {
            self.settle(pin, out);
        }
    }

    /// Settles a node popped from the idle cache.
    fn settle(&self, pin: &Pin, popped: NodeRef) {
        // SAFETY: popped from the cache and not settled yet: only the
        // popper kills a cached node, so it is alive.
        let n = unsafe { popped.get() };
        if n.state.uncache() {
            self.evict(pin, n);
        }
    }

    /// Revokes every biased node (see `bias.rs`), then empties the idle
    /// cache, freeing every cached node nobody uses.
    pub(crate) fn purge_idle(&self, pin: &Pin) {
        let biased: Vec<NodeRef> = self.biased.lock().drain(..).collect();
        for n in biased {
            // SAFETY: listed nodes are pinned by the list until unlisted.
            unsafe { n.get() }.unlist(self, pin);
        }
        for n in self.idle.drain() {
            self.settle(pin, n);
        }
    }

    /// Puts a node just biased on the list of biased nodes; returns the
    /// oldest one if the list is full (the caller unlists it).
    pub(crate) fn list_biased(&self, node: NodeRef) -> Option<NodeRef> {
        let mut list = self.biased.lock();
        list.push_back(node);
        if list.len() > MAX_BIASED {
            list.pop_front()
        } else {
            None
        }
    }

    /// The listed nodes nothing but the list keeps (neither held, awaited
    /// nor prepared).
    pub(crate) fn kept_only_by_bias(&self) -> usize {
        self.biased
            .lock()
            .iter()
            // SAFETY: listed nodes are pinned by the list; the list lock
            // keeps them listed while we look.
            .filter(|n| unsafe { n.get() }.kept_only_by_bias())
            .count()
    }

    /// The cached nodes that are idle right now, and all cached nodes.
    pub(crate) fn idle_counts(&self) -> (usize, usize) {
        self.idle.count_idle()
    }
}
