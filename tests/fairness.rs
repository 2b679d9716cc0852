//! Fairness: once a conflicting request waits at a node, later requests
//! that conflict with it queue behind it — no writer starvation under a
//! stream of readers, no reader starvation under a stream of writers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{wait_until_queued, watchdog};
use hierlock::{Error, LockTree, Mode, OwnedGuard};

const LONG: Duration = Duration::from_secs(30);

struct Recorder {
    seq: AtomicUsize,
    arrived: AtomicUsize,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Recorder {
            seq: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
        })
    }

    fn wait_arrived(&self, n: usize) {
        while self.arrived.load(Ordering::SeqCst) < n {
            thread::sleep(Duration::from_millis(1));
        }
        // Give the last arrivals time to park (their order is checked, not
        // this delay).
        thread::sleep(Duration::from_millis(30));
    }
}

/// Spawns a thread that locks `path` in `mode` and returns its grant order.
fn contender(
    tree: &Arc<LockTree>,
    rec: &Arc<Recorder>,
    path: String,
    mode: Mode,
) -> thread::JoinHandle<usize> {
    let (t, rec) = (tree.clone(), rec.clone());
    thread::spawn(move || {
        rec.arrived.fetch_add(1, Ordering::SeqCst);
        let g = t.lock(path.as_str(), mode).unwrap();
        let order = rec.seq.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(2));
        drop(g);
        order
    })
}

#[test]
fn later_readers_queue_behind_a_waiting_writer() {
    let tree = Arc::new(LockTree::new());
    let rec = Recorder::new();
    let r0 = tree.read("/a").unwrap();
    let writer = contender(&tree, &rec, "/a".into(), Mode::X);
    // A reader of /a is compatible with the holder but not with the queued
    // X: once the X waits, new readers must wait too.
    wait_until_queued(&tree, "/a", Mode::S);
    assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        tree.try_lock("/a", Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/a/b", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    // Disjoint nodes are not affected.
    drop(tree.try_lock("/b", Mode::X).unwrap());
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let path = if i == 0 {
                "/a".into()
            } else {
                format!("/a/{i}")
            };
            contender(&tree, &rec, path, Mode::S)
        })
        .collect();
    rec.wait_arrived(4);
    drop(r0);
    let w = watchdog(LONG, "writer", move || writer.join().unwrap());
    let rs = watchdog(LONG, "readers", move || {
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(w, 0, "the writer is served first; readers got {rs:?}");
    assert!(rs.iter().all(|&r| r > 0));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn later_writers_queue_behind_a_waiting_reader() {
    // A writer below /a holds IX there; a reader of /a waits. Writers of
    // other children of /a (IX there too, compatible with the holder) must
    // queue behind the reader instead of overtaking it.
    let tree = Arc::new(LockTree::new());
    let rec = Recorder::new();
    let w0 = tree.write("/a/0").unwrap();
    let reader = contender(&tree, &rec, "/a".into(), Mode::S);
    wait_until_queued(&tree, "/a", Mode::IX);
    assert_eq!(
        tree.try_lock("/a/9", Mode::X).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/a", Mode::IX).unwrap_err(),
        Error::WouldBlock
    );
    let writers: Vec<_> = (1..4)
        .map(|i| contender(&tree, &rec, format!("/a/{i}"), Mode::X))
        .collect();
    rec.wait_arrived(4);
    drop(w0);
    let r = watchdog(LONG, "reader", move || reader.join().unwrap());
    let ws = watchdog(LONG, "writers", move || {
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(r, 0, "the reader is served first; writers got {ws:?}");
    assert!(ws.iter().all(|&w| w > 0));
    assert_eq!(tree.node_count(), 0);
}

/// Keeps `path` held in `mode` without a gap: takes a new guard before
/// dropping the old one, as long as nobody queues; when a `try_lock` says
/// WouldBlock it lets go and waits its turn. Runs until `stop`.
fn relay(
    tree: Arc<LockTree>,
    path: impl Fn(usize) -> String + Send + 'static,
    mode: Mode,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut n = 0;
        let mut held: OwnedGuard = tree.lock_owned(path(n), mode).unwrap();
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            match tree.try_lock_owned(path(n), mode) {
                Ok(next) => held = next,
                Err(Error::WouldBlock) => {
                    drop(held);
                    held = tree.lock_owned(path(n), mode).unwrap();
                }
                Err(e) => panic!("{e:?}"),
            }
            thread::yield_now();
        }
        n
    })
}

#[test]
fn stream_of_readers_does_not_starve_a_writer() {
    // Two relays keep S on /a continuously held; without fairness the
    // writer never gets in and the watchdog fires.
    let tree = Arc::new(LockTree::new());
    let stop = Arc::new(AtomicBool::new(false));
    let relays: Vec<_> = (0..2)
        .map(|_| relay(tree.clone(), |_| "/a".into(), Mode::S, stop.clone()))
        .collect();
    thread::sleep(Duration::from_millis(20));
    let t = tree.clone();
    let mode = watchdog(LONG, "writer under a stream of readers", move || {
        t.lock("/a", Mode::X).map(|g| g.mode())
    });
    assert_eq!(mode.unwrap(), Mode::X);
    stop.store(true, Ordering::SeqCst);
    for r in relays {
        r.join().unwrap();
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn stream_of_writers_does_not_starve_a_reader() {
    // Two relays keep writing children of /a (IX on /a continuously held);
    // a reader of /a must still get in.
    let tree = Arc::new(LockTree::new());
    let stop = Arc::new(AtomicBool::new(false));
    let relays: Vec<_> = (0..2)
        .map(|k| {
            relay(
                tree.clone(),
                move |n| format!("/a/{k}-{}", n % 3),
                Mode::X,
                stop.clone(),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    let t = tree.clone();
    let mode = watchdog(LONG, "reader under a stream of writers", move || {
        t.lock("/a", Mode::S).map(|g| g.mode())
    });
    assert_eq!(mode.unwrap(), Mode::S);
    stop.store(true, Ordering::SeqCst);
    for r in relays {
        r.join().unwrap();
    }
    assert_eq!(tree.node_count(), 0);
}
