//! The concurrent map of live nodes, and their reclamation.
//!
//! Nodes other than the root live in a [`DashMap`] keyed by their
//! normalized path, so every ancestor of a path is found by looking up a
//! prefix of the path's own text (no allocation). The key *is* the node: a
//! pointer whose `Hash`/`Eq`/`Borrow<str>` go through the node's path, so a
//! node costs one map entry and no second copy of its name.
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
//!    it dead forever, then the entry is removed *if it still points to this
//!    node*.
//! 4. An acquirer that found the node before step 3 fails its CAS on `DEAD`,
//!    calls [`Table::evict`] itself (in case it won the race to the map),
//!    and looks the path up again, finding a fresh node.
//! 5. Exactly one `remove_if` succeeds for a given node; that thread
//!    invalidates the lookup caches' pointers to it (a stamp bump, see
//!    `lookup.rs`), then defers the node's destruction to the epoch, so it
//!    is freed only once every thread that might have read the pointer has
//!    unpinned.
//!
//! # Why `dashmap`
//!
//! A `DashMap` lookup read-locks its shard: two atomic read-modify-writes
//! per level on a cache line other threads may share. A lock-free map
//! (`papaya`, lookups that write no shared memory, keys hashed once and
//! passed through) was tried and measured in the same run
//! (a timing loop of lock+unlock, 2-core VM, load average 2-3): warm depth 4 280-322 ns vs
//! 280-312 ns with `dashmap`, warm depth 1 147-155 vs 143-147 ns, but a
//! node created and reclaimed per lock cost 524-590 ns vs 320-353 ns at
//! depth 1 (papaya allocates each entry and retires it through its own
//! collector: 2.2 allocations per new node instead of 1). So the map stays
//! `dashmap`, and the lookup cost is attacked by not looking up at all:
//! prepared paths, and a per-thread cache of the nodes each thread found
//! last (`lookup.rs`), whose hits write no shared memory. That cache took
//! an uncontended depth-4 lock+unlock from 1592 to 1328 instructions and
//! 271-286 to 181-210 ns (S and X with the parent held; the evicting
//! thread pays one more atomic add per node it frees).
//!
//! Under `cfg(loom)` the map is a mutex-protected `HashMap` and unlinked
//! nodes are kept until the table drops (loom cannot model the epoch
//! collector); the state-word and queue protocol above is unchanged.

use std::ptr::NonNull;

use std::collections::VecDeque;

use crate::bias::{Bias, Slots, MAX_BIASED};
use crate::idle::IdleCache;
use crate::node::Node;
use crate::path::Path;
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
    use std::borrow::Borrow;
    use std::hash::{Hash, Hasher};

    use dashmap::mapref::entry::Entry;
    use dashmap::DashMap;

    use super::*;
    use crate::lookup::{self, Stamps};

    /// A map key that is the node itself, hashed and compared by its path.
    struct NodeKey(NodeRef);

    impl NodeKey {
        fn name(&self) -> &str {
            // SAFETY: a key is only read while it is in the map or being
            // inserted by its creator. A node is removed from the map
            // before its destruction is deferred, and removal waits for the
            // shard's lock, which every reader of the key holds.
            unsafe { self.0.get() }.path.as_str()
        }
    }

    impl Hash for NodeKey {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.name().hash(state)
        }
    }

    impl PartialEq for NodeKey {
        fn eq(&self, other: &Self) -> bool {
            self.name() == other.name()
        }
    }

    impl Eq for NodeKey {}

    impl Borrow<str> for NodeKey {
        fn borrow(&self) -> &str {
            self.name()
        }
    }

    /// Proof that the current thread is pinned in the epoch.
    pub(crate) struct Pin(crossbeam_epoch::Guard);

    impl Pin {
        /// Runs `f` unpinned (to park without holding back reclamation);
        /// only `NodeRef`s of nodes the caller holds or waits on stay valid.
        pub(crate) fn unpinned<R>(&mut self, f: impl FnOnce() -> R) -> R {
            self.0.repin_after(f)
        }
    }

    /// The node map.
    pub(crate) struct Table {
        map: DashMap<NodeKey, (), foldhash::fast::RandomState>,
        /// This table's part of the per-thread lookup cache.
        stamps: Stamps,
        pub(super) idle: IdleCache,
        pub(super) biased: Mutex<VecDeque<NodeRef>>,
        pub(super) bias: Bias,
    }

    impl Table {
        pub(crate) fn new(idle_capacity: usize, bias: Bias) -> Self {
            // More shards than dashmap's default (4 x cores) so unrelated
            // paths rarely share a shard lock's cache line.
            Table {
                map: DashMap::with_hasher_and_shard_amount(Default::default(), 64),
                stamps: Stamps::new(),
                idle: IdleCache::new(idle_capacity),
                biased: Mutex::new(VecDeque::new()),
                bias,
            }
        }

        #[inline]
        pub(crate) fn pin(&self) -> Pin {
            Pin(crossbeam_epoch::pin())
        }

        /// The node named `name`, if it is in the map (possibly dead).
        pub(crate) fn get(&self, _pin: &Pin, name: &str) -> Option<NodeRef> {
            self.map.get(name).map(|e| e.key().0)
        }

        /// Every node in the map (possibly dead ones), for snapshots.
        pub(crate) fn nodes(&self, _pin: &Pin) -> Vec<NodeRef> {
            self.map.iter().map(|e| e.key().0).collect()
        }

        /// The node named `name` (normalized, non-root), created if missing.
        /// It may be dead; the caller's CAS finds out.
        #[inline]
        pub(crate) fn get_or_insert(&self, _pin: &Pin, name: &str, sep: char) -> NodeRef {
            let h = lookup::hash(name);
            // The caller is pinned.
            if let Some(node) = self.stamps.find(name, h) {
                return node;
            }
            let ticket = self.stamps.ticket(h);
            let node = match self.map.get(name) {
                Some(entry) => entry.key().0,
                None => self.insert(name, sep),
            };
            self.stamps.remember(ticket, h, node);
            node
        }

        #[cold]
        fn insert(&self, name: &str, sep: char) -> NodeRef {
            let fresh = NodeRef(NonNull::from(Box::leak(Box::new(Node::new(
                Path::from_normalized(name, sep),
                false,
                self.bias,
            )))));
            match self.map.entry(NodeKey(fresh)) {
                Entry::Occupied(o) => {
                    let existing = o.key().0;
                    drop(o);
                    // SAFETY: `fresh` was never published; we own it.
                    drop(unsafe { Box::from_raw(fresh.0.as_ptr()) });
                    existing
                }
                Entry::Vacant(v) => {
                    v.insert(());
                    fresh
                }
            }
        }

        /// Removes `node` from the map if the map still points to it, and
        /// if so schedules its destruction. `node` must be dead.
        pub(crate) fn evict(&self, pin: &Pin, node: &Node) {
            debug_assert!(node.state.load().is_dead());
            let target = NodeRef::from_ref(node);
            let h = lookup::hash(node.path.as_str());
            self.stamps.forget(h, target);
            if let Some((key, ())) = self.map.remove_if(node.path.as_str(), |k, _| k.0 == target) {
                self.stamps.invalidate(h);
                struct SendPtr(NonNull<Node>);
                // SAFETY: the node is unreachable from the map and dead; the
                // closure only frees it, on whichever thread runs it.
                unsafe impl Send for SendPtr {}
                let ptr = SendPtr(key.0 .0);
                // SAFETY: the node was removed from the map by this call
                // (exactly one remove succeeds per node) and every cached
                // pointer to it invalidated, so no new thread can find it;
                // threads that found it earlier are pinned, and the epoch
                // runs this only after they all unpin.
                unsafe {
                    pin.0.defer_unchecked(move || {
                        let p = ptr;
                        drop(Box::from_raw(p.0.as_ptr()));
                    });
                }
            }
        }

        /// Number of nodes in the map (dead ones not yet removed included).
        pub(crate) fn len(&self) -> usize {
            self.map.len()
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            // Nodes still here are idle ones kept by the idle cache, nodes
            // kept by a guard or prepared handle leaked with `mem::forget`,
            // or dead entries; nobody can reach them any more.
            for entry in self.map.iter() {
                // SAFETY: `&mut self`: no other thread uses the table, and
                // each node is in the map exactly once.
                drop(unsafe { Box::from_raw(entry.key().0 .0.as_ptr()) });
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
            let fresh = NodeRef(NonNull::from(Box::leak(Box::new(Node::new(
                Path::from_normalized(name, sep),
                false,
                self.bias,
            )))));
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
    }

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

pub(crate) use imp::{Pin, Table};

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
