//! Who may hold what at the same time: Gray's matrix on one node, the
//! hierarchy (intentions on ancestors), siblings, disjoint subtrees, root.

mod common;

use common::{compatible, granted, intention, MODES};
use hierlock::{LockTree, Mode};

#[test]
fn whole_matrix_on_one_node() {
    let tree = LockTree::new();
    for held in MODES {
        for req in MODES {
            let g = tree.lock("/n", held).unwrap();
            assert_eq!(
                granted(&tree, "/n", req),
                compatible(held, req),
                "held {held}, requested {req} on the same node"
            );
            drop(g);
            assert_eq!(tree.node_count(), 0, "after {held}/{req}");
        }
    }
}

#[test]
fn matrix_is_the_one_gray_wrote() {
    // The public `Mode::compatible` must agree with the table in the design.
    for a in MODES {
        for b in MODES {
            assert_eq!(a.compatible(b), compatible(a, b), "{a} vs {b}");
        }
    }
}

#[test]
fn same_node_with_three_holders_needs_all_pairs_compatible() {
    // IS and IX coexist; S then conflicts with IX even though it is
    // compatible with IS.
    let tree = LockTree::new();
    let _is = tree.lock("/n", Mode::IS).unwrap();
    let ix = tree.lock("/n", Mode::IX).unwrap();
    assert!(!granted(&tree, "/n", Mode::S));
    assert!(!granted(&tree, "/n", Mode::SIX));
    assert!(granted(&tree, "/n", Mode::IS));
    drop(ix);
    assert!(granted(&tree, "/n", Mode::S));
    assert!(granted(&tree, "/n", Mode::SIX));
}

#[test]
fn ancestor_holder_against_every_descendant_request() {
    // Holding M1 on /a; requesting M2 on /a/b (and deeper) takes
    // M2.intention() on /a: it conflicts iff that meets M1.
    let tree = LockTree::new();
    for held in MODES {
        for req in MODES {
            let g = tree.lock("/a", held).unwrap();
            for below in ["/a/b", "/a/b/c/d"] {
                assert_eq!(
                    granted(&tree, below, req),
                    compatible(held, intention(req)),
                    "{held} on /a, {req} on {below}"
                );
            }
            drop(g);
        }
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn x_on_a_excludes_everything_under_a() {
    let tree = LockTree::new();
    let _x = tree.write("/a").unwrap();
    for req in MODES {
        for p in ["/a", "/a/b", "/a/b/c"] {
            assert!(!granted(&tree, p, req), "{req} on {p} under X on /a");
        }
        // ...but not its siblings.
        assert!(granted(&tree, "/b", req));
        assert!(granted(&tree, "/ab", req), "/ab is not under /a");
    }
}

#[test]
fn s_on_a_admits_readers_and_excludes_writers_below() {
    let tree = LockTree::new();
    let _s = tree.read("/a").unwrap();
    for p in ["/a/b", "/a/b/c"] {
        assert!(granted(&tree, p, Mode::IS));
        assert!(granted(&tree, p, Mode::S));
        assert!(!granted(&tree, p, Mode::IX));
        assert!(!granted(&tree, p, Mode::SIX));
        assert!(!granted(&tree, p, Mode::X));
    }
    // On the root it only leaves IS: everything but X is let in there.
    assert!(!granted(&tree, "/", Mode::X));
    assert!(granted(&tree, "/", Mode::IX));
    assert!(granted(&tree, "/", Mode::SIX));
    assert!(granted(&tree, "/", Mode::S));
}

#[test]
fn descendant_holder_against_every_ancestor_request() {
    // Holding M1 on /a/b puts M1.intention() on /a and on the root; a
    // request M2 on /a or on the root conflicts iff M2 meets that.
    let tree = LockTree::new();
    for held in MODES {
        for req in MODES {
            let g = tree.lock("/a/b", held).unwrap();
            for above in ["/a", "/", ""] {
                assert_eq!(
                    granted(&tree, above, req),
                    compatible(intention(held), req),
                    "{held} on /a/b, {req} on {above:?}"
                );
            }
            drop(g);
        }
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn x_below_excludes_s_six_x_on_ancestors_and_root() {
    let tree = LockTree::new();
    let _x = tree.write("/a/b").unwrap();
    for above in ["/a", "/"] {
        assert!(!granted(&tree, above, Mode::S), "S on {above}");
        assert!(!granted(&tree, above, Mode::SIX), "SIX on {above}");
        assert!(!granted(&tree, above, Mode::X), "X on {above}");
        assert!(granted(&tree, above, Mode::IS), "IS on {above}");
        assert!(granted(&tree, above, Mode::IX), "IX on {above}");
    }
}

#[test]
fn siblings_never_conflict_in_any_mode_pair() {
    let tree = LockTree::new();
    for a in MODES {
        for b in MODES {
            let g = tree.lock("/p/a", a).unwrap();
            assert!(granted(&tree, "/p/b", b), "{a} on /p/a vs {b} on /p/b");
            assert!(granted(&tree, "/p/b/c", b), "{a} on /p/a vs {b} on /p/b/c");
            drop(g);
        }
    }
}

#[test]
fn disjoint_subtrees_never_conflict_in_any_mode_pair() {
    let tree = LockTree::new();
    for a in MODES {
        for b in MODES {
            let g = tree.lock("/x/y/z", a).unwrap();
            assert!(granted(&tree, "/q/r", b), "{a} on /x/y/z vs {b} on /q/r");
            assert!(granted(&tree, "/q", b), "{a} on /x/y/z vs {b} on /q");
            // Holding both at once too.
            let h = tree.lock("/q/r", b).unwrap();
            assert_eq!(h.mode(), b);
            drop((g, h));
        }
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn many_writers_of_siblings_hold_at_once() {
    let tree = LockTree::new();
    let guards: Vec<_> = (0..50)
        .map(|i| tree.write(format!("/db/users/{i}")).unwrap())
        .collect();
    assert_eq!(tree.node_count(), 52);
    assert!(!granted(&tree, "/db/users", Mode::S));
    assert!(!granted(&tree, "/db", Mode::S));
    drop(guards);
    assert_eq!(tree.node_count(), 0);
    assert!(granted(&tree, "/", Mode::X));
}

#[test]
fn root_can_be_locked_by_both_spellings() {
    let tree = LockTree::new();
    for spelling in ["", "/"] {
        let g = tree.lock(spelling, Mode::S).unwrap();
        assert_eq!(g.path().to_string(), "/");
        assert!(g.path().is_root());
        assert_eq!(g.path().components().count(), 0);
        // The root is not counted as a node.
        assert_eq!(tree.node_count(), 0);
        // The other spelling is the same node.
        let other = if spelling.is_empty() { "/" } else { "" };
        assert!(!granted(&tree, other, Mode::X));
        assert!(granted(&tree, other, Mode::S));
        drop(g);
    }
}

#[test]
fn root_matrix() {
    let tree = LockTree::new();
    for held in MODES {
        for req in MODES {
            let g = tree.lock("/", held).unwrap();
            assert_eq!(
                granted(&tree, "", req),
                compatible(held, req),
                "{held}/{req}"
            );
            drop(g);
        }
    }
}

#[test]
fn root_x_excludes_everything() {
    let tree = LockTree::new();
    let x = tree.lock("", Mode::X).unwrap();
    for req in MODES {
        for p in ["", "/", "/a", "/a/b", "/z/y/x/w"] {
            assert!(!granted(&tree, p, req), "{req} on {p:?} under root X");
        }
    }
    // Nothing was left behind by the refused requests.
    assert_eq!(tree.node_count(), 0);
    drop(x);
    for req in MODES {
        assert!(granted(&tree, "/a/b", req));
    }
}

#[test]
fn root_s_admits_readers_everywhere_and_no_writer() {
    let tree = LockTree::new();
    let _s = tree.read("/").unwrap();
    for p in ["/a", "/a/b"] {
        assert!(granted(&tree, p, Mode::S));
        assert!(granted(&tree, p, Mode::IS));
        assert!(!granted(&tree, p, Mode::X));
        assert!(!granted(&tree, p, Mode::IX));
        assert!(!granted(&tree, p, Mode::SIX));
    }
}

#[test]
fn refused_try_lock_leaves_nothing_behind() {
    let tree = LockTree::new();
    let x = tree.write("/a/b").unwrap();
    assert_eq!(tree.node_count(), 2);
    for req in MODES {
        assert!(!granted(&tree, "/a/b/c/d", req));
        assert_eq!(tree.node_count(), 2, "{req}: no node leaked");
    }
    drop(x);
    assert_eq!(tree.node_count(), 0);
    // No intention leaked on /a or the root either.
    assert!(granted(&tree, "/", Mode::X));
    assert!(granted(&tree, "/a", Mode::X));
}
