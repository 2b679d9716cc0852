//! Shared harness of the Redis tests: a real `redis-server` on a free
//! loopback port (no persistence), killed on drop; and the helper process.
#![allow(dead_code)]

pub mod lua;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hierlock::redis::RedisLockTree;

/// The `redis-server` binary: `$REDIS_SERVER`, else `redis-server` on PATH.
fn server_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A `redis-server` child process on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server on a free port, retrying with another port (up to
    /// three times) if the port was taken between choosing and binding it.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut errors = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("hierlock-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut s = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => errors.push(e),
            }
        }
        panic!("cannot start redis-server: {}", errors.join("; "));
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} (install redis-server): {e}", server_bin())
        });
        let pid = child.id();
        self.child = Some(child);
        let up = wait_until_served(self.port, pid, Duration::from_secs(10));
        if up.is_err() {
            self.kill();
        }
        up
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A plain connection for checks and tampering.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis")
    }

    pub fn tree(&self, ns: &str) -> RedisLockTree {
        self.tree_lease(ns, Duration::from_secs(10))
    }

    pub fn tree_lease(&self, ns: &str, lease: Duration) -> RedisLockTree {
        RedisLockTree::builder(self.url())
            .namespace(ns)
            .lease(lease)
            .build()
            .expect("build a tree")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts a new one on the same port: every key is
    /// forgotten (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("cannot restart redis-server on its port: {e}");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The helper binary, driven by line commands on stdin (see its source).
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    pub fn spawn(url: &str, ns: &str, lease: Duration) -> Helper {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hierlock-redis-helper"))
            .args([url, ns, &lease.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the helper");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut h = Helper {
            child,
            stdin,
            lines,
        };
        assert_eq!(h.read(Duration::from_secs(10)), "ready");
        h
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_only(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to helper");
        self.stdin.flush().unwrap();
    }

    pub fn read(&mut self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no answer from the helper within {timeout:?}: {e}"))
    }

    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send_only(cmd);
        self.read(Duration::from_secs(60))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `redis-cli` binary: `$REDIS_CLI`, else `redis-cli` on PATH.
fn cli_bin() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// Waits until the server answering on `port` is process `pid`: another
/// process that took the port between our choosing and binding it answers
/// too, while ours exits.
fn wait_until_served(port: u16, pid: u32, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let info = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|cl| cl.get_connection())
            .and_then(|mut con| redis::cmd("INFO").arg("server").query::<String>(&mut con));
        if let Ok(info) = info {
            let served_by = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            return match served_by {
                Some(p) if p == pid => Ok(()),
                other => Err(format!(
                    "port {port} is served by process {other:?}, not by our redis-server {pid}"
                )),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("redis-server {pid} did not come up on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = l.local_addr().unwrap().port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A Redis Cluster of three primaries (no replicas) on 127.0.0.1, started
/// with `--cluster-enabled yes` and joined by `redis-cli --cluster create`;
/// every node is killed on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the cluster, retrying with fresh ports (up to three times)
    /// when an attempt fails: a port taken between choosing and binding it
    /// (another test's server then answers our PING), a node that died, or
    /// a `redis-cli --cluster create` that does not finish. Each attempt is
    /// bounded in time, so a failure never hangs the test run.
    pub fn start() -> RedisCluster {
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(c) => return c,
                Err(e) => errors.push(e),
            }
        }
        panic!("cannot start a Redis cluster: {}", errors.join("; "));
    }

    fn try_start() -> Result<RedisCluster, String> {
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "hierlock-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Dropped on every early return: kills what was started.
        let mut c = RedisCluster {
            children: Vec::new(),
            ports: ports.clone(),
            dir,
        };
        for &p in &ports {
            let child = Command::new(server_bin())
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(c.dir.join(format!("nodes-{p}.conf")))
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&c.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {} (install redis-server): {e}", server_bin())
                });
            c.children.push(child);
        }
        for (child, &p) in c.children.iter().zip(&ports) {
            wait_until_served(p, child.id(), Duration::from_secs(10))?;
        }
        let mut cli = Command::new(cli_bin())
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (install redis-tools): {e}", cli_bin()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = cli.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = cli.kill();
                let _ = cli.wait();
                return Err("redis-cli --cluster create did not finish in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let out = cli.wait_with_output().expect("redis-cli output");
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, p) in ports.iter().enumerate() {
            loop {
                let info: String = redis::Client::open(format!("redis://127.0.0.1:{p}"))
                    .and_then(|cl| cl.get_connection())
                    .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query(&mut con))
                    .map_err(|e| format!("CLUSTER INFO on node {i}: {e}"))?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("cluster not ok on node {i}: {info}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c.check_alive()?;
        Ok(c)
    }

    /// Every node this cluster started still runs (so the servers that
    /// answered on its ports are its own).
    fn check_alive(&mut self) -> Result<(), String> {
        for (child, p) in self.children.iter_mut().zip(&self.ports) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("cluster node {p} exited: {status}"));
            }
        }
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A plain connection to node `i` (not cluster-aware).
    pub fn node(&self, i: usize) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[i]))
            .and_then(|c| c.get_connection())
            .expect("connect to a cluster node")
    }

    /// The index of the node that serves `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(0))
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node(0))
            .unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let port: u16 = f[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a node address");
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return self.ports.iter().position(|&p| p == port).unwrap();
                    }
                }
            }
        }
        panic!("no node serves slot {slot}: {nodes}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 10 ms until it holds; fails the test after `limit`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl RedisServer {
    /// A `redis-server` replicating `primary` (`--replicaof 127.0.0.1
    /// <primary port>`) on its own free loopback port, killed on drop. It
    /// answers `PING` when this returns; see [`wait_for_replica`] for the
    /// sync.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])
    }
}

/// `INFO replication` of a server, as text.
pub fn info_replication(con: &mut redis::Connection) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query(con)
        .expect("INFO replication")
}

/// Waits until `primary` has exactly one connected replica, `replica`,
/// online (`connected_slaves:1` with its port and `state=online`),
/// `replica` reports `master_link_status:up`, and a write to the primary
/// (the key `hierlock-test:repl-probe`) is confirmed by `WAIT 1 100`: right
/// after a sync the first `WAIT`s can go unconfirmed for up to a second
/// although `INFO` already says online. Fails the test after 20 s.
pub fn wait_for_replica(primary: &RedisServer, replica: &RedisServer) {
    let (mut p, mut r) = (primary.conn(), replica.conn());
    let slave = format!("port={},state=online", replica.port);
    let t0 = Instant::now();
    loop {
        let (pi, ri) = (info_replication(&mut p), info_replication(&mut r));
        if pi.contains("connected_slaves:1\r\n")
            && pi.contains(&slave)
            && ri.contains("master_link_status:up")
        {
            let () = redis::cmd("SET")
                .arg("hierlock-test:repl-probe")
                .arg(t0.elapsed().as_micros() as u64)
                .query(&mut p)
                .expect("SET the probe key");
            let acked: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(100)
                .query(&mut p)
                .expect("WAIT for the probe");
            if acked >= 1 {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "replica on port {} did not sync with the primary on port {} within 20 s:\n\
             primary: {pi}\nreplica: {ri}",
            replica.port,
            primary.port
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
