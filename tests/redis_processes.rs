//! The Redis backend across OS processes (the `hierlock-redis-helper`
//! binary) and against a server that dies: crashes, pauses, restarts, and a
//! multi-process stress run with an oracle.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::{Duration, Instant};

use hierlock::{Error, Mode};
use redis_support::{signal, Helper, RedisServer};

fn token(answer: &str) -> u64 {
    answer
        .strip_prefix("granted ")
        .unwrap_or_else(|| panic!("expected a grant, got {answer:?}"))
        .parse()
        .unwrap()
}

#[test]
fn gray_matrix_between_two_processes() {
    let srv = RedisServer::start();
    let mut h = Helper::spawn(&srv.url(), "pgray", Duration::from_secs(10));
    let me = srv.tree("pgray");
    for held in Mode::ALL {
        for req in Mode::ALL {
            token(&h.cmd(&format!("lock g /t {held} 1000")));
            // Here a child of the node, to cover the hierarchy across processes too.
            let r = me.try_lock("/t", req);
            assert_eq!(r.is_ok(), held.compatible(req), "{held} then {req}: {r:?}");
            drop(r);
            let under = me.try_lock("/t/u", req);
            assert_eq!(
                under.is_ok(),
                held.compatible(req.intention()),
                "{held} on /t then {req} on /t/u: {under:?}"
            );
            drop(under);
            assert_eq!(h.cmd("unlock g"), "ok");
            // And the other way round.
            let g = me.lock("/t", held).unwrap();
            let a = h.cmd(&format!("try o /t {req}"));
            assert_eq!(
                a.starts_with("granted"),
                held.compatible(req),
                "{held} (here) then {req}: {a}"
            );
            if a.starts_with("granted") {
                assert_eq!(h.cmd("unlock o"), "ok");
            } else {
                assert_eq!(a, "err WouldBlock");
            }
            g.unlock().unwrap();
        }
    }
}

#[test]
fn sigkill_of_a_holder_frees_the_lock_within_lease_plus_1s() {
    let srv = RedisServer::start();
    let lease = Duration::from_millis(300);
    let mut h = Helper::spawn(&srv.url(), "kill", lease);
    let old = token(&h.cmd("lock g /a/b X 1000"));
    let me = srv.tree("kill");
    assert_eq!(me.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    // Held past several leases while the holder lives (renewal works).
    std::thread::sleep(lease * 3);
    assert_eq!(me.try_lock("/a/b", Mode::S).unwrap_err(), Error::WouldBlock);
    signal(h.pid(), "KILL");
    let killed = Instant::now();
    let g = me
        .lock_timeout("/a/b", Mode::X, lease + Duration::from_secs(1))
        .unwrap();
    assert!(killed.elapsed() <= lease + Duration::from_secs(1));
    assert!(g.token() > old);
    // A reader that died is not kept alive by other readers (per-hold leases).
    let mut r = Helper::spawn(&srv.url(), "kill", lease);
    g.unlock().unwrap();
    token(&r.cmd("lock s /t S 1000"));
    let other = me.lock("/t", Mode::S).unwrap();
    signal(r.pid(), "KILL");
    std::thread::sleep(lease + Duration::from_millis(300));
    // The live reader still blocks a writer...
    let me2 = srv.tree("kill");
    assert_eq!(
        me2.try_lock("/t", Mode::SIX).unwrap_err(),
        Error::WouldBlock
    );
    // ...but once it leaves, the dead reader's entry (not renewed by the
    // live reader's renewals) does not.
    other.unlock().unwrap();
    let x = me2.try_lock("/t", Mode::X).unwrap();
    x.unlock().unwrap();
}

#[test]
fn sigstop_past_the_lease_loses_the_lock_and_late_write_is_refused() {
    let srv = RedisServer::start();
    let lease = Duration::from_millis(300);
    let mut h = Helper::spawn(&srv.url(), "stop", lease);
    let old = token(&h.cmd("lock g /res X 1000"));
    assert_eq!(h.cmd("write g {stop}:fence"), "accepted");
    signal(h.pid(), "STOP");
    let paused = Instant::now();
    let me = srv.tree("stop");
    let g = me
        .lock_timeout("/res", Mode::X, lease + Duration::from_secs(1))
        .unwrap();
    assert!(paused.elapsed() <= lease + Duration::from_secs(1));
    assert!(g.token() > old);
    // The new holder writes with its token...
    let mut con = srv.conn();
    let w: i64 = redis::Script::new(redis_support::lua::FENCED_WRITE)
        .key("{stop}:fence")
        .arg(g.token())
        .invoke(&mut con)
        .unwrap();
    assert_eq!(w, 1);
    // ...and the paused one wakes up, writes late with its old token: refused.
    signal(h.pid(), "CONT");
    assert_eq!(h.cmd("write g {stop}:fence"), "refused");
    assert_eq!(h.cmd("held g"), "false");
    assert_eq!(h.cmd("unlock g"), "err LeaseLost");
    assert!(g.is_held().unwrap());
    g.unlock().unwrap();
}

#[test]
fn redis_restart_mid_hold() {
    let mut srv = RedisServer::start();
    let lease = Duration::from_millis(500);
    let tree = srv.tree_lease("restart", lease);
    let g = tree.lock("/a", Mode::X).unwrap();
    let old = g.token();
    srv.restart();
    // The holder learns at its next renewal (within the lease).
    let t0 = Instant::now();
    while g.is_held().unwrap_or(true) {
        assert!(
            t0.elapsed() < lease * 3,
            "still claims to hold after a restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(g.unlock().unwrap_err(), Error::LeaseLost);
    // New locks work at once, with tokens above the old ones (reseeded counter).
    let deadline = Instant::now() + Duration::from_secs(3);
    let g2 = loop {
        match tree.lock_timeout("/a", Mode::X, Duration::from_secs(1)) {
            Ok(g) => break g,
            Err(Error::Backend { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(g2.token() > old);
    // Waiting works on the new server (the subscriber reconnected).
    let other = srv.tree("restart");
    let o = other.clone();
    let w = std::thread::spawn(move || {
        o.lock_timeout("/a/b", Mode::S, Duration::from_secs(3))
            .map(|g| g.token())
    });
    std::thread::sleep(Duration::from_millis(100));
    g2.unlock().unwrap();
    assert!(w.join().unwrap().is_ok());
    // A tree whose subscriber was connected before the restart still wakes.
    let x = other.lock("/b", Mode::X).unwrap();
    srv.restart();
    let t = tree.clone();
    let w = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match t.lock_timeout("/b", Mode::X, Duration::from_secs(2)) {
                Ok(g) => return g.token(),
                Err(Error::Backend { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    });
    assert!(w.join().unwrap() > 0);
    assert_eq!(x.unlock().unwrap_err(), Error::LeaseLost);
}

#[test]
fn stress_four_processes_two_threads_with_oracle() {
    let srv = RedisServer::start();
    let lease = Duration::from_secs(5);
    let mut helpers: Vec<Helper> = (0..4)
        .map(|_| Helper::spawn(&srv.url(), "stress", lease))
        .collect();
    for (i, h) in helpers.iter_mut().enumerate() {
        h.send_only(&format!("stress 4000 2 {}", i + 1));
    }
    let mut total = 0;
    for h in &mut helpers {
        let a = h.read(Duration::from_secs(60));
        let f: Vec<u64> = a
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("{a}"))
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let [ops, violations, refused, errors] = f[..] else {
            panic!("{a}")
        };
        assert_eq!(violations, 0, "incompatible holds at once: {a}");
        assert_eq!(refused, 0, "a fenced write was refused: {a}");
        assert_eq!(errors, 0, "{a}");
        assert!(ops > 0, "{a}");
        total += ops;
    }
    let v: Option<i64> = redis::cmd("GET")
        .arg("stress:violations")
        .query(&mut srv.conn())
        .unwrap();
    assert_eq!(v, None);
    eprintln!("stress: {total} lock/unlock cycles in 4 s over 4 processes x 2 threads");
    // Nothing is left behind.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{stress}:n:*")
        .query(&mut srv.conn())
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}
