//! `hierlock-redis-helper`: a separate OS process for the Redis tests.
//!
//! Usage: `hierlock-redis-helper <url> <namespace> <lease ms>`, then one
//! command per line on stdin, one answer line on stdout each:
//!
//! - `lock <name> <path> <mode> <timeout ms>` / `try <name> <path> <mode>`
//!   → `granted <token>` or `err <error>`
//! - `unlock <name>` → `ok` or `err <error>`;  `held <name>` → `true`/`false`/`err ..`
//! - `write <name> <resource key>` → `accepted`/`refused` (a fenced write
//!   with the guard's token)
//! - `stress <ms> <threads> <seed>` → `done <ops> <violations> <refused> <errors>`
//! - `exit`
//!
//! It prints `ready` once connected.

mod lua;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hierlock::redis::{RedisGuard, RedisLockTree};
use hierlock::{Error, Mode};

fn fenced_write(con: &mut redis::Connection, key: &str, token: u64) -> bool {
    redis::Script::new(lua::FENCED_WRITE)
        .key(key)
        .arg(token)
        .invoke::<i64>(con)
        .expect("fenced write")
        == 1
}

fn show(e: &Error) -> String {
    match e {
        Error::WouldBlock => "WouldBlock".into(),
        Error::Timeout => "Timeout".into(),
        Error::LeaseLost => "LeaseLost".into(),
        Error::Backend { message } => format!("Backend {message}"),
        other => format!("{other:?}"),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Threads locking random nodes of a small tree; each grant enters a global
/// oracle in Redis (which counts incompatible pairs held at once) and, for
/// X, writes a fenced resource per node (which must accept: tokens of
/// serialized writers only grow).
fn stress(tree: &RedisLockTree, url: &str, ms: u64, threads: usize, seed: u64) -> String {
    const PATHS: [&str; 7] = ["", "a", "a/x", "a/y", "b", "b/x", "a/x/1"];
    let stop = Instant::now() + Duration::from_millis(ms);
    let (ops, bad, refused, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let ns = tree.namespace().to_owned();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (ops, bad, refused, errors) = (&ops, &bad, &refused, &errors);
            let ns = &ns;
            s.spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let oracle = redis::Script::new(lua::ORACLE);
                let mut rng =
                    Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((t as u64 + 1) * 7919)) | 1);
                let mut seq = 0u64;
                while Instant::now() < stop {
                    let r = rng.next();
                    // The root rarely, and rarely anything but intentions there.
                    let path = if r % 23 == 0 {
                        ""
                    } else {
                        PATHS[1 + (r as usize / 7) % 6]
                    };
                    let mode = Mode::ALL[(r >> 20) as usize % 5];
                    let g = match tree.lock_timeout(path, mode, Duration::from_secs(5)) {
                        Ok(g) => g,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    seq += 1;
                    let id = format!("{}:{t}:{seq}", std::process::id());
                    let n: i64 = oracle
                        .key(format!("{ns}:oracle"))
                        .key(format!("{ns}:violations"))
                        .arg("enter")
                        .arg(&id)
                        .arg(mode as u8)
                        .arg(path)
                        .invoke(&mut con)
                        .unwrap();
                    bad.fetch_add(n as u64, Ordering::Relaxed);
                    if mode == Mode::X
                        && !fenced_write(&mut con, &format!("{ns}:fence:{path}"), g.token())
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    if r % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let _: i64 = oracle
                        .key(format!("{ns}:oracle"))
                        .key(format!("{ns}:violations"))
                        .arg("leave")
                        .arg(&id)
                        .invoke(&mut con)
                        .unwrap();
                    if g.unlock().is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    format!(
        "done {} {} {} {}",
        ops.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: hierlock-redis-helper <url> <namespace> <lease ms>");
        std::process::exit(2);
    }
    let (url, ns) = (&args[1], &args[2]);
    let lease = Duration::from_millis(args[3].parse().expect("lease ms"));
    let tree = RedisLockTree::builder(url.as_str())
        .namespace(ns.as_str())
        .lease(lease)
        .owner_id(format!("helper-{}", std::process::id()))
        .build()
        .expect("connect");
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut guards: HashMap<String, RedisGuard> = HashMap::new();
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        writeln!(o, "{s}").unwrap();
        o.flush().unwrap();
    };
    say("ready".into());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["lock", name, path, mode, ms] => {
                let mode: Mode = mode.parse().unwrap();
                let path = if *path == "/" { "" } else { path };
                match tree.lock_timeout(path, mode, Duration::from_millis(ms.parse().unwrap())) {
                    Ok(g) => {
                        let t = g.token();
                        guards.insert(name.to_string(), g);
                        format!("granted {t}")
                    }
                    Err(e) => format!("err {}", show(&e)),
                }
            }
            ["try", name, path, mode] => {
                let mode: Mode = mode.parse().unwrap();
                let path = if *path == "/" { "" } else { path };
                match tree.try_lock(path, mode) {
                    Ok(g) => {
                        let t = g.token();
                        guards.insert(name.to_string(), g);
                        format!("granted {t}")
                    }
                    Err(e) => format!("err {}", show(&e)),
                }
            }
            ["unlock", name] => match guards.remove(*name).map(|g| g.unlock()) {
                Some(Ok(())) => "ok".into(),
                Some(Err(e)) => format!("err {}", show(&e)),
                None => "err no such guard".into(),
            },
            ["held", name] => match guards.get(*name).map(|g| g.is_held()) {
                Some(Ok(b)) => b.to_string(),
                Some(Err(e)) => format!("err {}", show(&e)),
                None => "err no such guard".into(),
            },
            ["write", name, key] => match guards.get(*name) {
                Some(g) => {
                    if fenced_write(&mut con, key, g.token()) {
                        "accepted".into()
                    } else {
                        "refused".into()
                    }
                }
                None => "err no such guard".into(),
            },
            ["stress", ms, threads, seed] => stress(
                &tree,
                url,
                ms.parse().unwrap(),
                threads.parse().unwrap(),
                seed.parse().unwrap(),
            ),
            ["exit"] => break,
            _ => format!("err unknown command {line:?}"),
        };
        say(answer);
    }
}
