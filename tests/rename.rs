//! `rename`: a held lock moves to another path, the new path locked before
//! the old one is released, without hilok's failure modes.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hierlock::{Error, LockTree, Mode};

fn root_counts(tree: &LockTree) -> Vec<(Mode, u64)> {
    let mut v: Vec<_> = tree
        .inspect("/")
        .unwrap()
        .granted
        .iter()
        .map(|g| (g.mode, g.count))
        .collect();
    v.sort();
    v
}

#[test]
fn rename_moves_the_lock() {
    let tree = LockTree::new();
    let mut g = tree.lock("/tmp/a", Mode::X).unwrap();
    g.rename("/data/b").unwrap();
    assert_eq!(g.path().to_string(), "/data/b");
    assert_eq!(g.mode(), Mode::X);
    assert!(tree.try_lock("/tmp/a", Mode::X).is_ok());
    assert_eq!(
        tree.try_lock("/data/b", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/data", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(root_counts(&tree), vec![(Mode::IX, 1)]);
    drop(g);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn rename_into_own_subtree_and_out_to_an_ancestor() {
    let tree = LockTree::new();
    let mut g = tree.lock("/a", Mode::X).unwrap();
    g.rename("/a/b/c").unwrap(); // X on /a becomes IX; X on /a/b/c
    assert!(tree.try_lock("/a/z", Mode::X).is_ok());
    assert!(tree.try_lock("/a/b/c", Mode::IS).is_err());
    g.rename("/a").unwrap(); // back up: IX on /a converts to X
    assert!(tree.try_lock("/a/z", Mode::IS).is_err());
    assert_eq!(tree.inspect("/a").unwrap().granted[0].mode, Mode::X);
    drop(g);
    assert_eq!(tree.node_count(), 0);

    let mut s = tree.lock("/r/s", Mode::S).unwrap();
    s.rename("/r").unwrap();
    assert_eq!(tree.inspect("/r").unwrap().granted[0].mode, Mode::S);
    assert!(tree.try_lock("/r/s", Mode::X).is_err());
    drop(s);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn rename_onto_a_held_target_waits_instead_of_orphaning_the_holder() {
    let tree = Arc::new(LockTree::new());
    let holder = tree.lock_owned("/dst", Mode::S).unwrap();
    let mut g = tree.lock("/src", Mode::X).unwrap();
    assert_eq!(g.try_rename("/dst").unwrap_err(), Error::WouldBlock);
    assert_eq!(
        g.rename_timeout("/dst", Duration::from_millis(10))
            .unwrap_err(),
        Error::Timeout
    );
    // The failed attempts kept the old path and leaked nothing.
    assert_eq!(g.path().to_string(), "/src");
    assert_eq!(root_counts(&tree), vec![(Mode::IS, 1), (Mode::IX, 1)]);
    assert!(tree.try_lock("/src", Mode::IS).is_err());
    // The holder is untouched.
    assert_eq!(holder.mode(), Mode::S);
    assert_eq!(tree.inspect("/dst").unwrap().granted[0].mode, Mode::S);

    // A blocking rename waits for the holder, and unrelated paths stay free
    // meanwhile.
    let t = {
        let tree = tree.clone();
        thread::spawn(move || {
            let mut g = tree.lock("/src2", Mode::X).unwrap();
            g.rename("/dst").unwrap();
            assert_eq!(g.path().to_string(), "/dst");
        })
    };
    while tree.inspect("/dst").unwrap().waiting.is_empty() {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(tree.try_lock("/elsewhere", Mode::X).is_ok());
    assert!(
        tree.try_lock("/src", Mode::IS).is_err(),
        "our first guard still holds /src"
    );
    drop(holder);
    t.join().unwrap();
    drop(g);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn owner_guard_rename() {
    let tree = LockTree::new();
    let txn = tree.owner();
    let mut g = txn.lock("/x/1", Mode::X).unwrap();
    let other = tree.lock("/y", Mode::S).unwrap();
    assert_eq!(g.try_rename("/y/2").unwrap_err(), Error::WouldBlock);
    assert_eq!(g.path().to_string(), "/x/1");
    drop(other);
    g.rename("/y/2").unwrap();
    assert_eq!(g.path().to_string(), "/y/2");
    assert!(tree.try_lock("/x", Mode::X).is_ok());
    assert_eq!(txn.holds().len(), 1);
    drop(g);
    drop(txn);
    assert_eq!(tree.node_count(), 0);
}
