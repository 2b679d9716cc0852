//! The process's pub/sub connection to one Redis (or one Redis Cluster) and
//! the waiters listening on it.
//!
//! Every [`RedisLockTree`](super::RedisLockTree) of the process that talks
//! to the same server shares one [`Subscriber`], found in a process-wide
//! registry keyed by the server's address and credentials (not the
//! database: pub/sub channels are global to a server, and the channel
//! names carry the namespace). The registry holds `Weak` references; the
//! trees hold the `Arc`s, so the subscriber, its connection and its
//! runtime go away with the last tree that uses them.
//!
//! Implementation details:
//! - The subscriber owns a small runtime (one thread). Its connection is
//!   created on that runtime, so the connection's driver task lives as long
//!   as the subscriber, whichever tree created it and whichever tree's
//!   runtime is awaiting a subscription.
//! - The connection is a RESP3 multiplexed connection whose push messages
//!   are delivered to a closure ([`on_push`]), which wakes the waiters of the
//!   message's channel through their [`Notify`] (a permit is stored if the
//!   waiter is busy talking to Redis, so no wake-up is lost between its try
//!   and its sleep).
//! - Subscriptions are reference counted per channel, under an async mutex
//!   (`conn`) that also serializes SUBSCRIBE/UNSUBSCRIBE, so an UNSUBSCRIBE
//!   for a channel can never overtake a later SUBSCRIBE for it.
//! - When the connection drops, every waiter is woken; each re-subscribes
//!   (on a new connection, a new *generation*) before it tries again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::Error;

use super::{backend, stopped, Runtime};

/// The subscribers of the process by server (see [`Subscriber::shared`]).
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<Subscriber>>>> = LazyLock::new(Mutex::default);

/// Waiters by channel; touched by the push closure and by registrations.
#[derive(Default)]
struct Waiters {
    by_channel: HashMap<String, HashMap<u64, Arc<Notify>>>,
    all: HashMap<u64, Arc<Notify>>,
    next: u64,
}

/// The connection and its subscriptions; only under `Subscriber::conn`.
#[derive(Default)]
struct Conn {
    con: Option<MultiplexedConnection>,
    /// Cleared by the push closure when the library reports a disconnection.
    alive: Arc<AtomicBool>,
    /// Incremented for each new connection; 0 = never connected.
    generation: u64,
    /// Subscribers per channel on the current connection.
    counts: HashMap<String, usize>,
}

pub(super) struct Subscriber {
    /// The servers to connect to, tried in order (one for a plain Redis,
    /// the seed nodes of a cluster: any node hears every PUBLISH).
    clients: Vec<redis::Client>,
    op_timeout: Duration,
    /// Where the connection lives.
    rt: Runtime,
    waiters: Arc<Mutex<Waiters>>,
    conn: tokio::sync::Mutex<Conn>,
}

/// A waiter's registration; unsubscribes (in a spawned task) when dropped.
pub(super) struct Registration {
    sub: Arc<Subscriber>,
    key: u64,
    channels: Vec<String>,
    notify: Arc<Notify>,
    /// The connection generation its channels are subscribed on.
    generation: u64,
}

fn on_push(waiters: &Mutex<Waiters>, alive: &AtomicBool, info: PushInfo) {
    let w = waiters.lock().unwrap_or_else(|e| e.into_inner());
    match info.kind {
        PushKind::Message => {
            if let Some(Value::BulkString(ch)) = info.data.first() {
                if let Some(list) = std::str::from_utf8(ch)
                    .ok()
                    .and_then(|c| w.by_channel.get(c))
                {
                    for n in list.values() {
                        n.notify_one();
                    }
                }
            }
        }
        PushKind::Disconnection => {
            alive.store(false, Ordering::SeqCst);
            for n in w.all.values() {
                n.notify_one();
            }
        }
        _ => {}
    }
}

impl Subscriber {
    /// The process's subscriber for the server identified by `key`, created
    /// (not yet connected) with `clients` and `op_timeout` if there is none.
    /// A subscriber created by an earlier tree keeps that tree's operation
    /// timeout for connecting and subscribing; every caller also bounds the
    /// wait with its own budget.
    pub(super) fn shared(
        key: String,
        clients: Vec<redis::Client>,
        op_timeout: Duration,
    ) -> Result<Arc<Subscriber>, Error> {
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sub) = reg.get(&key).and_then(Weak::upgrade) {
            return Ok(sub);
        }
        reg.retain(|_, w| w.strong_count() > 0);
        let sub = Arc::new(Subscriber {
            clients,
            op_timeout,
            rt: Runtime::start("hierlock-redis-sub")?,
            waiters: Arc::default(),
            conn: tokio::sync::Mutex::default(),
        });
        reg.insert(key, Arc::downgrade(&sub));
        Ok(sub)
    }

    /// Registers a waiter on `channels`; [`Registration::ensure`] then
    /// subscribes to them.
    pub(super) fn register(self: &Arc<Self>, channels: Vec<String>) -> Registration {
        let notify = Arc::new(Notify::new());
        let key = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.next += 1;
            let key = w.next;
            w.all.insert(key, notify.clone());
            for c in &channels {
                w.by_channel
                    .entry(c.clone())
                    .or_default()
                    .insert(key, notify.clone());
            }
            key
        };
        Registration {
            sub: self.clone(),
            key,
            channels,
            notify,
            generation: 0,
        }
    }

    async fn connect(&self, c: &mut Conn) -> Result<(), Error> {
        let alive = Arc::new(AtomicBool::new(true));
        let (waiters, flag) = (self.waiters.clone(), alive.clone());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.op_timeout)
            .set_response_timeout(self.op_timeout)
            .set_push_sender(move |info: PushInfo| {
                on_push(&waiters, &flag, info);
                Ok::<(), std::convert::Infallible>(())
            });
        let (clients, op_timeout) = (self.clients.clone(), self.op_timeout);
        // Created on the subscriber's runtime, where its driver task then runs.
        let connect = self.rt.handle.spawn(async move {
            let mut last = None;
            for client in &clients {
                let fut = client.get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(op_timeout, fut).await {
                    Ok(Ok(con)) => return Ok(con),
                    Ok(Err(e)) => last = Some(backend(e)),
                    Err(_) => {
                        last = Some(Error::Backend {
                            message: format!(
                                "could not connect the pub/sub connection within {op_timeout:?}"
                            ),
                        })
                    }
                }
            }
            Err(last.unwrap_or_else(|| Error::Backend {
                message: "no redis server to connect the pub/sub connection to".into(),
            }))
        });
        let con = connect.await.map_err(|_| stopped())??;
        c.con = Some(con);
        c.alive = alive;
        c.generation += 1;
        c.counts.clear();
        Ok(())
    }
}

impl Registration {
    /// Waits for a message on one of the channels (or a disconnection).
    pub(super) async fn notified(&self) {
        self.notify.notified().await
    }

    /// Makes sure the channels are subscribed on the live connection,
    /// reconnecting if it was lost.
    pub(super) async fn ensure(&mut self) -> Result<(), Error> {
        let sub = self.sub.clone();
        let mut c = sub.conn.lock().await;
        if c.con.is_none() || !c.alive.load(Ordering::SeqCst) {
            sub.connect(&mut c).await?;
        }
        if self.generation == c.generation {
            return Ok(());
        }
        let mut fresh = Vec::new();
        for ch in &self.channels {
            let n = c.counts.entry(ch.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                fresh.push(ch.clone());
            }
        }
        self.generation = c.generation;
        if !fresh.is_empty() {
            let mut con = c.con.clone().expect("connected above");
            let res = tokio::time::timeout(sub.op_timeout, con.subscribe(&fresh)).await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    c.con = None;
                    return Err(backend(e));
                }
                Err(_) => {
                    c.con = None;
                    return Err(Error::Backend {
                        message: format!("SUBSCRIBE got no answer within {:?}", sub.op_timeout),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut w = self.sub.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.all.remove(&self.key);
            for c in &self.channels {
                if let Some(m) = w.by_channel.get_mut(c) {
                    m.remove(&self.key);
                    if m.is_empty() {
                        w.by_channel.remove(c);
                    }
                }
            }
        }
        if self.generation == 0 {
            return;
        }
        let (sub, channels, generation) = (
            self.sub.clone(),
            std::mem::take(&mut self.channels),
            self.generation,
        );
        let handle = self.sub.rt.handle.clone();
        handle.spawn(async move {
            let mut c = sub.conn.lock().await;
            if c.generation != generation {
                return;
            }
            let mut gone = Vec::new();
            for ch in channels {
                if let Some(n) = c.counts.get_mut(&ch) {
                    *n -= 1;
                    if *n == 0 {
                        c.counts.remove(&ch);
                        gone.push(ch);
                    }
                }
            }
            if let (false, Some(mut con)) = (gone.is_empty(), c.con.clone()) {
                let _ = tokio::time::timeout(sub.op_timeout, con.unsubscribe(&gone)).await;
            }
        });
    }
}
