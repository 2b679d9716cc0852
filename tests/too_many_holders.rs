//! Counter limits: the S count of a node refuses one holder too many with
//! `Error::TooManyHolders` instead of wrapping into its neighbour.

use std::time::Duration;

use hierlock::{Error, LockTree, Mode, MAX_SHARED_HOLDERS};

#[test]
fn one_reader_too_many_is_refused_not_wrapped() {
    let tree = LockTree::new();
    let max = usize::try_from(MAX_SHARED_HOLDERS).unwrap();
    assert_eq!(max, 131_071);
    let mut guards = Vec::with_capacity(max);
    for i in 0..max {
        match tree.try_lock("/a", Mode::S) {
            Ok(g) => guards.push(g),
            Err(e) => panic!("reader {i} of {max}: {e:?}"),
        }
    }
    assert_eq!(tree.node_count(), 1);

    // One more, through every entry point: refused, never blocking.
    assert_eq!(
        tree.try_lock("/a", Mode::S).unwrap_err(),
        Error::TooManyHolders
    );
    assert_eq!(tree.lock("/a", Mode::S).unwrap_err(), Error::TooManyHolders);
    assert_eq!(tree.read("/a").unwrap_err(), Error::TooManyHolders);
    assert_eq!(
        tree.lock_timeout("/a", Mode::S, Duration::from_secs(30))
            .unwrap_err(),
        Error::TooManyHolders
    );
    assert_eq!(
        futures::executor::block_on(tree.lock_async("/a", Mode::S)).unwrap_err(),
        Error::TooManyHolders
    );

    // Not a wrap: the node is still read-locked by all of them.
    assert_eq!(tree.try_lock("/a", Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        tree.try_lock("/a", Mode::IX).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/a", Mode::SIX).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/a/b", Mode::X).unwrap_err(),
        Error::WouldBlock
    );
    // Other counters are unaffected.
    drop(tree.try_lock("/a", Mode::IS).unwrap());
    drop(tree.try_lock("/a/b", Mode::S).unwrap());
    assert_eq!(tree.node_count(), 1);

    // A conversion into the full counter is refused too, keeping its mode.
    let mut is = tree.try_lock("/a", Mode::IS).unwrap();
    assert_eq!(is.try_upgrade(Mode::S).unwrap_err(), Error::TooManyHolders);
    assert_eq!(is.mode(), Mode::IS);
    assert_eq!(is.upgrade(Mode::S).unwrap_err(), Error::TooManyHolders);
    assert_eq!(is.mode(), Mode::IS);
    drop(is);

    // Releasing one lets exactly one more in.
    guards.pop();
    guards.push(tree.try_lock("/a", Mode::S).unwrap());
    assert_eq!(
        tree.try_lock("/a", Mode::S).unwrap_err(),
        Error::TooManyHolders
    );

    // The refused requests left nothing on the ancestors either.
    drop(guards);
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
    drop(tree.try_lock("/a", Mode::X).unwrap());
}
