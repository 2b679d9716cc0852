//! The node state word: who holds a node, in which modes, and whether
//! anyone waits — one `AtomicU64`.
//!
//! # Layout
//!
//! ```text
//!     63     62    61   60      59  58    57    56 ....... 40  39 ........ 20  19 ......... 0
//! +------+------+----+-------+---+----+------+-------------+---------------+--------------+
//! |CACHED|PINNED|DEAD|WAITING| X |SIX |BIASED|   S count   |   IX count    |   IS count   |
//! +------+------+----+-------+---+----+------+-------------+---------------+--------------+
//!    1      1     1     1      1   1     1       17 bits         20 bits         20 bits
//! ```
//!
//! - `IS`/`IX`/`S` count the holders of each shared-ish mode. A count at its
//!   maximum refuses one more holder with [`Error::TooManyHolders`]
//!   (never a wrap into the neighbouring field).
//! - `SIX` and `X` are single bits: Gray's matrix lets at most one holder of
//!   either exist at a time.
//! - `WAITING` is set exactly while the node's waiter queue is non-empty. It
//!   is only set or cleared under the queue's lock. While it is set the fast
//!   path refuses every acquisition, so newcomers go through the queue and
//!   cannot overtake a waiter (fairness), and every release takes the slow
//!   path and hands the node to the waiters it unblocks.
//! - `DEAD` is set once, by the CAS `0 -> DEAD` (idle cache off) or
//!   `CACHED -> DEAD` (evicted from the idle cache), on a node that nobody
//!   holds, waits on or pins; the node is then unlinked from the table and its memory
//!   reclaimed through the epoch. No CAS ever succeeds on a dead word except
//!   through a path that checks `DEAD` first, so an acquirer that found a
//!   stale pointer sees `DEAD`, and looks the node up again.
//! - `PINNED` is set while at least one prepared handle
//!   ([`Prepared`](crate::Prepared)) keeps the node; it conflicts with no
//!   mode, but keeps the word non-zero, so the node is never marked dead and
//!   its pointer stays valid without an epoch pin. It is set and cleared
//!   only under the queue's lock, by the handle count's 0 <-> 1 transitions.
//! - `BIASED` is set while the node takes holds of one class of modes
//!   through per-thread slots (see `bias.rs`); the word then also counts one
//!   phantom holder of the class's stronger mode (IX or S), so every request
//!   that conflicts with the class sees a conflict here and goes to the slow
//!   path, which revokes the bias. Set and cleared only under the queue
//!   lock; never set together with `WAITING`. While it is set the class's
//!   counts in the word stay `bias::HEADROOM` below their maximum, so a
//!   fold of the slots always fits.
//! - `CACHED` is set exactly while the node sits in the tree's idle-node
//!   cache (see `idle.rs`): set by the CAS `0 -> CACHED` of whoever made the
//!   node idle, cleared (or turned into `DEAD`) only by whoever pops it from
//!   the cache. It conflicts with no mode; a cached node is reused by the
//!   ordinary CAS of the next acquirer.
//!
//! Acquiring a compatible mode with no waiter is one CAS; releasing is one
//! `fetch_sub` that looks at the queue only if the result has `WAITING`.
//!
//! [`Error::TooManyHolders`]: crate::Error::TooManyHolders

use crate::bias::{Class, HEADROOM};
use crate::sync::{AtomicU64, Ordering};
use crate::Mode;

const IS_SHIFT: u32 = 0;
const IX_SHIFT: u32 = 20;
const S_SHIFT: u32 = 40;

/// One IS holder. The IS count lives in bits 0..20.
const IS_ONE: u64 = 1 << IS_SHIFT;
/// One IX holder. The IX count lives in bits 20..40.
const IX_ONE: u64 = 1 << IX_SHIFT;
/// One S holder. The S count lives in bits 40..57.
const S_ONE: u64 = 1 << S_SHIFT;

/// All IS count bits; equal to it when the count is at its maximum.
const IS_MASK: u64 = ((1 << 20) - 1) << IS_SHIFT;
/// All IX count bits.
const IX_MASK: u64 = ((1 << 20) - 1) << IX_SHIFT;
/// All S count bits.
const S_MASK: u64 = ((1 << 17) - 1) << S_SHIFT;
/// Set while the node is biased toward one class of modes (see `bias.rs`).
pub(crate) const BIASED: u64 = 1 << 57;
/// Set while one holder holds SIX (at most one can: SIX conflicts with SIX).
const SIX_BIT: u64 = 1 << 58;
/// Set while one holder holds X.
const X_BIT: u64 = 1 << 59;
/// Set exactly while the waiter queue is non-empty; changed only under the
/// queue lock.
pub(crate) const WAITING: u64 = 1 << 60;
/// Set once on an unheld, unawaited node about to be unlinked; never cleared.
pub(crate) const DEAD: u64 = 1 << 61;
/// Set while prepared handles keep the node; changed only under the queue
/// lock. Conflicts with nothing; only keeps the node from being idle.
pub(crate) const PINNED: u64 = 1 << 62;
/// Set while the node is in the idle-node cache; changed only by whoever
/// puts it there (from 0) or pops it. Conflicts with nothing.
pub(crate) const CACHED: u64 = 1 << 63;
/// Every holder bit: the counts and the SIX and X bits.
const HOLDERS: u64 = IS_MASK | IX_MASK | S_MASK | SIX_BIT | X_BIT;

/// The largest count of IS or IX holders on one node.
pub const MAX_INTENTION_HOLDERS: u64 = (1 << 20) - 1;
/// The largest count of S holders on one node.
pub const MAX_SHARED_HOLDERS: u64 = (1 << 17) - 1;

/// The bits that count holders of `m` (a single bit for SIX and X).
const fn field(m: Mode) -> u64 {
    match m {
        Mode::IS => IS_MASK,
        Mode::IX => IX_MASK,
        Mode::S => S_MASK,
        Mode::SIX => SIX_BIT,
        Mode::X => X_BIT,
    }
}

/// What one holder of `m` adds to the word.
const fn one(m: Mode) -> u64 {
    match m {
        Mode::IS => IS_ONE,
        Mode::IX => IX_ONE,
        Mode::S => S_ONE,
        Mode::SIX => SIX_BIT,
        Mode::X => X_BIT,
    }
}

/// The holder bits that, when non-zero, make a request for `m` conflict:
/// the fields of every mode Gray's matrix says is incompatible with `m`.
const fn conflicts(m: Mode) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < Mode::ALL.len() {
        if !Mode::ALL[i].compatible(m) {
            mask |= field(Mode::ALL[i]);
        }
        i += 1;
    }
    mask
}

/// The largest value of `m`'s field a biased word may reach through its
/// own grants: `HEADROOM` below the maximum, so folding the slots fits.
const fn biased_cap(m: Mode) -> u64 {
    match m {
        Mode::IS => (MAX_INTENTION_HOLDERS - HEADROOM) << IS_SHIFT,
        Mode::IX => (MAX_INTENTION_HOLDERS - HEADROOM) << IX_SHIFT,
        Mode::S => (MAX_SHARED_HOLDERS - HEADROOM) << S_SHIFT,
        // Never admitted by a bias class: the phantom conflicts with them.
        Mode::SIX | Mode::X => u64::MAX,
    }
}

const BIASED_CAP: [u64; 5] = [
    biased_cap(Mode::IS),
    biased_cap(Mode::IX),
    biased_cap(Mode::S),
    biased_cap(Mode::SIX),
    biased_cap(Mode::X),
];

const CONFLICTS: [u64; 5] = [
    conflicts(Mode::IS),
    conflicts(Mode::IX),
    conflicts(Mode::S),
    conflicts(Mode::SIX),
    conflicts(Mode::X),
];

/// A snapshot of a state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct State(pub(crate) u64);

/// Why a grant could not be made on a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A holder's mode is incompatible with the request.
    Conflict,
    /// The request's counter is at its maximum.
    Full,
    /// The node is dead: look it up again.
    Dead,
}

impl State {
    /// Number of holders of `m`.
    pub(crate) fn count(self, m: Mode) -> u64 {
        (self.0 & field(m)) >> field(m).trailing_zeros()
    }

    pub(crate) fn is_waiting(self) -> bool {
        self.0 & WAITING != 0
    }

    pub(crate) fn is_dead(self) -> bool {
        self.0 & DEAD != 0
    }

    pub(crate) fn is_biased(self) -> bool {
        self.0 & BIASED != 0
    }

    /// In the idle cache with nobody holding, waiting or keeping it.
    pub(crate) fn is_cached_idle(self) -> bool {
        self.0 == CACHED
    }

    /// No holder, no waiter, no flag at all (not pinned, cached or dead):
    /// the node may be retired (cached or unlinked).
    pub(crate) fn is_idle(self) -> bool {
        self.0 == 0
    }

    /// The word after granting `to`, converting from `from` if the request
    /// already holds `from` (a conversion), ignoring `WAITING` (the caller
    /// decides the queue question).
    #[inline]
    pub(crate) fn grant(self, from: Option<Mode>, to: Mode) -> Result<State, Refusal> {
        if self.is_dead() {
            return Err(Refusal::Dead);
        }
        let base = match from {
            Some(f) => {
                debug_assert!(self.0 & field(f) != 0, "converting {f} not held");
                self.0 - one(f)
            }
            None => self.0,
        };
        if base & CONFLICTS[to as usize] != 0 {
            return Err(Refusal::Conflict);
        }
        if base & field(to) == field(to) {
            // Only reachable for counters: a set SIX/X bit is a conflict.
            return Err(Refusal::Full);
        }
        if base & BIASED != 0 && base & field(to) >= BIASED_CAP[to as usize] {
            // The slow path revokes the bias, then decides exactly.
            return Err(Refusal::Full);
        }
        Ok(State(base + one(to)))
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "State {{ IS: {}, IX: {}, S: {}, SIX: {}, X: {}, biased: {}, waiting: {}, dead: {}, pinned: {}, cached: {} }}",
            self.count(Mode::IS),
            self.count(Mode::IX),
            self.count(Mode::S),
            self.count(Mode::SIX),
            self.count(Mode::X),
            self.is_biased(),
            self.is_waiting(),
            self.is_dead(),
            self.0 & PINNED != 0,
            self.0 & CACHED != 0
        )
    }
}

/// A node's state word.
#[derive(Debug)]
pub(crate) struct StateWord(AtomicU64);

impl StateWord {
    pub(crate) fn new() -> Self {
        StateWord(AtomicU64::new(0))
    }

    #[inline]
    pub(crate) fn load(&self) -> State {
        State(self.0.load(Ordering::Acquire))
    }

    /// The fast path: grant `m` if it is compatible with every holder, the
    /// counter has room, and nobody waits. One CAS when uncontended. On a
    /// biased word that admits `m`, returns [`Fast::Biased`] if
    /// `prefer_slots` (the caller tries its slot first), and otherwise
    /// grants in the word within the bias headroom.
    #[inline(always)]
    pub(crate) fn try_acquire_fast(&self, m: Mode, prefer_slots: bool) -> Fast {
        let mut s = self.0.load(Ordering::Relaxed);
        let mut contended = false;
        loop {
            if s & (CONFLICTS[m as usize] | WAITING | DEAD | BIASED) != 0
                || s & field(m) == field(m)
            {
                if s & (CONFLICTS[m as usize] | WAITING | DEAD) != 0 || s & field(m) == field(m) {
                    return Fast::Refused;
                }
                // Biased, in a class that admits `m`.
                if prefer_slots {
                    return Fast::Biased;
                }
                if s & field(m) >= BIASED_CAP[m as usize] {
                    return Fast::Refused;
                }
            }
            match self
                .0
                .compare_exchange_weak(s, s + one(m), Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) if contended => return Fast::Contended,
                Ok(_) => return Fast::Granted,
                Err(now) => {
                    contended = true;
                    s = now;
                }
            }
        }
    }

    /// Applies `State::grant` with a CAS loop. With `respect_waiting`, a
    /// set `WAITING` bit is a conflict (the fast path's rule for
    /// conversions, which must not pass earlier converters).
    #[inline]
    pub(crate) fn try_grant(&self, from: Option<Mode>, to: Mode) -> Result<State, Refusal> {
        let mut s = State(self.0.load(Ordering::Relaxed));
        loop {
            let next = s.grant(from, to)?;
            match self
                .0
                .compare_exchange_weak(s.0, next.0, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(next),
                Err(now) => s = State(now),
            }
        }
    }

    /// Grant if there is no waiter (and no conflict): the fast path of a
    /// conversion.
    #[inline]
    pub(crate) fn try_convert_fast(&self, from: Mode, to: Mode) -> bool {
        let mut s = State(self.0.load(Ordering::Relaxed));
        loop {
            if s.is_waiting() {
                return false;
            }
            let Ok(next) = s.grant(Some(from), to) else {
                return false;
            };
            match self
                .0
                .compare_exchange_weak(s.0, next.0, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = State(now),
            }
        }
    }

    /// Gives back one hold of `m`; returns the word after.
    #[inline]
    pub(crate) fn release(&self, m: Mode) -> State {
        let prev = self.0.fetch_sub(one(m), Ordering::Release);
        debug_assert!(
            prev & field(m) != 0,
            "releasing {m} not held: {:?}",
            State(prev)
        );
        State(prev - one(m))
    }

    /// Gives back one hold of `m` if that leaves other holders (or the
    /// node is one that is never reclaimed, `immortal`: the root) and no
    /// waiter: then nothing more is to be done with the node, not even
    /// looking at it again. `false` (nothing changed) otherwise.
    #[inline]
    pub(crate) fn try_release_shared(&self, m: Mode, immortal: bool) -> bool {
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            if s & WAITING != 0 || (s == one(m) && !immortal) {
                return false;
            }
            debug_assert!(s & field(m) != 0, "releasing {m} not held: {:?}", State(s));
            match self
                .0
                .compare_exchange_weak(s, s - one(m), Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Replaces one hold of `from` by one of the weaker `to`, which never
    /// conflicts. Fails only if `to`'s counter is full.
    pub(crate) fn downgrade(&self, from: Mode, to: Mode) -> Result<State, Refusal> {
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            let base = s - one(from);
            if base & field(to) == field(to) {
                return Err(Refusal::Full);
            }
            let next = base + one(to);
            match self
                .0
                .compare_exchange_weak(s, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return Ok(State(next)),
                Err(now) => s = now,
            }
        }
    }

    /// Sets `WAITING` unless `m` (converting from `from`) became grantable,
    /// in which case it is granted instead. Called under the queue lock
    /// after a waiter was queued: once the bit is set, every release takes
    /// the queue lock, so a waiter that saw a conflict here cannot miss the
    /// release that ends it.
    pub(crate) fn set_waiting_or_grant(
        &self,
        from: Option<Mode>,
        m: Mode,
        may_grant: bool,
    ) -> Result<bool, Refusal> {
        let mut s = State(self.0.load(Ordering::Relaxed));
        loop {
            if s.is_dead() {
                return Err(Refusal::Dead);
            }
            let (next, granted) = match s.grant(from, m) {
                Ok(next) if may_grant => (next, true),
                _ => (State(s.0 | WAITING), false),
            };
            if next == s {
                return Ok(false);
            }
            match self
                .0
                .compare_exchange_weak(s.0, next.0, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(granted),
                Err(now) => s = State(now),
            }
        }
    }

    /// Sets `WAITING` for a watcher, unless the node became idle or dead
    /// (then `false`: the watcher has nothing to wait for). Call under the
    /// queue lock.
    pub(crate) fn try_set_waiting(&self) -> bool {
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            // No holder and no hand-off pending (whatever the PINNED and
            // CACHED flags say): the release the watcher would wait for has
            // already happened. With WAITING set a releaser's hand-off is
            // still to come and will wake the watcher.
            if s & (HOLDERS | WAITING) == 0 || s & DEAD != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(s, s | WAITING, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Clears `WAITING` (the queue just became empty); returns the word after.
    pub(crate) fn clear_waiting(&self) -> State {
        State(self.0.fetch_and(!WAITING, Ordering::AcqRel) & !WAITING)
    }

    /// Sets `PINNED` unless the node is dead (then `false`). Call under the
    /// queue lock, for the first handle.
    pub(crate) fn try_set_pinned(&self) -> bool {
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            if s & DEAD != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(s, s | PINNED, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Clears `PINNED` (the last handle went); returns the word after. Call
    /// under the queue lock.
    pub(crate) fn clear_pinned(&self) -> State {
        State(self.0.fetch_and(!PINNED, Ordering::AcqRel) & !PINNED)
    }

    /// Marks an idle node as cached (`0 -> CACHED`). Fails if anyone holds
    /// it, waits on it, or keeps it, or if it is cached or dead already.
    pub(crate) fn try_cache(&self) -> bool {
        self.0
            .compare_exchange(0, CACHED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Settles a node just popped from the idle cache: kills it (`CACHED
    /// -> DEAD`, `true`) if it is still idle, otherwise clears `CACHED`
    /// (`false`) so that its last release caches it again.
    pub(crate) fn uncache(&self) -> bool {
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            debug_assert!(
                s & CACHED != 0,
                "uncaching a node not cached: {:?}",
                State(s)
            );
            let (next, dead) = if s == CACHED {
                (DEAD, true)
            } else {
                (s & !CACHED, false)
            };
            match self
                .0
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return dead,
                Err(now) => s = now,
            }
        }
    }

    /// Biases the word toward `class`: sets `BIASED` and adds the class's
    /// phantom holder. Refused (`false`) if a holder conflicts with the
    /// phantom, anyone waits, the node is dead or biased already, or the
    /// class's counts are too close to their maximum. Call under the queue
    /// lock, then activate the slots.
    pub(crate) fn try_bias(&self, class: Class) -> bool {
        let p = class.phantom();
        let mut s = self.0.load(Ordering::Relaxed);
        loop {
            if s & (CONFLICTS[p as usize] | WAITING | DEAD | BIASED) != 0
                || s & field(p) >= BIASED_CAP[p as usize]
                || s & IS_MASK >= BIASED_CAP[Mode::IS as usize]
            {
                return false;
            }
            match self.0.compare_exchange_weak(
                s,
                (s + one(p)) | BIASED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Adds (or, with `back`, takes out) holds folded from a slot: `is`
    /// holds of IS and `class` of the class's phantom mode. Call under the
    /// queue lock on a biased word (the headroom makes room).
    pub(crate) fn fold(&self, class: Class, is: u64, n: u64, back: bool) {
        let delta = is * IS_ONE + n * one(class.phantom());
        if delta == 0 {
            return;
        }
        if back {
            self.0.fetch_sub(delta, Ordering::AcqRel);
        } else {
            self.0.fetch_add(delta, Ordering::AcqRel);
        }
    }

    /// Ends the bias after the slots were folded: takes out the phantom
    /// holder and `BIASED`; returns the word after. Call under the queue
    /// lock.
    pub(crate) fn unbias(&self, class: Class) -> State {
        let delta = one(class.phantom()) + BIASED;
        let prev = self.0.fetch_sub(delta, Ordering::AcqRel);
        debug_assert!(prev & BIASED != 0, "unbiasing a word not biased");
        State(prev - delta)
    }

    /// Marks an idle node dead. Fails if anyone holds it, waits on it, or
    /// it is already dead.
    pub(crate) fn try_kill(&self) -> bool {
        self.0
            .compare_exchange(0, DEAD, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// The fast path's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    /// Granted in the word at the first CAS.
    Granted,
    /// Granted in the word after losing CASes to other threads.
    Contended,
    /// The word is biased toward a class that admits the mode: try a slot.
    Biased,
    /// Not granted: take the slow path.
    Refused,
}

/// A set of modes, for "is this request compatible with every waiter ahead
/// of it".
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct ModeSet(u8);

impl ModeSet {
    pub(crate) fn insert(&mut self, m: Mode) {
        self.0 |= 1 << m as u8;
    }

    /// Whether `m` is compatible with every mode in the set.
    pub(crate) fn compatible_with(self, m: Mode) -> bool {
        Mode::ALL
            .iter()
            .all(|&o| self.0 & (1 << o as u8) == 0 || o.compatible(m))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn fast(w: &StateWord, m: Mode) -> bool {
        matches!(
            w.try_acquire_fast(m, false),
            Fast::Granted | Fast::Contended
        )
    }
    use proptest::prelude::*;

    fn word(counts: [u64; 5]) -> State {
        State(Mode::ALL.iter().zip(counts).map(|(&m, c)| c * one(m)).sum())
    }

    #[test]
    fn fields_do_not_overlap_and_fit() {
        assert_eq!(HOLDERS & BIASED, 0);
        let all = [
            IS_MASK, IX_MASK, S_MASK, BIASED, SIX_BIT, X_BIT, WAITING, DEAD, PINNED, CACHED,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
        assert_eq!(IS_MASK >> IS_SHIFT, MAX_INTENTION_HOLDERS);
        assert_eq!(IX_MASK >> IX_SHIFT, MAX_INTENTION_HOLDERS);
        assert_eq!(S_MASK >> S_SHIFT, MAX_SHARED_HOLDERS);
    }

    #[test]
    fn grant_follows_grays_matrix() {
        for held in Mode::ALL {
            let s = State(0).grant(None, held).unwrap();
            for req in Mode::ALL {
                assert_eq!(
                    s.grant(None, req).is_ok(),
                    held.compatible(req),
                    "{held} then {req}"
                );
            }
        }
    }

    #[test]
    fn conversion_ignores_own_hold() {
        let s = State(0).grant(None, Mode::S).unwrap();
        let x = s.grant(Some(Mode::S), Mode::X).unwrap();
        assert_eq!(x.count(Mode::X), 1);
        assert_eq!(x.count(Mode::S), 0);
        let two = s.grant(None, Mode::S).unwrap();
        assert_eq!(two.grant(Some(Mode::S), Mode::X), Err(Refusal::Conflict));
    }

    #[test]
    fn full_counter_refuses_instead_of_wrapping() {
        let s = State(MAX_SHARED_HOLDERS * S_ONE);
        assert_eq!(s.grant(None, Mode::S), Err(Refusal::Full));
        assert_eq!(s.grant(None, Mode::IS).unwrap().count(Mode::IS), 1);
        let w = StateWord(AtomicU64::new(s.0));
        assert!(!fast(&w, Mode::S));
        assert_eq!(w.load(), s);
        let s = State(MAX_INTENTION_HOLDERS * IX_ONE);
        assert_eq!(s.grant(None, Mode::IX), Err(Refusal::Full));
    }

    #[test]
    fn waiting_and_dead_block_the_fast_path() {
        let w = StateWord::new();
        assert!(fast(&w, Mode::IS));
        assert!(w.set_waiting_or_grant(None, Mode::X, true).is_ok());
        assert!(w.load().is_waiting());
        assert!(!fast(&w, Mode::IS));
        assert!(!w.try_convert_fast(Mode::IS, Mode::IX));
        w.release(Mode::IS);
        assert_eq!(w.clear_waiting(), State(0));
        assert!(w.try_kill());
        assert!(!fast(&w, Mode::IS));
        assert_eq!(w.try_grant(None, Mode::IS), Err(Refusal::Dead));
        assert!(!w.try_kill());
    }

    #[test]
    fn bias_adds_a_phantom_only_over_compatible_holders() {
        let w = StateWord::new();
        assert!(fast(&w, Mode::IS));
        assert!(w.try_bias(Class::IntentionExclusive));
        let s = w.load();
        assert!(s.is_biased());
        assert_eq!(s.count(Mode::IX), 1, "the phantom");
        // The phantom IX keeps S, SIX and X out of the fast path...
        for m in [Mode::S, Mode::SIX, Mode::X] {
            assert_eq!(w.try_acquire_fast(m, true), Fast::Refused, "{m}");
        }
        // ... and sends IS and IX to the slots when the caller has one.
        assert_eq!(w.try_acquire_fast(Mode::IX, true), Fast::Biased);
        assert!(fast(&w, Mode::IX));
        assert!(!w.try_bias(Class::Shared), "biased already");
        // Fold two slot holds (one IS, one IX), then end the bias.
        w.fold(Class::IntentionExclusive, 1, 1, false);
        let after = w.unbias(Class::IntentionExclusive);
        assert!(!after.is_biased());
        assert_eq!(after.count(Mode::IS), 2);
        assert_eq!(after.count(Mode::IX), 2);

        // Never over a conflicting holder, nor while anyone waits.
        let x = StateWord::new();
        assert!(fast(&x, Mode::SIX));
        assert!(!x.try_bias(Class::IntentionExclusive));
        assert!(!x.try_bias(Class::Shared));
        let q = StateWord::new();
        assert!(fast(&q, Mode::IS));
        assert!(q.try_set_waiting());
        assert!(!q.try_bias(Class::Shared));
    }

    #[test]
    fn a_biased_word_keeps_headroom_for_the_fold() {
        let w = StateWord::new();
        let near = MAX_SHARED_HOLDERS - HEADROOM;
        w.0.store(near * S_ONE, Ordering::Relaxed);
        assert!(!w.try_bias(Class::Shared), "no room to fold into");
        w.0.store((near - 2) * S_ONE, Ordering::Relaxed);
        assert!(w.try_bias(Class::Shared));
        // The phantom took one, one more fits; then the word's own grants
        // stop at the cap.
        assert!(fast(&w, Mode::S));
        assert_eq!(w.try_acquire_fast(Mode::S, false), Fast::Refused);
        assert_eq!(w.load().grant(None, Mode::S), Err(Refusal::Full));
        // Unbiased, the real maximum applies again.
        w.unbias(Class::Shared);
        assert!(fast(&w, Mode::S));
    }

    #[test]
    fn debug_shows_every_field() {
        let w = StateWord::new();
        assert!(fast(&w, Mode::IS));
        assert!(fast(&w, Mode::IS));
        assert!(fast(&w, Mode::SIX));
        assert_eq!(
            format!("{:?}", w.load()),
            "State { IS: 2, IX: 0, S: 0, SIX: 1, X: 0, biased: false, waiting: false, dead: false, pinned: false, cached: false }"
        );
        assert!(w.try_set_pinned());
        assert!(format!("{:?}", w.load()).ends_with("pinned: true, cached: false }"));
        let c = StateWord::new();
        assert!(c.try_cache());
        assert!(format!("{:?}", c.load()).ends_with("pinned: false, cached: true }"));
    }

    #[test]
    fn cached_nodes_are_reused_and_die_only_when_idle() {
        let w = StateWord::new();
        assert!(w.try_cache());
        assert!(!w.try_cache(), "cached twice");
        assert!(!w.try_kill(), "a cached node dies only through uncache");
        assert!(!w.load().is_idle());
        // Reused while cached: every mode, and a release needs no follow-up.
        for m in Mode::ALL {
            assert!(fast(&w, m));
            assert!(w.try_release_shared(m, false));
        }
        assert!(fast(&w, Mode::X));
        // Popped while in use: the bit goes, the holder stays.
        assert!(!w.uncache());
        assert_eq!(w.load().count(Mode::X), 1);
        assert!(w.release(Mode::X).is_idle());
        assert!(w.try_cache());
        assert!(w.uncache(), "popped while idle: dead");
        assert!(w.load().is_dead());
        assert!(!fast(&w, Mode::IS));
    }

    #[test]
    fn a_sole_hold_is_released_in_one_cas_only_on_an_immortal_node() {
        for m in Mode::ALL {
            let w = StateWord::new();
            assert!(fast(&w, m));
            // The last hold of a reclaimable node: the caller must see the
            // word go idle, so nothing changes here.
            assert!(!w.try_release_shared(m, false));
            assert_eq!(w.load().count(m), 1);
            // The root's: released, the word is empty again.
            assert!(w.try_release_shared(m, true));
            assert_eq!(w.load().0, 0);
            // Nobody's fast release skips a waiter.
            assert!(fast(&w, m));
            w.0.fetch_or(WAITING, Ordering::Relaxed);
            assert!(!w.try_release_shared(m, true));
            assert_eq!(w.load().count(m), 1);
        }
    }

    #[test]
    fn pinned_conflicts_with_nothing_but_is_never_idle() {
        let w = StateWord::new();
        assert!(w.try_set_pinned());
        assert!(!w.load().is_idle());
        assert!(!w.try_kill(), "a pinned node must not die");
        for m in Mode::ALL {
            assert!(fast(&w, m), "{m} refused on a pinned node");
            // Releasing the only hold of a pinned node needs no follow-up.
            assert!(w.try_release_shared(m, false));
        }
        assert_eq!(w.load().0, PINNED);
        assert!(w.clear_pinned().is_idle());
        assert!(w.try_kill());
        assert!(!w.try_set_pinned(), "a dead node cannot be pinned");
    }

    #[test]
    fn mode_set() {
        let mut set = ModeSet::default();
        assert!(set.compatible_with(Mode::X));
        set.insert(Mode::S);
        assert!(set.compatible_with(Mode::IS));
        assert!(!set.compatible_with(Mode::IX));
    }

    proptest! {
        /// Any word made of compatible holders: count() reads back what was
        /// put in, and grant/release round-trip.
        #[test]
        fn pack_unpack_round_trip(is in 0..=MAX_INTENTION_HOLDERS, ix in 0..=MAX_INTENTION_HOLDERS,
                                  s in 0..=MAX_SHARED_HOLDERS, six in 0u64..=1, x in 0u64..=1,
                                  req in 0usize..5) {
            let st = word([is, ix, s, six, x]);
            for (m, c) in Mode::ALL.iter().zip([is, ix, s, six, x]) {
                prop_assert_eq!(st.count(*m), c);
            }
            let m = Mode::ALL[req];
            let w = StateWord(AtomicU64::new(st.0));
            if let Ok(next) = st.grant(None, m) {
                prop_assert_eq!(next.count(m), st.count(m) + 1);
                prop_assert!(fast(&w, m));
                prop_assert_eq!(w.release(m), st);
            }
        }
    }
}
