//! The Redis backend's `wait_for_replicas` against a real primary and a real
//! replica (a second `redis-server` started with `--replicaof`): a grant
//! that the replica confirmed is readable on the replica; a grant that too
//! few replicas confirm fails with `Error::Backend` saying how many did,
//! and is given back (another tree takes X on the path, `inspect` shows no
//! holder; well before the lease could have expired); a replica killed
//! with SIGKILL makes the next acquisition fail the same way (within a hang
//! guard) and leave nothing held, and a new replica makes acquisitions work
//! again. One test checks that the give-back has happened by the time the
//! error is returned.
#![cfg(feature = "redis")]

mod redis_support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hierlock::redis::RedisLockTree;
use hierlock::{Error, Mode};
use redis_support::{eventually, info_replication, signal, wait_for_replica, RedisServer};

/// A hang guard, not a speed check: an acquisition that WAITs at most a
/// few hundred ms (plus the 2 s operation timeout) must answer well within
/// this.
const HANG: Duration = Duration::from_secs(30);

/// The lease of the trees that wait for replicas: far longer than
/// [`GIVE_BACK`], so a hold that disappears within that was given back, not
/// expired.
const LEASE: Duration = Duration::from_secs(60);

/// How long a given-back hold may take to disappear from the primary.
const GIVE_BACK: Duration = Duration::from_secs(5);

/// A primary that starts a full sync as soon as a replica asks (the default
/// diskless-sync delay of 5 s would only slow the tests down).
fn primary() -> RedisServer {
    RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])
}

fn waiting_tree(srv: &RedisServer, ns: &str, replicas: u32, timeout: Duration) -> RedisLockTree {
    RedisLockTree::builder(srv.url())
        .namespace(ns)
        .owner_id("waiter")
        .lease(LEASE)
        .wait_for_replicas(replicas, timeout)
        .build()
        .expect("build a tree that waits for replicas")
}

/// Runs `f` on its own thread; fails the test if it has not answered
/// within [`HANG`].
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|e| panic!("{what}: no answer within {HANG:?} ({e})"))
}

/// The node keys of namespace `ns` on a server, sorted.
fn node_keys(con: &mut redis::Connection, ns: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{ns}}}:n:*"))
        .query(con)
        .unwrap();
    keys.sort();
    keys
}

/// The field names of one node hash.
fn fields(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("HKEYS").arg(key).query(con).unwrap()
}

/// The replica has exactly `nodes` node keys of `ns` (the locked node and
/// its ancestors), each holding `holder`'s hold (`h:<holder id>`).
fn assert_held_on_replica(rc: &mut redis::Connection, ns: &str, holder: &str, nodes: usize) {
    let keys = node_keys(rc, ns);
    assert_eq!(keys.len(), nodes, "replica's node keys: {keys:?}");
    for k in &keys {
        let f = fields(rc, k);
        assert!(
            f.contains(&format!("h:{holder}")),
            "replica's {k} lacks the hold h:{holder}: {f:?}"
        );
    }
}

/// The holds and waiters on `path` and each of its ancestors, as the
/// primary sees them (empty: nothing held).
fn leftovers(tree: &RedisLockTree, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut p = path.to_string();
    loop {
        let info = tree.inspect(p.as_str()).unwrap();
        if !info.holders.is_empty() || !info.waiters.is_empty() {
            found.push(format!("{info:?}"));
        }
        if p == "/" {
            return found;
        }
        p = match p.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => p[..i].into(),
        };
    }
}

fn assert_nothing_held(tree: &RedisLockTree, path: &str) {
    let left = leftovers(tree, path);
    assert!(left.is_empty(), "still held under {path}: {left:?}");
}

/// The hold of a failed acquisition is given back: within [`GIVE_BACK`]
/// (far less than the lease) `inspect` shows nothing on `path` or above,
/// and then `plain` takes X on `path` at once.
fn given_back(plain: &RedisLockTree, path: &str) {
    eventually(
        GIVE_BACK,
        &format!("the hold on {path} is given back"),
        || leftovers(plain, path).is_empty(),
    );
    plain.try_lock(path, Mode::X).unwrap().unlock().unwrap();
    assert_nothing_held(plain, path);
}

/// The Backend message of an acquisition that too few replicas confirmed.
fn backend_message(r: Result<hierlock::redis::RedisGuard, Error>) -> String {
    match r {
        Err(Error::Backend { message }) => message,
        other => panic!("expected Error::Backend, got {other:?}"),
    }
}

#[test]
fn a_confirmed_grant_is_on_the_replica_and_releases() {
    let primary = primary();
    let replica = RedisServer::start_replica_of(&primary);
    wait_for_replica(&primary, &replica);
    let tree = waiting_tree(&primary, "rv", 1, Duration::from_secs(2));
    let t = tree.clone();
    let g = guarded("lock with WAIT 1", move || t.lock("/db/users", Mode::X)).unwrap();
    assert_eq!(g.mode(), Mode::X);
    // WAIT returned 1: the replica has applied the grant, so reading it
    // right now (no polling) must show the hold on the node and the
    // intention holds on its ancestors, each under the holder's id.
    let holder = {
        let info = tree.inspect("/db/users").unwrap();
        assert_eq!(info.holders.len(), 1, "{info:?}");
        assert_eq!(info.holders[0].owner, "waiter");
        info.holders[0].holder_id.clone()
    };
    let mut rc = replica.conn();
    assert_held_on_replica(&mut rc, "rv", &holder, 3);
    assert_eq!(
        node_keys(&mut rc, "rv"),
        node_keys(&mut primary.conn(), "rv")
    );
    let token: u64 = redis::cmd("GET").arg("{rv}:token").query(&mut rc).unwrap();
    assert!(token >= g.token(), "replica token {token} < {}", g.token());
    // Release works (and reaches the replica too).
    g.unlock().unwrap();
    assert_nothing_held(&tree, "/db/users");
    eventually(
        Duration::from_secs(10),
        "the release reaches the replica",
        || node_keys(&mut rc, "rv").is_empty(),
    );
    // And the tree goes on granting.
    let t = tree.clone();
    guarded("second lock with WAIT 1", move || t.lock("/db", Mode::S))
        .unwrap()
        .unlock()
        .unwrap();
}

#[test]
fn too_few_replicas_fail_and_give_the_lock_back() {
    let primary = primary();
    let replica = RedisServer::start_replica_of(&primary);
    wait_for_replica(&primary, &replica);
    let two = waiting_tree(&primary, "rf", 2, Duration::from_millis(300));
    let plain = primary.tree("rf");
    for blocking in [true, false] {
        let t = two.clone();
        let r = guarded("acquire with WAIT 2", move || {
            if blocking {
                t.lock("/a/b", Mode::X)
            } else {
                t.try_lock("/a/b", Mode::X)
            }
        });
        let msg = backend_message(r);
        assert!(
            msg.contains("only 1 of 2 replicas"),
            "blocking={blocking}: {msg}\nprimary: {}\nreplica: {}",
            info_replication(&mut primary.conn()),
            info_replication(&mut replica.conn())
        );
        // Given back (not expired: the lease is 60 s): nothing is left on
        // the primary, and a plain tree takes X on the path.
        given_back(&plain, "/a/b");
        assert!(node_keys(&mut primary.conn(), "rf").is_empty());
    }
}

/// What `wait_for_replicas` documents ("the lock is given back and the
/// request fails"; the error says "it was given back"): by the time the
/// error is returned, the hold is gone, so another tree can take X on the
/// path at once. (It once failed in most rounds: the give-back only
/// spawned the release script and the error returned before it ran.)
#[test]
fn too_few_replicas_gave_the_lock_back_when_the_error_returns() {
    let primary = primary();
    let replica = RedisServer::start_replica_of(&primary);
    wait_for_replica(&primary, &replica);
    let two = waiting_tree(&primary, "rb", 2, Duration::from_millis(1));
    let plain = primary.tree("rb");
    for round in 0..20 {
        let t = two.clone();
        let blocking = round % 2 == 0;
        let r = guarded("acquire with WAIT 2", move || {
            if blocking {
                t.lock("/a/b", Mode::X)
            } else {
                t.try_lock("/a/b", Mode::X)
            }
        });
        // "only 0 of 2" when the 1 ms ran out before the replica's ack.
        let msg = backend_message(r);
        assert!(msg.contains("of 2 replicas confirmed"), "{msg}");
        let left = leftovers(&plain, "/a/b");
        assert!(
            left.is_empty(),
            "round {round}: the error said \"{msg}\", but still held: {left:?}"
        );
        match plain.try_lock("/a/b", Mode::X) {
            Ok(g) => g.unlock().unwrap(),
            Err(e) => panic!("round {round}: X right after \"{msg}\": {e:?}"),
        }
    }
}

#[test]
fn a_killed_replica_fails_grants_until_a_new_one_syncs() {
    let primary = primary();
    let mut replica = RedisServer::start_replica_of(&primary);
    wait_for_replica(&primary, &replica);
    let tree = waiting_tree(&primary, "rk", 1, Duration::from_millis(300));
    let plain = primary.tree("rk");
    let t = tree.clone();
    guarded("lock with the replica up", move || t.lock("/q/r", Mode::X))
        .unwrap()
        .unlock()
        .unwrap();

    signal(replica.pid(), "KILL");
    replica.kill(); // reaps it
    let t = tree.clone();
    let t0 = Instant::now();
    let r = guarded("lock with the replica dead", move || {
        t.lock("/q/r", Mode::X)
    });
    eprintln!(
        "acquire with the replica killed answered after {:?}",
        t0.elapsed()
    );
    let msg = backend_message(r);
    assert!(msg.contains("only 0 of 1 replicas"), "{msg}");
    let t = tree.clone();
    let msg = backend_message(guarded("try_lock with the replica dead", move || {
        t.try_lock("/q", Mode::S)
    }));
    assert!(msg.contains("only 0 of 1 replicas"), "{msg}");
    // Nothing held (given back, not expired): another tree takes X.
    given_back(&plain, "/q/r");
    given_back(&plain, "/");

    let replica = RedisServer::start_replica_of(&primary);
    wait_for_replica(&primary, &replica);
    let t = tree.clone();
    let g = guarded("lock with a new replica", move || t.lock("/q/r", Mode::X)).unwrap();
    let holder = tree.inspect("/q/r").unwrap().holders[0].holder_id.clone();
    assert_held_on_replica(&mut replica.conn(), "rk", &holder, 3);
    g.unlock().unwrap();
    assert_nothing_held(&plain, "/q/r");
}
