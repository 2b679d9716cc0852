//! Measurements of the Redis backend against a local `redis-server`
//! (ignored by default; run with
//! `cargo test --release --features redis --test redis_measure -- --ignored --nocapture`).
//!
//! Prints: Redis commands per uncontended acquire + release at depths 1, 4
//! and 8 (from `INFO commandstats`), next to the 2(d+1) commands of a
//! one-key-per-ancestor design; server time per acquire and per release
//! (`usec_per_call` of FCALL); acquisitions per second with 1 and 16
//! concurrent clients; and the time from a release to the waiter's grant.
#![cfg(feature = "redis")]

mod redis_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hierlock::Mode;
use redis_support::RedisServer;

/// `INFO commandstats` as command -> (calls, usec).
fn commandstats(con: &mut redis::Connection) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, fields) = rest.split_once(':').unwrap();
        let get = |k: &str| -> u64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (get("calls"), get("usec")));
    }
    out
}

fn reset(con: &mut redis::Connection) {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(con)
        .unwrap();
}

/// (client commands, commands run inside scripts, FCALL usec): Redis 7
/// also counts the commands a script runs; those are the data commands
/// below, every other command (FCALL, SUBSCRIBE, ...) came from a client.
fn calls(s: &HashMap<String, (u64, u64)>) -> (u64, u64, u64) {
    const INSIDE: &[&str] = &[
        "time",
        "hget",
        "hmget",
        "hset",
        "hdel",
        "hgetall",
        "del",
        "incr",
        "set",
        "pexpire",
        "pexpireat",
        "pttl",
        "publish",
    ];
    let (_, us) = s.get("fcall").copied().unwrap_or((0, 0));
    let mut client = 0;
    let mut inner = 0;
    for (k, (c, _)) in s {
        if INSIDE.contains(&k.as_str()) {
            inner += c;
        } else if !matches!(k.as_str(), "info" | "config|resetstat" | "config") {
            client += c;
        }
    }
    (client, inner, us)
}

fn path(depth: usize, i: usize) -> String {
    let mut p = String::new();
    for level in 0..depth - 1 {
        p.push_str(&format!("/l{level}"));
    }
    p.push_str(&format!("/n{i}"));
    p
}

#[test]
#[ignore = "measurement; run explicitly"]
fn measure() {
    let srv = RedisServer::start();
    let mut con = srv.conn();
    let tree = srv.tree("m");
    const N: usize = 500;
    println!("| depth | client commands / acquire+release | one-key-per-ancestor design | commands inside the scripts | acquire usec_per_call | release usec_per_call |");
    println!("|---|---|---|---|---|---|");
    let mut breakdown = Vec::new();
    for depth in [1, 4, 8] {
        // Warm up with one round of the same work (the function library
        // load, the Lua VM's and the allocator's first touch of as many
        // keys), so the figures are steady-state ones: on a fresh server
        // the first round's depth-1 acquires cost 40-80% more.
        let warm: Vec<_> = (0..N)
            .map(|i| tree.lock(path(depth, i).as_str(), Mode::X).unwrap())
            .collect();
        for g in warm {
            g.unlock().unwrap();
        }
        reset(&mut con);
        let guards: Vec<_> = (0..N)
            .map(|i| tree.lock(path(depth, i).as_str(), Mode::X).unwrap())
            .collect();
        let acq_stats = commandstats(&mut con);
        let acq = calls(&acq_stats);
        reset(&mut con);
        for g in guards {
            g.unlock().unwrap();
        }
        let rel_stats = commandstats(&mut con);
        let rel = calls(&rel_stats);
        breakdown.push((depth, acq_stats, rel_stats));
        println!(
            "| {depth} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
            (acq.0 + rel.0) as f64 / N as f64,
            2 * (depth + 1),
            (acq.1 + rel.1) as f64 / N as f64,
            acq.2 as f64 / N as f64,
            rel.2 as f64 / N as f64,
        );
    }

    // What the scripts run, per acquire and per release.
    for (depth, acq, rel) in &breakdown {
        for (what, st) in [("acquire", acq), ("release", rel)] {
            let mut cmds: Vec<_> = st
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "info" | "config|resetstat" | "config"))
                .map(|(k, (c, _))| format!("{k} {:.1}", *c as f64 / N as f64))
                .collect();
            cmds.sort();
            println!(
                "depth {depth} {what}: commands per call: {}",
                cmds.join(", ")
            );
        }
    }

    // Baseline in the same run: PING round trips of one plain connection.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(1) {
        redis::cmd("PING").query::<String>(&mut con).unwrap();
        pings += 1;
    }
    println!(
        "baseline: {:.0} PING/s on one connection",
        pings as f64 / start.elapsed().as_secs_f64()
    );

    // Throughput: lock + unlock loops on disjoint nodes (depth 3).
    for clients in [1usize, 16] {
        let trees: Vec<_> = (0..clients).map(|_| srv.tree("t")).collect();
        let dur = Duration::from_secs(2);
        let start = Instant::now();
        let total: usize = std::thread::scope(|s| {
            let hs: Vec<_> = trees
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    s.spawn(move || {
                        let p = format!("/db/c{i}/row");
                        let mut n = 0;
                        while start.elapsed() < dur {
                            t.lock(p.as_str(), Mode::X).unwrap().unlock().unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        println!(
            "acquisitions/s with {clients} clients: {:.0}",
            total as f64 / start.elapsed().as_secs_f64()
        );
    }

    // Hand-off latency: release -> waiter granted (same process, two clients).
    let a = srv.tree("h");
    let b = srv.tree("h");
    let mut lat = Vec::new();
    for _ in 0..50 {
        let g = a.lock("/h", Mode::X).unwrap();
        let bb = b.clone();
        let w = std::thread::spawn(move || {
            let g = bb.lock("/h", Mode::X).unwrap();
            let at = Instant::now();
            g.unlock().unwrap();
            at
        });
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        g.unlock().unwrap();
        let at = w.join().unwrap();
        lat.push(at.saturating_duration_since(t0));
    }
    lat.sort();
    println!(
        "release -> waiter granted: median {:?}, p90 {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10]
    );
}
