//! [`RedisGuard`] and the background renewal of its lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::{Error, Mode, Path};

use super::Shared;

/// One granted hold: what the guard and its renewal task share.
pub(crate) struct Hold {
    shared: Arc<Shared>,
    id: String,
    keys: Vec<String>,
    token: u64,
    state: Mutex<LeaseState>,
    /// Tells the renewal task to stop (a stored permit is not lost).
    stop: Notify,
}

struct LeaseState {
    /// The end of the lease on our monotonic clock: the last successful
    /// grant or renewal's *send* time plus the lease, so never later than
    /// the server's deadline.
    until: Instant,
    /// The hold is known (or must be assumed) lost. Sticky.
    lost: bool,
}

/// What a renew/check call said.
enum Renewal {
    Held,
    Lost,
}

impl Hold {
    pub(super) fn start(
        shared: Arc<Shared>,
        id: String,
        keys: Vec<String>,
        token: u64,
        until: Instant,
    ) -> Arc<Hold> {
        let hold = Arc::new(Hold {
            shared,
            id,
            keys,
            token,
            state: Mutex::new(LeaseState { until, lost: false }),
            stop: Notify::new(),
        });
        hold.shared.rt.handle.spawn(renew_loop(hold.clone()));
        hold
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lost, or the local deadline has passed (then marks it lost).
    fn check_local(&self) -> bool {
        let mut s = self.state();
        if !s.lost && Instant::now() >= s.until {
            s.lost = true;
        }
        s.lost
    }

    fn mark_lost(&self) {
        self.state().lost = true;
    }

    fn extended(&self, sent: Instant) {
        let mut s = self.state();
        if !s.lost {
            s.until = s.until.max(sent + self.shared.lease);
        }
    }

    fn until(&self) -> Instant {
        self.state().until
    }

    /// One call of the renew script (`extend`: renew, else only check).
    async fn renew(&self, extend: bool) -> Result<Renewal, Error> {
        let lease_ms = self.shared.lease.as_millis().to_string();
        let token = self.token.to_string();
        let extend = if extend { "1" } else { "0" };
        let args = self.shared.args(&[&self.id, &token, &lease_ms, extend]);
        let v = self
            .shared
            .eval(
                &self.shared.scripts.renew,
                &self.keys,
                &args,
                Some(self.until()),
                None,
            )
            .await
            .map_err(|e| e.error)?;
        match redis::from_redis_value::<i64>(&v) {
            Ok(1) => Ok(Renewal::Held),
            Ok(_) => Ok(Renewal::Lost),
            Err(e) => Err(super::backend(e)),
        }
    }

    /// Removes the hold; `Ok(true)` if it was whole and unexpired.
    async fn release(&self) -> Result<bool, Error> {
        let token = self.token.to_string();
        let args = self.shared.args(&[&self.id, &token]);
        let v = self
            .shared
            .eval(&self.shared.scripts.release, &self.keys, &args, None, None)
            .await
            .map_err(|e| e.error)?;
        Ok(redis::from_redis_value::<i64>(&v).map_err(super::backend)? == 1)
    }
}

/// Renews every third of the lease until stopped or lost. A failed call is
/// retried sooner, until the local deadline passes; then the hold is lost.
async fn renew_loop(hold: Arc<Hold>) {
    let lease = hold.shared.lease;
    let mut next = Instant::now() + lease / 3;
    loop {
        tokio::select! {
            _ = hold.stop.notified() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        if hold.check_local() {
            return;
        }
        let sent = Instant::now();
        match hold.renew(true).await {
            Ok(Renewal::Held) => {
                hold.extended(sent);
                next = sent + lease / 3;
            }
            Ok(Renewal::Lost) => {
                hold.mark_lost();
                return;
            }
            Err(_) => {
                if hold.check_local() {
                    return;
                }
                let retry = (lease / 10).max(Duration::from_millis(5));
                next = (Instant::now() + retry).min(hold.until());
            }
        }
    }
}

/// A hold on a node of a [`RedisLockTree`](super::RedisLockTree), renewed in
/// the background while the guard lives; released on drop.
///
/// `Send + Sync + 'static`. Dropping it releases the lock: from a thread
/// outside any async runtime the drop waits for Redis's answer (at most the
/// operation timeout); inside an async runtime it sends the release in the
/// background. Use [`unlock`](Self::unlock) to learn whether the lease held
/// until the end.
#[must_use = "if unused the lock is released at once"]
pub struct RedisGuard {
    hold: Arc<Hold>,
    path: Path,
    mode: Mode,
    released: bool,
}

impl RedisGuard {
    pub(super) fn new(hold: Arc<Hold>, path: Path, mode: Mode) -> RedisGuard {
        RedisGuard {
            hold,
            path,
            mode,
            released: false,
        }
    }

    /// The fencing token of this grant: larger than the token of every
    /// earlier grant in the namespace. Send it with every write to the
    /// protected resource, which must refuse a token smaller than the
    /// largest it has seen (see the [module docs](super#fencing-tokens)).
    pub fn token(&self) -> u64 {
        self.hold.token
    }

    /// The mode held on the node.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The node held.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The owner-unique id of this hold, as shown by
    /// [`RedisLockTree::inspect`](super::RedisLockTree::inspect).
    pub fn holder_id(&self) -> &str {
        &self.hold.id
    }

    /// How long the lease has left by this process's clock (zero once lost).
    pub fn lease_left(&self) -> Duration {
        let s = self.hold.state();
        if s.lost {
            Duration::ZERO
        } else {
            s.until.saturating_duration_since(Instant::now())
        }
    }

    /// Extends the lease now (the background renewal does this on its own).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] if the lease had already run out or the hold was
    /// force-released; [`Error::Backend`] if Redis could not be asked (the
    /// hold may still be fine; the background renewal keeps trying).
    pub fn refresh(&self) -> Result<(), Error> {
        if self.hold.check_local() {
            return Err(Error::LeaseLost);
        }
        let hold = self.hold.clone();
        let sent = Instant::now();
        let r = self
            .hold
            .shared
            .block(async move { hold.renew(true).await });
        match r {
            Ok(Renewal::Held) => {
                self.hold.extended(sent);
                Ok(())
            }
            Ok(Renewal::Lost) => {
                self.hold.mark_lost();
                Err(Error::LeaseLost)
            }
            Err(e) => {
                if self.hold.check_local() {
                    Err(Error::LeaseLost)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Whether the hold is still held, asking Redis (one round trip) unless
    /// it is already known to be lost. `Ok(false)` is final.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] if Redis could not be asked while the local lease
    /// has not run out yet.
    pub fn is_held(&self) -> Result<bool, Error> {
        if self.hold.check_local() {
            return Ok(false);
        }
        let hold = self.hold.clone();
        match self
            .hold
            .shared
            .block(async move { hold.renew(false).await })
        {
            Ok(Renewal::Held) => Ok(!self.hold.check_local()),
            Ok(Renewal::Lost) => {
                self.hold.mark_lost();
                Ok(false)
            }
            Err(e) => {
                if self.hold.check_local() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Releases the lock and wakes the waiters it blocked.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] if the lease ran out (or was force-released)
    /// while the guard claimed it: another holder may have had the lock in
    /// the meantime. [`Error::Backend`] if Redis could not be reached (the
    /// hold then expires with its lease).
    pub fn unlock(mut self) -> Result<(), Error> {
        self.released = true;
        self.hold.stop.notify_one();
        let lost = self.hold.check_local();
        let hold = self.hold.clone();
        let r = self.hold.shared.block(async move { hold.release().await });
        match r {
            Ok(true) if !lost => Ok(()),
            Ok(_) => {
                self.hold.mark_lost();
                Err(Error::LeaseLost)
            }
            Err(_) if lost => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.hold.stop.notify_one();
        let hold = self.hold.clone();
        let release = async move { hold.release().await };
        if tokio::runtime::Handle::try_current().is_ok() {
            self.hold.shared.rt.handle.spawn(release);
        } else {
            let _ = self.hold.shared.block(release);
        }
    }
}

impl std::fmt::Debug for RedisGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGuard")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("token", &self.hold.token)
            .field("holder_id", &self.hold.id)
            .finish()
    }
}
