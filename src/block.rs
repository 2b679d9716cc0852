//! Running a future to completion on the calling thread, with a deadline:
//! how the blocking API of owners and `wait_acquirable` reuses their async
//! implementation. A timeout is the future being dropped, so it is exactly
//! as cancel-safe as the future.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::Error;

/// Wakes a parked thread.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The deadline `timeout` from now (`None`: too far to represent, wait
/// forever).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Runs a fallible request to completion on this thread; [`Error::Timeout`]
/// if `deadline` passes first (the request is then dropped, i.e. cancelled).
pub(crate) fn wait_for<T>(
    fut: impl Future<Output = Result<T, Error>>,
    deadline: Option<Instant>,
) -> Result<T, Error> {
    block_on(fut, deadline).unwrap_or(Err(Error::Timeout))
}

/// Runs `fut` on the calling thread until it resolves or `deadline` passes
/// (then drops it, which cancels it, and returns `None`).
pub(crate) fn block_on<F: Future>(fut: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                std::thread::park_timeout(d - now);
            }
        }
    }
}
