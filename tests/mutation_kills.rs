//! Tests written to kill mutants that `cargo mutants` found surviving in
//! `src/path.rs` and `src/state.rs` (see the proof report): each test names
//! the mutant it kills.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hierlock::{Error, LockTree, Mode, Path};

/// Kills `replace Path::is_root -> bool with true`.
#[test]
fn only_the_root_is_root() {
    assert!(Path::root('/').is_root());
    assert!(!Path::parse("/a", '/').unwrap().is_root());
    assert!(!Path::parse("/a/b", '/').unwrap().is_root());
}

/// Kills `replace Path::separator -> char with Default::default()`.
#[test]
fn a_path_remembers_its_separator() {
    assert_eq!(Path::parse("a:b", ':').unwrap().separator(), ':');
    assert_eq!(Path::root('/').separator(), '/');
    let tree = LockTree::builder().separator('.').build();
    assert_eq!(tree.lock("x.y", Mode::S).unwrap().path().separator(), '.');
}

/// Kills `replace > with >= in parse_components`: exactly `max_depth`
/// components are accepted, one more is not.
#[test]
fn components_at_the_depth_limit_are_accepted() {
    let tree = LockTree::builder().max_depth(2).build();
    drop(tree.lock(["a", "b"], Mode::S).unwrap());
    drop(tree.lock(vec!["a", "b"], Mode::S).unwrap());
    assert!(matches!(
        tree.lock(["a", "b", "c"], Mode::S).unwrap_err(),
        Error::InvalidPath { .. }
    ));
}

/// Kills `replace > with == / >=` in `IntoPath for &Path`: a `&Path` at
/// the limit is accepted, deeper ones are refused.
#[test]
fn a_path_value_respects_the_depth_limit() {
    let tree = LockTree::builder().max_depth(2).build();
    let at_limit = Path::parse("/a/b", '/').unwrap();
    let deeper = Path::parse("/a/b/c", '/').unwrap();
    let deepest = Path::parse("/a/b/c/d", '/').unwrap();
    drop(tree.lock(&at_limit, Mode::S).unwrap());
    for p in [&deeper, &deepest] {
        assert!(
            matches!(
                tree.lock(p, Mode::S).unwrap_err(),
                Error::InvalidPath { .. }
            ),
            "{p}"
        );
    }
    assert_eq!(tree.node_count(), 0);
}

/// Kills `replace match guard may_grant with true` in
/// `StateWord::set_waiting_or_grant`: a request that the holders admit but
/// a queued conflicting request does not must wait (fairness), even when it
/// is allowed to wait — here an X future is queued behind an S holder, and
/// a later IS with a timeout must time out rather than pass the X.
#[test]
fn a_waiting_request_may_not_pass_a_queued_conflicting_one() {
    let tree = LockTree::new();
    let s = tree.lock("/a", Mode::S).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut x = Box::pin(tree.lock_async("/a", Mode::X));
    assert!(x.as_mut().poll(&mut cx).is_pending());
    assert_eq!(
        tree.lock_timeout("/a", Mode::IS, Duration::from_millis(5))
            .map(drop)
            .unwrap_err(),
        Error::Timeout
    );
    assert_eq!(
        tree.lock_timeout("/a/b", Mode::S, Duration::ZERO)
            .map(drop)
            .unwrap_err(),
        Error::Timeout
    );
    drop(s);
    match x.as_mut().poll(&mut cx) {
        Poll::Ready(g) => assert_eq!(g.unwrap().mode(), Mode::X),
        Poll::Pending => panic!("the X is granted when the S leaves"),
    }
    drop(x);
    assert_eq!(tree.node_count(), 0);
}

/// Kills `replace && with || in Node::acquire_slow` (the conversion
/// deadlock check): a converter that waits for another converter's hold,
/// while its own hold does not block that converter, is not in a cycle and
/// must wait, not get `Deadlock`.
#[test]
fn one_sided_conversion_wait_is_not_a_deadlock() {
    use std::sync::Arc;
    let tree = Arc::new(LockTree::new());
    let third = tree.lock_owned("/a", Mode::IX).unwrap();
    let mut first = tree.lock_owned("/a", Mode::IX).unwrap();
    // IX -> SIX waits for the third holder's IX.
    let t1 = std::thread::spawn(move || {
        first.upgrade(Mode::S).unwrap();
        assert_eq!(first.mode(), Mode::SIX);
        first
    });
    while tree.inspect("/a").unwrap().waiting.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    // IS -> S waits for the first converter's IX; its IS does not block
    // that converter's SIX, so there is no cycle.
    let mut second = tree.lock_owned("/a", Mode::IS).unwrap();
    let t2 = std::thread::spawn(move || {
        let r = second.upgrade_timeout(Mode::S, Duration::from_secs(30));
        (r, second)
    });
    while tree.inspect("/a").unwrap().waiting.len() < 2 && !t2.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(third);
    let first = t1.join().unwrap();
    drop(first);
    let (r, second) = t2.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!(second.mode(), Mode::S);
}

/// Kills `replace && with || in Node::finish_hand_off`: the root is never
/// unlinked, even when a hand-off leaves it idle (here: a watcher woken by
/// the last release of the root).
#[test]
fn the_root_survives_a_hand_off_that_leaves_it_idle() {
    use std::sync::Arc;
    let tree = Arc::new(LockTree::new());
    let s = tree.lock("/", Mode::S).unwrap();
    let t = {
        let tree = tree.clone();
        std::thread::spawn(move || tree.wait_acquirable("/", Mode::X, Duration::from_secs(30)))
    };
    std::thread::sleep(Duration::from_millis(20)); // let the watcher queue
    drop(s);
    assert_eq!(t.join().unwrap(), Ok(()));
    // The root still works. A dead root would make every lock spin looking
    // it up again, so check from another thread with a bound.
    let (done, finished) = std::sync::mpsc::channel();
    let checker = tree.clone();
    std::thread::spawn(move || {
        let root = checker.try_lock("/", Mode::X).is_ok();
        let below = checker.try_lock("/a/b", Mode::X).is_ok();
        let _ = done.send((root, below, checker.node_count()));
    });
    let outcome = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("locking after the hand-off never returned: the root was unlinked");
    assert_eq!(outcome, (true, true, 0));
}
