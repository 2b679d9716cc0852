//! The Redis backend on a real, local Redis Cluster: three `redis-server
//! --cluster-enabled yes` primaries on free loopback ports, joined by
//! `redis-cli --cluster create` (see `redis_support::RedisCluster`).
//!
//! Shows the Gray matrix between two clients, namespaces in slots of
//! different nodes each working, a waiter woken by a release published on
//! another node than the one its subscriber connection talks to, fencing
//! tokens increasing, one pub/sub connection for the whole cluster, and
//! the function library loaded on every primary (again where forgotten).
#![cfg(feature = "redis")]

mod redis_support;

use std::time::{Duration, Instant};

use hierlock::redis::RedisLockTree;
use hierlock::{Error, Mode};
use redis_support::{eventually, RedisCluster};

fn tree(c: &RedisCluster, ns: &str, lease: Duration) -> RedisLockTree {
    RedisLockTree::cluster_builder(c.urls())
        .namespace(ns)
        .lease(lease)
        .build()
        .expect("build a tree on the cluster")
}

/// Namespaces `prefix0`, `prefix1`, ... until one is served by node `i`.
fn namespace_on(c: &RedisCluster, prefix: &str, i: usize) -> String {
    (0..1000)
        .map(|n| format!("{prefix}{n}"))
        .find(|ns| c.owner(&format!("{{{ns}}}:token")) == i)
        .expect("a namespace on every node")
}

#[test]
fn gray_matrix_between_two_clients_on_a_cluster() {
    let c = RedisCluster::start();
    let a = tree(&c, "gray", Duration::from_secs(10));
    let b = tree(&c, "gray", Duration::from_secs(10));
    for held in Mode::ALL {
        for req in Mode::ALL {
            let g = a.lock("/t/u", held).unwrap();
            let r = b.try_lock("/t/u", req);
            assert_eq!(r.is_ok(), held.compatible(req), "{held} then {req}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e, Error::WouldBlock);
            }
            g.unlock().unwrap();
        }
    }
    // The hierarchy across levels, too.
    let x = a.lock("/t", Mode::X).unwrap();
    assert_eq!(b.try_lock("/t/u", Mode::IS).unwrap_err(), Error::WouldBlock);
    b.try_lock("/v", Mode::X).unwrap().unlock().unwrap();
    x.unlock().unwrap();
}

#[test]
fn namespaces_on_every_node_each_work() {
    let c = RedisCluster::start();
    for i in 0..3 {
        let ns = namespace_on(&c, "spread", i);
        let a = tree(&c, &ns, Duration::from_secs(10));
        let b = tree(&c, &ns, Duration::from_secs(10));
        let g = a.lock("/db/users", Mode::X).unwrap();
        assert_eq!(
            b.try_lock("/db", Mode::S).unwrap_err(),
            Error::WouldBlock,
            "{ns}"
        );
        // Its keys are on node i, and only there.
        let key = format!("{{{ns}}}:n:db/users");
        for j in 0..3 {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query(&mut c.node(j))
                .unwrap_or(0);
            assert_eq!(n == 1, i == j, "{key} on node {j}");
        }
        let info = b.inspect("/db").unwrap();
        assert_eq!(info.holders.len(), 1);
        assert_eq!(info.holders[0].mode, Mode::IX);
        assert_eq!(b.force_release("/db/users").unwrap(), 1);
        assert_eq!(g.unlock().unwrap_err(), Error::LeaseLost);
        b.try_lock("/db", Mode::X).unwrap().unlock().unwrap();
    }
}

/// How many function libraries node `i` has.
fn libraries(c: &RedisCluster, i: usize) -> usize {
    let v: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query(&mut c.node(i))
        .unwrap();
    v.len()
}

#[test]
fn function_library_is_on_every_primary_and_reloaded_where_forgotten() {
    let c = RedisCluster::start();
    let trees: Vec<_> = (0..3)
        .map(|i| tree(&c, &namespace_on(&c, "lib", i), Duration::from_secs(10)))
        .collect();
    trees[0].lock("/a", Mode::X).unwrap().unlock().unwrap();
    // The first use loaded the library on every primary.
    for i in 0..3 {
        assert_eq!(libraries(&c, i), 1, "node {i}");
    }
    // One node forgets it (FUNCTION FLUSH): the namespace served there
    // reloads it at its next call; the others never notice.
    for forget in 0..3 {
        redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query::<()>(&mut c.node(forget))
            .unwrap();
        assert_eq!(libraries(&c, forget), 0);
        for (i, t) in trees.iter().enumerate() {
            let g = t.lock("/a/b", Mode::X).unwrap();
            g.refresh().unwrap();
            assert_eq!(t.inspect("/a/b").unwrap().holders.len(), 1, "node {i}");
            g.unlock().unwrap();
        }
        for i in 0..3 {
            assert_eq!(libraries(&c, i), 1, "node {i} after {forget} forgot");
        }
    }
}

#[test]
fn waiter_is_woken_by_a_release_on_another_node_and_tokens_increase() {
    let c = RedisCluster::start();
    // The namespace lives on node 2; the trees' pub/sub connection goes to
    // the first node given, node 0: the release is published on node 2.
    let ns = namespace_on(&c, "wake", 2);
    let lease = Duration::from_secs(60);
    let holder = tree(&c, &ns, lease);
    let waiter = tree(&c, &ns, lease);
    let mut last = 0;
    for round in 0..3 {
        let g = holder.lock("/r", Mode::X).unwrap();
        assert!(g.token() > last);
        let w = waiter.clone();
        let t =
            std::thread::spawn(move || w.lock_timeout("/r/c", Mode::X, Duration::from_secs(20)));
        eventually(Duration::from_secs(10), "the waiter listening", || {
            let r: (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{{{ns}}}:c:r/c"))
                .query(&mut c.node(0))
                .unwrap();
            r.1 == 1
        });
        assert_eq!(holder.inspect("/r").unwrap().waiters.len(), 1);
        // One pub/sub connection for the whole process, on node 0.
        let subs: Vec<usize> = (0..3)
            .map(|i| {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query(&mut c.node(i))
                    .unwrap();
                list.lines().count()
            })
            .collect();
        assert_eq!(subs, [1, 0, 0], "round {round}");
        let held = g.token();
        g.unlock().unwrap();
        // Only the release message can wake it before the 60 s leases end.
        let got = t.join().unwrap().expect("woken by the release");
        assert!(got.token() > held, "round {round}");
        last = got.token();
        got.unlock().unwrap();
    }
    // A lost counter is reseeded above every earlier token.
    redis::cmd("DEL")
        .arg(format!("{{{ns}}}:token"))
        .query::<()>(&mut c.node(2))
        .unwrap();
    let g = holder.lock("/s", Mode::S).unwrap();
    assert!(g.token() > last);
}

#[test]
fn bad_cluster_input_is_a_clear_error() {
    let none: Vec<String> = Vec::new();
    assert!(matches!(
        RedisLockTree::cluster_builder(none).build(),
        Err(Error::Backend { .. })
    ));
    assert!(matches!(
        RedisLockTree::cluster_builder(["not a url"]).build(),
        Err(Error::Backend { .. })
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let r = RedisLockTree::cluster_builder([format!("redis://127.0.0.1:{port}")])
        .op_timeout(Duration::from_millis(500))
        .build();
    assert!(matches!(r, Err(Error::Backend { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}
