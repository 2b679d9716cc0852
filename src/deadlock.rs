//! The wait-for graph among owners, and cycle detection.
//!
//! Detection runs only when an owner's request is about to wait — never on
//! the uncontended path. Under one detector lock for the tree, the waiting
//! owner publishes what it waits for (node and queue entry), then follows
//! "waits for" edges computed from live data:
//!
//! - an owner waiting on node N for mode M waits for every *other* owner
//!   whose hold on N is incompatible with M, and
//! - for every owner queued ahead of it on N whose request conflicts with M
//!   (fairness makes a new request wait for those too; a conversion waits
//!   for holders only).
//!
//! If the walk comes back to the waiting owner, its request closed a cycle
//! and is the victim: it is withdrawn and fails with `Error::Deadlock`,
//! keeping what the owner held before. Because publication and the walk
//! happen under the same lock, of two requests closing one cycle at the same
//! time the second to take the lock sees the first's edge: exactly one
//! victim. Plain `LockTree::lock` guards are anonymous: they can block
//! owners but are not part of the graph.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc as StdArc;

use parking_lot::Mutex as PlMutex;

use crate::owner::{OwnerId, OwnerShared, WaitEdge};
use crate::park::Waiter;
use crate::sync::Arc;
use crate::table::NodeRef;
use crate::tree::LockTree;

/// The tree's live owners and its deadlock detector.
#[derive(Default)]
pub(crate) struct Owners {
    next: AtomicU64,
    live: PlMutex<HashMap<OwnerId, StdArc<OwnerShared>>>,
    detector: PlMutex<()>,
}

impl Owners {
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn register(&self, owner: StdArc<OwnerShared>) {
        self.live.lock().insert(owner.id, owner);
    }

    pub(crate) fn unregister(&self, id: OwnerId) {
        self.live.lock().remove(&id);
    }

    /// Every live owner.
    pub(crate) fn all(&self) -> Vec<StdArc<OwnerShared>> {
        self.live.lock().values().cloned().collect()
    }

    /// Publishes that `me` waits on `node` with `waiter`, and reports
    /// whether that closes a cycle (the edge is then withdrawn again).
    pub(crate) fn closes_cycle(
        &self,
        tree: &LockTree,
        me: &OwnerShared,
        node: NodeRef,
        waiter: &Arc<Waiter>,
    ) -> bool {
        let _detector = self.detector.lock();
        // Pinned: nodes named by other owners' edges stay allocated even if
        // those owners are granted and release them meanwhile.
        let _pin = tree.table().pin();
        *me.waiting.lock() = Some(WaitEdge {
            node,
            waiter: waiter.clone(),
        });
        let live: HashMap<OwnerId, StdArc<OwnerShared>> = self.live.lock().clone();
        let mut stack = blockers(me, &live);
        let mut seen = HashSet::new();
        while let Some(b) = stack.pop() {
            if b == me.id {
                *me.waiting.lock() = None;
                return true;
            }
            if seen.insert(b) {
                if let Some(owner) = live.get(&b) {
                    stack.extend(blockers(owner, &live));
                }
            }
        }
        false
    }
}

/// The owners `owner`'s published wait is waiting for, right now.
fn blockers(owner: &OwnerShared, live: &HashMap<OwnerId, StdArc<OwnerShared>>) -> Vec<OwnerId> {
    let Some(edge) = owner.waiting.lock().clone() else {
        return Vec::new();
    };
    if edge.waiter.is_granted() {
        return Vec::new();
    }
    let target = edge.waiter.target;
    let mut out = Vec::new();
    for other in live.values() {
        if other.id == owner.id {
            continue;
        }
        let held = other
            .state
            .lock()
            .nodes
            .get(&edge.node)
            .and_then(|h| h.held);
        if held.is_some_and(|h| !h.compatible(target)) {
            out.push(other.id);
        }
    }
    // SAFETY: the caller is pinned, and the node was reachable (held or
    // awaited by `owner`) when the edge was read.
    let queue = unsafe { edge.node.get() }.waiters();
    if let Some(pos) = queue.iter().position(|w| Arc::ptr_eq(w, &edge.waiter)) {
        // A conversion waits for holders only; a new request also for
        // every conflicting request queued ahead of it.
        if !edge.waiter.is_conversion() {
            for w in &queue[..pos] {
                if !w.target.compatible(target) {
                    out.extend(w.owner.filter(|id| *id != owner.id));
                }
            }
        }
    }
    out
}
