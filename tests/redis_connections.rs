//! The Redis backend's connections against a real `redis-server`: one
//! pub/sub connection per process and server, shared by every tree.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::{Duration, Instant};

use hierlock::redis::RedisLockTree;
use hierlock::Mode;
use redis_support::RedisServer;

/// The server's clients of one `CLIENT LIST TYPE` (normal, pubsub).
fn clients(srv: &RedisServer, kind: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg(kind)
        .query(&mut srv.conn())
        .unwrap();
    list.lines().map(str::to_owned).collect()
}

/// Polls `cond` until it holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_subscriber_connection_per_process_and_server() {
    let srv = RedisServer::start();
    // Two trees with waiters, in different namespaces and databases of the
    // same server, and the trees holding what they wait for.
    let holder_a = srv.tree("share-a");
    let a = srv.tree("share-a");
    let url_db1 = format!("redis://127.0.0.1:{}/1", srv.port);
    let holder_b = RedisLockTree::builder(&url_db1)
        .namespace("share-b")
        .build()
        .unwrap();
    let b = RedisLockTree::builder(&url_db1)
        .namespace("share-b")
        .build()
        .unwrap();
    let ga = holder_a.lock("/x", Mode::X).unwrap();
    let gb = holder_b.lock("/y", Mode::X).unwrap();
    // (Their own subscriptions, taken in case they had to wait, are gone.)
    eventually(Duration::from_secs(5), "no subscriptions left", || {
        clients(&srv, "pubsub").is_empty()
    });
    let (aa, bb) = (a.clone(), b.clone());
    let wa = std::thread::spawn(move || aa.lock_timeout("/x", Mode::X, Duration::from_secs(20)));
    let wb = std::thread::spawn(move || bb.lock_timeout("/y/z", Mode::S, Duration::from_secs(20)));
    eventually(Duration::from_secs(10), "both waiters registered", || {
        a.inspect("/x").unwrap().waiters.len() == 1 && b.inspect("/y").unwrap().waiters.len() == 1
    });
    let subs = clients(&srv, "pubsub");
    assert_eq!(subs.len(), 1, "one pub/sub connection expected: {subs:#?}");
    // It carries both trees' channels.
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query(&mut srv.conn())
        .unwrap();
    channels.sort();
    assert_eq!(
        channels,
        [
            "{share-a}:c:",
            "{share-a}:c:x",
            "{share-b}:c:",
            "{share-b}:c:y",
            "{share-b}:c:y/z"
        ]
    );
    // Both are woken through it.
    ga.unlock().unwrap();
    gb.unlock().unwrap();
    wa.join().unwrap().unwrap().unlock().unwrap();
    wb.join().unwrap().unwrap().unlock().unwrap();
    // The shared connection goes away with the last tree that uses it.
    drop((a, b, holder_a, holder_b));
    eventually(Duration::from_secs(5), "every connection closed", || {
        clients(&srv, "normal").len() == 1 && clients(&srv, "pubsub").is_empty()
    });
    // A new tree after that gets a working subscriber again.
    let c = srv.tree("share-a");
    let d = srv.tree("share-a");
    let g = c.lock("/x", Mode::S).unwrap();
    let dd = d.clone();
    let w = std::thread::spawn(move || dd.lock_timeout("/x", Mode::X, Duration::from_secs(20)));
    eventually(Duration::from_secs(10), "the waiter registered", || {
        c.inspect("/x").unwrap().waiters.len() == 1
    });
    assert_eq!(clients(&srv, "pubsub").len(), 1);
    g.unlock().unwrap();
    w.join().unwrap().unwrap().unlock().unwrap();
}
