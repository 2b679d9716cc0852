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
