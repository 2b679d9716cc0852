//! A node: its state word, its waiter queue, and the protocols that move
//! requests between the two.
//!
//! # Implementation details
//!
//! The queue holds the requests that could not be granted when they
//! arrived, as [`Waiter`] records, under one mutex per node:
//!
//! - **Order.** Conversions (a holder asking for a stronger mode on a node it
//!   already holds) come first, in arrival order; plain requests follow, in
//!   arrival order. A converter already holds the node, so letting it wait
//!   behind newcomers would only lengthen everyone's wait.
//! - **Admission.** A new plain request is granted at once only if it is
//!   compatible with every holder *and* with every queued request. So once
//!   a conflicting request waits, later requests that conflict with it queue
//!   behind it: a stream of readers cannot starve a writer, nor a stream of
//!   writers a reader. A conversion is granted as soon as it is compatible
//!   with every *other holder*, whatever is queued: it adds no holder, and
//!   making it wait behind another queued conversion can close a cycle
//!   through requests elsewhere in the tree that no per-node check sees
//!   (a converter queued behind a converter that waits for a holder that
//!   waits, on another node, for the first converter).
//! - **Hand-off.** A release that leaves `WAITING` set in the state word
//!   takes the queue lock and walks the queue front to back, granting every
//!   waiter that is compatible with the holders and with the waiters still
//!   ahead of it — the waiters it unblocks, not everyone. The grant is
//!   written into the state word by the releaser, then the waiter is woken
//!   (after the queue lock is dropped).
//! - **No lost wake-up.** A waiter is queued and `WAITING` set under the
//!   queue lock, by a CAS that re-validates the conflict. From then on every
//!   release sees `WAITING` and takes the same lock, so it either ran before
//!   (and the CAS saw its effect and granted) or it runs after and finds the
//!   waiter.
//! - **Cancellation.** A waiter that gives up (timeout, dropped future)
//!   takes the queue lock; if it was granted meanwhile it keeps the grant and
//!   its caller releases it normally (passing the wake-up on); otherwise it
//!   unlinks itself and re-runs the hand-off, because requests queued behind
//!   it only for fairness may now be grantable. Either way nothing of it is
//!   left in the queue.
//! - **Conversion deadlock.** Two holders converting on one node where each
//!   waits for the other can never both be granted; the one whose wait would
//!   close the cycle gets [`Error::Deadlock`] before it queues.
//!
//! - **Bias.** A hot node may be biased (see `bias.rs`): holds of one class
//!   of modes then live in per-thread slots, and the word carries a phantom
//!   holder for them. The slow path revokes the bias (folds the slots into
//!   the word) under the queue lock before it looks at the word, so every
//!   decision below is made on exact counts; and a node is only biased,
//!   under the same lock, while its queue is empty.
//!
//! Invariants: `WAITING` is set in the state word iff the queue is
//! non-empty; `WAITING` and `BIASED` are never set together.

use std::collections::VecDeque;

use smallvec::SmallVec;

use crate::bias::{slot_of, Bias, Class, Hold, Slots, FIRST_THRESHOLD, MAX_THRESHOLD, WINDOWS};
use crate::park::Waiter;
use crate::path::Path;
use crate::state::{Fast, ModeSet, Refusal, StateWord};
use crate::sticky::Registry;
use crate::sync::{Arc, AtomicPtr, AtomicU32, AtomicU8, Mutex, Ordering};
use crate::table::{NodeRef, Pin, Table};
use crate::{Error, Mode};

/// The outcome of a request on one node.
#[derive(Debug)]
pub(crate) enum Acquire {
    /// The request holds the node, in its state word or in a slot.
    Granted(Hold),
    /// The node was unlinked before the request got to it: look it up again.
    Dead,
    /// The request is queued; wait on the waiter, then cancel if giving up.
    Wait(Arc<Waiter>),
}

/// One node of the tree.
///
/// Aligned to 16 (malloc's own alignment on 64-bit targets, so no cost)
/// for four tag bits in a guard's node pointers. Not cache-line aligned:
/// an over-aligned allocation goes through glibc's
/// `posix_memalign`, which cost about 500 instructions per new node
/// (callgrind, cold lock+unlock), more than the false sharing it avoids
/// between unrelated nodes costs on the workloads measured.
#[derive(Debug)]
#[repr(align(16))]
pub(crate) struct Node {
    pub(crate) state: StateWord,
    /// Requests waiting for this node. See the module docs.
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    /// The node's name (its key in the table).
    pub(crate) path: Path,
    /// Prepared handles keeping this node; changed only under the queue
    /// lock (an atomic only so introspection can read it without the lock).
    /// `PINNED` is set in the state word exactly while it is non-zero.
    pins: AtomicU32,
    /// The root is never unlinked.
    is_root: bool,
    /// The per-thread slots (see `bias.rs`), allocated under the queue lock
    /// the first time the node is biased; freed with the node.
    pub(crate) slots: AtomicPtr<Slots>,
    /// The current bias class (`CLASS_*`); changed only under the queue
    /// lock, meaningful while the word has `BIASED`.
    class: AtomicU8,
    /// Whether the tree's list of biased nodes holds one of `pins` (changed
    /// only under the queue lock).
    listed: AtomicU8,
    /// Contended CASes by compatible modes, and uncontended grants to
    /// requests that use windows (see `heat`), since the last bias or
    /// revoke.
    contended: AtomicU32,
    /// How many such grants bias the node: 0 biases at once, `u32::MAX`
    /// never.
    threshold: AtomicU32,
    /// The prepared handles' stickies that keep holds here (see
    /// `sticky.rs`), allocated under the queue lock the first time one
    /// does; freed with the node.
    sticky: AtomicPtr<Registry>,
}

/// Rounds of [`Node::spin`]: 2^0 + ... + 2^5 = 63 pauses.
const SPIN_ROUNDS: u32 = 6;

const CLASS_IX: u8 = 0;
const CLASS_S: u8 = 1;

type Woken = SmallVec<[Arc<Waiter>; 4]>;

impl Node {
    /// A new non-root node named `name` (normalized, separator `sep`),
    /// boxed, as the table stores it.
    pub(crate) fn boxed(name: &str, sep: char, bias: Bias) -> Box<Node> {
        Box::new(Node::new(Path::from_normalized(name, sep), false, bias))
    }

    pub(crate) fn new(path: Path, is_root: bool, bias: Bias) -> Self {
        let threshold = match bias {
            Bias::Never => u32::MAX,
            Bias::Adaptive => FIRST_THRESHOLD,
            Bias::Always => 0,
        };
        Node {
            state: StateWord::new(),
            queue: Mutex::new(VecDeque::new()),
            path,
            pins: AtomicU32::new(0),
            is_root,
            slots: AtomicPtr::new(std::ptr::null_mut()),
            class: AtomicU8::new(CLASS_IX),
            listed: AtomicU8::new(0),
            contended: AtomicU32::new(0),
            threshold: AtomicU32::new(threshold),
            sticky: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The registry of stickies keeping holds here, if one ever did.
    #[inline]
    pub(crate) fn registry(&self) -> Option<&Registry> {
        let p = self.sticky.load(Ordering::Acquire);
        // SAFETY: set once (under the queue lock) to a leaked `Box` that
        // lives as long as the node (freed in `Drop`).
        unsafe { p.as_ref() }
    }

    /// The registry, allocated under the queue lock if there is none yet:
    /// a request that queued before the allocation set `WAITING` where
    /// the sticky's maker will see it (see `sticky.rs`).
    pub(crate) fn registry_or_init(&self) -> &Registry {
        if let Some(r) = self.registry() {
            return r;
        }
        let _queue = self.queue.lock();
        if let Some(r) = self.registry() {
            return r;
        }
        let p = Box::into_raw(Box::new(Registry::default()));
        self.sticky.store(p, Ordering::Release);
        // SAFETY: just made; owned by the node from now on.
        unsafe { &*p }
    }

    /// Whether a sticky may keep holds here (a hint).
    #[inline]
    fn maybe_sticky(&self) -> bool {
        self.registry().is_some_and(Registry::maybe_any)
    }

    /// The node's slots, if it was ever biased.
    #[inline]
    pub(crate) fn slots(&self) -> Option<&Slots> {
        let p = self.slots.load(Ordering::Acquire);
        // SAFETY: set once (under the queue lock) to a leaked `Box` that
        // lives as long as the node (freed in `Drop`).
        unsafe { p.as_ref() }
    }

    fn class(&self) -> Class {
        match self.class.load(Ordering::Relaxed) {
            CLASS_S => Class::Shared,
            _ => Class::IntentionExclusive,
        }
    }

    /// Notes a contended CAS by a compatible `m` on the word; biases the
    /// node once there were enough (open to windows if the request that
    /// tips it takes its slot holds in windows, see [`Node::bias`]).
    #[cold]
    fn contended(&self, m: Mode, table: &Table, windows: bool) {
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold == u32::MAX {
            return;
        }
        let seen = self.contended.fetch_add(1, Ordering::Relaxed) + 1;
        if seen >= threshold {
            self.bias(m, table, windows);
        }
    }

    /// Notes an uncontended grant of a class mode `m` in the word to a
    /// request that takes its slot holds in windows (a prepared handle's
    /// `lock`); biases the node once there were enough such grants and
    /// contended CASes. A hold taken in an owner window costs less than a
    /// CAS on the word even with one thread where little else happens
    /// between the CASes, as on a prepared handle's levels; a slot hold
    /// taken with CAS does not, so other requests count only contention
    /// (`bias.rs`, `docs/bench/benches.md`). A plain load and store, not a
    /// read-modify-write: the count only needs to be about right.
    #[inline]
    fn heat(&self, m: Mode, table: &Table, windows: bool) {
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold == u32::MAX {
            return;
        }
        let seen = self.contended.load(Ordering::Relaxed).saturating_add(1);
        if seen >= threshold {
            self.bias(m, table, windows);
        } else {
            self.contended.store(seen, Ordering::Relaxed);
        }
    }

    /// Biases the node toward the class of `m` (see `bias.rs`), and puts it
    /// on the tree's list of biased nodes. The caller holds the node.
    ///
    /// With `windows` (the request that tipped it takes its slot holds in
    /// owner windows: a prepared handle's `lock`) the slots are open to
    /// windows, and a revoke must pass the heavy barrier (`membarrier(2)`,
    /// about 20 us of every running thread's time). Otherwise they take
    /// holds with CAS only, and a revoke needs no barrier: a node that
    /// plain paths made hot (a table whose rows many threads lock) keeps
    /// its slots' scaling, and a rare conflicting request (S on the table)
    /// costs a fold of the slots, not a barrier across the process.
    #[cold]
    fn bias(&self, m: Mode, table: &Table, windows: bool) {
        let newly_listed = {
            let queue = self.queue.lock();
            self.contended.store(0, Ordering::Relaxed);
            if !queue.is_empty() {
                return;
            }
            let s = self.state.load();
            let class = if m == Mode::S || (m == Mode::IS && s.count(Mode::S) > 0) {
                Class::Shared
            } else {
                Class::IntentionExclusive
            };
            let mut slots = self.slots.load(Ordering::Relaxed);
            if slots.is_null() {
                slots = Box::into_raw(Box::new(Slots::new()));
                self.slots.store(slots, Ordering::Release);
            }
            if !self.state.try_bias(class) {
                return;
            }
            self.class.store(
                match class {
                    Class::Shared => CLASS_S,
                    Class::IntentionExclusive => CLASS_IX,
                },
                Ordering::Relaxed,
            );
            // SAFETY: allocated above or earlier, freed only with the node.
            unsafe { &*slots }.activate(class, windows);
            if self.listed.load(Ordering::Relaxed) != 0 {
                false
            } else {
                let pins = self.pins.load(Ordering::Relaxed);
                if pins == u32::MAX {
                    // No room to keep it listed: undo.
                    self.revoke_locked();
                    return;
                }
                if pins == 0 {
                    let pinned = self.state.try_set_pinned();
                    debug_assert!(pinned, "a held node is not dead");
                }
                self.pins.store(pins + 1, Ordering::Relaxed);
                self.listed.store(1, Ordering::Relaxed);
                true
            }
        };
        if newly_listed {
            if let Some(out) = table.list_biased(NodeRef::from_ref(self)) {
                // SAFETY: listed nodes are pinned by the list until unlisted.
                unsafe { out.get() }.unlist(table, &table.pin());
            }
        }
    }

    /// Ends the bias, if any, folding every slot hold into the word. Call
    /// under the queue lock.
    fn revoke_locked(&self) {
        if !self.state.load().is_biased() {
            return;
        }
        let class = self.class();
        let slots = self.slots().expect("a biased node has slots");
        slots.fold(
            |is, n| self.state.fold(class, is, n, false),
            |is, n| self.state.fold(class, is, n, true),
        );
        self.state.unbias(class);
        self.contended.store(0, Ordering::Relaxed);
        let t = self.threshold.load(Ordering::Relaxed);
        if t != 0 && t != u32::MAX {
            self.threshold
                .store(t.saturating_mul(2).min(MAX_THRESHOLD), Ordering::Relaxed);
        }
    }

    /// Turns a hold of `m` taken through slot `idx` into a plain hold of
    /// the state word (revoking the bias first).
    pub(crate) fn materialize(&self, idx: usize, m: Mode) {
        self.revoke();
        self.slots().expect("a slot hold has slots").forgive(idx, m);
    }

    /// Ends the bias, if any: every hold then lives in the state word.
    pub(crate) fn revoke(&self) {
        if self.state.load().is_biased() {
            let _queue = self.queue.lock();
            self.revoke_locked();
        }
    }

    /// Takes the node off the tree's list of biased nodes: revokes the bias
    /// and drops the list's pin (unlinking the node if nothing else uses
    /// it).
    pub(crate) fn unlist(&self, table: &Table, pin: &Pin) {
        {
            let _queue = self.queue.lock();
            self.revoke_locked();
            debug_assert_eq!(self.listed.load(Ordering::Relaxed), 1);
            self.listed.store(0, Ordering::Relaxed);
        }
        self.unpin(table, pin);
    }

    /// The holders of each mode, slots included, the phantom left out (a
    /// snapshot for introspection).
    pub(crate) fn counts(&self) -> [u64; 5] {
        let s = self.state.load();
        let mut counts = Mode::ALL.map(|m| s.count(m));
        if s.is_biased() {
            let phantom = self.class().phantom();
            counts[phantom as usize] -= 1;
            if let Some(slots) = self.slots() {
                let (is, n) = slots.totals();
                counts[Mode::IS as usize] += is;
                counts[phantom as usize] += n;
            }
        }
        counts
    }

    /// Prepared handles keeping the node (the biased list's pin left out).
    pub(crate) fn handles(&self) -> u32 {
        self.pins() - u32::from(self.listed.load(Ordering::Relaxed))
    }

    /// Nothing holds, awaits or prepares the node: only the biased list
    /// keeps it.
    pub(crate) fn kept_only_by_bias(&self) -> bool {
        !self.is_root
            && self.listed.load(Ordering::Relaxed) != 0
            && self.handles() == 0
            && !self.state.load().is_waiting()
            && self.counts().iter().all(|&c| c == 0)
    }

    /// Adds a prepared handle's pin. `Ok(false)`: the node is dead, look it
    /// up again. While pinned the node is never marked dead, so its pointer
    /// stays valid with no epoch pin.
    pub(crate) fn pin(&self) -> Result<bool, Error> {
        let _queue = self.queue.lock();
        let pins = self.pins.load(Ordering::Relaxed);
        if pins == u32::MAX {
            return Err(Error::TooManyHolders);
        }
        if pins == 0 && !self.state.try_set_pinned() {
            return Ok(false);
        }
        self.pins.store(pins + 1, Ordering::Relaxed);
        Ok(true)
    }

    /// Drops a prepared handle's pin, unlinking the node if it was the last
    /// thing keeping it.
    pub(crate) fn unpin(&self, table: &Table, pin: &Pin) {
        let after = {
            let _queue = self.queue.lock();
            let pins = self.pins.load(Ordering::Relaxed);
            debug_assert!(pins > 0, "unpinning an unpinned node");
            self.pins.store(pins - 1, Ordering::Relaxed);
            if pins != 1 {
                return;
            }
            self.state.clear_pinned()
        };
        if after.is_idle() && !self.is_root {
            table.unlink(pin, self);
        }
    }

    /// The number of prepared handles keeping this node.
    pub(crate) fn pins(&self) -> u32 {
        self.pins.load(Ordering::Relaxed)
    }

    /// Requests `to` (converting from `from` when the caller already holds
    /// the node). `make_waiter` builds the waiter record if it must queue.
    /// With `slots` (the tree's table and the request's slot index), a new
    /// hold may go through the node's slots (and the node may become
    /// biased); without, it is always in the state word. With `spin` (a
    /// blocking thread's new request that may wait), a refused request
    /// first retries a few times (see [`Node::spin`]).
    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        from: Option<Mode>,
        to: Mode,
        may_wait: bool,
        spin: bool,
        slots: Option<(&Table, &mut u8)>,
        make_waiter: impl FnOnce(Option<Mode>, Mode) -> Waiter,
    ) -> Result<Acquire, Error> {
        match from {
            None => match self.state.try_acquire_fast(to, slots.is_some()) {
                fast @ (Fast::Granted | Fast::Contended) => {
                    if let Some((table, idx)) = slots {
                        self.note_word_grant(fast, to, table, *idx & WINDOWS != 0);
                    }
                    return Ok(Acquire::Granted(Hold::WORD));
                }
                Fast::Biased => {
                    if let Some((_, idx)) = slots {
                        if let Some(hold) = self.acquire_biased(to, idx) {
                            return Ok(Acquire::Granted(hold));
                        }
                    }
                }
                Fast::Refused => {
                    // Spinning cannot outwait an idle sticky: revoke it.
                    if may_wait && spin && !self.maybe_sticky() && self.spin(to) {
                        return Ok(Acquire::Granted(Hold::WORD));
                    }
                }
            },
            Some(f) => {
                if self.state.try_convert_fast(f, to) {
                    return Ok(Acquire::Granted(Hold::WORD));
                }
            }
        }
        self.acquire_slow(from, to, may_wait, make_waiter)
    }

    /// The bias bookkeeping of a grant of `to` in the word (`fast`:
    /// `Granted` or `Contended`) to a request that may take slot holds
    /// (`windows`: in owner windows). Contended CASes count toward a bias;
    /// so do uncontended grants to requests with windows (a prepared
    /// handle's; see `heat`) on nodes other than the root, which every path
    /// takes, and every grant under `Bias::Always` (threshold 0).
    #[inline(always)]
    fn note_word_grant(&self, fast: Fast, to: Mode, table: &Table, windows: bool) {
        if fast == Fast::Contended {
            self.contended(to, table, windows);
        } else if to.is_biasable()
            && ((windows && !self.is_root) || self.threshold.load(Ordering::Relaxed) == 0)
        {
            self.heat(to, table, windows);
        }
    }

    /// The quick path of a prepared handle's `lock` on one pinned node: a
    /// new hold of `to`, in the word if the node is not biased, else in a
    /// window on `mine`, the calling thread's owned slot (without one, a
    /// biased node is left to the general path). `None`: not
    /// granted this way (refused, full, or the slot would not take it) and
    /// nothing changed; the caller goes on with [`acquire`](Self::acquire),
    /// which sorts out why. The same bookkeeping as `acquire` for a request
    /// with windows (`heat`, `contended`).
    #[inline(always)]
    pub(crate) fn acquire_quick(
        &self,
        to: Mode,
        mine: Option<usize>,
        table: &Table,
    ) -> Option<Hold> {
        match self.state.try_acquire_fast(to, true) {
            fast @ (Fast::Granted | Fast::Contended) => {
                self.note_word_grant(fast, to, table, true);
                Some(Hold::WORD)
            }
            Fast::Biased => {
                let (slots, mine) = (self.slots()?, mine?);
                // A window, else whatever the slot admits (with CAS on a
                // node biased for plain paths, see `bias`).
                (slots.window_acquire(mine, to) || slots.try_acquire(mine, to, true))
                    .then_some(Hold::SLOT)
            }
            Fast::Refused => None,
        }
    }

    /// Before a blocking thread queues: the holders of a row or a table
    /// usually let go within a few hundred nanoseconds, far sooner than a
    /// park and a wake-up (two futex calls and a context switch each way).
    /// Retries the fast path after pauses that double, about 2 µs in all,
    /// and gives up at once when the word shows a waiter (so a spinner
    /// never passes a queued request: the fast path refuses then too), a
    /// dead or a biased node (which the slow path handles). `true`:
    /// granted, in the word. Not under loom, whose models would explode on
    /// the retries and which checks the queueing path instead.
    #[cold]
    fn spin(&self, to: Mode) -> bool {
        if cfg!(loom) {
            return false;
        }
        for round in 0..SPIN_ROUNDS {
            for _ in 0..1u32 << round {
                std::hint::spin_loop();
            }
            let s = self.state.load();
            if s.is_waiting() || s.is_dead() || s.is_biased() {
                return false;
            }
            if let Fast::Granted | Fast::Contended = self.state.try_acquire_fast(to, false) {
                return true;
            }
        }
        false
    }

    /// The fast path on a biased node: through the request's slot, or else
    /// in the word (within the headroom).
    #[inline]
    fn acquire_biased(&self, to: Mode, idx: &mut u8) -> Option<Hold> {
        if let (Some(slots), Some(mine)) = (self.slots(), slot_of(idx)) {
            if slots.try_acquire(mine, to, *idx & WINDOWS != 0) {
                return Some(Hold::SLOT);
            }
        }
        self.acquire_biased_in_word(to)
    }

    /// `acquire_biased` when the slot refuses: in the word, within the
    /// headroom.
    #[cold]
    #[inline(never)]
    fn acquire_biased_in_word(&self, to: Mode) -> Option<Hold> {
        match self.state.try_acquire_fast(to, false) {
            Fast::Granted | Fast::Contended => Some(Hold::WORD),
            _ => None,
        }
    }

    /// The queue's side of a request, then the stickies in its way
    /// revoked (`sticky.rs`): after queueing (`WAITING` is set, so a
    /// sticky made from now on sees it), or before failing a `try_lock`
    /// (or any request on a full count), which tries again if that
    /// released something.
    #[cold]
    fn acquire_slow(
        &self,
        from: Option<Mode>,
        to: Mode,
        may_wait: bool,
        make_waiter: impl FnOnce(Option<Mode>, Mode) -> Waiter,
    ) -> Result<Acquire, Error> {
        let mut make_waiter = Some(make_waiter);
        loop {
            let result = self.acquire_queued(from, to, may_wait, &mut make_waiter);
            match &result {
                Ok(Acquire::Wait(_)) => {
                    self.revoke_sticky(Some(to));
                }
                Err(Error::WouldBlock) if self.revoke_sticky(Some(to)) => continue,
                // A count at its maximum: an idle sticky's hold is a place
                // nobody uses.
                Err(Error::TooManyHolders) if self.revoke_sticky(None) => continue,
                _ => {}
            }
            return result;
        }
    }

    fn acquire_queued(
        &self,
        from: Option<Mode>,
        to: Mode,
        may_wait: bool,
        make_waiter: &mut Option<impl FnOnce(Option<Mode>, Mode) -> Waiter>,
    ) -> Result<Acquire, Error> {
        let mut queue = self.queue.lock();
        // Decide on exact counts, and never queue on a biased node (a
        // release through a slot would not see WAITING).
        self.revoke_locked();
        let mut ahead = ModeSet::default();
        for w in queue.iter() {
            // A conversion is admitted on the holders alone (see the
            // module docs); a new request also on every queued request.
            if !w.watch && from.is_none() {
                ahead.insert(w.target);
            }
        }
        let queue_admits = ahead.compatible_with(to);
        if queue_admits {
            match self.state.try_grant(from, to) {
                Ok(_) => return Ok(Acquire::Granted(Hold::WORD)),
                Err(Refusal::Dead) => return Ok(Acquire::Dead),
                Err(Refusal::Full) => return Err(Error::TooManyHolders),
                Err(Refusal::Conflict) => {}
            }
        }
        if !may_wait {
            return Err(Error::WouldBlock);
        }
        if let Some(held) = from {
            // A queued converter `w` waits for us if our hold blocks its
            // target, and we would wait for it if its hold blocks ours.
            // Both: a cycle.
            let cycle = queue.iter().any(|w| match w.from {
                Some(w_held) => !held.compatible(w.target) && !w_held.compatible(to),
                None => false,
            });
            if cycle {
                return Err(Error::Deadlock);
            }
        }
        let make_waiter = make_waiter.take().expect("a request queues once");
        let waiter = Arc::new(make_waiter(from, to));
        let pos = if from.is_some() {
            queue.iter().take_while(|w| w.is_conversion()).count()
        } else {
            queue.len()
        };
        queue.insert(pos, waiter.clone());
        match self.state.set_waiting_or_grant(from, to, queue_admits) {
            Ok(false) => Ok(Acquire::Wait(waiter)),
            Ok(true) => {
                // A release slipped in between the first check and the CAS.
                queue.remove(pos);
                Ok(Acquire::Granted(Hold::WORD))
            }
            Err(_) => {
                // Dead: only possible with an empty queue, which `pos == 0`
                // and WAITING never set imply; nothing else to undo.
                queue.remove(pos);
                Ok(Acquire::Dead)
            }
        }
    }

    /// Gives back one hold of `m`, handing the node to the waiters this
    /// unblocks and unlinking the node if it became idle.
    #[inline]
    pub(crate) fn release(&self, m: Mode, table: &Table, pin: &Pin) {
        let after = self.state.release(m);
        if after.is_waiting() {
            self.hand_off(table, pin);
        } else if after.is_idle() && !self.is_root {
            table.unlink(pin, self);
        }
    }

    /// Replaces one hold of `from` by the weaker `to` (never waits).
    pub(crate) fn downgrade(
        &self,
        from: Mode,
        to: Mode,
        table: &Table,
        pin: &Pin,
    ) -> Result<(), Error> {
        // Exact counts and the full headroom for `to`.
        self.revoke();
        let after = self
            .state
            .downgrade(from, to)
            .map_err(|_| Error::TooManyHolders)?;
        if after.is_waiting() {
            self.hand_off(table, pin);
        }
        Ok(())
    }

    /// Withdraws a queued request. Returns `true` if it had been granted in
    /// the meantime: the caller then holds the node and must release it (or
    /// keep it) — the wake-up is not lost either way.
    pub(crate) fn cancel(&self, waiter: &Arc<Waiter>, table: &Table, pin: &Pin) -> bool {
        let mut woken = Woken::new();
        {
            let mut queue = self.queue.lock();
            if waiter.is_granted() {
                return true;
            }
            if let Some(pos) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                queue.remove(pos);
            }
            // Requests queued behind this one for fairness may now go.
            self.grant_waiters(&mut queue, &mut woken);
        }
        self.finish_hand_off(woken, table, pin);
        false
    }

    #[cold]
    fn hand_off(&self, table: &Table, pin: &Pin) {
        let mut woken = Woken::new();
        self.grant_waiters(&mut self.queue.lock(), &mut woken);
        self.finish_hand_off(woken, table, pin);
    }

    fn finish_hand_off(&self, woken: Woken, table: &Table, pin: &Pin) {
        for w in woken {
            w.wake();
        }
        if !self.is_root && self.state.load().is_idle() {
            table.unlink(pin, self);
        }
    }

    /// Grants, front to back, every waiter compatible with the holders and
    /// with the waiters still ahead of it. Clears `WAITING` if the queue
    /// empties. Call with the queue lock held.
    fn grant_waiters(&self, queue: &mut VecDeque<Arc<Waiter>>, woken: &mut Woken) {
        let mut ahead = ModeSet::default();
        let mut i = 0;
        while i < queue.len() {
            let w = &queue[i];
            if w.watch {
                // Something changed: the watcher re-checks.
                let w = queue.remove(i).expect("index in bounds");
                w.set_granted();
                woken.push(w);
                continue;
            }
            // Conversions go on the holders alone; new requests also wait
            // for every request still queued ahead of them.
            let admitted = w.is_conversion() || ahead.compatible_with(w.target);
            if admitted && self.state.try_grant(w.from, w.target).is_ok() {
                let w = queue.remove(i).expect("index in bounds");
                w.set_granted();
                woken.push(w);
            } else {
                ahead.insert(w.target);
                i += 1;
            }
        }
        if queue.is_empty() {
            self.state.clear_waiting();
        }
    }

    /// The queued requests, front first, for introspection and deadlock
    /// detection (watchers left out).
    pub(crate) fn waiters(&self) -> Vec<Arc<Waiter>> {
        self.queue
            .lock()
            .iter()
            .filter(|w| !w.watch)
            .cloned()
            .collect()
    }

    /// Whether a new request for `m` would be granted now (holders and the
    /// queue both admit it), without taking anything.
    pub(crate) fn admits(&self, m: Mode) -> bool {
        self.revoke_sticky(Some(m));
        self.revoke();
        let s = self.state.load();
        if s.is_dead() {
            return true; // nobody holds it; a fresh node will be made
        }
        if s.grant(None, m).is_err() {
            return false;
        }
        !s.is_waiting() || self.queue_admits(&self.queue.lock(), m)
    }

    fn queue_admits(&self, queue: &VecDeque<Arc<Waiter>>, m: Mode) -> bool {
        queue.iter().all(|w| w.watch || w.target.compatible(m))
    }

    /// Registers `watcher` to be woken at the next change of this node,
    /// unless the node already admits `m` (then `false`, nothing queued).
    pub(crate) fn watch(&self, watcher: &Arc<Waiter>) -> bool {
        let queued = self.watch_queued(watcher);
        if queued {
            // Queued with WAITING set: revoke what an idle sticky keeps in
            // the way (its release wakes the watcher).
            self.revoke_sticky(Some(watcher.target));
        }
        queued
    }

    fn watch_queued(&self, watcher: &Arc<Waiter>) -> bool {
        let mut queue = self.queue.lock();
        // A release through a slot would not see WAITING.
        self.revoke_locked();
        let s = self.state.load();
        if s.is_dead()
            || (s.grant(None, watcher.target).is_ok() && self.queue_admits(&queue, watcher.target))
        {
            return false;
        }
        // The CAS refuses an idle or dead word: a release that emptied the
        // node since the check above either happened before it (and we see
        // the node free) or sees WAITING and wakes us.
        if !self.state.try_set_waiting() {
            return false;
        }
        queue.push_back(watcher.clone());
        true
    }

    /// Removes a watcher (woken or not) and tidies up after it.
    pub(crate) fn unwatch(&self, watcher: &Arc<Waiter>, table: &Table, pin: &Pin) {
        {
            let mut queue = self.queue.lock();
            let Some(pos) = queue.iter().position(|w| Arc::ptr_eq(w, watcher)) else {
                return;
            };
            queue.remove(pos);
            if queue.is_empty() {
                self.state.clear_waiting();
            }
        }
        if !self.is_root && self.state.load().is_idle() {
            table.unlink(pin, self);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let r = self.sticky.load(Ordering::Relaxed);
        if !r.is_null() {
            // SAFETY: made by `Box::into_raw` in `registry_or_init`, owned
            // by the node.
            drop(unsafe { Box::from_raw(r) });
        }
        let p = self.slots.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: made by `Box::into_raw` in `bias`, owned by the node.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
