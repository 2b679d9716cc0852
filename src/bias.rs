//! Reader bias for hot nodes: per-thread intention slots (BRAVO / SNZI
//! style), taken without a read-modify-write by the thread that owns them.
//!
//! One state word per node is one cache line that every acquisition of the
//! node writes. When two cores take compatible modes on the same node at
//! once (IS on a shared root, IX on a hot table, S on a hot row) that line
//! bounces between them and neither gets faster with more threads; and
//! even on one thread each acquisition and release is a CAS (about 11 ns
//! here when nothing hides it). A node that is hot becomes **biased**:
//! acquisitions of one class of compatible modes go to a slot of their
//! own instead of the shared word, and any request that conflicts with
//! that class revokes the bias first.
//!
//! # The slot word
//!
//! ```text
//!     63     62    61 ...... 40  39 ........ 30  29 ...... 20  19 ........ 10  9 ...... 0
//! +------+-------+-----------+---------------+-------------+---------------+-----------+
//! |ACTIVE|CLASS_S|  (zero)   | owed class    |  owed IS    |  class count  | IS count  |
//! +------+-------+-----------+---------------+-------------+---------------+-----------+
//!    1      1                    10 bits        10 bits        10 bits       10 bits
//! ```
//!
//! - `ACTIVE`: the slot takes holds. Set only while the node's state word
//!   has `BIASED` (see `state.rs`); set and cleared under the node's queue
//!   lock.
//! - `CLASS_S`: the bias class. Clear: {IS, IX} (the node's word carries one
//!   phantom IX holder); set: {IS, S} (a phantom S holder).
//! - The counts: holds taken through this slot that live in the slot (for
//!   an owned slot, less those its `remote` counter says other threads
//!   gave back; see below).
//! - The owed counts: holds taken through this slot that a fold moved into
//!   the word and that are not released yet.
//!
//! Holds of one mode taken through one slot are interchangeable, so a
//! release needs to know only its slot, not which of them it is: while
//! anything is owed, a release pays off a debt (and releases in the word),
//! otherwise it decrements the slot's count. An active slot owes nothing
//! (a slot is only activated once its debts are paid, and only a fold,
//! which deactivates it, creates debt); an inactive slot counts nothing.
//! So every owed count is at most one fold's worth, `SLOT_MAX`.
//!
//! # Owned and shared slots
//!
//! A biased node has [`OWNED`] owned slots and [`SHARED`] shared ones,
//! each on a cache line of its own. A thread claims the lowest owned slot
//! no live thread owns the first time it needs one, and gives it back when
//! it exits; while every owned slot has a live owner, further threads are
//! spread over the shared slots round-robin. A request keeps the slot of
//! the thread that took its first slot hold (every slot hold of one guard
//! is in that slot), and takes further slot holds only on that thread.
//!
//! - A **shared slot** is only ever changed with CAS, by any of its
//!   threads, by folds and by activation.
//! - An **owned slot**'s word is written by its owner, with CAS or, inside
//!   a *window*, with plain stores; by folds and activation (CAS, under
//!   the queue lock, while no window can store); and by whoever pays a debt
//!   (CAS, only while the slot is inactive, when no window stores either).
//!   Any other thread giving back one of its holds (a guard moved to
//!   another thread, an async task resumed elsewhere) adds to the slot's
//!   `remote` counter instead; the owner takes such counts off its word
//!   when the slot fills up, and a fold subtracts them.
//!
//! # Owner windows
//!
//! A window lets the owner take or give back a hold with a load and a
//! store instead of a CAS. The owner stores a busy flag, passes
//! [`barrier::light`], and reads the node's *gate*; only if the gate is
//! open does it read and store its slot word; then it clears the flag
//! (`Release`). A fold first closes the gate, passes [`barrier::heavy`]
//! (`membarrier(2)` on Linux), and waits until every owned slot's busy
//! flag is clear (`Acquire`); only then does it read and CAS the slots.
//!
//! This is Dekker's pattern with an asymmetric barrier (`barrier.rs`):
//! either the owner's gate load comes after the fold's barrier, and sees
//! the gate closed and stores nothing, or its busy store is visible to the
//! fold, which waits for the window to end and then sees its store. So
//! once the fold reads a slot no window is changing it, and none will
//! until activation opens the gate again, under the queue lock the fold
//! holds. The busy flag is a separate word: a window that found the gate
//! closed never touched the slot word, so no plain store can land on a
//! word that a CAS has changed.
//!
//! Windows are for prepared handles (a request with [`WINDOWS`]): between
//! a handle's levels there is little work for a CAS to hide behind, and a
//! window saves most of its cost. The plain walk looks up the next level
//! while a CAS completes, which hides much of it, and a window's chain of
//! dependent loads (slots, gate, slot word) then costs more than the CAS
//! (figures in `docs/bench/benches.md`); so the walk takes its slot holds
//! with CAS.
//!
//! # Revokes without the barrier
//!
//! The gate has three states: closed, open to windows ([`OPEN`]), and
//! open to CAS only ([`CAS_ONLY`]). A node is opened to windows only when
//! a request that uses them (a prepared handle's `lock`) biases it; a node
//! that plain paths made hot (a table whose rows two threads lock) is
//! opened to CAS only, and a request with windows takes its slot hold
//! there with CAS as well. A fold swaps the gate closed and passes the
//! heavy barrier and waits for windows only if the gate was open to them:
//! through a gate open to CAS only no window ever stored (a window stores
//! only after reading `OPEN`, and windows of an earlier bias were waited
//! out by its fold), and CAS changes to a slot word are ones the fold's own
//! CAS sees. So the rare conflicting request on such a node (S on the hot
//! table) costs a fold of the slots, not a `membarrier(2)` that interrupts
//! every running thread of the process: a standalone two-thread database
//! mix with 1% S on the table and `Bias::Always` (a revoke per S) went from
//! 5.1-5.5 to 9.6-10.0 M/s (`docs/bench/benches.md`).
//!
//! # Protocol
//!
//! - **Bias** (under the queue lock): the state word gets `BIASED` plus one
//!   phantom holder of the class's stronger mode (IX or S) — refused if a
//!   holder conflicts with it or anyone waits — and only then are the slots
//!   that owe nothing made `ACTIVE` (their `remote` counters zeroed) and
//!   the gate opened (to windows or to CAS only). So a slot is active only
//!   while the word says, through its phantom holder, that the class is
//!   held: every request that conflicts with the class sees a conflict in
//!   the word and takes the slow path, which revokes.
//! - **Acquire through a slot**: on the request's own slot, which must be
//!   active, of a class that admits the mode, and not full: a CAS, or a
//!   window. The guard remembers that the level is in a slot, and which.
//! - **Release through a slot**: a CAS or window that either decrements the
//!   count (done) or pays off one debt (then the hold is released in the
//!   word like any other, waking waiters if any); from a thread that does
//!   not own the slot, while it is active, an increment of its `remote`
//!   counter. If a fold has closed that counter, the increment is void:
//!   the hold is (or is about to be) a debt, which the releaser waits to
//!   see and pays.
//! - **Revoke / fold** (under the queue lock): close the gate; if it was
//!   open to windows, pass the heavy barrier and wait for windows to end;
//!   then for each active slot, close its `remote` counter (the releases
//!   counted there are taken off the slot's counts), add the counts to the
//!   word, then CAS the slot to inactive with its counts moved to its
//!   debts (if the CAS loses to a CAS acquire or release through the slot,
//!   take the counts back out of the word and retry). Every hold is in the word or in its slot at
//!   every moment, never in neither; the phantom keeps conflicting
//!   requests out meanwhile. Finally the phantom and `BIASED` leave the
//!   word; from then on the word counts every holder exactly.
//! - **Never biased while anyone waits**: the slow path revokes before it
//!   queues anything, and a node with `WAITING` is never biased; so a
//!   release that only decrements a slot never has anyone to wake.
//! - **Headroom**: while biased, the word's own counts of the class stay
//!   `SLOTS * SLOT_MAX` below their maximum (a grant that would pass that
//!   goes to the slow path, which revokes first), so a fold never overflows.
//!
//! Conversions, renames and downgrades of a hold that lives in a slot
//! revoke the bias first (the hold is then in the word), and go on as usual.
//!
//! # When a node becomes biased
//!
//! [`Bias::Adaptive`] (the default) biases a node after a number of
//! contended compare-and-swaps on its word by compatible modes, or, on a
//! node a prepared handle keeps, of grants of those modes (whose windows
//! are cheaper than the word's CAS even on one thread); a revoke doubles
//! the number needed next time (up to a cap), so a node that alternates
//! readers and writers stops flipping. Each revoke costs a fold of the
//! slots, and on a node opened to windows also a `membarrier` call (a few
//! microseconds, more with many running threads).
//! [`Bias::Always`] biases at the first compatible acquisition (for nodes
//! known to be hot, and for tests), [`Bias::Never`] never.
//!
//! A biased node is kept (as if pinned by a prepared handle) in a short list
//! of the tree's biased nodes; biasing one more than [`MAX_BIASED`] revokes
//! the oldest, so nodes that went cold are reclaimed after all.
//! [`LockTree::purge_idle`](crate::LockTree::purge_idle) revokes every one.

#[cfg(not(loom))]
use std::cell::Cell;

use crate::barrier;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::Mode;

/// How a tree biases hot nodes toward their readers (see the module docs
/// of the engine and [`Builder::bias`](crate::Builder::bias)).
///
/// ```
/// use hierlock::{Bias, LockTree, Mode};
/// let tree = LockTree::builder().bias(Bias::Always).build();
/// let r = tree.lock("/db/hot", Mode::S).unwrap(); // through a per-thread slot
/// // A conflicting request revokes the bias and waits for the reader as usual.
/// assert!(tree.try_lock("/db/hot", Mode::X).is_err());
/// drop(r);
/// assert!(tree.try_lock("/db/hot", Mode::X).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Bias {
    /// Every acquisition goes through the node's state word.
    Never,
    /// A node becomes biased after repeated contention between compatible
    /// modes on its state word (the default).
    #[default]
    Adaptive,
    /// A node becomes biased at its first compatible acquisition.
    Always,
}

/// Owned slots per biased node: each belongs to one live thread, which
/// may change it with plain stores (see "Owner windows").
#[cfg(not(loom))]
pub(crate) const OWNED: usize = 16;
/// Shared slots per biased node, for threads beyond the owned ones,
/// spread over them round-robin; changed with CAS only.
#[cfg(not(loom))]
pub(crate) const SHARED: usize = 16;
/// Under loom: the main thread and the first spawned one own a slot, a
/// third thread shares one; enough for its few threads, and keeps its
/// state space small.
#[cfg(loom)]
pub(crate) const OWNED: usize = 2;
/// See above.
#[cfg(loom)]
pub(crate) const SHARED: usize = 1;
/// Slots per biased node: the owned ones, then the shared ones.
pub(crate) const SLOTS: usize = OWNED + SHARED;
/// The most holds one slot counts per mode; more go through the word.
pub(crate) const SLOT_MAX: u64 = (1 << 10) - 1;
/// How far below its maximum the word keeps each count while biased.
pub(crate) const HEADROOM: u64 = SLOTS as u64 * SLOT_MAX;
/// The most nodes of one tree biased at once (older ones are revoked).
pub const MAX_BIASED: usize = 64;

/// Contended CASes before [`Bias::Adaptive`] biases a node.
pub(crate) const FIRST_THRESHOLD: u32 = 64;
/// The largest number of contended CASes a node needs after revokes.
pub(crate) const MAX_THRESHOLD: u32 = 1 << 16;

const IS_ONE: u64 = 1;
const CLASS_ONE: u64 = 1 << 10;
const IS_MASK: u64 = SLOT_MAX;
const CLASS_MASK: u64 = SLOT_MAX << 10;
const CLASS_S: u64 = 1 << 62;
const ACTIVE: u64 = 1 << 63;

/// The bias class: which mode the phantom holder in the word holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// {IS, IX}: phantom IX.
    IntentionExclusive,
    /// {IS, S}: phantom S.
    Shared,
}

impl Class {
    /// The mode of the phantom holder.
    pub(crate) fn phantom(self) -> Mode {
        match self {
            Class::IntentionExclusive => Mode::IX,
            Class::Shared => Mode::S,
        }
    }
}

/// Where one level of a guard holds its mode: in the node's state word, or
/// in a slot (the guard keeps which one, the same for all its levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold(bool);

impl Hold {
    /// Held in the state word.
    pub(crate) const WORD: Hold = Hold(false);
    /// Held through the guard's slot.
    pub(crate) const SLOT: Hold = Hold(true);

    pub(crate) fn is_slot(self) -> bool {
        self.0
    }
}

/// A request's slot byte: the index of the slot of the thread that took
/// its first slot hold (`NO_SLOT` until then), plus [`WINDOWS`]. Every
/// slot hold of one request is in that slot.
pub(crate) const NO_SLOT: u8 = 0x7f;
/// In a request's slot byte: its owner takes and gives back its holds in
/// windows (plain stores) rather than with CAS. Prepared handles set it:
/// between their levels there is little for a CAS to hide behind, while
/// the plain walk's lookups overlap the CAS and pay for a window's longer
/// chain of loads (`docs/bench/benches.md`).
pub(crate) const WINDOWS: u8 = 0x80;

/// The slot index in a request's slot byte.
#[inline]
pub(crate) fn slot_index(b: u8) -> usize {
    usize::from(b & !WINDOWS)
}

/// The slot a new hold of a request may go through: the calling thread's
/// own, if the request has no slot yet or has this one. `None`: the hold
/// goes in the word.
#[inline]
pub(crate) fn slot_of(b: &mut u8) -> Option<usize> {
    let mine = thread_slot()?;
    if *b & !WINDOWS == NO_SLOT {
        *b = (*b & WINDOWS) | mine as u8;
    }
    (slot_index(*b) == mine).then_some(mine)
}

/// The owned slot of the calling thread, if it has claimed one: where a
/// prepared handle's quick path takes its slot holds in windows. `None`
/// (no slot claimed yet, or a shared one) sends the request the general
/// way, which claims.
#[inline]
pub(crate) fn owned_slot() -> Option<usize> {
    claimed_slot().filter(|&i| i < OWNED)
}

/// For the release of a request whose slot byte is `b`: its slot, if the
/// request takes its holds in windows and the slot is the calling thread's
/// owned one (so its slot holds may be given back in windows).
#[inline]
pub(crate) fn window_slot(b: u8) -> Option<usize> {
    if b & WINDOWS == 0 {
        return None;
    }
    let idx = slot_index(b);
    (idx < OWNED && claimed_slot() == Some(idx)).then_some(idx)
}

/// An owner window's busy flag, cleared when dropped.
struct Busy<'a>(&'a AtomicU32);

impl Drop for Busy<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// How a CAS on a slot went.
#[derive(Debug, PartialEq, Eq)]
enum Cas {
    Taken,
    Refused,
    Full,
}

/// The gate is closed: no slot takes holds in windows (the node is not
/// biased, or a fold is under way).
const CLOSED_GATE: u32 = 0;
/// The gate is open: owners may write their slot words with plain stores.
const OPEN: u32 = 1;
/// The slots are active but take holds with CAS only: no window stores,
/// so a fold needs no barrier (see "Revokes without the barrier").
const CAS_ONLY: u32 = 2;
/// In a slot's `remote`: a fold has taken the count; later increments
/// are void (their holds were folded into debts).
const CLOSED: u64 = 1 << 63;

/// One slot, on a cache line of its own: its owner's word and window flag,
/// and the count of its holds released by other threads.
#[repr(align(128))]
#[derive(Debug)]
struct Slot {
    /// Counts, debts, `ACTIVE`, `CLASS_S` (layout at the top). While the
    /// gate is open and the word is active, only the owner writes it, with
    /// plain stores inside its window; otherwise everyone uses CAS.
    word: AtomicU64,
    /// Non-zero while the owner is inside a window.
    busy: AtomicU32,
    /// Holds of this slot released by threads other than its owner (IS
    /// and class counts laid out as in `word`), plus `CLOSED`. Counted in
    /// `word` too until the owner or a fold subtracts them.
    remote: AtomicU64,
}

/// The gate on a line of its own: read by every window, written by folds
/// and activations.
#[repr(align(128))]
#[derive(Debug)]
struct Gate(AtomicU32);

/// A node's slots, allocated the first time it is biased.
#[derive(Debug)]
pub(crate) struct Slots {
    gate: Gate,
    slots: [Slot; SLOTS],
}

const COUNTS: u64 = IS_MASK | CLASS_MASK;
const OWED_SHIFT: u32 = 20;
const OWED: u64 = COUNTS << OWED_SHIFT;

/// What one hold of `m` is in a slot word's counts (the owed counts are the
/// same, `OWED_SHIFT` up), if the word's class admits `m`.
#[inline]
fn one(v: u64, m: Mode) -> Option<(u64, u64)> {
    match m {
        Mode::IS => Some((IS_ONE, IS_MASK)),
        Mode::IX if v & CLASS_S == 0 => Some((CLASS_ONE, CLASS_MASK)),
        Mode::S if v & CLASS_S != 0 => Some((CLASS_ONE, CLASS_MASK)),
        _ => None,
    }
}

/// As `one`, for a release: whatever the class is now (an inactive slot
/// keeps the class its debts were made in).
#[inline]
fn one_held(m: Mode) -> (u64, u64) {
    match m {
        Mode::IS => (IS_ONE, IS_MASK),
        _ => (CLASS_ONE, CLASS_MASK),
    }
}

/// The counts a slot word holds: (IS, class mode).
fn counts(v: u64) -> (u64, u64) {
    (v & IS_MASK, (v & CLASS_MASK) >> 10)
}

/// The counts of `v` less the remote releases `r` (both fields; each of
/// `r`'s is at most `v`'s, since a remote release is of a hold `v` counts).
#[inline]
fn less(v: u64, r: u64) -> u64 {
    debug_assert!(r & IS_MASK <= v & IS_MASK && r & CLASS_MASK <= v & CLASS_MASK);
    (v & COUNTS) - (r & COUNTS)
}

impl Slots {
    pub(crate) fn new() -> Self {
        barrier::init();
        Slots {
            gate: Gate(AtomicU32::new(CLOSED_GATE)),
            slots: std::array::from_fn(|_| Slot {
                word: AtomicU64::new(0),
                busy: AtomicU32::new(0),
                remote: AtomicU64::new(0),
            }),
        }
    }

    /// The owner's window on `slot`: if the gate is open, `f` gets the
    /// word and may return a new one to store (and a verdict); otherwise
    /// nothing is stored. Returns the verdict (`false` if the gate was
    /// closed). See the module docs, "Owner windows".
    #[inline(always)]
    fn window(&self, slot: &Slot, f: impl FnOnce(u64) -> Option<(u64, bool)>) -> bool {
        slot.busy.store(1, Ordering::Relaxed);
        // Clears the flag (Release) when the window ends, even by a panic
        // (a failed debug assertion), which would otherwise leave every
        // later fold of the node waiting.
        let _busy = Busy(&slot.busy);
        barrier::light();
        if self.gate.0.load(Ordering::Acquire) == OPEN {
            if let Some((next, ok)) = f(slot.word.load(Ordering::Relaxed)) {
                slot.word.store(next, Ordering::Relaxed);
                return ok;
            }
        }
        false
    }

    /// Takes one hold of `m` through slot `idx`, which must be the calling
    /// thread's own ([`slot_of`]), if it is active, admits `m` and has room:
    /// in a window if `windows` and the slot is owned, else with CAS.
    #[inline]
    pub(crate) fn try_acquire(&self, idx: usize, m: Mode, windows: bool) -> bool {
        let slot = &self.slots[idx % SLOTS];
        if idx >= OWNED {
            return Self::acquire_cas(slot, m) == Cas::Taken;
        }
        // A request with windows on a node whose gate admits none (biased
        // for requests without) takes its slot hold with CAS too.
        if !windows || self.gate.0.load(Ordering::Relaxed) != OPEN {
            match Self::acquire_cas(slot, m) {
                Cas::Taken => return true,
                Cas::Refused => return false,
                // Perhaps full of holds other threads released: a window
                // takes those off.
                Cas::Full => {}
            }
        }
        self.window(slot, |v| {
            if v & ACTIVE == 0 {
                return None;
            }
            let (one, mask) = one(v, m)?;
            let mut v = v;
            if v & mask == mask {
                // Full, perhaps of holds other threads released: take
                // those off (inside the window no fold touches `remote`).
                let r = slot.remote.swap(0, Ordering::Acquire);
                debug_assert!(r & CLOSED == 0, "remote closed while the gate is open");
                v = (v & !COUNTS) | less(v, r);
                if v & mask == mask {
                    return Some((v, false));
                }
            }
            Some((v + one, true))
        })
    }

    /// The quick path's window acquire (a prepared handle's `lock`): one
    /// hold of `m` through owned slot `idx`, the calling thread's own, if
    /// the gate is open, the slot active, of a class that admits `m`, and
    /// not full. `false`: nothing changed; the general path
    /// ([`try_acquire`](Self::try_acquire)) sorts out why.
    #[inline(always)]
    pub(crate) fn window_acquire(&self, idx: usize, m: Mode) -> bool {
        debug_assert!(idx < OWNED, "a window on a shared slot");
        self.window(&self.slots[idx], |v| {
            if v & ACTIVE == 0 {
                return None;
            }
            let (one, mask) = one(v, m)?;
            (v & mask != mask).then_some((v + one, true))
        })
    }

    /// The window release of a hold of `m` taken through owned slot `idx`,
    /// which the calling thread owns: `false` if the gate is closed or the
    /// slot inactive (a fold moved its holds into the word), and nothing
    /// changed; then [`try_release`](Self::try_release) pays the debt.
    #[inline(always)]
    pub(crate) fn window_release(&self, idx: usize, m: Mode) -> bool {
        debug_assert!(idx < OWNED, "a window on a shared slot");
        let (one, mask) = one_held(m);
        self.window(&self.slots[idx], |v| {
            if v & ACTIVE == 0 {
                return None;
            }
            debug_assert!(v & mask != 0, "releasing a slot hold of {m} not counted");
            Some((v - one, true))
        })
    }

    /// Takes one hold of `m` through `slot` with CAS: on a shared slot by
    /// any of its threads, on an owned one by its owner only.
    #[inline]
    fn acquire_cas(slot: &Slot, m: Mode) -> Cas {
        let mut v = slot.word.load(Ordering::Relaxed);
        loop {
            if v & ACTIVE == 0 {
                return Cas::Refused;
            }
            let Some((one, mask)) = one(v, m) else {
                return Cas::Refused;
            };
            if v & mask == mask {
                return Cas::Full;
            }
            match slot
                .word
                .compare_exchange_weak(v, v + one, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Cas::Taken,
                Err(now) => v = now,
            }
        }
    }

    /// Gives back a hold of `m` taken through slot `idx` with CAS (a
    /// request with windows tries [`window_release`](Self::window_release)
    /// first). `false`: it paid off a debt instead: the hold is in the
    /// state word; release it there.
    #[inline]
    pub(crate) fn try_release(&self, idx: usize, m: Mode) -> bool {
        let slot = &self.slots[idx % SLOTS];
        let (one, mask) = one_held(m);
        if idx >= OWNED {
            return Self::release_cas(slot, one, mask);
        }
        if claimed_slot() == Some(idx) {
            // The owner's CAS (the gate may be closed, the slot folded).
            return Self::release_cas(slot, one, mask);
        }
        loop {
            let v = slot.word.load(Ordering::Acquire);
            if v & (mask << OWED_SHIFT) != 0 || v & ACTIVE == 0 {
                if let Some(in_slot) = Self::try_release_cas(slot, v, one, mask) {
                    return in_slot;
                }
                continue;
            }
            // Active: the owner may be storing to the word; count the
            // release on the side.
            let r = slot.remote.fetch_add(one, Ordering::AcqRel);
            if r & CLOSED == 0 {
                return true;
            }
            // A fold took the count before this release: the hold is (or
            // is about to be) a debt. Wait for the fold to deactivate the
            // word, then pay it.
            spin();
        }
    }

    /// The CAS release: pays a debt (`false`) or decrements the count
    /// (`true`).
    fn release_cas(slot: &Slot, one: u64, mask: u64) -> bool {
        loop {
            let v = slot.word.load(Ordering::Acquire);
            if let Some(in_slot) = Self::try_release_cas(slot, v, one, mask) {
                return in_slot;
            }
        }
    }

    /// One CAS of `release_cas` from `v`; `None` if the word changed.
    #[inline]
    fn try_release_cas(slot: &Slot, v: u64, one: u64, mask: u64) -> Option<bool> {
        let (next, in_slot) = if v & (mask << OWED_SHIFT) != 0 {
            (v - (one << OWED_SHIFT), false)
        } else {
            debug_assert!(v & mask != 0, "releasing a slot hold not counted");
            (v - one, true)
        };
        // AcqRel: paying a debt must see the fold that put the hold into
        // the word (its CAS released it), so this thread's release in the
        // word comes after that fold's add.
        slot.word
            .compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| in_slot)
    }

    /// Turns a hold of `m` taken through slot `idx`, which a fold has
    /// moved into the state word, into a plain hold of the word: pays off
    /// its debt. Call after revoking.
    pub(crate) fn forgive(&self, idx: usize, m: Mode) {
        let slot = &self.slots[idx % SLOTS];
        let (one, mask) = one_held(m);
        let prev = slot.word.fetch_sub(one << OWED_SHIFT, Ordering::Relaxed);
        debug_assert!(
            prev & (mask << OWED_SHIFT) != 0,
            "no debt of {m} to forgive"
        );
    }

    /// Makes every slot that owes nothing active in `class`, then opens
    /// the gate: to windows if `windows`, else to CAS only. Call under the
    /// queue lock, after the word got `BIASED` and its phantom holder (the
    /// gate is closed: the node was not biased).
    pub(crate) fn activate(&self, class: Class, windows: bool) {
        debug_assert_eq!(self.gate.0.load(Ordering::Relaxed), CLOSED_GATE);
        let class_bit = match class {
            Class::IntentionExclusive => 0,
            Class::Shared => CLASS_S,
        };
        for s in &self.slots {
            let mut v = s.word.load(Ordering::Relaxed);
            loop {
                debug_assert!(v & (ACTIVE | COUNTS) == 0, "activating a live slot");
                if v & OWED != 0 {
                    // Debts of an earlier bias: this slot sits this one out
                    // (its owner uses the word).
                    break;
                }
                // Reopen `remote` before the slot takes holds: once it is
                // active, a hold taken with CAS (the walk does not look at
                // the gate) may be given back through `remote` at once. No
                // debts, so nobody is still adding a void release there;
                // the CAS (Release) publishes the zero.
                s.remote.store(0, Ordering::Relaxed);
                match s.word.compare_exchange_weak(
                    v,
                    class_bit | ACTIVE,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => v = now,
                }
            }
        }
        let gate = if windows { OPEN } else { CAS_ONLY };
        self.gate.0.store(gate, Ordering::Release);
    }

    /// Folds every active slot: closes the gate and, if it was open to
    /// windows, waits until no owner is inside one (see the module docs),
    /// then for each slot `add` puts its counts (IS, class mode; its remote
    /// releases taken off) into the word before the slot changes, and `sub`
    /// takes them back out if the slot changed meanwhile (then the fold of
    /// that slot is retried). Each slot ends inactive, its counts turned into debts.
    /// Call under the queue lock.
    pub(crate) fn fold(&self, mut add: impl FnMut(u64, u64), mut sub: impl FnMut(u64, u64)) {
        if self.gate.0.swap(CLOSED_GATE, Ordering::Relaxed) == OPEN {
            barrier::heavy();
            for s in &self.slots {
                while s.busy.load(Ordering::Acquire) != 0 {
                    spin();
                }
            }
        }
        for s in &self.slots {
            if s.word.load(Ordering::Acquire) & ACTIVE == 0 {
                continue;
            }
            // From here a remote release is void and pays a debt instead.
            let r = s.remote.fetch_or(CLOSED, Ordering::AcqRel);
            debug_assert!(r & CLOSED == 0, "an active slot's remote is open");
            // Read after closing: every release counted in `r` is of a
            // hold taken before it, so the word read now counts it too.
            let mut v = s.word.load(Ordering::Acquire);
            loop {
                debug_assert!(v & ACTIVE != 0, "only a fold deactivates a slot");
                debug_assert!(v & OWED == 0, "an active slot owes nothing");
                let held = less(v, r);
                let (is, class) = counts(held);
                add(is, class);
                let next = (v & CLASS_S) | (held << OWED_SHIFT);
                match s
                    .word
                    .compare_exchange(v, next, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break,
                    Err(now) => {
                        sub(is, class);
                        v = now;
                    }
                }
            }
        }
    }

    /// The holds the active slots count now: (IS, class mode). A snapshot
    /// for introspection; slots change without any lock.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let mut total = (0, 0);
        for s in &self.slots {
            let v = s.word.load(Ordering::Acquire);
            if v & ACTIVE != 0 {
                let r = s.remote.load(Ordering::Acquire) & COUNTS;
                // Racy: the two loads are not one snapshot.
                let (is, class) = counts(v);
                let (ris, rclass) = counts(r);
                total.0 += is.saturating_sub(ris);
                total.1 += class.saturating_sub(rclass);
            }
        }
        total
    }
}

/// A short wait for another thread's few instructions (an owner's window,
/// a fold's CAS).
#[cold]
fn spin() {
    crate::sync::thread::yield_now();
}

#[cfg(not(loom))]
const UNCLAIMED: u8 = u8::MAX;
#[cfg(not(loom))]
const NONE_LEFT: u8 = u8::MAX - 1;

/// Bit `i`: owned slot `i` has a live owner thread.
#[cfg(not(loom))]
static TAKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[cfg(not(loom))]
const _: () = assert!(OWNED <= 32 && SLOTS < NO_SLOT as usize);

/// Gives the thread's slot back when the thread exits.
#[cfg(not(loom))]
struct Lease(u8);

#[cfg(not(loom))]
impl Drop for Lease {
    fn drop(&mut self) {
        // From now on this thread releases as a stranger would.
        let _ = MINE.try_with(|m| m.set(NONE_LEFT));
        // Release: the next owner's claim (Acquire) sees this thread's
        // last plain stores to its slot words.
        TAKEN.fetch_and(!(1 << self.0), Ordering::Release);
    }
}

#[cfg(not(loom))]
thread_local! {
    /// The calling thread's slot: `UNCLAIMED` until first asked for, then
    /// its index, or `NONE_LEFT`. No destructor, so reading it is one load.
    static MINE: Cell<u8> = const { Cell::new(UNCLAIMED) };
    /// Set when a slot is claimed; its destructor gives the slot back.
    static LEASE: std::cell::RefCell<Option<Lease>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's slot, picked on first use: the lowest owned slot
/// no live thread owns, kept until the thread exits, or if every owned
/// slot has a live owner a shared one (round-robin). `None` once the
/// thread's locals are being destroyed (it then uses the word, and gives
/// back holds of its former slot as other threads do).
#[cfg(not(loom))]
#[inline]
pub(crate) fn thread_slot() -> Option<usize> {
    let mut i = MINE.with(Cell::get);
    if i == UNCLAIMED {
        i = claim();
    }
    (usize::from(i) < SLOTS).then_some(usize::from(i))
}

/// The slot the calling thread already has, without picking one: a thread
/// that only gives back holds others took needs none.
#[cfg(not(loom))]
#[inline]
fn claimed_slot() -> Option<usize> {
    let i = MINE.with(Cell::get);
    (usize::from(i) < SLOTS).then_some(usize::from(i))
}

/// Under loom: [`thread_slot`].
#[cfg(loom)]
fn claimed_slot() -> Option<usize> {
    thread_slot()
}

/// Claims the lowest free owned slot for the calling thread, arranging
/// for it to be given back at thread exit, or else picks a shared one.
#[cfg(not(loom))]
#[cold]
fn claim() -> u8 {
    let all = if OWNED == 32 {
        u32::MAX
    } else {
        (1u32 << OWNED) - 1
    };
    let mut taken = TAKEN.load(Ordering::Relaxed);
    let i = loop {
        if taken & all == all {
            // Every owned slot has a live owner: share one.
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let shared = OWNED + NEXT.fetch_add(1, Ordering::Relaxed) % SHARED;
            let _ = MINE.try_with(|m| m.set(shared as u8));
            return shared as u8;
        }
        let i = (!taken).trailing_zeros();
        match TAKEN.compare_exchange_weak(
            taken,
            taken | 1 << i,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => break i as u8,
            Err(now) => taken = now,
        }
    };
    if usize::from(i) < OWNED {
        let kept = LEASE.try_with(|l| *l.borrow_mut() = Some(Lease(i)));
        if kept.is_err() {
            // The thread is exiting: give it back at once, for good.
            TAKEN.fetch_and(!(1 << i), Ordering::Release);
            let _ = MINE.try_with(|m| m.set(NONE_LEFT));
            return NONE_LEFT;
        }
    }
    let _ = MINE.try_with(|m| m.set(i));
    i
}

/// Under loom: the model thread's index owns that slot if below
/// [`OWNED`] (the main thread and the first spawned one); later threads
/// share. The same in every execution.
#[cfg(loom)]
pub(crate) fn thread_slot() -> Option<usize> {
    let n = crate::sync::thread::number()?;
    Some(if n < OWNED {
        n
    } else {
        OWNED + (n - OWNED) % SHARED
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The test thread's own slot (tests run on threads that own one while
    /// fewer than `OWNED` tests run at once).
    fn mine() -> usize {
        let i = thread_slot().expect("a live thread has a slot");
        assert!(i < OWNED, "the test thread shares a slot: too many threads");
        i
    }

    /// Gives back a hold as `Held::release` does: in a window if
    /// `windows` and the calling thread owns the slot, else with CAS.
    fn release(s: &Slots, idx: usize, m: Mode, windows: bool) -> bool {
        let window = if windows {
            window_slot(idx as u8 | WINDOWS)
        } else {
            None
        };
        window.is_some_and(|i| s.window_release(i, m)) || s.try_release(idx, m)
    }

    /// A shared slot, which any thread may use with CAS.
    const SHARED_SLOT: usize = OWNED;

    #[test]
    fn inactive_slots_take_nothing() {
        let s = Slots::new();
        for windows in [false, true] {
            assert!(!s.try_acquire(mine(), Mode::IS, windows));
            assert!(!s.try_acquire(SHARED_SLOT, Mode::IS, windows));
        }
    }

    #[test]
    fn class_decides_which_modes_go_through_slots() {
        for windows in [false, true] {
            let s = Slots::new();
            s.activate(Class::IntentionExclusive, true);
            assert!(s.try_acquire(mine(), Mode::IX, windows));
            assert!(!s.try_acquire(mine(), Mode::S, windows));
            assert_eq!(s.totals(), (0, 1));
            assert!(release(&s, mine(), Mode::IX, windows));
            assert_eq!(s.totals(), (0, 0));

            let s = Slots::new();
            s.activate(Class::Shared, true);
            assert!(!s.try_acquire(mine(), Mode::IX, windows));
            assert!(s.try_acquire(mine(), Mode::S, windows));
            assert!(s.try_acquire(SHARED_SLOT, Mode::IS, windows));
            assert_eq!(s.totals(), (1, 1));
        }
    }

    #[test]
    fn a_full_slot_refuses() {
        let s = Slots::new();
        s.activate(Class::Shared, true);
        for i in 0..SLOT_MAX {
            assert!(s.try_acquire(mine(), Mode::S, i % 2 == 0));
        }
        assert!(!s.try_acquire(mine(), Mode::S, true));
        assert!(!s.try_acquire(mine(), Mode::S, false));
        assert!(s.try_acquire(mine(), Mode::IS, true));
        assert!(s.try_acquire(SHARED_SLOT, Mode::S, false));
    }

    #[test]
    fn windows_and_cas_mix_on_an_owned_slot() {
        let s = Slots::new();
        s.activate(Class::Shared, true);
        assert!(s.try_acquire(mine(), Mode::S, true));
        assert!(s.try_acquire(mine(), Mode::S, false));
        assert!(release(&s, mine(), Mode::S, false));
        assert!(release(&s, mine(), Mode::S, true));
        assert_eq!(s.totals(), (0, 0));
    }

    #[test]
    fn a_closed_gate_takes_no_window_hold() {
        let s = Slots::new();
        s.activate(Class::Shared, true);
        s.gate.0.store(CLOSED_GATE, Ordering::Relaxed);
        assert!(!s.window_acquire(mine(), Mode::S));
        assert_eq!(s.totals(), (0, 0));
        // The slot is still active (a fold is under way and has not come
        // to it): a CAS may take a hold, which the fold then folds.
        assert!(s.try_acquire(mine(), Mode::S, true));
        assert_eq!(s.totals(), (0, 1));
    }

    #[test]
    fn a_gate_open_to_cas_only_takes_no_window_and_folds_without_barrier() {
        let s = Slots::new();
        s.activate(Class::Shared, false);
        assert_eq!(s.gate.0.load(Ordering::Relaxed), CAS_ONLY);
        assert!(!s.window_acquire(mine(), Mode::S));
        assert_eq!(s.totals(), (0, 0));
        // A request with windows takes its hold with CAS instead.
        assert!(s.try_acquire(mine(), Mode::S, true));
        assert!(s.try_acquire(mine(), Mode::IS, false));
        assert_eq!(s.totals(), (1, 1));
        // A window release is refused; the CAS release gives it back.
        assert!(!s.window_release(mine(), Mode::IS));
        assert!(release(&s, mine(), Mode::IS, true));
        let heavy_before = barrier::heavy_calls();
        let (mut is, mut class) = (0, 0);
        s.fold(
            |i, c| {
                is += i;
                class += c;
            },
            |_, _| unreachable!("nobody races this fold"),
        );
        assert_eq!((is, class), (0, 1), "the S hold moved to the word");
        assert_eq!(barrier::heavy_calls(), heavy_before, "no barrier");
        assert_eq!(s.gate.0.load(Ordering::Relaxed), CLOSED_GATE);
        // Its release pays the debt (released in the word by the caller).
        assert!(!release(&s, mine(), Mode::S, true));
        // Open to windows, a fold passes the barrier.
        s.activate(Class::Shared, true);
        assert!(s.window_acquire(mine(), Mode::S));
        s.fold(|_, _| {}, |_, _| unreachable!("nobody races this fold"));
        assert_eq!(barrier::heavy_calls(), heavy_before + 1);
        assert!(!release(&s, mine(), Mode::S, true));
    }

    #[test]
    fn fold_turns_counts_into_debts_paid_by_releases() {
        let s = Slots::new();
        s.activate(Class::IntentionExclusive, true);
        assert!(s.try_acquire(mine(), Mode::IS, true));
        assert!(s.try_acquire(mine(), Mode::IX, false));
        assert!(s.try_acquire(mine(), Mode::IX, true));
        let mut moved = (0, 0);
        s.fold(
            |is, c| {
                moved.0 += is;
                moved.1 += c;
            },
            |_, _| unreachable!("no concurrent change"),
        );
        assert_eq!(moved, (1, 2));
        assert_eq!(s.totals(), (0, 0));
        // Folded: a release pays a debt and goes to the word.
        assert!(!release(&s, mine(), Mode::IX, true));
        // A slot with debts is not activated again...
        s.activate(Class::Shared, true);
        assert!(!s.try_acquire(mine(), Mode::S, true));
        // ... until they are paid (one IS released, one IX forgiven).
        assert!(!release(&s, mine(), Mode::IS, false));
        s.forgive(mine(), Mode::IX);
        s.fold(|_, _| {}, |_, _| {});
        s.activate(Class::Shared, true);
        assert!(s.try_acquire(mine(), Mode::S, true));
        assert!(release(&s, mine(), Mode::S, true));
    }

    #[test]
    fn other_threads_release_on_the_side_and_the_fold_subtracts_them() {
        let s = Slots::new();
        s.activate(Class::Shared, true);
        let owner = mine();
        for _ in 0..3 {
            assert!(s.try_acquire(owner, Mode::S, true));
        }
        // Two of the three given back by another thread (a guard sent
        // there): counted on the side, not in the owner's word.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                assert!(release(&s, owner, Mode::S, true));
                assert!(release(&s, owner, Mode::S, false));
            });
        });
        assert_eq!(s.totals(), (0, 1));
        let mut moved = (0, 0);
        s.fold(|is, c| moved = (moved.0 + is, moved.1 + c), |_, _| {});
        assert_eq!(moved, (0, 1), "only the hold still held is folded");
        // The last one, released by yet another thread after the fold,
        // pays the debt (and is released in the word by the caller).
        std::thread::scope(|sc| {
            sc.spawn(|| assert!(!release(&s, owner, Mode::S, true)));
        });
        s.fold(|_, _| {}, |_, _| {});
        s.activate(Class::Shared, true);
        assert!(
            s.try_acquire(owner, Mode::S, true),
            "paid off: active again"
        );
    }

    #[test]
    fn a_slot_full_of_holds_released_elsewhere_takes_them_back() {
        let s = Slots::new();
        s.activate(Class::Shared, true);
        let owner = mine();
        for _ in 0..SLOT_MAX {
            assert!(s.try_acquire(owner, Mode::S, false));
        }
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for _ in 0..10 {
                    assert!(release(&s, owner, Mode::S, false));
                }
            });
        });
        // The word still counts them; the CAS path sees it full and hands
        // over to a window, which takes the ten off.
        assert!(s.try_acquire(owner, Mode::S, false));
        assert_eq!(s.totals(), (0, SLOT_MAX - 10 + 1));
    }

    #[test]
    fn live_threads_own_distinct_slots() {
        let n = 4;
        let barrier = std::sync::Barrier::new(n);
        let got: Vec<usize> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    sc.spawn(|| {
                        let i = thread_slot().unwrap();
                        barrier.wait(); // all alive at once
                        i
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let owned: Vec<usize> = got.iter().copied().filter(|&i| i < OWNED).collect();
        let mut unique = owned.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            owned.len(),
            "two live threads own one slot: {got:?}"
        );
        assert!(got.iter().all(|&i| i < SLOTS));
    }
}
