//! Sticky holds: a prepared handle keeps what it locked after its guard
//! goes, until another request needs it.
//!
//! An engine that locks the same table again and again from one thread
//! takes the same intentions on the same ancestors every time, and gives
//! them back every time: at depth 4, eight read-modify-writes on four
//! state words per lock+unlock, which alone take about five times a bare
//! `RwLock` write lock+unlock on the development host
//! (`prepared/atomics_floor/d4`). Database lock managers have long avoided
//! this by letting the next transaction of the same agent inherit the hot
//! locks (Shore-MT's speculative lock inheritance), and distributed lock
//! managers by letting a client cache a lock until a conflicting request
//! calls it back (Lustre's LDLM, GPFS tokens). A sticky is that, for one
//! [`Prepared`](crate::Prepared) handle:
//!
//! - when a guard taken through the handle goes, its holds on the handle's
//!   levels (the intentions on every ancestor and the mode on the node
//!   itself; for a row below the handle, `lock_child`, the intention on
//!   all of them, the same holds as a `lock` in that intention) stay in the
//!   node words, kept by one of the handle's two stickies, which turns
//!   *idle*;
//! - the handle's next `lock` in the same mode (or `lock_child` with that
//!   intention), on the thread that made the sticky, turns it *active*
//!   again with one CAS on the sticky's own word, touching none of the
//!   handle's nodes; unlocking is one CAS back to idle;
//! - any request that would have to wait or fail for a node's holders
//!   first *revokes* the idle stickies on that node that conflict with it
//!   (see "Revocation"), so nobody ever waits for an idle sticky.
//!
//! Sticky holds are ordinary holds in the node words (or bias slots):
//! every conflict rule, every hand-off and reclamation works on them
//! unchanged; only who gives them back differs.
//!
//! # States
//!
//! ```text
//!                 keep (a lock through the handle)
//!     FREE ----------------------------------------------> ACTIVE
//!      ^  <--- unstick, or the guard of a REVOKE'd ------  |   ^
//!      |          sticky lets go (all released)            |   | reuse
//!      |                                          unlock   v   |
//!      +------------ revoke (all released) <------------- IDLE
//! ```
//!
//! - `FREE`: nothing kept; the handle locks the usual way.
//! - `IDLE`: holds kept, no guard uses them.
//! - `ACTIVE`: holds kept, one guard uses them. Flags on it: `REVOKE`
//!   (someone needs them: the guard gives everything back when it goes)
//!   and `ABANDONED` (the handle is gone: the guard frees the sticky too).
//! - `TAKEN`: whoever moved the word there has the kept holds to itself
//!   (creating the sticky, or releasing everything); it ends in `FREE`.
//!
//! Only a CAS on the state moves a sticky between these, so exactly one of
//! a revoker and a returning owner wins an idle sticky.
//!
//! # Revocation, and why nobody waits for an idle sticky
//!
//! Each node a sticky keeps has a [`Registry`] entry: the sticky and the
//! mode it keeps there. A request that finds the node's holders in its way
//! first does what it always did (queue, setting `WAITING`, or fail a
//! `try_lock`); then it revokes every registered sticky whose mode
//! conflicts with it: an idle one it takes (`IDLE -> TAKEN`) and releases,
//! which hands the node on to the queue as any release would; an active
//! one it flags `REVOKE`, so its guard releases everything when it goes.
//! A failed `try_lock` that revoked something tries again, and so does a
//! request refused because a count is full (an idle sticky's hold is a
//! place nobody uses). Whatever asks whether a node is free revokes the
//! same way first: `acquirable` and its watchers, and introspection
//! (`inspect`, `snapshot`), which thus reports only guards that exist.
//!
//! The race that matters is a sticky being made while a request queues on
//! one of its nodes. The maker registers at every node (under the
//! registry's mutex) and only then looks at each node's `WAITING` bit; a
//! queued request sets `WAITING` (under the node's queue lock) and only then
//! reads the registry (under its mutex; a registry is allocated under the
//! queue lock, so a request that saw none queued before the allocation).
//! Either the request sees the new entry and revokes it, or the maker sees
//! `WAITING` and does not keep the holds: the guard gets them, as if there
//! were no sticky. Both orders go through a mutex, so loom checks them
//! exactly (`loom-tests`).
//!
//! A returning owner does not look at the queues: a request queued on a
//! sticky's node has revoked it (or flagged it, if it was active), so the
//! owner's CAS from `IDLE` fails and it locks the usual way, behind the
//! queue. One owner lock can slip in between a request queueing and its
//! revocation; that is the same as the owner having locked just before.
//!
//! # Who may reuse a sticky
//!
//! The thread that made it, so a handle shared by many threads does not
//! bounce the sticky's word between their caches: the others lock the
//! usual way (their intentions are compatible with the sticky's, or they
//! revoke it) and may make the handle's other sticky. Two per handle
//! also let a long-lived guard through the handle (a transaction's IX on
//! its table) keep one active while short locks keep the other. A lock in
//! a mode an idle sticky of the same thread conflicts with (X after S)
//! gives that sticky back first, so the usual path does not find it in
//! the way.
//!
//! A revoke makes the next lock through the handle, on any thread,
//! eligible to make a new sticky; each revoke also doubles how many locks
//! through the handle go the usual way before the next one (up to 1023;
//! a sticky reused 64 times before its revoke paid for it and starts the
//! count again), so a handle whose holds keep being called back stops
//! keeping them.
//!
//! # A guard or handle that goes elsewhere
//!
//! - A guard dropped on another thread turns the sticky idle as usual.
//! - A guard that converts (`upgrade`, `downgrade`, `rename`) first takes
//!   the kept holds into itself (`FREE`), and is then an ordinary guard.
//! - A handle dropped while its sticky is idle releases the holds; while a
//!   guard is active, it flags `REVOKE | ABANDONED` and leaves its
//!   reference to the guard, which releases everything and frees the sticky
//!   when it goes. While someone else has it `TAKEN` (a revoker, or a guard
//!   giving everything back), the handle leaves it to them: each holds a
//!   reference of its own for the episode, and a revoker is a request on
//!   the same tree, so the tree outlives its release.

use std::collections::HashMap;
use std::ptr::NonNull;

use smallvec::SmallVec;

use crate::guard::Held;
use crate::node::Node;
use crate::sync::{Arc, AtomicU32, AtomicU8, AtomicUsize, Mutex, Ordering};
use crate::table::NodeRef;
use crate::tree::LockTree;
use crate::Mode;

/// Nothing kept.
const FREE: u32 = 0;
/// Holds kept, no guard uses them.
const IDLE: u32 = 1;
/// Holds kept, one guard uses them.
const ACTIVE: u32 = 1 << 1;
/// With `ACTIVE`: a request needs the holds; the guard gives them back.
const REVOKE: u32 = 1 << 2;
/// With `ACTIVE`: the handle is gone; the guard frees the sticky.
const ABANDONED: u32 = 1 << 3;
/// Someone has the kept holds to itself (making or releasing them).
const TAKEN: u32 = 1 << 4;

/// Revokes remembered: the cool-down before the next sticky is
/// `2^strikes - 1` locks.
const MAX_STRIKES: u32 = 10;

/// A sticky reused this many times before its revoke paid for itself:
/// the revoke forgets earlier strikes.
const PAID_OFF: u32 = 64;

/// A registry's entries: each sticky (by address) with the mode it keeps
/// on the node. A map, not a list: the root's registry has an entry for
/// every sticky of the tree, and a handle's drop must not scan them all.
type Entries = HashMap<usize, (Arc<Sticky>, Mode), foldhash::fast::FixedState>;

/// The stickies that keep holds on one node, each with the mode it keeps.
/// Allocated under the node's queue lock (see the module docs).
pub(crate) struct Registry {
    entries: Mutex<Entries>,
    /// `entries.len()`, for a quick look without the lock (a hint only).
    len: AtomicU32,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            entries: Mutex::new(HashMap::default()),
            len: AtomicU32::new(0),
        }
    }
}

impl Registry {
    fn add(&self, sticky: &Arc<Sticky>, mode: Mode) {
        let mut entries = self.entries.lock();
        entries.insert(Sticky::addr(sticky), (sticky.clone(), mode));
        self.len.store(entries.len() as u32, Ordering::Relaxed);
    }

    fn remove(&self, sticky: &Sticky) {
        let mut entries = self.entries.lock();
        entries.remove(&Sticky::addr(sticky));
        self.len.store(entries.len() as u32, Ordering::Relaxed);
    }

    /// Whether any sticky may keep holds here (a hint, without the lock).
    pub(crate) fn maybe_any(&self) -> bool {
        self.len.load(Ordering::Relaxed) != 0
    }

    /// Revokes the stickies here whose mode conflicts with `to` (every one
    /// for `None`). `true`: some idle one was released.
    pub(crate) fn revoke(&self, to: Option<Mode>) -> bool {
        let found: SmallVec<[Arc<Sticky>; 2]> = self
            .entries
            .lock()
            .values()
            .filter(|(_, m)| to.is_none_or(|to| !m.compatible(to)))
            .map(|(s, _)| s.clone())
            .collect();
        // Outside the registry's lock: releasing takes other nodes' locks.
        let mut released = false;
        for sticky in found {
            released |= sticky.revoke();
        }
        released
    }
}

/// One prepared handle's sticky. See the module docs.
pub(crate) struct Sticky {
    /// The thread that may reuse the sticky (see [`thread_id`]), 0 for any:
    /// read by every lock through the handle, written when a sticky is made
    /// or revoked, so on its own cache line away from `hot`.
    owner: AtomicUsize,
    /// The handle's tree: a revoker releases the kept holds into it. Only
    /// used by the handle's own methods (which borrow or own the tree) and
    /// by revokers, which are requests on the same tree (the sticky is
    /// registered in its nodes), so it is alive whenever used; a guard
    /// releases into the tree it holds.
    tree: NonNull<LockTree>,
    /// The handle's nodes, root first, pinned by it (and, while the sticky
    /// keeps holds, held).
    nodes: SmallVec<[NodeRef; 8]>,
    hot: Hot,
}

/// What the owner touches on every lock, on a line of its own.
#[repr(align(128))]
struct Hot {
    state: AtomicU32,
    /// The mode kept on the handle's node (`Mode as u8`).
    mode: AtomicU8,
    /// Locks left before the next sticky may be made (see the module docs).
    cooldown: AtomicU32,
    strikes: AtomicU32,
    /// Reuses since the sticky was made (a plain load and store by the
    /// owner: only a hint for `strike`).
    uses: AtomicU32,
    /// The kept holds: only touched by whoever moved `state` to `TAKEN`.
    held: Mutex<Held>,
}

// SAFETY: `tree` points to a `LockTree` (which is `Sync`) and is only
// dereferenced under the rules in its doc; `NodeRef`s are `Send + Sync`.
unsafe impl Send for Sticky {}
// SAFETY: as above; every field shared between threads is an atomic or
// behind a mutex.
unsafe impl Sync for Sticky {}

impl Sticky {
    /// A free sticky for a handle on `nodes` of `tree`; with `enabled`
    /// false it never keeps anything.
    pub(crate) fn new(tree: &LockTree, nodes: &[NodeRef], enabled: bool) -> Arc<Sticky> {
        Arc::new(Sticky {
            owner: AtomicUsize::new(0),
            tree: NonNull::from(tree),
            nodes: nodes.iter().copied().collect(),
            hot: Hot {
                state: AtomicU32::new(FREE),
                mode: AtomicU8::new(Mode::X as u8),
                cooldown: AtomicU32::new(if enabled { 0 } else { u32::MAX }),
                strikes: AtomicU32::new(0),
                uses: AtomicU32::new(0),
                held: Mutex::new(Held::new()),
            },
        })
    }

    /// The mode kept on `level` for a lock of `mode` on the handle's node.
    fn mode_at(&self, level: usize, mode: Mode) -> Mode {
        if level + 1 == self.nodes.len() {
            mode
        } else {
            mode.intention()
        }
    }

    /// The owner's quick path: turns an idle sticky kept in `mode` active.
    /// `true`: the caller holds the path through the sticky.
    #[inline(always)]
    pub(crate) fn reuse(this: &Arc<Sticky>, mode: Mode) -> bool {
        if this.owner.load(Ordering::Relaxed) != thread_id() {
            return false;
        }
        let hot = &this.hot;
        if hot.mode.load(Ordering::Relaxed) != mode as u8 {
            // Kept in another mode: given back only if that would be in
            // the way of the usual path (the handle's other sticky may
            // have this mode).
            if !this.mode().compatible(mode) {
                this.reuse_other();
            }
            return false;
        }
        if hot
            .state
            .compare_exchange(IDLE, ACTIVE, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Kept in `mode` when it went idle (the mode only changes while
        // `TAKEN`, and the CAS's Acquire sees the change).
        if hot.mode.load(Ordering::Relaxed) == mode as u8 {
            let uses = hot.uses.load(Ordering::Relaxed);
            hot.uses.store(uses.saturating_add(1), Ordering::Relaxed);
            return true;
        }
        // Revoked and made again in another mode since the first look.
        Sticky::unlock(Sticky::ptr(this), this.tree());
        false
    }

    /// The pointer a guard keeps (with the `Arc`'s provenance, for
    /// `Arc::from_raw`).
    #[inline(always)]
    pub(crate) fn ptr(this: &Arc<Sticky>) -> NonNull<Sticky> {
        NonNull::new(Arc::as_ptr(this).cast_mut()).expect("an Arc is never null")
    }

    /// The owner asks for a mode the kept one conflicts with: gives an
    /// idle sticky back (no strike: nobody else needed it), so the usual
    /// path does not find it in the way, and makes a new one on the way
    /// out.
    #[cold]
    fn reuse_other(&self) {
        let state = &self.hot.state;
        // A plain look first: an active sticky (a long-lived guard of the
        // handle) is passed over on every lock, without a failing CAS.
        if state.load(Ordering::Relaxed) == IDLE
            && state
                .compare_exchange(IDLE, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            self.release_taken();
        }
    }

    /// The handle's tree (see the field's doc for why it is alive).
    fn tree(&self) -> &LockTree {
        // SAFETY: see the field's doc: the callers run while the tree is
        // alive.
        unsafe { self.tree.as_ref() }
    }

    /// After a lock through the handle took `held` (its whole path, in
    /// `mode`) the usual way: keeps the holds in the sticky if it may,
    /// turning `held` into a hold through the sticky. In place: moving the
    /// guard's record in and out of a call costs more than the checks
    /// (`docs/bench/benches.md`).
    /// `Some(true)`: kept; `Some(false)`: this sticky is another
    /// thread's or in use, try the handle's next; `None`: cooling down
    /// after a revoke, keep nothing this time.
    #[inline(always)]
    pub(crate) fn keep(this: &Arc<Sticky>, held: &mut Held, mode: Mode) -> Option<bool> {
        let owner = this.owner.load(Ordering::Relaxed);
        if owner != 0 && owner != thread_id() {
            return Some(false);
        }
        if this.hot.cooldown.load(Ordering::Relaxed) != 0 {
            this.cool();
            return None;
        }
        Some(Sticky::make(this, held, mode))
    }

    /// One lock less of cool-down (none if stickies are off).
    #[cold]
    #[inline(never)]
    fn cool(&self) {
        let cooldown = self.hot.cooldown.load(Ordering::Relaxed);
        if cooldown != u32::MAX && cooldown != 0 {
            self.hot.cooldown.store(cooldown - 1, Ordering::Relaxed);
        }
    }

    #[inline(never)]
    fn make(this: &Arc<Sticky>, held: &mut Held, mode: Mode) -> bool {
        let hot = &this.hot;
        // SAFETY: pinned by the handle (or the root), held.
        let waiting = |node: &NodeRef| unsafe { node.get() }.state.load().is_waiting();
        if this.nodes.iter().any(waiting) {
            // It would be revoked at once; the check below is the one that
            // counts, this one only spares the registering.
            return false;
        }
        if hot.state.load(Ordering::Relaxed) != FREE
            || hot
                .state
                .compare_exchange(FREE, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false; // kept already (by a guard of this handle)
        }
        this.owner.store(thread_id(), Ordering::Relaxed);
        hot.uses.store(0, Ordering::Relaxed);
        hot.mode.store(mode as u8, Ordering::Relaxed);
        std::mem::swap(&mut *hot.held.lock(), held);
        // Active before it is registered: a revoker that finds it flags it.
        hot.state.store(ACTIVE, Ordering::Release);
        for (level, node) in this.nodes.iter().enumerate() {
            // SAFETY: pinned by the handle (or the root), held.
            let n = unsafe { node.get() };
            n.registry_or_init().add(this, this.mode_at(level, mode));
        }
        // Registered, then look for waiters (see the module docs).
        if this.nodes.iter().any(waiting) {
            // Somebody queued before it could see the sticky: the guard
            // keeps the holds, and hands the nodes on when it goes.
            let seen = this.take_active();
            debug_assert_eq!(seen & ABANDONED, 0, "the handle is borrowed");
            *held = this.unregister_take();
            hot.state.store(FREE, Ordering::Release);
            return false;
        }
        *held = Held::stuck(Sticky::ptr(this));
        true
    }

    /// Moves an active sticky (whatever its flags) to `TAKEN`; only its
    /// guard (or its maker) calls this. Returns the state it left.
    fn take_active(&self) -> u32 {
        let mut s = self.hot.state.load(Ordering::Relaxed);
        loop {
            debug_assert!(
                s & ACTIVE != 0,
                "only the guard of an active sticky takes it"
            );
            match self
                .hot
                .state
                .compare_exchange(s, TAKEN, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return s,
                Err(now) => s = now,
            }
        }
    }

    /// Unregisters and takes the kept holds out (state `TAKEN`). While the
    /// holds are still held, so the nodes are alive.
    fn unregister_take(&self) -> Held {
        for node in &self.nodes {
            // SAFETY: held (by the kept holds) until released after this.
            if let Some(r) = unsafe { node.get() }.registry() {
                r.remove(self);
            }
        }
        std::mem::replace(&mut *self.hot.held.lock(), Held::new())
    }

    /// Unregisters and releases the kept holds (state `TAKEN`), then frees
    /// the sticky for the next one.
    fn release_taken(&self) {
        let mut held = self.unregister_take();
        held.release(self.tree());
        self.hot.state.store(FREE, Ordering::Release);
    }

    /// The guard of an active sticky is done with it: back to idle, or, if
    /// someone asked for the holds or the handle is gone, everything
    /// released (and the sticky freed with the handle gone).
    #[inline]
    pub(crate) fn unlock(this: NonNull<Sticky>, tree: &LockTree) {
        // SAFETY: the guard's sticky lives while it is active (the handle's
        // reference, or, abandoned, the one it left to the guard).
        let s = unsafe { this.as_ref() };
        if s.hot
            .state
            .compare_exchange(ACTIVE, IDLE, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            Sticky::finish(this, tree);
        }
    }

    #[cold]
    #[inline(never)]
    fn finish(this: NonNull<Sticky>, tree: &LockTree) {
        let mut held = Sticky::unstick(this, true);
        held.release(tree);
    }

    /// Takes an active sticky's holds out for its guard, which then holds
    /// them itself (`strike`: a revoker asked for them). Frees an abandoned
    /// sticky.
    pub(crate) fn unstick(this: NonNull<Sticky>, strike: bool) -> Held {
        // A reference of its own for the episode: once the state leaves
        // `ACTIVE`, the handle's drop no longer waits for this guard.
        // SAFETY: the guard's sticky is alive while it is active (the
        // handle's reference, or, abandoned, the one it left to the guard),
        // and `this` came from an `Arc`.
        let s = unsafe {
            Arc::increment_strong_count(this.as_ptr().cast_const());
            Arc::from_raw(this.as_ptr().cast_const())
        };
        let seen = s.take_active();
        if strike && seen & REVOKE != 0 {
            s.strike();
        }
        let held = s.unregister_take();
        s.hot.state.store(FREE, Ordering::Release);
        if seen & ABANDONED != 0 {
            // SAFETY: the handle left this reference (`Arc::into_raw` in
            // `drop_handle`) to the guard of the active sticky: the caller.
            drop(unsafe { Arc::from_raw(this.as_ptr().cast_const()) });
        }
        held
    }

    /// Counts a revoke: a longer cool-down before the next sticky (unless
    /// this one was reused enough to pay for its revoke), and any thread
    /// may make it.
    fn strike(&self) {
        let hot = &self.hot;
        if hot.cooldown.load(Ordering::Relaxed) == u32::MAX {
            return;
        }
        let before = if hot.uses.load(Ordering::Relaxed) >= PAID_OFF {
            0
        } else {
            hot.strikes.load(Ordering::Relaxed)
        };
        let strikes = (before + 1).min(MAX_STRIKES);
        hot.strikes.store(strikes, Ordering::Relaxed);
        hot.cooldown.store((1 << strikes) - 1, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
    }

    /// A request needs the holds: releases them if idle (`true`), flags an
    /// active sticky so its guard does. Never blocks.
    fn revoke(&self) -> bool {
        let state = &self.hot.state;
        let mut s = state.load(Ordering::Relaxed);
        loop {
            let next = if s == IDLE {
                TAKEN
            } else if s & ACTIVE != 0 && s & REVOKE == 0 {
                s | REVOKE
            } else {
                return false; // free, being released, or flagged already
            };
            match state.compare_exchange(s, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) if next == TAKEN => break,
                Ok(_) => return false,
                Err(now) => s = now,
            }
        }
        self.strike();
        self.release_taken();
        true
    }

    /// The handle goes: releases idle holds, or leaves the guard of an
    /// active sticky its own reference to free it with. A sticky someone
    /// else has `TAKEN` is theirs to finish (they hold a reference).
    pub(crate) fn drop_handle(this: &Arc<Sticky>) {
        let state = &this.hot.state;
        let mut s = state.load(Ordering::Acquire);
        loop {
            let next = match s {
                FREE | TAKEN => return,
                IDLE => TAKEN,
                _ => s | REVOKE | ABANDONED,
            };
            match state.compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next == TAKEN => {
                    this.release_taken();
                    return;
                }
                Ok(_) => {
                    // Freed by the guard (`unstick`).
                    let _ = Arc::into_raw(Arc::clone(this));
                    return;
                }
                Err(now) => s = now,
            }
        }
    }

    /// The mode an active sticky keeps on the handle's node.
    pub(crate) fn mode(&self) -> Mode {
        // Only ever stored as `Mode as u8`, the mode's index in `ALL`.
        Mode::ALL[usize::from(self.hot.mode.load(Ordering::Relaxed))]
    }

    /// The sticky's key in the registries.
    fn addr(this: &Sticky) -> usize {
        std::ptr::from_ref(this).addr()
    }

    /// How many levels the sticky keeps (the handle's, root included).
    pub(crate) fn depth(&self) -> usize {
        self.nodes.len()
    }

    /// The handle's node.
    pub(crate) fn leaf(&self) -> NodeRef {
        *self.nodes.last().expect("the root is always there")
    }
}

impl Node {
    /// Revokes the stickies on this node whose mode conflicts with `to`
    /// (all of them for `None`) after a request found the holders in its
    /// way. `true`: some idle one was released, so the request may retry.
    #[inline]
    pub(crate) fn revoke_sticky(&self, to: Option<Mode>) -> bool {
        // Always under the registry's lock once there is one: the hint
        // read without it could miss a sticky made while this request
        // queued (see the module docs).
        self.registry().is_some_and(|r| r.revoke(to))
    }
}

/// The calling thread, as a non-zero number unique among live threads.
#[cfg(not(loom))]
#[inline(always)]
fn thread_id() -> usize {
    std::thread_local! {
        static ME: u8 = const { 0 };
    }
    ME.with(|me| std::ptr::from_ref(me).addr())
}

/// Under loom: the model thread's number, plus one.
#[cfg(loom)]
fn thread_id() -> usize {
    crate::sync::thread::number().map_or(usize::MAX, |n| n + 1)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc as StdArc;
    use std::thread;

    use super::*;
    use crate::{Error, LockTree};

    fn state(tree: &crate::Prepared<'_>) -> u32 {
        tree.sticky().hot.state.load(Ordering::SeqCst)
    }

    #[test]
    fn a_handle_keeps_reuses_and_loses_its_holds() {
        let tree = LockTree::new();
        let h = tree.prepare("/a/b").unwrap();
        assert_eq!(state(&h), FREE);
        let g = h.lock(Mode::X).unwrap();
        assert_eq!(state(&h), ACTIVE, "made on the first lock");
        drop(g);
        assert_eq!(state(&h), IDLE, "kept after the guard");
        let g = h.lock(Mode::X).unwrap();
        assert_eq!(state(&h), ACTIVE, "reused");
        drop(g);
        // A conflicting request calls it back: released, one strike.
        drop(tree.try_lock("/a", Mode::S).unwrap());
        assert_eq!(state(&h), FREE);
        assert_eq!(h.sticky().hot.cooldown.load(Ordering::SeqCst), 1);
        drop(h.lock(Mode::X).unwrap());
        assert_eq!(state(&h), FREE, "one lock of cool-down");
        drop(h.lock(Mode::X).unwrap());
        assert_eq!(state(&h), IDLE, "kept again");
        // Another mode through the handle: given back, kept in the new one.
        let g = h.lock(Mode::S).unwrap();
        assert_eq!(state(&h), ACTIVE);
        assert_eq!(h.sticky().mode(), Mode::S);
        assert_eq!(
            tree.try_lock("/a/b", Mode::IX).unwrap_err(),
            Error::WouldBlock
        );
        drop(g);
        drop(h);
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn a_request_for_an_active_sticky_flags_it_and_the_guard_gives_back() {
        let tree = LockTree::new();
        let h = tree.prepare("/a").unwrap();
        drop(h.lock(Mode::X).unwrap());
        let g = h.lock(Mode::X).unwrap();
        assert_eq!(tree.try_lock("/", Mode::S).unwrap_err(), Error::WouldBlock);
        assert_eq!(state(&h), ACTIVE | REVOKE);
        drop(g);
        assert_eq!(state(&h), FREE);
        assert!(tree.try_lock("/", Mode::X).is_ok());
    }

    #[test]
    fn no_sticky_when_turned_off() {
        let tree = LockTree::builder().sticky(false).build();
        let h = tree.prepare("/a/b").unwrap();
        for _ in 0..3 {
            drop(h.lock(Mode::X).unwrap());
            assert_eq!(state(&h), FREE);
        }
    }

    #[test]
    fn no_sticky_on_a_node_somebody_waits_on() {
        let tree = StdArc::new(LockTree::new());
        let reader = tree.lock("/a/b", Mode::S).unwrap();
        let t = tree.clone();
        let w = thread::spawn(move || drop(t.lock("/a/b", Mode::IX).unwrap()));
        while !tree
            .inspect("/a/b")
            .unwrap()
            .waiting
            .iter()
            .any(|w| w.mode == Mode::IX)
        {
            thread::yield_now();
        }
        let h = tree.prepare("/a/b").unwrap();
        // IS is compatible with the S holder and the queued IX: granted,
        // but /a/b has a waiter, so the holds are not kept.
        let g = h.lock(Mode::IS).unwrap();
        assert_eq!(state(&h), FREE);
        drop((g, reader));
        w.join().unwrap();
    }

    #[test]
    fn a_handle_dropped_under_its_guard_leaves_the_guard_to_free_it() {
        let tree = LockTree::new();
        let h = tree.prepare("/a/b").unwrap();
        drop(h.lock(Mode::X).unwrap());
        let g = h.lock(Mode::X).unwrap();
        let weak = StdArc::downgrade(h.sticky());
        drop(h);
        let sticky = weak.upgrade().expect("kept for the guard");
        assert_eq!(
            sticky.hot.state.load(Ordering::SeqCst),
            ACTIVE | REVOKE | ABANDONED
        );
        drop(sticky);
        assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
        drop(g);
        assert!(weak.upgrade().is_none(), "freed by the guard");
        assert_eq!(tree.node_count(), 0);
    }

    /// A long-lived guard through the handle keeps one sticky active; the
    /// short locks beside it keep theirs in the other.
    #[test]
    fn a_long_guard_leaves_the_other_sticky_to_short_ones() {
        let tree = LockTree::new();
        let h = tree.prepare("/t/a").unwrap();
        let long = h.lock(Mode::IS).unwrap();
        for _ in 0..3 {
            drop(h.lock(Mode::S).unwrap());
        }
        let at = |i: usize| h.sticky_at(i).hot.state.load(Ordering::SeqCst);
        assert_eq!((at(0), at(1)), (ACTIVE, IDLE));
        assert_eq!(h.sticky_at(1).mode(), Mode::S);
        drop(long);
        assert_eq!((at(0), at(1)), (IDLE, IDLE));
        // Called back together: both released, nothing held.
        drop(tree.try_lock("/t/a", Mode::X).unwrap());
        assert_eq!((at(0), at(1)), (FREE, FREE));
    }

    /// Two threads sharing one handle each keep a sticky of their own.
    #[test]
    fn two_threads_on_one_handle_each_keep_one() {
        let tree = LockTree::new();
        let h = tree.prepare("/t/a").unwrap();
        // Both alive together, so their thread-local addresses differ.
        let both = std::sync::Barrier::new(2);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..3 {
                        drop(h.lock(Mode::S).unwrap());
                    }
                    both.wait();
                });
            }
        });
        let owner = |i: usize| h.sticky_at(i).owner.load(Ordering::SeqCst);
        assert_ne!(owner(0), 0);
        assert_ne!(owner(1), 0);
        assert_ne!(owner(0), owner(1));
    }

    /// Rows below the handle keep the handle's intentions; `lock` in that
    /// intention reuses the same sticky.
    #[test]
    fn children_keep_the_handles_intentions() {
        let tree = LockTree::new();
        let h = tree.prepare("/db/t").unwrap();
        drop(h.lock_child("1", Mode::X).unwrap());
        assert_eq!(state(&h), IDLE);
        assert_eq!(h.sticky().mode(), Mode::IX);
        let row = h.lock_child("2", Mode::X).unwrap();
        assert_eq!(state(&h), ACTIVE);
        assert_eq!(row.path().to_string(), "/db/t/2");
        assert_eq!(row.mode(), Mode::X);
        let deep = h.lock_child(["3", "c"], Mode::S);
        assert_eq!(deep.as_ref().map(|g| g.path().depth()), Ok(4));
        drop((row, deep));
        let g = h.lock(Mode::IX).unwrap();
        assert_eq!(state(&h), ACTIVE, "lock(IX) is the same holds");
        drop(g);
        // A child that must wait gives the sticky back to idle.
        let other = tree.lock("/db/t/9", Mode::X).unwrap();
        assert_eq!(
            h.try_lock_child("9", Mode::X).unwrap_err(),
            Error::WouldBlock
        );
        assert_eq!(state(&h), IDLE);
        // A child in S takes IS on the handle's levels: not what is kept
        // (IX, which would exclude a table scan the S row does not); the
        // handle's other sticky keeps IS (made beside the active IX above).
        drop(h.lock_child("8", Mode::S).unwrap());
        let at = |i: usize| h.sticky_at(i).hot.state.load(Ordering::SeqCst);
        assert_eq!((at(0), at(1)), (IDLE, IDLE));
        assert_eq!(h.sticky_at(1).mode(), Mode::IS);
        drop(other);
        // X on the handle's node conflicts with both kept modes: both are
        // given back before the usual path takes it.
        drop(h.lock(Mode::X).unwrap());
        assert_eq!(h.sticky().mode(), Mode::X);
        assert_eq!((at(0), at(1)), (IDLE, FREE));
        drop(h);
        assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn a_converted_guard_takes_the_holds_out() {
        let tree = LockTree::new();
        let h = tree.prepare("/a/b").unwrap();
        drop(h.lock(Mode::S).unwrap());
        let mut g = h.lock(Mode::S).unwrap();
        g.upgrade(Mode::X).unwrap();
        assert_eq!(state(&h), FREE);
        assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
        drop(g);
        assert!(tree.try_lock("/", Mode::X).is_ok());
    }
}
