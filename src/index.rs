//! The node index: every node in the table, found by name, by lookups that
//! take no lock and write no shared memory.
//!
//! # Why not `dashmap`
//!
//! A `DashMap` lookup read-locks its shard: two atomic read-modify-writes
//! on the shard's lock word. One thread pays for the atomics; two threads
//! looking up names of one map also pull the lock words back and forth
//! between the cores: 1024 names looked up at random, one thread
//! 23.9 M/s, two threads 20.2 M/s together (0.85x), where a map whose
//! lookups write nothing (papaya) did 22.2 and 43.5 M/s (1.96x) (a scratch
//! loop, this 2-core VM). papaya itself allocates an entry per insert (two
//! allocations per new node instead of one, measured in `table.rs`); here
//! the node is the entry. What the switch bought is in `table.rs`.
//!
//! # Layout
//!
//! [`SHARDS`] shards, picked by the top bits of the name's hash (a seeded
//! `foldhash` of the whole name: names of one directory differ anywhere).
//! Each shard is an open-addressing array of node pointers, probed
//! linearly from the hash's low bits. A slot is *empty* (null), holds a
//! *node*, or a *tombstone* (its node was removed). The node is the entry
//! and its name the key: no allocation besides the node.
//!
//! # Invariants, per shard
//!
//! 1. Writers (insert, remove, rebuild) hold the shard's mutex. Lookups
//!    hold nothing.
//! 2. A slot of an array never becomes empty again once written: empty ->
//!    node -> tombstone -> node ... Inserts reuse tombstones.
//! 3. At most half the slots of an array are ever non-empty (`used`,
//!    counted under the mutex); an insert that would pass that rebuilds
//!    the array instead. So a probe, which stops at the first empty slot,
//!    ends within one pass whatever writers do meanwhile (2: the non-empty
//!    slots only grow, and never past half).
//! 4. A name is in at most one slot of the current array: an insert looks
//!    for it first, under the mutex.
//! 5. A rebuild copies the nodes (not the tombstones) to a new array,
//!    publishes it with a `Release` store, and retires the old one, which
//!    is never written again. A shard whose nodes fell to a sixteenth of
//!    its array is rebuilt smaller on a removal.
//!
//! # What a lookup may see
//!
//! - **A hit:** a node of that name that was in the index at some moment of
//!   the lookup. It may be dead already (killed, removal pending): callers
//!   find out with their CAS on its state word, as they always have.
//! - **A miss, although the name is there:** it was inserted during the
//!   lookup (into a tombstone the probe had passed, or into a newer
//!   array). A miss is therefore never final: [`Index::get_or_insert`]
//!   looks again under the mutex before it creates a node.
//!
//! # Memory
//!
//! Lookups run pinned (crossbeam-epoch). A retired array is freed through
//! the epoch, so a pinned lookup still reading it stays valid. Nodes are
//! freed by the table, through the epoch, after [`Index::remove`] took them
//! out: a pinned lookup that loaded a node's pointer keeps it valid, and a
//! lookup pinned after the removal's deferral sees the tombstone (or a
//! later array). The same argument covers an old array: a node removed
//! after a rebuild is removed from the new array, published before.
//!
//! Under loom there is no epoch: retired arrays stay allocated until the
//! index drops, and there is one shard of two slots, so the models below
//! rebuild it at the second insert. The table does not use the index under
//! loom (see `table.rs`); the models here check it alone:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib index::
//! ```

use std::hash::BuildHasher;
use std::ptr::{self, NonNull};

use crate::node::Node;
use crate::path::same;
use crate::sync::{AtomicPtr, Mutex, Ordering};
use crate::table::{NodeRef, Pin};

/// Shards per index (a power of two).
const SHARDS: usize = if cfg!(loom) { 1 } else { 64 };

/// Slots of the smallest array (a power of two).
const MIN_SLOTS: usize = if cfg!(loom) { 2 } else { 16 };

/// The hasher: seeded per index; fixed under loom, whose replays must see
/// the same placement every time.
#[cfg(not(loom))]
type Hasher = foldhash::fast::RandomState;
#[cfg(loom)]
type Hasher = foldhash::fast::FixedState;

/// A removed node's slot. A non-null, aligned address no allocation has
/// (`NonNull::dangling`); never dereferenced.
#[inline]
fn tombstone() -> *mut Node {
    NonNull::<Node>::dangling().as_ptr()
}

/// The index. See the module docs.
pub(crate) struct Index {
    shards: Box<[Shard]>,
    hasher: Hasher,
}

/// One shard, on lines of its own.
#[repr(align(128))]
struct Shard {
    /// The current array; never null. Written only under `writer`.
    array: AtomicPtr<Array>,
    writer: Mutex<Writer>,
}

/// A shard's writer-side counts.
struct Writer {
    /// Non-empty slots of the current array (nodes and tombstones).
    used: usize,
    /// Nodes in the current array.
    live: usize,
    /// Arrays replaced by a rebuild (loom only; with the epoch they are
    /// deferred instead).
    #[cfg(loom)]
    retired: Vec<NonNull<Array>>,
}

/// One open-addressing array.
struct Array {
    mask: usize,
    slots: Box<[AtomicPtr<Node>]>,
}

impl Array {
    fn new(len: usize) -> Box<Array> {
        debug_assert!(len.is_power_of_two());
        Box::new(Array {
            mask: len - 1,
            slots: (0..len).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
        })
    }

    /// The probe sequence of hash `h`: every slot once, from `h`'s.
    #[inline]
    fn probe(&self, h: u64) -> impl Iterator<Item = &AtomicPtr<Node>> {
        let start = h as usize & self.mask;
        (0..=self.mask).map(move |i| &self.slots[(start + i) & self.mask])
    }

    /// The node named `name` (hash `h`), if this array has it.
    ///
    /// The caller must be pinned (or hold the shard's mutex).
    #[inline]
    fn find(&self, name: &str, h: u64) -> Option<NodeRef> {
        for slot in self.probe(h) {
            let p = slot.load(Ordering::Acquire);
            if p.is_null() {
                return None;
            }
            if p == tombstone() {
                continue;
            }
            // SAFETY: `p` was in the index when loaded and the caller is
            // pinned since before (or holds the mutex, so it is still
            // there): the node is freed only after its removal and after
            // every thread pinned before that has unpinned (module docs,
            // "Memory"). Names never change.
            if same(unsafe { (*p).path.as_str() }.as_bytes(), name.as_bytes()) {
                // SAFETY: not null (checked above).
                return Some(NodeRef::from_non_null(unsafe { NonNull::new_unchecked(p) }));
            }
        }
        None
    }

    /// The first slot of `h`'s probe sequence that is empty or a
    /// tombstone, and whether it is empty. Under the mutex; invariant 3
    /// guarantees one.
    fn vacancy(&self, h: u64) -> (&AtomicPtr<Node>, bool) {
        for slot in self.probe(h) {
            let p = slot.load(Ordering::Relaxed);
            if p.is_null() || p == tombstone() {
                return (slot, p.is_null());
            }
        }
        unreachable!("an index array more than half full")
    }

    /// The nodes in this array.
    fn nodes(&self) -> impl Iterator<Item = NodeRef> + '_ {
        self.slots.iter().filter_map(|slot| {
            let p = slot.load(Ordering::Acquire);
            if p == tombstone() {
                None
            } else {
                NonNull::new(p).map(NodeRef::from_non_null)
            }
        })
    }
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    array: AtomicPtr::new(Box::into_raw(Array::new(MIN_SLOTS))),
                    writer: Mutex::new(Writer {
                        used: 0,
                        live: 0,
                        #[cfg(loom)]
                        retired: Vec::new(),
                    }),
                })
                .collect(),
            #[cfg(not(loom))]
            hasher: Hasher::default(),
            #[cfg(loom)]
            hasher: Hasher::with_seed(0),
        }
    }

    #[inline]
    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    #[inline]
    fn shard(&self, h: u64) -> &Shard {
        &self.shards[(h >> 58) as usize % SHARDS]
    }

    /// The shard's current array, valid while `pin` is held (and, for the
    /// current one, while the caller holds the shard's mutex).
    #[inline]
    fn array<'a>(shard: &'a Shard, _pin: &'a Pin) -> &'a Array {
        // SAFETY: never null; an array is freed only after it was replaced
        // and every thread pinned before that unpinned (or, loom, when the
        // index drops), and a writer holding the mutex sees the current one.
        unsafe { &*shard.array.load(Ordering::Acquire) }
    }

    /// The node named `name`, if it is in the index (possibly dead). A
    /// miss may be a name inserted during the call (module docs).
    #[inline]
    pub(crate) fn get(&self, pin: &Pin, name: &str) -> Option<NodeRef> {
        let h = self.hash(name);
        Self::array(self.shard(h), pin).find(name, h)
    }

    /// The node named `name` (possibly dead), or the one `make` creates,
    /// inserted. `make`'s node must be named `name`, fresh and unshared;
    /// the index owns it from then on (the table frees it after
    /// [`Index::remove`]).
    #[inline]
    pub(crate) fn get_or_insert(
        &self,
        pin: &Pin,
        name: &str,
        make: impl FnOnce() -> Box<Node>,
    ) -> NodeRef {
        let h = self.hash(name);
        let shard = self.shard(h);
        if let Some(node) = Self::array(shard, pin).find(name, h) {
            return node;
        }
        self.insert(pin, shard, name, h, make)
    }

    #[cold]
    fn insert(
        &self,
        pin: &Pin,
        shard: &Shard,
        name: &str,
        h: u64,
        make: impl FnOnce() -> Box<Node>,
    ) -> NodeRef {
        let mut w = shard.writer.lock();
        if let Some(node) = Self::array(shard, pin).find(name, h) {
            return node;
        }
        let node = make();
        debug_assert_eq!(node.path.as_str(), name);
        let node = NonNull::from(Box::leak(node));
        let mut array = Self::array(shard, pin);
        let (mut slot, mut empty) = array.vacancy(h);
        if empty && (w.used + 1) * 2 > array.slots.len() {
            let live = w.live + 1;
            self.rebuild(pin, shard, &mut w, live);
            array = Self::array(shard, pin);
            (slot, empty) = array.vacancy(h);
        }
        w.used += usize::from(empty);
        slot.store(node.as_ptr(), Ordering::Release);
        w.live += 1;
        NodeRef::from_non_null(node)
    }

    /// Takes `node` (named `name`) out of the index if it is there, and
    /// returns the index's pointer to it if this call did. The caller then
    /// owns the node's memory and must free it only through the epoch, and
    /// through the returned pointer: it carries the allocation's
    /// provenance, where `node` may come from a shared reference.
    pub(crate) fn remove(&self, pin: &Pin, node: NodeRef, name: &str) -> Option<NodeRef> {
        let h = self.hash(name);
        let shard = self.shard(h);
        let mut w = shard.writer.lock();
        let array = Self::array(shard, pin);
        let target = node.as_non_null().as_ptr();
        for slot in array.probe(h) {
            let p = slot.load(Ordering::Relaxed);
            if p.is_null() {
                return None;
            }
            if p == target {
                slot.store(tombstone(), Ordering::Release);
                w.live -= 1;
                if array.slots.len() > MIN_SLOTS && w.live * 16 < array.slots.len() {
                    let live = w.live;
                    self.rebuild(pin, shard, &mut w, live);
                }
                return NonNull::new(p).map(NodeRef::from_non_null);
            }
        }
        None
    }

    /// Replaces the shard's array by one sized for `live` nodes (a quarter
    /// full), holding its nodes and no tombstone. Under the mutex (`w`).
    fn rebuild(&self, pin: &Pin, shard: &Shard, w: &mut Writer, live: usize) {
        let old = shard.array.load(Ordering::Relaxed);
        // SAFETY: we hold the mutex: `old` is current and only we free it.
        let old_array = unsafe { &*old };
        let len = (live * 4).next_power_of_two().max(MIN_SLOTS);
        let new = Array::new(len);
        let mut moved = 0;
        for node in old_array.nodes() {
            // SAFETY: in the index, and we hold the mutex: not freed.
            let h = self.hash(unsafe { node.get() }.path.as_str());
            let (slot, _) = new.vacancy(h);
            slot.store(node.as_non_null().as_ptr(), Ordering::Relaxed);
            moved += 1;
        }
        w.used = moved;
        // Publishes the copies (the `Relaxed` stores above) with the array.
        shard.array.store(Box::into_raw(new), Ordering::Release);
        // SAFETY: `old` came from `Box::into_raw`, and only lookups pinned
        // before this point may still read it: it is no longer reachable
        // from the shard, and only this writer retires it.
        unsafe { retire(pin, w, NonNull::new_unchecked(old)) };
    }

    /// Every node in the index (possibly dead ones), for snapshots and
    /// for the table's drop.
    pub(crate) fn nodes(&self, pin: &Pin) -> Vec<NodeRef> {
        self.shards
            .iter()
            .flat_map(|s| Self::array(s, pin).nodes())
            .collect()
    }

    /// Number of nodes in the index.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.writer.lock().live).sum()
    }
}

/// Frees a replaced array once no pinned lookup can read it.
///
/// # Safety
///
/// As for [`Pin::defer_drop`].
#[cfg(not(loom))]
unsafe fn retire(pin: &Pin, _w: &mut Writer, old: NonNull<Array>) {
    // SAFETY: the caller's contract.
    unsafe { pin.defer_drop(old) };
}

/// Keeps a replaced array until the index drops (no epoch under loom).
///
/// # Safety
///
/// As for [`Pin::defer_drop`].
#[cfg(loom)]
unsafe fn retire(_pin: &Pin, w: &mut Writer, old: NonNull<Array>) {
    w.retired.push(old);
}

impl Drop for Index {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            // SAFETY: `&mut self`: nobody reads the arrays any more; each
            // current array came from `Box::into_raw`. (Retired ones were
            // deferred, or, loom, are freed below.)
            drop(unsafe { Box::from_raw(shard.array.load(Ordering::Relaxed)) });
            #[cfg(loom)]
            for old in shard.writer.lock().retired.drain(..) {
                // SAFETY: as above; each retired array once.
                drop(unsafe { Box::from_raw(old.as_ptr()) });
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::bias::Bias;

    fn node(name: &str) -> Box<Node> {
        Node::boxed(name, '/', Bias::Never)
    }

    /// Frees what the index still holds (the table does this for real).
    fn free_all(index: &Index, pin: &Pin) {
        for n in index.nodes(pin) {
            // SAFETY: the test owns every node and nobody else uses them.
            drop(unsafe { Box::from_raw(n.as_non_null().as_ptr()) });
        }
    }

    #[test]
    fn finds_what_it_holds_and_only_that() {
        let pin = Pin::new();
        let index = Index::new();
        let a = index.get_or_insert(&pin, "db/t/1", || node("db/t/1"));
        assert_eq!(index.get(&pin, "db/t/1"), Some(a));
        assert_eq!(index.get(&pin, "db/t/2"), None);
        assert_eq!(index.get(&pin, "db/t"), None);
        // A second insert of the name returns the first node and never
        // calls `make`.
        let again = index.get_or_insert(&pin, "db/t/1", || unreachable!());
        assert_eq!(again, a);
        assert_eq!(index.len(), 1);
        free_all(&index, &pin);
    }

    #[test]
    fn removal_is_by_node_and_happens_once() {
        let pin = Pin::new();
        let index = Index::new();
        let a = index.get_or_insert(&pin, "a", || node("a"));
        let other = node("a");
        assert_eq!(index.remove(&pin, NodeRef::from_ref(&other), "a"), None);
        assert_eq!(index.remove(&pin, a, "a"), Some(a));
        assert_eq!(index.remove(&pin, a, "a"), None);
        assert_eq!(index.get(&pin, "a"), None);
        assert_eq!(index.len(), 0);
        // The name can come back as a new node.
        let b = index.get_or_insert(&pin, "a", || node("a"));
        assert_ne!(b, a);
        assert_eq!(index.get(&pin, "a"), Some(b));
        // SAFETY: removed above and never shared.
        drop(unsafe { Box::from_raw(a.as_non_null().as_ptr()) });
        free_all(&index, &pin);
    }

    #[test]
    fn grows_shrinks_and_reuses_tombstones_without_losing_a_node() {
        let pin = Pin::new();
        let index = Index::new();
        let (count, churn) = if cfg!(miri) {
            (1000, 300)
        } else {
            (5000, 10_000)
        };
        let names: Vec<String> = (0..count).map(|i| format!("t/{i}")).collect();
        let mut nodes = Vec::new();
        for n in &names {
            nodes.push(index.get_or_insert(&pin, n, || node(n)));
        }
        assert_eq!(index.len(), names.len());
        for (n, node) in names.iter().zip(&nodes) {
            assert_eq!(index.get(&pin, n), Some(*node), "{n}");
        }
        // Remove all but every 100th: the shards shrink.
        for (i, (n, node)) in names.iter().zip(&nodes).enumerate() {
            if i % 100 != 0 {
                assert_eq!(index.remove(&pin, *node, n), Some(*node));
                // SAFETY: removed, never shared.
                drop(unsafe { Box::from_raw(node.as_non_null().as_ptr()) });
            }
        }
        assert_eq!(index.len(), count / 100);
        for (i, (n, node)) in names.iter().zip(&nodes).enumerate() {
            let found = index.get(&pin, n);
            if i % 100 == 0 {
                assert_eq!(found, Some(*node), "{n}");
            } else {
                assert_eq!(found, None, "{n}");
            }
        }
        let slots: usize = index
            .shards
            .iter()
            .map(|s| Index::array(s, &pin).slots.len())
            .sum();
        assert!(
            slots <= SHARDS * MIN_SLOTS * 2,
            "{slots} slots for {} nodes",
            count / 100
        );
        // Churn one name: tombstones are reused, the arrays stay small.
        for _ in 0..churn {
            let n = index.get_or_insert(&pin, "churn", || node("churn"));
            assert_eq!(index.remove(&pin, n, "churn"), Some(n));
            // SAFETY: removed, never shared.
            drop(unsafe { Box::from_raw(n.as_non_null().as_ptr()) });
        }
        let after: usize = index
            .shards
            .iter()
            .map(|s| Index::array(s, &pin).slots.len())
            .sum();
        assert_eq!(after, slots);
        free_all(&index, &pin);
    }

    proptest::proptest! {
        /// Any sequence of inserts and removals over a few hundred names (so
        /// tombstones, reuse, growth and shrinking all happen) leaves the
        /// index agreeing with a plain map on every name.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u8..3, 0usize..300), 0..1500)) {
            use std::collections::HashMap;
            let pin = Pin::new();
            let index = Index::new();
            let mut model: HashMap<String, NodeRef> = HashMap::new();
            for (op, k) in ops {
                let name = format!("t/{k}");
                match op {
                    0 => {
                        let n = index.get_or_insert(&pin, &name, || node(&name));
                        let m = *model.entry(name.clone()).or_insert(n);
                        proptest::prop_assert_eq!(n, m);
                    }
                    1 => {
                        if let Some(n) = model.remove(&name) {
                            proptest::prop_assert_eq!(index.remove(&pin, n, &name), Some(n));
                            // SAFETY: removed, never shared.
                            drop(unsafe { Box::from_raw(n.as_non_null().as_ptr()) });
                        }
                    }
                    _ => proptest::prop_assert_eq!(index.get(&pin, &name), model.get(&name).copied()),
                }
            }
            proptest::prop_assert_eq!(index.len(), model.len());
            let mut all = index.nodes(&pin);
            all.sort_by_key(|n| n.as_non_null().as_ptr() as usize);
            let mut expected: Vec<NodeRef> = model.values().copied().collect();
            expected.sort_by_key(|n| n.as_non_null().as_ptr() as usize);
            proptest::prop_assert_eq!(all, expected);
            free_all(&index, &pin);
        }
    }

    #[test]
    fn concurrent_lookups_always_find_a_present_node() {
        // One thread keeps `stay/{i}` in the index while another inserts
        // and removes thousands of other names (rebuilding the shards):
        // lookups of the stayers never miss.
        let index = Index::new();
        let stay: Vec<String> = (0..64).map(|i| format!("stay/{i}")).collect();
        let pin = Pin::new();
        let kept: Vec<NodeRef> = stay
            .iter()
            .map(|n| index.get_or_insert(&pin, n, || node(n)))
            .collect();
        drop(pin);
        let rounds = if cfg!(miri) { 200 } else { 20_000 };
        std::thread::scope(|s| {
            s.spawn(|| {
                for r in 0..rounds {
                    let pin = Pin::new();
                    let name = format!("go/{}", r % 997);
                    let n = index.get_or_insert(&pin, &name, || node(&name));
                    if r % 3 != 0 {
                        assert_eq!(index.remove(&pin, n, &name), Some(n));
                        // SAFETY: removed by this call (with the index's
                        // pointer); freed after every lookup pinned now
                        // has unpinned.
                        unsafe { pin.defer_drop(n.as_non_null()) };
                    }
                }
            });
            for r in 0..rounds {
                let pin = Pin::new();
                let i = r % stay.len();
                assert_eq!(index.get(&pin, &stay[i]), Some(kept[i]));
            }
        });
        let pin = Pin::new();
        free_all(&index, &pin);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! The index under loom: inserts, removals and rebuilds racing with
    //! lookups. Each model names the bug it catches; `loom-tests/mutants/`
    //! holds those bugs and `loom-tests/run-mutants.sh` checks each is
    //! caught.
    use super::*;
    use crate::bias::Bias;
    use loom::sync::Arc;
    use loom::thread;

    fn node(name: &str) -> Box<Node> {
        Node::boxed(name, '/', Bias::Never)
    }

    fn free(n: NodeRef) {
        // SAFETY: the model owns every node and nobody uses it any more.
        drop(unsafe { Box::from_raw(n.as_non_null().as_ptr()) });
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        b.check(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f()
        });
        eprintln!(
            "{}: {} interleavings",
            std::thread::current().name().unwrap_or("?"),
            runs.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    /// Two threads insert `a` while a third inserts `b`, which rebuilds
    /// the array (two slots hold one node). There must be one node `a`,
    /// the one both inserters got, and `b` must be found too.
    ///
    /// Catches: an insert that does not look again under the mutex
    /// (mutant `index-insert-no-recheck`), a rebuild that loses a node.
    #[test]
    fn inserts_of_one_name_racing_with_a_rebuild_make_one_node() {
        model(|| {
            let index = Arc::new(Index::new());
            let t = {
                let index = index.clone();
                thread::spawn(move || index.get_or_insert(&Pin, "a", || node("a")))
            };
            let u = {
                let index = index.clone();
                thread::spawn(move || index.get_or_insert(&Pin, "b", || node("b")))
            };
            let a = index.get_or_insert(&Pin, "a", || node("a"));
            let a2 = t.join().unwrap();
            let b = u.join().unwrap();
            assert_eq!(a, a2, "two nodes named a");
            assert_eq!(index.get(&Pin, "a"), Some(a));
            assert_eq!(index.get(&Pin, "b"), Some(b));
            assert_eq!(index.len(), 2);
            for n in index.nodes(&Pin) {
                free(n);
            }
        });
    }

    /// Lookups of `a`, which stays in the index throughout, race with an
    /// insert that rebuilds the array and a removal. They must find `a`
    /// every time: the rebuilt array is published after its copies.
    ///
    /// (The lookups run in the spawned thread, the writer in the model's
    /// main thread: loom's DPOR compares an access only with the last one
    /// to the same atomic, so with the roles swapped the writer's own loads
    /// hide the race and one interleaving is all it explores.)
    ///
    /// Catches: a rebuild that loses a node (mutant
    /// `index-rebuild-loses-a-node`), a lookup that loads the array
    /// without `Acquire` (mutant `index-relaxed-array-load`: it may see
    /// the new array but not the copies in it).
    #[test]
    fn lookups_racing_with_rebuild_and_removal_find_a_present_node() {
        model(|| {
            let index = Arc::new(Index::new());
            let a = index.get_or_insert(&Pin, "a", || node("a"));
            let t = {
                let index = index.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        assert_eq!(index.get(&Pin, "a"), Some(a), "a present node missed");
                    }
                })
            };
            let b = index.get_or_insert(&Pin, "b", || node("b"));
            assert_eq!(index.remove(&Pin, b, "b"), Some(b));
            t.join().unwrap();
            assert_eq!(index.get(&Pin, "b"), None);
            free(b);
            for n in index.nodes(&Pin) {
                free(n);
            }
        });
    }
}
