//! Helpers shared by the integration tests: an independent copy of Gray's
//! matrix (so the tests do not trust `Mode::compatible`), deterministic
//! "is it queued yet" probes, and a watchdog.
#![allow(dead_code)]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hierlock::{Error, LockTree, Mode};

/// `try_lock` either succeeds or says `WouldBlock`; anything else fails.
pub fn granted(tree: &LockTree, path: &str, mode: Mode) -> bool {
    match tree.try_lock(path, mode) {
        Ok(g) => {
            assert_eq!(g.mode(), mode);
            true
        }
        Err(Error::WouldBlock) => false,
        Err(e) => panic!("try_lock({path:?}, {mode}): unexpected {e:?}"),
    }
}

/// The five modes, weakest first.
pub const MODES: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];

fn idx(m: Mode) -> usize {
    match m {
        Mode::IS => 0,
        Mode::IX => 1,
        Mode::S => 2,
        Mode::SIX => 3,
        Mode::X => 4,
    }
}

/// Gray's matrix, written out again: `GRAY[held][requested]`.
const GRAY: [[bool; 5]; 5] = [
    //  IS    IX     S      SIX    X
    [true, true, true, true, false],     // IS
    [true, true, false, false, false],   // IX
    [true, false, true, false, false],   // S
    [true, false, false, false, false],  // SIX
    [false, false, false, false, false], // X
];

/// Whether `a` and `b` may be held on one node by two holders.
pub fn compatible(a: Mode, b: Mode) -> bool {
    GRAY[idx(a)][idx(b)]
}

/// The mode taken on every proper ancestor.
pub fn intention(m: Mode) -> Mode {
    match m {
        Mode::IS | Mode::S => Mode::IS,
        _ => Mode::IX,
    }
}

/// Whether holding `a` grants at least what `b` grants (lattice order).
pub fn covers(a: Mode, b: Mode) -> bool {
    use Mode::*;
    match a {
        X => true,
        SIX => b != X,
        S => matches!(b, S | IS),
        IX => matches!(b, IX | IS),
        IS => b == IS,
    }
}

/// Spins (with a short sleep) until `try_lock(path, probe)` says
/// `WouldBlock`: the deterministic sign that a conflicting request is now
/// queued on `path` (the probe must be compatible with the current holders
/// and incompatible with the queued request). Panics after 20 s.
pub fn wait_until_queued(tree: &LockTree, path: &str, probe: Mode) {
    let start = Instant::now();
    loop {
        match tree.try_lock(path, probe) {
            Ok(g) => drop(g),
            Err(Error::WouldBlock) => return,
            Err(e) => panic!("probe {probe} on {path}: unexpected {e:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no request ever queued on {path} (probe {probe})"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` on its own thread and fails the test if it has not returned
/// after `limit` (a hang guard, not a timing assertion: `limit` is far
/// beyond anything a correct engine needs).
pub fn watchdog<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Ok(_) => unreachable!(),
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {limit:?} (hang or lost wake-up)")
        }
    }
}

/// A path of `n` components "c0/c1/...".
pub fn deep_path(n: usize) -> String {
    (0..n)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join("/")
}
