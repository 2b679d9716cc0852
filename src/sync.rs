//! The one place that decides between `std` and `loom` primitives.
//!
//! Every atomic, the waiter queues' lock, thread parking and `Arc` used by
//! the lock protocol come from here, so building with `--cfg loom` runs the
//! real protocol code under loom's model checker. The rest of the crate
//! imports from this module and never from `std::sync` directly.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
    pub(crate) use std::sync::Arc;

    /// A mutex whose `lock` returns the guard directly (no poisoning).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex(parking_lot::const_mutex(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    pub(crate) mod thread {
        pub(crate) use std::thread::{current, park, park_timeout, yield_now, Thread};
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{
        AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
    pub(crate) use loom::sync::Arc;

    /// loom's mutex behind the same interface as the std side.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            // loom's mutex only poisons if a model thread panicked, which
            // already fails the model.
            self.0.lock().unwrap()
        }
    }

    pub(crate) mod thread {
        pub(crate) use loom::thread::{current, park, yield_now, Thread};

        /// The model thread's number (0 for the main thread), the same in
        /// every execution: what the engine uses under loom where it would
        /// use a thread-local (`bias::thread_slot`, `sticky::thread_id`).
        pub(crate) fn number() -> Option<usize> {
            format!("{:?}", current().id())
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        }

        /// loom has no clock: a timed park is an untimed one, and callers
        /// re-check their deadline after every wake-up.
        pub(crate) fn park_timeout(_: std::time::Duration) {
            park()
        }
    }
}

pub(crate) use imp::*;
