//! The Redis backend's connections against a real `redis-server`: one
//! pub/sub connection per process and server, shared by every tree; waiters
//! that live through killed connections (`CLIENT KILL`) and a restart; an
//! acquire retried on a fresh connection after its connection dropped.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::Duration;

use hierlock::redis::RedisLockTree;
use hierlock::Mode;
use redis_support::{eventually, RedisServer};

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

/// How many connections are subscribed to `channel`.
fn listeners(srv: &RedisServer, channel: &str) -> usize {
    let r: (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut srv.conn())
        .unwrap();
    r.1
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
    eventually(Duration::from_secs(10), "both waiters listening", || {
        listeners(&srv, "{share-a}:c:x") == 1 && listeners(&srv, "{share-b}:c:y/z") == 1
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
    eventually(Duration::from_secs(10), "the waiter listening", || {
        listeners(&srv, "{share-a}:c:x") == 1
    });
    assert_eq!(clients(&srv, "pubsub").len(), 1);
    g.unlock().unwrap();
    w.join().unwrap().unwrap().unlock().unwrap();
}

/// `CLIENT KILL TYPE <kind>` (never the connection that sends it); returns
/// how many were killed.
fn kill_clients(srv: &RedisServer, kind: &str) -> usize {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg(kind)
        .query(&mut srv.conn())
        .unwrap()
}

/// A holder and a waiter (another tree) on `/r`; `disturb` runs while the
/// waiter waits; then the holder releases and the waiter must get the lock.
/// The leases are long, so only a release message heard on a (re-made)
/// subscription can wake the waiter before its deadline.
fn waiter_survives(ns: &str, disturb: impl FnOnce(&RedisServer)) {
    let srv = RedisServer::start();
    let lease = Duration::from_secs(60);
    let holder = srv.tree_lease(ns, lease);
    let waiter = srv.tree_lease(ns, lease);
    let g = holder.lock("/r", Mode::X).unwrap();
    let w = waiter.clone();
    let t = std::thread::spawn(move || w.lock_timeout("/r/c", Mode::S, Duration::from_secs(15)));
    eventually(Duration::from_secs(10), "the waiter listening", || {
        listeners(&srv, &format!("{{{ns}}}:c:r/c")) == 1
    });
    assert_eq!(holder.inspect("/r").unwrap().waiters.len(), 1);
    disturb(&srv);
    let old = g.token();
    g.unlock().unwrap();
    let got = t.join().unwrap().expect("the waiter gets the lock");
    assert!(got.token() > old);
    got.unlock().unwrap();
    assert!(holder.inspect("/r").unwrap().waiters.is_empty());
}

#[test]
fn waiter_gets_the_lock_after_its_command_connections_were_killed() {
    waiter_survives("kill-normal", |srv| {
        // The holder's and the waiter's command connections.
        assert!(kill_clients(srv, "normal") >= 2);
    });
}

#[test]
fn waiter_gets_the_lock_after_the_pubsub_connection_was_killed() {
    waiter_survives("kill-pubsub", |srv| {
        assert_eq!(kill_clients(srv, "pubsub"), 1);
        // It comes back, subscribed again, before the release is sent.
        eventually(Duration::from_secs(10), "re-subscribed", || {
            clients(srv, "pubsub").len() == 1
        });
    });
}

#[test]
fn waiter_gets_the_lock_after_every_connection_was_killed() {
    waiter_survives("kill-all", |srv| {
        assert_eq!(kill_clients(srv, "pubsub"), 1);
        assert!(kill_clients(srv, "normal") >= 2);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiter_gets_the_lock_after_the_pubsub_connection_was_killed() {
    let srv = RedisServer::start();
    let lease = Duration::from_secs(60);
    let holder = srv.tree_lease("kill-async", lease);
    let waiter = srv.tree_lease("kill-async", lease);
    let g = holder.lock_async("/r", Mode::X).await.unwrap();
    let w = tokio::spawn(waiter.lock_async("/r", Mode::X));
    let mut con = srv.conn();
    let port = srv.port;
    tokio::task::spawn_blocking(move || {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .and_then(|c| c.get_connection())
            .unwrap();
        eventually(Duration::from_secs(10), "the waiter listening", || {
            let r: (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("{kill-async}:c:r")
                .query(&mut con)
                .unwrap();
            r.1 == 1
        });
    })
    .await
    .unwrap();
    let killed: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 1);
    drop(g);
    let got = tokio::time::timeout(Duration::from_secs(15), w)
        .await
        .expect("woken within the deadline")
        .unwrap()
        .unwrap();
    assert_eq!(got.mode(), Mode::X);
}

#[test]
fn an_acquire_is_retried_once_after_a_dropped_connection() {
    let srv = RedisServer::start();
    let tree = srv.tree("retry");
    tree.lock("/a", Mode::X).unwrap().unlock().unwrap();
    // The tree's command connection dies between two requests: the next
    // request fails on it and is sent again on a fresh connection.
    for _ in 0..3 {
        assert!(kill_clients(&srv, "normal") >= 1);
        let g = tree
            .try_lock("/a/b", Mode::X)
            .expect("retried on a fresh connection");
        assert!(kill_clients(&srv, "normal") >= 1);
        g.unlock().expect("the release is retried too");
        assert!(kill_clients(&srv, "normal") >= 1);
        tree.lock_timeout("/a", Mode::S, Duration::from_secs(5))
            .unwrap()
            .unlock()
            .unwrap();
    }
    // Nothing is left behind (no double grant by a retried script).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{retry}:n:*")
        .query(&mut srv.conn())
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn waiter_gets_the_lock_after_a_redis_restart() {
    let mut srv = RedisServer::start();
    let lease = Duration::from_secs(60);
    let holder = srv.tree_lease("restart-wait", lease);
    let waiter = srv.tree_lease("restart-wait", lease);
    let g = holder.lock("/r", Mode::X).unwrap();
    let w = waiter.clone();
    let t = std::thread::spawn(move || w.lock_timeout("/r", Mode::X, Duration::from_secs(15)));
    eventually(Duration::from_secs(10), "the waiter listening", || {
        listeners(&srv, "{restart-wait}:c:r") == 1
    });
    // The restart forgets the hold: the waiter, woken by the lost
    // connection, re-subscribes on the new server and is granted.
    srv.restart();
    let got = t.join().unwrap().expect("the waiter gets the lock");
    assert_eq!(g.unlock().unwrap_err(), hierlock::Error::LeaseLost);
    got.unlock().unwrap();
}
