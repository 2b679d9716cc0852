//! Asymmetric memory barriers: a nearly free one for the fast path, an
//! expensive one for the rare side that must see it.
//!
//! A bias slot's owner (see `bias.rs`) announces a window with a plain
//! store and then reads the node's gate; a revoker closes the gate and then
//! reads the owner's announcement. That is Dekker's pattern: each side
//! stores, then loads what the other stored, and at least one of them must
//! see the other's store. The textbook way is a `SeqCst` fence on both
//! sides, which on x86 costs as much as the compare-and-swap the slot is
//! there to avoid (about 11 ns here; `benches/uncontended.rs`,
//! `prepared/atomics_floor`).
//!
//! On Linux the heavy side instead calls `membarrier(2)` with
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`: the kernel makes every running
//! thread of the process execute a full barrier before the call returns
//! (and a thread that is not running passes one when it is switched out).
//! So for each other thread there is a point during [`heavy`] before which
//! its stores are visible to the caller once [`heavy`] returns, and after
//! which its loads see everything the caller stored before [`heavy`]. The
//! light side then only has to stop the *compiler* from moving its load
//! above its store. This is the scheme of Linux's own RCU and of folly's
//! `asymmetricHeavyBarrier`.
//!
//! Where `membarrier` is unavailable (another OS, an old kernel, a seccomp
//! filter, Miri, loom) both sides fall back to `SeqCst` fences, which are
//! correct by the C++ memory model's fence rules. The choice is made once,
//! by the first [`heavy`] call (or [`init`]), before any slot can be used;
//! a [`light`] that still reads the old choice fences, which is always
//! safe, and the choice never goes back.

#[cfg(not(loom))]
use crate::sync::fence;
use crate::sync::Ordering;
use std::sync::atomic::AtomicU8;

const UNDECIDED: u8 = 0;
const FENCES: u8 = 1;
const MEMBARRIER: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The light side: orders this thread's earlier stores before its later
/// loads, as seen by a thread that calls [`heavy`].
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn light() {
    if MODE.load(Ordering::Relaxed) == MEMBARRIER {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The heavy side: after it returns, every [`light`] of another thread
/// either came before it (and the stores before that `light` are visible
/// here) or comes after it (and the loads after it see the stores this
/// thread made before calling this).
#[cfg(not(loom))]
pub(crate) fn heavy() {
    #[cfg(test)]
    HEAVY_CALLS.with(|n| n.set(n.get() + 1));
    if init() {
        membarrier(CMD_PRIVATE_EXPEDITED);
    } else {
        fence(Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
thread_local! {
    /// How many times this thread passed the heavy side (for tests that
    /// check a fold skipped it).
    static HEAVY_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times the calling thread passed [`heavy`].
#[cfg(all(test, not(loom)))]
pub(crate) fn heavy_calls() -> usize {
    HEAVY_CALLS.with(std::cell::Cell::get)
}

// Under loom, whose `SeqCst` is not the C++ model's, both sides are a
// read-modify-write of one location: such RMWs are totally ordered, and the
// later one acquires what the earlier one released, so whichever side comes
// second sees the other's store. That is the guarantee the protocol relies
// on, and loom checks the protocol against it; it is stronger than the real
// barrier (every `light` also orders against every other), so a bug that
// needs the real barrier's weaker ordering could go unseen here.
#[cfg(loom)]
loom::lazy_static! {
    static ref ORDER: crate::sync::AtomicU32 = crate::sync::AtomicU32::new(0);
}

/// Under loom: see above.
#[cfg(loom)]
pub(crate) fn light() {
    ORDER.fetch_add(0, Ordering::AcqRel);
}

/// Under loom: the same as [`light`] (see above).
#[cfg(loom)]
pub(crate) fn heavy() {
    light();
}

/// Decides, once, whether [`heavy`] uses `membarrier`: `true` if it does.
/// Call before the first slot can be used (making a node's slots does).
pub(crate) fn init() -> bool {
    match MODE.load(Ordering::Acquire) {
        MEMBARRIER => return true,
        FENCES => return false,
        _ => {}
    }
    // Registering is idempotent, so threads racing here all get the same
    // answer; the first store wins and the others store the same value.
    let mode = if register() { MEMBARRIER } else { FENCES };
    match MODE.compare_exchange(UNDECIDED, mode, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => mode == MEMBARRIER,
        Err(now) => now == MEMBARRIER,
    }
}

#[cfg(all(target_os = "linux", not(miri), not(loom)))]
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
#[cfg(all(not(loom), not(all(target_os = "linux", not(miri)))))]
const CMD_PRIVATE_EXPEDITED: i32 = 0;
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Registers the process for expedited private barriers; `false` if the
/// kernel refuses (or has no `membarrier`).
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
fn register() -> bool {
    // SAFETY: `membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0)`
    // takes no pointers and changes no memory of this process; it fails
    // with ENOSYS/EINVAL/EPERM where unsupported, which we report.
    unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0 }
}

#[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
fn register() -> bool {
    false
}

#[cfg(all(target_os = "linux", not(miri), not(loom)))]
fn membarrier(cmd: libc::c_int) {
    // SAFETY: as in `register`: no pointers, no memory of ours changed.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0) };
    // Registered above, so this cannot fail. Should it anyway (a seccomp
    // filter on this thread alone), the light sides' compiler fences would
    // order nothing and a fold could miss a slot hold: stop rather than
    // break mutual exclusion.
    assert_eq!(
        r,
        0,
        "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after the process registered for it: {}",
        std::io::Error::last_os_error()
    );
}

#[cfg(all(not(loom), not(all(target_os = "linux", not(miri)))))]
fn membarrier(_: i32) {
    unreachable!("membarrier is only chosen where it exists")
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_made_once_and_kept() {
        let first = init();
        assert_eq!(init(), first);
        heavy();
        light();
        assert_eq!(init(), first);
        #[cfg(all(target_os = "linux", not(miri)))]
        eprintln!("membarrier: {first}");
    }

    /// Dekker's pattern through the two sides: a thread that stores and
    /// then (after `light`) loads, against one that stores and then (after
    /// `heavy`) loads. At least one must see the other's store, every time.
    #[test]
    fn one_side_always_sees_the_other() {
        use std::sync::atomic::{AtomicBool, AtomicU32};
        use std::sync::Barrier;
        let rounds = if cfg!(miri) { 20 } else { 2000 };
        let (a, b) = (AtomicU32::new(0), AtomicU32::new(0));
        let (seen_by_light, seen_by_heavy) = (AtomicBool::new(false), AtomicBool::new(false));
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for r in 1..=rounds {
                    barrier.wait();
                    a.store(r, Ordering::Relaxed);
                    light();
                    seen_by_light.store(b.load(Ordering::Relaxed) == r, Ordering::Relaxed);
                    barrier.wait();
                    barrier.wait();
                }
            });
            for r in 1..=rounds {
                barrier.wait();
                b.store(r, Ordering::Relaxed);
                heavy();
                seen_by_heavy.store(a.load(Ordering::Relaxed) == r, Ordering::Relaxed);
                barrier.wait();
                assert!(
                    seen_by_light.load(Ordering::Relaxed) || seen_by_heavy.load(Ordering::Relaxed),
                    "round {r}: neither side saw the other's store"
                );
                barrier.wait();
            }
        });
    }
}
