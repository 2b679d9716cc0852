//! The Redis backend against a real `redis-server`: semantics between
//! clients, timeouts, fencing tokens, inspection, waiting and fairness.
#![cfg(feature = "redis")]

mod redis_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hierlock::redis::RedisLockTree;
use hierlock::{Error, Mode};
use redis_support::RedisServer;

#[test]
fn lock_unlock_and_guard_accessors() {
    let srv = RedisServer::start();
    let tree = srv.tree("basic");
    let g = tree.lock("/db/users/", Mode::X).unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert_eq!(g.path().to_string(), "/db/users");
    assert!(g.token() > 0);
    assert!(g.is_held().unwrap());
    g.refresh().unwrap();
    g.unlock().unwrap();
    // Nothing left behind.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{basic}:n:*")
        .query(&mut srv.conn())
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    // Root and component paths.
    let r = tree.lock("/", Mode::S).unwrap();
    assert_eq!(r.path().to_string(), "/");
    let c = tree.lock(["db", "x"], Mode::IS).unwrap();
    drop((r, c));
}

#[test]
fn gray_matrix_between_two_clients() {
    let srv = RedisServer::start();
    let a = srv.tree("gray");
    let b = srv.tree("gray");
    for held in Mode::ALL {
        for req in Mode::ALL {
            let g = a.lock("/t", held).unwrap();
            let r = b.try_lock("/t", req);
            assert_eq!(r.is_ok(), held.compatible(req), "{held} then {req}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e, Error::WouldBlock);
            }
            g.unlock().unwrap();
        }
    }
}

#[test]
fn hierarchy_rules() {
    let srv = RedisServer::start();
    let a = srv.tree("hier");
    let b = srv.tree("hier");
    // X on /a excludes everything at and under /a, and S/SIX/X above.
    let x = a.lock("/a", Mode::X).unwrap();
    for (p, m) in [
        ("/a/b", Mode::IS),
        ("/a/b/c", Mode::S),
        ("/a", Mode::IS),
        ("/", Mode::S),
        ("/", Mode::SIX),
    ] {
        assert_eq!(b.try_lock(p, m).unwrap_err(), Error::WouldBlock, "{p} {m}");
    }
    // Siblings and intentions above are fine.
    for (p, m) in [
        ("/b", Mode::X),
        ("/", Mode::IX),
        ("/", Mode::IS),
        ("/c/d", Mode::S),
    ] {
        b.try_lock(p, m).unwrap().unlock().unwrap();
    }
    x.unlock().unwrap();
    // S on /a lets readers in anywhere but excludes writers at/under /a.
    let s = a.lock("/a", Mode::S).unwrap();
    b.try_lock("/a/b", Mode::S).unwrap().unlock().unwrap();
    b.try_lock("/", Mode::S).unwrap().unlock().unwrap();
    assert_eq!(b.try_lock("/a/b", Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(b.try_lock("/a/b", Mode::IX).unwrap_err(), Error::WouldBlock);
    assert_eq!(b.try_lock("/", Mode::X).unwrap_err(), Error::WouldBlock);
    b.try_lock("/b/c", Mode::X).unwrap().unlock().unwrap();
    s.unlock().unwrap();
    // Invalid paths.
    assert!(matches!(
        b.try_lock("/a//b", Mode::S),
        Err(Error::InvalidPath { .. })
    ));
}

#[test]
fn lock_timeout_times_out_and_leaves_nothing() {
    let srv = RedisServer::start();
    let a = srv.tree("tmo");
    let b = srv.tree("tmo");
    let x = a.lock("/db", Mode::X).unwrap();
    let t0 = Instant::now();
    assert_eq!(
        b.lock_timeout("/db/t", Mode::S, Duration::from_millis(200))
            .unwrap_err(),
        Error::Timeout
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let info = a.inspect("/db").unwrap();
    assert!(info.waiters.is_empty(), "{info:?}");
    assert_eq!(info.holders.len(), 1);
    x.unlock().unwrap();
    assert_eq!(
        b.lock_timeout("/db", Mode::X, Duration::ZERO)
            .unwrap()
            .mode(),
        Mode::X
    );
}

#[test]
fn waiter_is_woken_by_release_not_by_polling() {
    let srv = RedisServer::start();
    let a = srv.tree("wake");
    let b = srv.tree("wake");
    let x = a.lock("/r", Mode::X).unwrap();
    let t = std::thread::spawn(move || {
        let t0 = Instant::now();
        let g = b
            .lock_timeout("/r/c", Mode::X, Duration::from_secs(5))
            .unwrap();
        (t0.elapsed(), g.token())
    });
    std::thread::sleep(Duration::from_millis(300));
    let info = a.inspect("/r").unwrap();
    assert_eq!(info.waiters.len(), 1, "{info:?}");
    assert_eq!(info.waiters[0].mode, Mode::IX);
    let released = Instant::now();
    let old = x.token();
    x.unlock().unwrap();
    let (waited, token) = t.join().unwrap();
    assert!(waited >= Duration::from_millis(290));
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "woken late"
    );
    assert!(token > old);
}

#[test]
fn fencing_tokens_grow_across_nodes_and_clients() {
    let srv = RedisServer::start();
    let a = srv.tree("fence");
    let b = srv.tree("fence");
    let mut last = 0;
    for i in 0..50 {
        let t = if i % 2 == 0 { &a } else { &b };
        let g = t
            .lock(format!("/n{}", i % 7).as_str(), Mode::ALL[i % 5])
            .unwrap();
        assert!(g.token() > last, "{} <= {last}", g.token());
        last = g.token();
        g.unlock().unwrap();
    }
    // A lost counter is reseeded above every earlier token.
    redis::cmd("DEL")
        .arg("{fence}:token")
        .query::<()>(&mut srv.conn())
        .unwrap();
    let g = a.lock("/n0", Mode::X).unwrap();
    assert!(g.token() > last);
    // Renewal keeps the token.
    let t = g.token();
    g.refresh().unwrap();
    assert_eq!(g.token(), t);
}

#[test]
fn inspect_shows_holders_and_waiters_and_force_release_frees() {
    let srv = RedisServer::start();
    let a = RedisLockTree::builder(srv.url())
        .namespace("insp")
        .owner_id("alice")
        .build()
        .unwrap();
    let b = RedisLockTree::builder(srv.url())
        .namespace("insp")
        .owner_id("bob")
        .build()
        .unwrap();
    let g1 = a.lock("/d", Mode::S).unwrap();
    let g2 = a.lock("/d/e", Mode::S).unwrap();
    let info = b.inspect("/d").unwrap();
    assert_eq!(info.path.to_string(), "/d");
    assert_eq!(info.holders.len(), 2);
    assert_eq!(info.holders[0].mode, Mode::S);
    assert_eq!(info.holders[0].token, g1.token());
    assert_eq!(info.holders[1].mode, Mode::IS);
    assert_eq!(info.holders[0].owner, "alice");
    assert!(info.holders[0].lease_left > Duration::from_secs(8));
    let bb = b.clone();
    let w = std::thread::spawn(move || bb.lock_timeout("/d", Mode::X, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    let info = a.inspect("/d").unwrap();
    assert_eq!(info.waiters.len(), 1);
    assert_eq!(info.waiters[0].owner, "bob");
    assert_eq!(info.waiters[0].mode, Mode::X);
    // The operator frees the node: the waiter gets it, the old holders learn.
    assert_eq!(a.force_release("/d").unwrap(), 2);
    let x = w.join().unwrap().unwrap();
    assert!(!g1.is_held().unwrap());
    assert_eq!(g1.unlock().unwrap_err(), Error::LeaseLost);
    assert_eq!(g2.refresh().unwrap_err(), Error::LeaseLost);
    assert_eq!(g2.unlock().unwrap_err(), Error::LeaseLost);
    x.unlock().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{insp}:n:*")
        .query(&mut srv.conn())
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn no_barging_a_waiting_writer_is_not_starved_by_readers() {
    let srv = RedisServer::start();
    let readers = srv.tree("fair");
    let writer = srv.tree("fair");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    // A stream of overlapping readers from another client.
    let mut hs = Vec::new();
    for _ in 0..3 {
        let (t, stop, reads) = (readers.clone(), stop.clone(), reads.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(g) = t.lock_timeout("/tbl", Mode::S, Duration::from_secs(5)) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                    drop(g);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert!(reads.load(Ordering::Relaxed) > 0);
    let t0 = Instant::now();
    let g = writer
        .lock_timeout("/tbl", Mode::X, Duration::from_secs(3))
        .unwrap();
    let waited = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        waited < Duration::from_millis(500),
        "writer waited {waited:?}"
    );
    // While the writer holds, a late reader must wait.
    assert_eq!(
        readers.try_lock("/tbl", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    g.unlock().unwrap();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn try_lock_queues_behind_an_earlier_waiter() {
    let srv = RedisServer::start();
    let a = srv.tree("queue");
    let b = srv.tree("queue");
    let c = srv.tree("queue");
    let s = a.lock("/q", Mode::S).unwrap();
    let bb = b.clone();
    let w = std::thread::spawn(move || {
        bb.lock_timeout("/q", Mode::X, Duration::from_secs(5))
            .map(|g| g.token())
    });
    std::thread::sleep(Duration::from_millis(200));
    // S is compatible with the holder but not with the waiting X: no barging.
    assert_eq!(c.try_lock("/q", Mode::S).unwrap_err(), Error::WouldBlock);
    assert_eq!(c.try_lock("/q/z", Mode::IS).unwrap_err(), Error::WouldBlock);
    // Elsewhere is fine.
    c.try_lock("/other", Mode::X).unwrap().unlock().unwrap();
    s.unlock().unwrap();
    assert!(w.join().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_async_and_cancellation_leave_nothing_behind() {
    let srv = RedisServer::start();
    let a = srv.tree("async");
    let b = srv.tree("async");
    let g = a.lock_async("/x", Mode::X).await.unwrap();
    // A cancelled wait.
    let r = tokio::time::timeout(Duration::from_millis(200), b.lock_async("/x/y", Mode::S)).await;
    assert!(r.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let aa = a.clone();
    let info = tokio::task::spawn_blocking(move || aa.inspect("/x").unwrap())
        .await
        .unwrap();
    assert!(info.waiters.is_empty(), "{info:?}");
    // A waiter woken by an async drop.
    let w = tokio::spawn(b.lock_async("/x", Mode::S));
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(g);
    let s = tokio::time::timeout(Duration::from_secs(2), w)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s.mode(), Mode::S);
}

#[test]
fn unreachable_redis_is_a_backend_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let r = RedisLockTree::builder(format!("redis://127.0.0.1:{port}/0"))
        .op_timeout(Duration::from_millis(500))
        .build();
    assert!(matches!(r, Err(Error::Backend { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A server that goes away under a built tree.
    let mut srv = RedisServer::start();
    let tree = srv.tree("gone");
    srv.kill();
    let t0 = Instant::now();
    let r = tree.lock_timeout("/a", Mode::X, Duration::from_millis(300));
    assert!(matches!(r, Err(Error::Backend { .. })), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    assert!(matches!(
        tree.try_lock("/a", Mode::X),
        Err(Error::Backend { .. })
    ));
    // A server that stops answering (SIGSTOP): still bounded by the timeout.
    let srv = RedisServer::start();
    let tree = srv.tree("paused");
    redis_support::signal(srv.pid(), "STOP");
    let t0 = Instant::now();
    let r = tree.lock_timeout("/a", Mode::X, Duration::from_millis(300));
    redis_support::signal(srv.pid(), "CONT");
    assert!(matches!(r, Err(Error::Backend { .. })), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
}

fn flush(srv: &RedisServer, what: &str) {
    redis::cmd(what)
        .arg("FLUSH")
        .query::<()>(&mut srv.conn())
        .unwrap();
}

/// The names of the function libraries the server has.
fn libraries(srv: &RedisServer) -> Vec<String> {
    let v: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query(&mut srv.conn())
        .unwrap();
    let mut names = Vec::new();
    if let redis::Value::Array(libs) = v {
        for lib in libs {
            let redis::Value::Array(kv) = lib else {
                continue;
            };
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    let k: String = redis::from_redis_value(k).unwrap();
                    if k == "library_name" {
                        names.push(redis::from_redis_value(v).unwrap());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn script_flush_is_handled_transparently() {
    let srv = RedisServer::start();
    let tree = srv.tree("flush");
    tree.lock("/a", Mode::X).unwrap().unlock().unwrap();
    flush(&srv, "SCRIPT");
    let g = tree.lock("/a", Mode::X).unwrap();
    flush(&srv, "SCRIPT");
    g.refresh().unwrap();
    flush(&srv, "SCRIPT");
    g.unlock().unwrap();
}

#[test]
fn a_server_that_forgot_the_function_library_gets_it_again() {
    let srv = RedisServer::start();
    let tree = srv.tree("fflush");
    // Loaded on first use: one library of this crate.
    assert!(libraries(&srv).is_empty());
    tree.lock("/a", Mode::X).unwrap().unlock().unwrap();
    let libs = libraries(&srv);
    assert_eq!(libs.len(), 1, "{libs:?}");
    assert!(libs[0].starts_with("hierlock_"), "{libs:?}");
    // Forgotten before every kind of call: acquire, renew, inspect,
    // force_release, release.
    flush(&srv, "FUNCTION");
    let g = tree.lock("/a", Mode::X).unwrap();
    flush(&srv, "FUNCTION");
    g.refresh().unwrap();
    flush(&srv, "FUNCTION");
    assert_eq!(tree.inspect("/a").unwrap().holders.len(), 1);
    flush(&srv, "FUNCTION");
    g.unlock().unwrap();
    let g = tree.lock("/b", Mode::X).unwrap();
    flush(&srv, "FUNCTION");
    assert_eq!(tree.force_release("/b").unwrap(), 1);
    assert!(matches!(g.unlock(), Err(Error::LeaseLost)));
    // Deleted by name while a waiter waits: its retry after the release
    // loads the library again and gets the lock.
    let g = tree.lock("/c", Mode::X).unwrap();
    let t2 = srv.tree("fflush");
    let waiter = std::thread::spawn(move || {
        t2.lock_timeout("/c", Mode::S, Duration::from_secs(10))
            .map(|g| g.unlock())
    });
    std::thread::sleep(Duration::from_millis(200));
    redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg(&libraries(&srv)[0])
        .query::<()>(&mut srv.conn())
        .unwrap();
    assert!(libraries(&srv).is_empty());
    g.unlock().unwrap();
    waiter.join().unwrap().unwrap().unwrap();
    assert_eq!(libraries(&srv).len(), 1);
    // Script and function caches flushed together.
    flush(&srv, "SCRIPT");
    flush(&srv, "FUNCTION");
    assert!(tree.try_lock("/a", Mode::S).unwrap().unlock().is_ok());
}

#[test]
fn tampered_keys_give_a_clear_error() {
    let srv = RedisServer::start();
    let tree = srv.tree("tamper");
    let mut con = srv.conn();
    // Wrong type.
    redis::cmd("SET")
        .arg("{tamper}:n:a")
        .arg("x")
        .query::<()>(&mut con)
        .unwrap();
    let e = tree.try_lock("/a", Mode::S).unwrap_err();
    assert!(
        matches!(&e, Error::Backend { message } if message.contains("WRONGTYPE")),
        "{e:?}"
    );
    // A garbled entry (in a node whose state says an entry has expired, so
    // the next script reads every entry). The state: format byte 2, ten
    // u32 counts (one S holder), the deadline bound 1 ms and the expiry 0
    // as f64, little-endian.
    let mut state = vec![2u8];
    for c in [0u32, 0, 1, 0, 0, 0, 0, 0, 0, 0] {
        state.extend_from_slice(&c.to_le_bytes());
    }
    state.extend_from_slice(&1f64.to_le_bytes());
    state.extend_from_slice(&0f64.to_le_bytes());
    redis::cmd("HSET")
        .arg("{tamper}:n:b")
        .arg("s")
        .arg(&state)
        .arg("h:zz")
        .arg("garbage")
        .query::<()>(&mut con)
        .unwrap();
    let e = tree.try_lock("/b", Mode::S).unwrap_err();
    assert!(
        matches!(&e, Error::Backend { message } if message.contains("corrupt lock state")),
        "{e:?}"
    );
    // A garbled state field (the node's counters).
    redis::cmd("HSET")
        .arg("{tamper}:n:c")
        .arg("s")
        .arg("many")
        .query::<()>(&mut con)
        .unwrap();
    let e = tree.try_lock("/c", Mode::S).unwrap_err();
    assert!(
        matches!(&e, Error::Backend { message } if message.contains("corrupt lock state")),
        "{e:?}"
    );
    // A node written in the text encoding of hierlock versions before the
    // binary one: refused with an error that says so.
    redis::cmd("HSET")
        .arg("{tamper}:n:e")
        .arg("s")
        .arg("0,0,1,0,0,0,0,0,0,0,1,0")
        .arg("h:zz")
        .arg("2,17,99999999999999,someone")
        .query::<()>(&mut con)
        .unwrap();
    let e = tree.try_lock("/e", Mode::X).unwrap_err();
    assert!(
        matches!(&e, Error::Backend { message } if message.contains("older hierlock version")),
        "{e:?}"
    );
    // A garbled token counter.
    redis::cmd("SET")
        .arg("{tamper}:token")
        .arg("abc")
        .query::<()>(&mut con)
        .unwrap();
    let e = tree.try_lock("/d", Mode::S).unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e:?}");
    assert!(tree.inspect("/b").is_err());
    // Untouched nodes of another namespace still work.
    srv.tree("clean")
        .lock("/a", Mode::X)
        .unwrap()
        .unlock()
        .unwrap();
}

#[test]
fn invalid_namespace_and_url() {
    assert!(matches!(
        RedisLockTree::builder("redis://127.0.0.1:1/0")
            .namespace("a{b")
            .build(),
        Err(Error::Backend { .. })
    ));
    assert!(matches!(
        RedisLockTree::builder("not a url").build(),
        Err(Error::Backend { .. })
    ));
}

#[test]
fn wait_for_replicas_confirms_or_gives_the_lock_back() {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut con = primary.conn();
    let t0 = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut con)
            .unwrap();
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "replica did not sync: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let one = RedisLockTree::builder(primary.url())
        .namespace("repl")
        .wait_for_replicas(1, Duration::from_secs(2))
        .build()
        .unwrap();
    one.lock("/a", Mode::X).unwrap().unlock().unwrap();
    let two = RedisLockTree::builder(primary.url())
        .namespace("repl")
        .wait_for_replicas(2, Duration::from_millis(200))
        .build()
        .unwrap();
    let e = two.lock("/a", Mode::X).unwrap_err();
    assert!(
        matches!(&e, Error::Backend { message } if message.contains("replicas")),
        "{e:?}"
    );
    // The unconfirmed grant was given back.
    std::thread::sleep(Duration::from_millis(100));
    one.try_lock("/a", Mode::X).unwrap().unlock().unwrap();
}
