//! Heap allocations on the lock path, counted with a global allocator:
//! none for a path whose nodes exist or were released recently (the idle
//! cache), about one per node created.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hierlock::{LockTree, Mode};

struct Counting;

thread_local! {
    /// Allocations made by this thread: the test harness's own threads
    /// allocate whenever they like, and must not count.
    static MINE: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: allocations during thread teardown are not ours.
    let _ = MINE.try_with(|m| m.set(m.get() + 1));
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations the calling thread makes while running `f`.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = MINE.with(Cell::get);
    f();
    MINE.with(Cell::get) - before
}

// One test function: the counter is process-wide, so the measurements must
// not run concurrently with other tests of this binary.
#[test]
fn allocations_on_the_lock_path() {
    let tree = LockTree::new();
    // Keep the nodes of the path alive with another holder.
    let _keep = tree.lock("/db/users/page/keep", Mode::IS).unwrap();
    for _ in 0..1000 {
        drop(tree.lock("/db/users/page", Mode::IX).unwrap()); // warm up thread-locals
    }
    for (path, mode) in [
        ("/db", Mode::IX),
        ("/db/users/page", Mode::IX),
        ("/db/users/page", Mode::S),
        ("/db/users/page/keep", Mode::S),
    ] {
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                drop(tree.lock(path, mode).unwrap());
            }
        });
        assert_eq!(n, 0, "{path}: {n} allocations in 10000 lock+unlock");
    }
    // A failed try_lock allocates nothing either.
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            assert!(tree.try_lock("/db", Mode::X).is_err());
        }
    });
    assert_eq!(n, 0, "failed try_lock: {n} allocations");

    // A leaf released and locked again: its node is kept in the idle
    // cache (on by default), so nothing is allocated after the first time.
    let rounds = 10_000;
    drop(tree.lock("/db/users/page/new-row", Mode::X).unwrap());
    let n = allocations_during(|| {
        for _ in 0..rounds {
            drop(tree.lock("/db/users/page/new-row", Mode::X).unwrap());
        }
    });
    assert_eq!(n, 0, "{n} allocations re-locking a recently released path");

    // With the cache off, a path whose leaf node must be created costs
    // about one allocation per new node (the node; its name is stored
    // inline), plus the epoch collector's occasional bag of deferred frees.
    let cold = LockTree::builder().idle_nodes(0).build();
    let _keep_cold = cold.lock("/db/users/page/keep", Mode::IS).unwrap();
    let n = allocations_during(|| {
        for _ in 0..rounds {
            drop(cold.lock("/db/users/page/new-row", Mode::X).unwrap());
        }
    });
    assert!(
        n <= rounds + rounds / 8,
        "{n} allocations for {rounds} new nodes"
    );
    assert!(n >= rounds, "expected one allocation per new node, got {n}");

    // Prepared handles: nothing at all when locking the handle's path, and
    // only the new row's node for a child.
    let page = tree.prepare("/db/users/page").unwrap();
    // A node a handle keeps and locks often becomes biased, which
    // allocates its slots once (and lists it): warm up past that.
    for _ in 0..1_000 {
        drop(page.lock(Mode::IX).unwrap());
        drop(page.lock_child("keep", Mode::IS).unwrap());
    }
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            drop(page.lock(Mode::IX).unwrap());
            drop(page.lock_child("keep", Mode::IS).unwrap());
        }
    });
    assert_eq!(n, 0, "prepared: {n} allocations in 20000 lock+unlock");
    // A handle's kept holds called back by a scan of the table, and kept
    // again (each time, since it was reused enough in between to start
    // its cool-down afresh): the registries keep their room, nothing is
    // allocated.
    let orders = tree.prepare("/db/orders/t").unwrap();
    let call_back = || {
        for _ in 0..100 {
            for _ in 0..100 {
                drop(orders.lock(Mode::X).unwrap());
            }
            drop(tree.try_lock("/db/orders", Mode::S).unwrap());
        }
    };
    call_back();
    let n = allocations_during(call_back);
    assert_eq!(n, 0, "prepared, called back: {n} allocations in 100 rounds");
    let cold_page = cold.prepare("/db/users/page").unwrap();
    let n = allocations_during(|| {
        for _ in 0..rounds {
            drop(cold_page.lock_child("new-row", Mode::X).unwrap());
        }
    });
    assert!(
        (rounds..=rounds + rounds / 8).contains(&n),
        "prepared child, cache off: {n} allocations for {rounds} new nodes"
    );
}
