//! A conversion deadlock through a plain waiter: two holders wait to
//! convert on the root, and the second one's wait closes a cycle through a
//! third thread's partly acquired path. DESIGN.md section 1: "the one whose
//! wait would close the cycle gets Error::Deadlock".
//!
//! T0 holds IS on the root and upgrades to S: it waits for T1's IX there.
//! T1 (a plain `lock` of X on /b/y) holds IX on / and /b and waits on /b/y
//! for T4's IS. T4 holds S on /b/y/2 and upgrades to SIX: its IS -> IX on
//! the root is compatible with every holder but is queued behind T0's
//! conversion. Had conversions queued behind each other, T4 would wait for
//! T0, T0 for T1, T1 for T4, forever. The engine grants a conversion that is
//! compatible with every other holder at once, so T4 goes ahead and the
//! cycle never forms; this test fails if it does.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{wait_until_queued, watchdog};
use hierlock::{Error, LockTree, Mode};

#[test]
fn conversion_wait_closing_a_cycle_through_a_plain_waiter_is_not_left_hanging() {
    let tree = Arc::new(LockTree::new());
    let mut g0 = tree.lock_owned("/", Mode::IS).unwrap();
    let mut g4 = tree.lock_owned("/b/y/2", Mode::S).unwrap();
    let t = tree.clone();
    let t1 = thread::spawn(move || drop(t.lock("/b/y", Mode::X).unwrap()));
    wait_until_queued(&tree, "/b/y", Mode::IS);
    let t0 = thread::spawn(move || {
        let r = g0.upgrade(Mode::S);
        (r, g0.mode())
    });
    // T0's conversion to S is queued on the root: IX probes wait behind it.
    wait_until_queued(&tree, "/", Mode::IX);

    let r = g4.upgrade_timeout(Mode::SIX, Duration::from_secs(2));
    assert_ne!(
        r,
        Err(Error::Timeout),
        "T4 waits for T0, T0 for T1, T1 for T4: the cycle was not detected \
         (a blocking upgrade here hangs forever)"
    );
    match r {
        Ok(()) => assert_eq!(g4.mode(), Mode::SIX),
        Err(e) => {
            assert_eq!(e, Error::Deadlock);
            assert_eq!(g4.mode(), Mode::S);
        }
    }
    drop(g4);
    watchdog(Duration::from_secs(30), "T1 after T4 left", move || {
        t1.join().unwrap()
    });
    let (r0, m0) = watchdog(Duration::from_secs(30), "T0 after T1 left", move || {
        t0.join().unwrap()
    });
    r0.unwrap();
    assert_eq!(m0, Mode::S);
}
