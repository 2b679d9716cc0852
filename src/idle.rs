//! The idle-node cache: a bounded number of nodes nobody holds or waits on,
//! kept in the table for reuse instead of being freed at once.
//!
//! A database locks rows that come and go: without the cache every row lock
//! creates its node (an allocation and a map insert) and every release
//! destroys it (a map removal and an epoch-deferred free), about 60% of an
//! uncontended row lock. With it, a row locked again soon finds its node
//! and the lock is a lookup and a CAS.
//!
//! # Protocol
//!
//! The state word's `CACHED` bit says "this node is in the cache"; it
//! conflicts with no mode. The invariant: **`CACHED` is set iff the node
//! is in exactly one cache slot.**
//!
//! - **Retire.** Whoever brings a word to exactly 0 (the last release, the
//!   last waiter or handle leaving) sets `CACHED` with the CAS `0 ->
//!   CACHED`, then pushes the node into a cache shard. A word that was
//!   `CACHED` already when it went idle (the node was reused while cached)
//!   needs nothing: its slot is still there.
//! - **Reuse.** An acquirer finds a cached node in the table like any other
//!   and takes it with its usual CAS; `CACHED` stays set.
//! - **Evict.** A push that overflows its shard pops the oldest node and,
//!   outside the shard lock, either kills it (`CACHED -> DEAD`, then it is
//!   unlinked and freed through the epoch as before) if it is still idle, or
//!   clears `CACHED` if somebody uses it now — its last release will find
//!   the word at 0 and retire it again.
//!
//! Only the popper of a slot ever kills a cached node, and a node is in at
//! most one slot, so a pointer in the cache is valid until it is popped.
//! With capacity 0 the cache is off: a node is killed (`0 -> DEAD`) the
//! moment it goes idle.
//!
//! Shards are picked by node address, so threads retiring different nodes
//! rarely share a shard lock.

use std::collections::VecDeque;

use crate::sync::Mutex;
use crate::table::NodeRef;

const SHARDS: usize = 16;

/// The cache. See the module docs.
pub(crate) struct IdleCache {
    shards: Box<[Mutex<VecDeque<NodeRef>>]>,
    /// Slots per shard; 0: the cache is off.
    per_shard: usize,
}

impl IdleCache {
    /// A cache of about `capacity` nodes (rounded up to a multiple of the
    /// shard count; fewer shards below 16; 0 turns it off).
    pub(crate) fn new(capacity: usize) -> Self {
        let shards = capacity.min(SHARDS);
        let per_shard = if shards == 0 {
            0
        } else {
            capacity.div_ceil(shards)
        };
        IdleCache {
            shards: (0..shards).map(|_| Mutex::new(VecDeque::new())).collect(),
            per_shard,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, node: NodeRef) -> &Mutex<VecDeque<NodeRef>> {
        // Nodes are at least 8-byte aligned; mix the address so nodes
        // allocated next to each other land in different shards.
        let a = node.as_non_null().addr().get();
        let h = (a >> 4) ^ (a >> 11);
        &self.shards[h % self.shards.len()]
    }

    /// Puts `node`, whose word the caller just moved from 0 to `CACHED`,
    /// into the cache. Returns the node this pushed out, if the shard was
    /// full: the caller must settle it (`StateWord::uncache`, then unlink it
    /// if that killed it).
    pub(crate) fn push(&self, node: NodeRef) -> Option<NodeRef> {
        let mut shard = self.shard(node).lock();
        let out = if shard.len() >= self.per_shard {
            shard.pop_front()
        } else {
            None
        };
        shard.push_back(node);
        out
    }

    /// Takes every node out of the cache, for the caller to evict.
    pub(crate) fn drain(&self) -> Vec<NodeRef> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().drain(..));
        }
        out
    }

    /// The cached nodes that nobody uses right now, and all cached nodes
    /// (a node reused while cached is still in the cache).
    pub(crate) fn count_idle(&self) -> (usize, usize) {
        let (mut idle, mut all) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            all += shard.len();
            idle += shard
                .iter()
                // SAFETY: a node in the cache is alive until popped, and
                // popping needs this shard's lock, which we hold.
                .filter(|n| unsafe { n.get() }.state.load().is_cached_idle())
                .count();
        }
        (idle, all)
    }
}
