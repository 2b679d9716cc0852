//! Path forms: every accepted spelling names the same node, every bad input
//! is `InvalidPath` naming the input, through every entry point.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use hierlock::{Error, LockTree, Mode};
use proptest::prelude::*;

/// Checks that `e` is `InvalidPath` whose message and `path` field contain
/// every one of `shows`.
fn assert_invalid(e: Error, shows: &[&str], what: &str) {
    let msg = e.to_string();
    match &e {
        Error::InvalidPath { path, .. } => {
            for s in shows {
                assert!(msg.contains(s), "{what}: message {msg:?} lacks {s:?}");
                assert!(path.contains(s), "{what}: path field {path:?} lacks {s:?}");
            }
        }
        other => panic!("{what}: expected InvalidPath, got {other:?}"),
    }
}

/// Runs a bad string path through every entry point of the API.
fn rejected_everywhere(tree: &Arc<LockTree>, bad: &str) {
    let t = 1u64;
    let d = Duration::from_millis(t);
    let show = [bad];
    let nodes = tree.node_count();
    assert_invalid(tree.lock(bad, Mode::S).unwrap_err(), &show, "lock");
    assert_invalid(tree.try_lock(bad, Mode::X).unwrap_err(), &show, "try_lock");
    assert_invalid(
        tree.lock_timeout(bad, Mode::IX, d).unwrap_err(),
        &show,
        "lock_timeout",
    );
    assert_invalid(tree.read(bad).unwrap_err(), &show, "read");
    assert_invalid(tree.write(bad).unwrap_err(), &show, "write");
    assert_invalid(
        tree.lock(bad.to_string(), Mode::S).unwrap_err(),
        &show,
        "lock(String)",
    );
    let owned = bad.to_string();
    #[allow(clippy::needless_borrows_for_generic_args)] // the &String form on purpose
    let by_ref = tree.lock(&owned, Mode::S);
    assert_invalid(by_ref.unwrap_err(), &show, "lock(&String)");
    assert_invalid(
        block_on(tree.lock_async(bad, Mode::S)).unwrap_err(),
        &show,
        "lock_async",
    );
    assert_invalid(
        tree.lock_owned(bad, Mode::S).unwrap_err(),
        &show,
        "lock_owned",
    );
    assert_invalid(
        tree.try_lock_owned(bad, Mode::S).unwrap_err(),
        &show,
        "try_lock_owned",
    );
    assert_invalid(
        tree.lock_owned_timeout(bad, Mode::S, d).unwrap_err(),
        &show,
        "lock_owned_timeout",
    );
    assert_invalid(
        block_on(tree.lock_owned_async(bad, Mode::S)).unwrap_err(),
        &show,
        "lock_owned_async",
    );
    assert_eq!(tree.node_count(), nodes, "{bad:?} created a node");
}

#[test]
fn malformed_strings_are_invalid_path_naming_the_input() {
    let tree = Arc::new(LockTree::new());
    for bad in [
        "a//b",
        "/a//b",
        "//a",
        "/a//",
        "a//",
        "//a/b",
        "/a/b//",
        "a///b",
        "///",
        "/db//users/42",
    ] {
        rejected_everywhere(&tree, bad);
    }
    // Still usable afterwards.
    assert!(tree.try_lock("/", Mode::X).is_ok());
}

#[test]
fn too_deep_strings_are_invalid_path_naming_the_input() {
    let tree = Arc::new(LockTree::new());
    let bad = common::deep_path(257);
    rejected_everywhere(&tree, &bad);
    rejected_everywhere(&tree, &format!("/{bad}/"));
}

#[test]
fn bad_components_are_invalid_path_naming_them() {
    let tree = LockTree::new();
    // An empty component.
    let e = tree.lock(["a", "", "c"], Mode::S).unwrap_err();
    assert_invalid(e, &["a", "c", "\"\""], "[a, \"\", c]");
    let e = tree.try_lock(vec!["", "x"], Mode::S).unwrap_err();
    assert_invalid(e, &["x", "\"\""], "vec![\"\", x]");
    let e = tree.lock([""], Mode::X).unwrap_err();
    assert_invalid(e, &["\"\""], "[\"\"]");
    // A component containing the separator.
    let e = tree.lock(["a/b"], Mode::S).unwrap_err();
    assert_invalid(e, &["a/b"], "[a/b]");
    let e = tree
        .try_lock(&["db", "us/ers", "42"][..], Mode::X)
        .unwrap_err();
    assert_invalid(e, &["db", "us/ers", "42"], "&[db, us/ers, 42]");
    let e = tree
        .try_lock(vec!["db".to_string(), "/".to_string()], Mode::X)
        .unwrap_err();
    assert_invalid(e, &["db", "/"], "vec![db, /]");
    let e = tree
        .lock_timeout(vec!["x", "y/"], Mode::IS, Duration::from_millis(1))
        .unwrap_err();
    assert_invalid(e, &["y/"], "vec![x, y/]");
    // Too many components.
    let many: Vec<String> = (0..257).map(|i| format!("c{i}")).collect();
    let e = tree.lock(many.clone(), Mode::S).unwrap_err();
    assert_invalid(e, &["c0", "c256"], "257 components");
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = tree.lock(&refs[..], Mode::S).unwrap_err();
    assert_invalid(e, &["c0", "c256"], "257 components as &[&str]");
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn every_accepted_form_names_the_same_node() {
    let tree = LockTree::new();
    let owned = String::from("a/b");
    let parts_owned = vec!["a".to_string(), "b".to_string()];
    let slice: &[&str] = &["a", "b"];
    type Try<'t> = Box<dyn Fn(&'t LockTree, Mode) -> Result<hierlock::Guard<'t>, Error>>;
    let forms: Vec<(&str, Try<'_>)> = vec![
        ("\"/a/b\"", Box::new(|t, m| t.try_lock("/a/b", m))),
        ("\"a/b\"", Box::new(|t, m| t.try_lock("a/b", m))),
        ("\"a/b/\"", Box::new(|t, m| t.try_lock("a/b/", m))),
        ("\"/a/b/\"", Box::new(|t, m| t.try_lock("/a/b/", m))),
        (
            "String",
            Box::new(|t, m| t.try_lock(String::from("/a/b"), m)),
        ),
        ("&String", Box::new(move |t, m| t.try_lock(&owned, m))),
        ("[&str; 2]", Box::new(|t, m| t.try_lock(["a", "b"], m))),
        ("&[&str]", Box::new(move |t, m| t.try_lock(slice, m))),
        ("Vec<&str>", Box::new(|t, m| t.try_lock(vec!["a", "b"], m))),
        (
            "Vec<String>",
            Box::new(move |t, m| t.try_lock(parts_owned.clone(), m)),
        ),
    ];
    for (held_name, hold) in &forms {
        let g = hold(&tree, Mode::X).unwrap();
        assert_eq!(g.path().to_string(), "/a/b", "{held_name}");
        assert_eq!(g.path().components().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(tree.node_count(), 2, "{held_name}: one node per level");
        for (req_name, req) in &forms {
            assert_eq!(
                req(&tree, Mode::IS).unwrap_err(),
                Error::WouldBlock,
                "X via {held_name}, IS via {req_name}"
            );
        }
        drop(g);
        // A shared lock in every form coexists with one in every other.
        let g = hold(&tree, Mode::S).unwrap();
        for (_, req) in &forms {
            drop(req(&tree, Mode::S).unwrap());
        }
        drop(g);
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn every_root_form_names_the_root() {
    let tree = LockTree::new();
    let empty: &[&str] = &[];
    let g = tree.lock("", Mode::X).unwrap();
    assert_eq!(g.path().to_string(), "/");
    assert_eq!(tree.try_lock("/", Mode::IS).unwrap_err(), Error::WouldBlock);
    assert_eq!(tree.try_lock([], Mode::IS).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        tree.try_lock(empty, Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock(Vec::<&str>::new(), Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock(Vec::<String>::new(), Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock(String::new(), Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    drop(g);
    let g = tree.lock(Vec::<String>::new(), Mode::X).unwrap();
    assert!(g.path().is_root());
    assert_eq!(tree.try_lock("", Mode::IS).unwrap_err(), Error::WouldBlock);
}

#[test]
fn names_are_case_and_byte_exact() {
    let tree = LockTree::new();
    let _x = tree.write("/A/b").unwrap();
    assert!(tree.try_lock("/a/b", Mode::X).is_ok());
    assert!(tree.try_lock("/A/B", Mode::X).is_ok());
    assert!(tree.try_lock("/A/b ", Mode::X).is_ok());
    assert!(tree.try_lock("/A/b/c", Mode::IS).is_err());
    // Unicode components are fine.
    let g = tree.write("/données/ünï/✓").unwrap();
    assert_eq!(g.path().to_string(), "/données/ünï/✓");
    assert!(tree.try_lock(["données", "ünï", "✓"], Mode::S).is_err());
}

#[test]
fn custom_separator() {
    let tree = Arc::new(LockTree::builder().separator(':').build());
    let g = tree.lock("db:users", Mode::X).unwrap();
    assert_eq!(g.path().to_string(), ":db:users");
    assert_eq!(g.path().components().collect::<Vec<_>>(), ["db", "users"]);
    for same in [":db:users", "db:users:", ":db:users:"] {
        assert_eq!(
            tree.try_lock(same, Mode::IS).unwrap_err(),
            Error::WouldBlock,
            "{same}"
        );
    }
    assert_eq!(
        tree.try_lock(["db", "users"], Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    // '/' is an ordinary character now: "db/users" is one other node.
    let other = tree.try_lock("db/users", Mode::X).unwrap();
    assert_eq!(other.path().components().count(), 1);
    drop(other);
    let slash = tree.lock(["a/b", "c"], Mode::X).unwrap();
    assert_eq!(
        tree.try_lock("a/b:c", Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(slash.path().to_string(), ":a/b:c");
    drop(slash);
    // Bad inputs with this separator.
    for bad in ["db::users", "::db", "db::"] {
        rejected_everywhere(&tree, bad);
    }
    let e = tree.lock(["a:b"], Mode::S).unwrap_err();
    assert_invalid(e, &["a:b"], "component with ':'");
    // The root, spelled with this separator.
    assert_eq!(tree.try_lock(":", Mode::S).unwrap_err(), Error::WouldBlock);
    drop(g);
    assert_eq!(tree.node_count(), 0);
    let root = tree.try_lock(":", Mode::X).unwrap();
    assert_eq!(root.path().to_string(), ":");
    assert_eq!(tree.try_lock("", Mode::IS).unwrap_err(), Error::WouldBlock);
}

#[test]
fn max_depth_boundary() {
    let tree = Arc::new(LockTree::builder().max_depth(8).build());
    let eight = common::deep_path(8);
    let g = tree.lock(&eight, Mode::X).unwrap();
    assert_eq!(g.path().components().count(), 8);
    assert_eq!(tree.node_count(), 8);
    drop(g);
    // Surrounding separators do not count as components.
    drop(tree.lock(format!("/{eight}/"), Mode::X).unwrap());
    let parts: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    drop(tree.lock(parts.clone(), Mode::X).unwrap());

    let nine = common::deep_path(9);
    rejected_everywhere(&tree, &nine);
    rejected_everywhere(&tree, &format!("/{nine}/"));
    let mut nine_parts = parts;
    nine_parts.push("c8".into());
    let e = tree.lock(nine_parts, Mode::S).unwrap_err();
    assert_invalid(e, &["c0", "c8"], "9 components");
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn default_max_depth_is_256() {
    let tree = LockTree::new();
    let g = tree.lock(common::deep_path(256), Mode::S).unwrap();
    assert_eq!(tree.node_count(), 256);
    assert_eq!(g.path().components().count(), 256);
    drop(g);
    assert!(matches!(
        tree.lock(common::deep_path(257), Mode::S),
        Err(Error::InvalidPath { .. })
    ));
    assert_eq!(tree.node_count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A string with or without one separator at each end, and the list of
    /// its components, always name the same node.
    #[test]
    fn string_and_components_agree(
        comps in proptest::collection::vec("[a-z0-9.é]{1,4}", 0..6),
        lead in any::<bool>(),
        trail in any::<bool>(),
    ) {
        let tree = LockTree::new();
        let joined = comps.join("/");
        let mut s = String::new();
        if lead { s.push('/'); }
        s.push_str(&joined);
        if trail && !joined.is_empty() { s.push('/'); }
        let g = tree.lock(&s, Mode::X).unwrap();
        prop_assert_eq!(g.path().to_string(), format!("/{joined}"));
        prop_assert_eq!(g.path().components().collect::<Vec<_>>(), comps.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(tree.try_lock(comps.clone(), Mode::IS).unwrap_err(), Error::WouldBlock);
        prop_assert_eq!(tree.node_count(), comps.len());
        drop(g);
        prop_assert_eq!(tree.node_count(), 0);
        // And the reverse: lock by components, probe by string.
        let g = tree.lock(comps.clone(), Mode::X).unwrap();
        prop_assert_eq!(tree.try_lock(&s, Mode::IS).unwrap_err(), Error::WouldBlock);
        drop(g);
    }
}
