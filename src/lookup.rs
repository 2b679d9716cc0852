//! The per-thread lookup cache: the nodes this thread found last, so that
//! finding them again writes no shared memory.
//!
//! A lookup in the table's index (`index.rs`) hashes the whole name with a
//! seeded hash, loads the shard's array and probes it, comparing names
//! through the nodes it meets. Engines lock the same tables and
//! directories again and again, so each thread keeps a small direct-mapped
//! cache of `name -> node` in front of the index, and a hit is a cheap
//! hash, a few loads and one compare of the name.
//!
//! # Why a cached pointer is safe to follow
//!
//! A node's memory is freed only after it has been removed from the index
//! and its destruction deferred to the epoch (see `table.rs`). The table
//! keeps [`GROUPS`] *stamps*, counters that each stand for the nodes whose
//! name hashes to them:
//!
//! 1. **Evict:** whoever removes a node from the index bumps its group's
//!    stamp *after* the removal and *before* it defers the destruction.
//! 2. **Remember:** a thread reads the group's stamp *before* it looks the
//!    name up in the index, and caches the node it found with that stamp.
//!    If the node had been removed before that read, the lookup could not
//!    have found it (the removal's tombstone store, and any rebuild before
//!    it, happen before the bump the read saw, `AcqRel` against `Acquire`,
//!    and lookups load the array and its slots with `Acquire`); so a node
//!    cached with stamp `s` was removed, if at all, by a bump that made the
//!    stamp larger than `s`.
//! 3. **Hit:** a pinned thread follows a cached pointer only while the
//!    group's stamp, read after pinning, still equals the cached one. The
//!    stamp is one more link to the node, unlinked by the bump, exactly as
//!    crossbeam-epoch's own structures unlink a pointer before deferring
//!    its destruction, and the same two `SeqCst` fences make it safe:
//!    pinning fences before the stamp is read, and the remover's deferred
//!    garbage leaves its thread through `push_bag`, which fences before it
//!    seals the bag with the current epoch. If the reader's fence comes
//!    first, the epoch cannot advance past the reader's while it stays
//!    pinned, so the node is not freed under it; if the remover's comes
//!    first, the reader sees the bump and misses. Stamps only grow (64
//!    bits), so a freed address reused by a new node cannot match an old
//!    entry either.
//!
//! A hit may still find the node dead (killed, not yet removed): the
//! caller's CAS sees that, and [`Stamps::forget`] drops the entry before
//! the caller looks the name up again, so the retry goes to the index. That
//! is for progress, not safety: without it a thread would keep finding the
//! dead node until its remover's bump. (The retry may cache the new node
//! with a ticket older than that bump; the next lookup then just misses.)
//!
//! Entries carry the table's unique id, never reused, so an entry of a
//! dropped table (whose nodes are freed without the epoch) never matches.
//! A collision in the cache just replaces the older entry.
//!
//! # Chains
//!
//! A second, smaller table caches *chains*: the nodes of a path's first
//! levels below the root (up to [`CHAIN_LEVELS`]), keyed by the name of
//! the deepest one. `LockTree::lock` looks up the chain of a path's parent
//! with one hash and one probe, and then only the node itself by name, so
//! a lock at depth 4 makes two lookups instead of four (and never scans
//! the path for its prefixes).
//!
//! - **Remember.** A chain is cached by a thread that *holds* every one
//!   of its nodes, right after it took them; it stores, per level, the
//!   node and its group's stamp read then. A held node is not dead, so it
//!   is in the index and its removal can only come after this thread's
//!   release: the bump it makes is after the stamp read. That is the
//!   per-name rule 2 with the hold standing in for the ticket read before
//!   the lookup.
//! - **Hit.** A pinned thread follows the chain's pointers only if every
//!   level's stamp still equals the stored one (rule 3, per level), and
//!   then compares the deepest node's name with the name asked for (a
//!   stored chain always holds the prefixes of its deepest name, and names
//!   never change, so that one compare covers every level).
//! - **Only under that pin.** The check covers the pin it was made under.
//!   A request that parks on one of the chain's levels is unpinned while
//!   it waits (the node it waits on is kept by its queue, the ones below
//!   it by nothing), so after a park it looks the levels below up again by
//!   name (`LockTree::acquire`, `Pin::breaks`). A node found dead drops the
//!   chain (`forget_chain`) and the walk looks it up again.
//!
//! Not built under loom (loom cannot model the epoch collector it relies
//! on); the table's mutex-protected map alone serves lookups there.

use std::cell::Cell;
use std::ptr;

use crate::node::Node;
use crate::path::same;
use crate::sync::{AtomicU64, Ordering};
use crate::table::NodeRef;

/// Stamp groups per table. Each sits on its own cache line, so an
/// eviction invalidates only this fraction of every thread's entries and
/// writes no line a hit of another group reads.
pub(crate) const GROUPS: usize = 16;

/// Entries in each thread's cache (direct-mapped; 32 bytes each, 8 KiB).
const ENTRIES: usize = 256;

/// A cheap hash of a node name: its length, first and last eight bytes
/// (four, or all of a name shorter than four), multiplied out to 128 bits
/// and folded. Names of one subtree differ at the end, names of different
/// subtrees of equal length near the start; the fold carries every input
/// bit into every output bit, so names that differ only in their last byte
/// (rows `.../17`, `.../18`) land on different entries and groups. (A plain
/// 64-bit product would not: its bits 48..56, the entry, never see the
/// input's top byte.)
#[inline]
pub(crate) fn hash(name: &str) -> u64 {
    let b = name.as_bytes();
    let x = if let (Some(head), Some(tail)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        u64::from_le_bytes(*tail) ^ u64::from_le_bytes(*head).rotate_left(29)
    } else if let (Some(head), Some(tail)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        u64::from(u32::from_le_bytes(*tail)) << 32 | u64::from(u32::from_le_bytes(*head))
    } else {
        b.iter().fold(0u64, |x, &c| x << 8 | u64::from(c))
    } ^ (b.len() as u64).rotate_left(56);
    let p = u128::from(x) * 0x9E37_79B9_7F4A_7C15;
    p as u64 ^ (p >> 64) as u64
}

#[inline]
fn group(h: u64) -> usize {
    (h >> 44) as usize % GROUPS
}

#[inline]
fn entry(h: u64) -> usize {
    (h >> 48) as usize % ENTRIES
}

/// One stamp on its own cache line.
#[repr(align(128))]
struct Stamp(AtomicU64);

/// One cached lookup.
#[derive(Clone, Copy)]
struct Entry {
    table: u64,
    hash: u64,
    node: *const Node,
    stamp: u64,
}

const EMPTY: Entry = Entry {
    table: 0,
    hash: 0,
    node: ptr::null(),
    stamp: 0,
};

thread_local! {
    static CACHE: [Cell<Entry>; ENTRIES] = const { [const { Cell::new(EMPTY) }; ENTRIES] };
}

/// A table's id and stamps (see the module docs).
pub(crate) struct Stamps(Box<Inner>);

/// Boxed on lines of its own, so what a hit reads shares no line with
/// what other threads write (the tree holds the root node inline).
#[repr(align(128))]
struct Inner {
    /// Unique among all tables ever made in this process; never 0.
    id: u64,
    groups: [Stamp; GROUPS],
}

/// A group's stamp read before an index lookup; [`Stamps::remember`] caches
/// the node found with it.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

impl Stamps {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Stamps(Box::new(Inner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            groups: std::array::from_fn(|_| Stamp(AtomicU64::new(0))),
        }))
    }

    /// This thread's cached node named `name` (of hash `h`), if any.
    ///
    /// The caller must be pinned (since before this call, for as long as
    /// it uses the result).
    #[inline]
    pub(crate) fn find(&self, name: &str, h: u64) -> Option<NodeRef> {
        let e = CACHE.with(|c| c[entry(h)].get());
        if e.table != self.0.id || e.hash != h {
            return None;
        }
        if self.0.groups[group(h)].0.load(Ordering::Acquire) != e.stamp {
            return None;
        }
        // SAFETY: the stamp is unchanged since before the lookup that
        // found `e.node` in the index, and the caller is pinned: the node
        // has not been freed and will not be while the caller stays pinned
        // (module docs, "Hit"). Its name never changes.
        let node = unsafe { &*e.node };
        if !same(node.path.as_str().as_bytes(), name.as_bytes()) {
            return None;
        }
        Some(NodeRef::from_ref(node))
    }

    /// The stamp of `h`'s group, to read before looking the name up in
    /// the index.
    #[inline]
    pub(crate) fn ticket(&self, h: u64) -> Ticket {
        Ticket(self.0.groups[group(h)].0.load(Ordering::Acquire))
    }

    /// Caches `node`, found in the index after `ticket` was taken.
    #[inline]
    pub(crate) fn remember(&self, ticket: Ticket, h: u64, node: NodeRef) {
        CACHE.with(|c| {
            c[entry(h)].set(Entry {
                table: self.0.id,
                hash: h,
                node: node.as_non_null().as_ptr(),
                stamp: ticket.0,
            })
        });
    }

    /// Invalidates every cached pointer to nodes of `h`'s group: call after
    /// removing such a node from the index and before deferring its
    /// destruction.
    #[inline]
    pub(crate) fn invalidate(&self, h: u64) {
        self.0.groups[group(h)].0.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops this thread's entry for `node` (of hash `h`) if it has one:
    /// the node is dead, and the next lookup must go to the index.
    #[inline]
    pub(crate) fn forget(&self, h: u64, node: NodeRef) {
        CACHE.with(|c| {
            let slot = &c[entry(h)];
            let e = slot.get();
            if e.table == self.0.id && ptr::eq(e.node, node.as_non_null().as_ptr()) {
                slot.set(EMPTY);
            }
        });
    }
}

/// Ancestor levels (below the root) a chain entry keeps; deeper paths take
/// the levels below through the name entries.
pub(crate) const CHAIN_LEVELS: usize = 6;

/// Chain entries in each thread's cache (direct-mapped; 128 bytes each,
/// 8 KiB): the tables and directories a thread locks under again and
/// again.
const CHAINS: usize = 64;

/// The nodes of an ancestor path's levels below the root, found together
/// (module docs, "Chains").
#[derive(Clone, Copy)]
#[repr(align(64))]
struct ChainEntry {
    table: u64,
    /// The hash of the deepest level's name.
    hash: u64,
    /// Levels kept; 0: empty.
    len: u8,
    /// The stamp group of each level's name.
    groups: [u8; CHAIN_LEVELS],
    nodes: [*const Node; CHAIN_LEVELS],
    stamps: [u64; CHAIN_LEVELS],
}

const EMPTY_CHAIN: ChainEntry = ChainEntry {
    table: 0,
    hash: 0,
    len: 0,
    groups: [0; CHAIN_LEVELS],
    nodes: [ptr::null(); CHAIN_LEVELS],
    stamps: [0; CHAIN_LEVELS],
};

thread_local! {
    static CHAIN_CACHE: [Cell<ChainEntry>; CHAINS] =
        const { [const { Cell::new(EMPTY_CHAIN) }; CHAINS] };
}

/// Bits of the hash that neither `group` nor `entry` uses, so a chain's
/// entry does not follow its deepest level's group or name entry.
#[inline]
fn chain_entry(h: u64) -> usize {
    (h >> 32) as usize % CHAINS
}

/// The nodes of a path's first levels below the root, top-down, as
/// [`Stamps::find_chain`] found them.
#[derive(Clone, Copy)]
pub(crate) struct Chain {
    nodes: [*const Node; CHAIN_LEVELS],
}

impl Chain {
    /// The node of level `level` (1: the root's child), at most the
    /// length the chain was found with.
    #[inline]
    pub(crate) fn node(&self, level: usize) -> NodeRef {
        let p = self.nodes[level - 1];
        debug_assert!(!p.is_null());
        // SAFETY: a chain only holds the non-null node pointers of a
        // validated entry.
        NodeRef::from_non_null(unsafe { ptr::NonNull::new_unchecked(p.cast_mut()) })
    }
}

impl Stamps {
    /// This thread's cached chain for the ancestor named `name` (of hash
    /// `h`) at depth `len` (`1..=CHAIN_LEVELS`): the nodes of its levels,
    /// top-down, if every one of them is still in the index.
    ///
    /// The caller must be pinned (since before this call, for as long as
    /// it uses the result).
    #[inline]
    pub(crate) fn find_chain(&self, name: &str, h: u64, len: usize) -> Option<Chain> {
        let e = CHAIN_CACHE.with(|c| c[chain_entry(h)].get());
        // An entry's length is never 0 or above `CHAIN_LEVELS`.
        if e.table != self.0.id || e.hash != h || usize::from(e.len) != len {
            return None;
        }
        for i in 0..len {
            let g = usize::from(e.groups[i]) % GROUPS;
            if self.0.groups[g].0.load(Ordering::Acquire) != e.stamps[i] {
                return None;
            }
        }
        // SAFETY: every level's stamp is unchanged since the chain was
        // cached, when its node was held and so in the index, and the
        // caller is pinned: none of the nodes has been freed or will be
        // while the caller stays pinned (module docs, "Chains"). Names
        // never change. `len` is that of a stored entry, 1..=CHAIN_LEVELS.
        let deepest = unsafe { &*e.nodes[len - 1] };
        if !same(deepest.path.as_str().as_bytes(), name.as_bytes()) {
            return None;
        }
        Some(Chain { nodes: e.nodes })
    }

    /// Caches the chain `nodes` (top-down, `1..=CHAIN_LEVELS` of them, each
    /// named by a prefix of the next one's name) for the deepest one's
    /// name, of hash `h`.
    ///
    /// The caller must hold every node (so each is in the index now).
    pub(crate) fn remember_chain(&self, h: u64, nodes: impl ExactSizeIterator<Item = NodeRef>) {
        let len = nodes.len();
        if !(1..=CHAIN_LEVELS).contains(&len) {
            return;
        }
        let mut e = ChainEntry {
            table: self.0.id,
            hash: h,
            len: len as u8,
            ..EMPTY_CHAIN
        };
        for (i, node) in nodes.enumerate() {
            // SAFETY: held by the caller.
            let name = unsafe { node.get() }.path.as_str();
            let g = group(hash(name));
            e.groups[i] = g as u8;
            e.stamps[i] = self.0.groups[g].0.load(Ordering::Acquire);
            e.nodes[i] = node.as_non_null().as_ptr();
        }
        CHAIN_CACHE.with(|c| c[chain_entry(h)].set(e));
    }

    /// Drops this thread's chain entry for the name of hash `h`, if any:
    /// one of its nodes is dead.
    #[inline]
    pub(crate) fn forget_chain(&self, h: u64) {
        CHAIN_CACHE.with(|c| {
            let slot = &c[chain_entry(h)];
            let e = slot.get();
            if e.table == self.0.id && e.hash == h {
                slot.set(EMPTY_CHAIN);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bias::Bias;

    fn node(name: &str) -> Box<Node> {
        Node::boxed(name, '/', Bias::Never)
    }

    fn node_ref(n: &Node) -> NodeRef {
        NodeRef::from_ref(n)
    }

    fn remember(s: &Stamps, n: &Node) {
        let name = n.path.as_str();
        let h = hash(name);
        s.remember(s.ticket(h), h, node_ref(n));
    }

    #[test]
    fn a_remembered_node_is_found_by_its_name_only() {
        let s = Stamps::new();
        let a = node("/db/t/17");
        remember(&s, &a);
        assert_eq!(s.find("/db/t/17", hash("/db/t/17")), Some(node_ref(&a)));
        assert_eq!(s.find("/db/t/18", hash("/db/t/18")), None);
        // Another table never sees this table's entries.
        assert_eq!(Stamps::new().find("/db/t/17", hash("/db/t/17")), None);
    }

    #[test]
    fn invalidating_the_group_drops_every_entry_of_it() {
        let s = Stamps::new();
        let a = node("/a");
        remember(&s, &a);
        s.invalidate(hash("/a"));
        assert_eq!(s.find("/a", hash("/a")), None);
        // Remembered again after the bump: found again.
        remember(&s, &a);
        assert_eq!(s.find("/a", hash("/a")), Some(node_ref(&a)));
    }

    #[test]
    fn a_ticket_taken_before_an_invalidation_caches_nothing() {
        let s = Stamps::new();
        let a = node("/a");
        let h = hash("/a");
        let ticket = s.ticket(h);
        s.invalidate(h); // the node was removed between ticket and lookup
        s.remember(ticket, h, node_ref(&a));
        assert_eq!(s.find("/a", h), None);
    }

    #[test]
    fn forget_drops_only_that_nodes_entry() {
        let s = Stamps::new();
        let (a, b) = (node("/a"), node("/b"));
        remember(&s, &a);
        remember(&s, &b);
        s.forget(hash("/a"), node_ref(&b)); // not the node cached for /a
        assert_eq!(s.find("/a", hash("/a")), Some(node_ref(&a)));
        s.forget(hash("/a"), node_ref(&a));
        assert_eq!(s.find("/a", hash("/a")), None);
        assert_eq!(s.find("/b", hash("/b")), Some(node_ref(&b)));
    }

    #[test]
    fn entries_are_per_thread() {
        let s = Stamps::new();
        let a = node("/a");
        remember(&s, &a);
        std::thread::scope(|sc| {
            sc.spawn(|| assert_eq!(s.find("/a", hash("/a")), None));
        });
        assert_eq!(s.find("/a", hash("/a")), Some(node_ref(&a)));
    }

    #[test]
    fn names_colliding_in_the_cache_replace_each_other() {
        let s = Stamps::new();
        let names: Vec<String> = (0..4 * ENTRIES).map(|i| format!("/t/{i}")).collect();
        let nodes: Vec<_> = names.iter().map(|n| node(n)).collect();
        for n in &nodes {
            remember(&s, n);
        }
        // Whatever is found is the right node; the last one is found.
        for (name, n) in names.iter().zip(&nodes) {
            if let Some(found) = s.find(name, hash(name)) {
                assert_eq!(found, node_ref(n));
            }
        }
        let last = names.last().unwrap();
        assert_eq!(
            s.find(last, hash(last)),
            Some(node_ref(nodes.last().unwrap()))
        );
    }

    #[test]
    fn names_that_differ_only_at_the_end_spread_over_entries_and_groups() {
        use std::collections::HashSet;
        // Rows of a table: names that differ in their last byte or two.
        for prefix in ["db/t/", "bucket/a/much/longer/directory/"] {
            let names: Vec<String> = (0..ENTRIES).map(|i| format!("{prefix}{i}")).collect();
            let entries: HashSet<usize> = names.iter().map(|n| entry(hash(n))).collect();
            let groups: HashSet<usize> = names.iter().map(|n| group(hash(n))).collect();
            // Placed at random, 256 names fill about 162 of 256 entries.
            assert!(
                entries.len() >= ENTRIES / 2,
                "{prefix}: {} entries",
                entries.len()
            );
            assert_eq!(groups.len(), GROUPS, "{prefix}");
            let digits: HashSet<usize> = names[..10].iter().map(|n| entry(hash(n))).collect();
            assert!(digits.len() >= 8, "{prefix}0..9 share entries: {digits:?}");
        }
    }

    /// Three nodes of one path, top-down.
    fn path_nodes() -> Vec<Node> {
        ["db", "db/t", "db/t/rows"].map(|n| *node(n)).into()
    }

    fn remember_path(s: &Stamps, nodes: &[Node]) {
        let deepest = nodes.last().unwrap().path.as_str();
        s.remember_chain(hash(deepest), nodes.iter().map(node_ref));
    }

    fn found(s: &Stamps, name: &str, len: usize) -> Option<Vec<NodeRef>> {
        s.find_chain(name, hash(name), len)
            .map(|c| (1..=len).map(|l| c.node(l)).collect())
    }

    #[test]
    fn a_remembered_chain_is_found_by_its_deepest_name_and_length() {
        let s = Stamps::new();
        let nodes = path_nodes();
        remember_path(&s, &nodes);
        let refs: Vec<NodeRef> = nodes.iter().map(node_ref).collect();
        assert_eq!(found(&s, "db/t/rows", 3), Some(refs));
        assert_eq!(found(&s, "db/t/rows", 2), None);
        assert_eq!(found(&s, "db/t/rowz", 3), None);
        assert!(Stamps::new()
            .find_chain("db/t/rows", hash("db/t/rows"), 3)
            .is_none());
        std::thread::scope(|sc| {
            sc.spawn(|| assert_eq!(found(&s, "db/t/rows", 3), None));
        });
    }

    #[test]
    fn invalidating_any_levels_group_drops_the_chain() {
        for level in 0..3 {
            let s = Stamps::new();
            let nodes = path_nodes();
            remember_path(&s, &nodes);
            s.invalidate(hash(nodes[level].path.as_str()));
            assert_eq!(found(&s, "db/t/rows", 3), None, "level {level}");
            // Remembered again after the bump: found again.
            remember_path(&s, &nodes);
            assert!(found(&s, "db/t/rows", 3).is_some());
        }
    }

    #[test]
    fn forget_chain_drops_it() {
        let s = Stamps::new();
        let nodes = path_nodes();
        remember_path(&s, &nodes);
        s.forget_chain(hash("db/t/other"));
        assert!(found(&s, "db/t/rows", 3).is_some());
        s.forget_chain(hash("db/t/rows"));
        assert_eq!(found(&s, "db/t/rows", 3), None);
    }
}
