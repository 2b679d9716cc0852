//! `lock_async`: on tokio and on a hand-written executor, wake-ups across
//! tasks, cancellation (dropped futures) and hand-off of a grant that
//! reached a future that is then dropped.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use common::{wait_until_queued, watchdog};
use hierlock::{Error, LockTree, Mode};
use rand::Rng;

const LONG: Duration = Duration::from_secs(30);

// ---- a minimal executor: poll, park the thread, repeat ----

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

// ---- tests ----

#[test]
fn minimal_executor_waits_and_wakes() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        block_on(async {
            let g = t.lock_async("/a/b", Mode::X).await.unwrap();
            assert_eq!(g.mode(), Mode::X);
            assert_eq!(g.path().to_string(), "/a/b");
        })
    });
    // Queued for IX on /a: S probes now wait behind it.
    wait_until_queued(&tree, "/a", Mode::S);
    drop(h);
    watchdog(LONG, "block_on(lock_async)", move || w.join().unwrap());
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn minimal_executor_uncontended_and_owned() {
    let tree = Arc::new(LockTree::new());
    let g = block_on(tree.lock_async("/x/y", Mode::S)).unwrap();
    let o = block_on(tree.lock_owned_async("/x/z", Mode::X)).unwrap();
    assert_eq!((g.mode(), o.mode()), (Mode::S, Mode::X));
    assert_eq!(tree.node_count(), 3);
    drop((g, o));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn pending_future_is_woken_by_the_release() {
    let tree = LockTree::new();
    let h = tree.write("/a").unwrap();
    let (count, waker) = counting_waker();
    let mut fut = Box::pin(tree.lock_async("/a", Mode::S));
    assert!(poll_once(fut.as_mut(), &waker).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    drop(h);
    assert!(count.0.load(Ordering::SeqCst) >= 1, "release did not wake");
    match poll_once(fut.as_mut(), &waker) {
        Poll::Ready(Ok(g)) => assert_eq!(g.mode(), Mode::S),
        other => panic!("not granted after the wake: {other:?}"),
    };
    drop(fut);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn dropping_a_queued_future_releases_the_levels_it_took() {
    let tree = LockTree::new();
    let h = tree.read("/a/b").unwrap();
    let (_, waker) = counting_waker();
    let mut fut = Box::pin(tree.lock_async("/a/b/c", Mode::X));
    assert!(poll_once(fut.as_mut(), &waker).is_pending());
    // It holds IX on / and /a while waiting on /a/b.
    assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    drop(fut);
    drop(tree.try_lock("/a", Mode::S).unwrap());
    drop(tree.try_lock("/", Mode::S).unwrap());
    drop(tree.try_lock("/a/b", Mode::S).unwrap());
    assert_eq!(tree.node_count(), 2);
    drop(h);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn future_dropped_after_its_grant_passes_it_on() {
    // Two queued X futures; the release grants the first; the first is
    // dropped without being polled again; the second must get the lock.
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    let (c1, w1) = counting_waker();
    let (c2, w2) = counting_waker();
    let mut f1 = Box::pin(tree.lock_async("/a", Mode::X));
    assert!(poll_once(f1.as_mut(), &w1).is_pending());
    let mut f2 = Box::pin(tree.lock_async("/a", Mode::X));
    assert!(poll_once(f2.as_mut(), &w2).is_pending());
    drop(h);
    assert!(c1.0.load(Ordering::SeqCst) >= 1, "first waiter not woken");
    assert_eq!(c2.0.load(Ordering::SeqCst), 0, "second woken beside an X");
    drop(f1);
    assert!(c2.0.load(Ordering::SeqCst) >= 1, "grant not passed on");
    match poll_once(f2.as_mut(), &w2) {
        Poll::Ready(Ok(g)) => assert_eq!(g.mode(), Mode::X),
        other => panic!("second waiter not granted: {other:?}"),
    };
    drop(f2);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn future_dropped_after_a_grant_on_an_ancestor_passes_it_on() {
    // The first future waits for IS on /a (it wants /a/b), the second for
    // X on /a behind it. The release grants IS on /a to the first; dropping
    // it must release that IS and wake the second.
    let tree = LockTree::new();
    let h = tree.write("/a").unwrap();
    let (_, w1) = counting_waker();
    let (c2, w2) = counting_waker();
    let mut f1 = Box::pin(tree.lock_async("/a/b", Mode::S));
    assert!(poll_once(f1.as_mut(), &w1).is_pending());
    let mut f2 = Box::pin(tree.lock_async("/a", Mode::X));
    assert!(poll_once(f2.as_mut(), &w2).is_pending());
    drop(h);
    drop(f1);
    assert!(c2.0.load(Ordering::SeqCst) >= 1, "grant not passed on");
    assert!(matches!(poll_once(f2.as_mut(), &w2), Poll::Ready(Ok(_))));
    drop(f2);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn dropping_a_queued_future_lets_the_ones_behind_it_in() {
    // S held; an X future queues; an S future queues behind it only for
    // fairness. Dropping the X future must grant the S one at once.
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    let (_, w1) = counting_waker();
    let (c2, w2) = counting_waker();
    let mut fx = Box::pin(tree.lock_async("/a", Mode::X));
    assert!(poll_once(fx.as_mut(), &w1).is_pending());
    let mut fs = Box::pin(tree.lock_async("/a", Mode::S));
    assert!(poll_once(fs.as_mut(), &w2).is_pending());
    drop(fx);
    assert!(c2.0.load(Ordering::SeqCst) >= 1);
    assert!(matches!(poll_once(fs.as_mut(), &w2), Poll::Ready(Ok(_))));
    drop((fs, h));
    assert_eq!(tree.node_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_waits_and_wakes() {
    let tree = Arc::new(LockTree::new());
    let h = tree.lock_owned("/a", Mode::S).unwrap();
    let t = tree.clone();
    let task = tokio::spawn(async move {
        let g = t.lock_async("/a", Mode::X).await.unwrap();
        g.mode()
    });
    let t = tree.clone();
    tokio::task::spawn_blocking(move || wait_until_queued(&t, "/a", Mode::IS))
        .await
        .unwrap();
    drop(h);
    let m = tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    assert_eq!(m, Mode::X);
    assert_eq!(tree.node_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_wakeups_across_many_tasks() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 40;
    let tree = Arc::new(LockTree::new());
    let writer_in = Arc::new(AtomicBool::new(false));
    let readers_in = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (t, w, r) = (tree.clone(), writer_in.clone(), readers_in.clone());
            tokio::spawn(async move {
                for n in 0..ROUNDS {
                    if (i + n) % 4 == 0 {
                        let _g = t.lock_async("/a", Mode::X).await.unwrap();
                        assert!(!w.swap(true, Ordering::SeqCst), "two writers");
                        assert_eq!(r.load(Ordering::SeqCst), 0, "writer beside reader");
                        tokio::task::yield_now().await;
                        w.store(false, Ordering::SeqCst);
                    } else {
                        let _g = t.lock_async("/a/b", Mode::S).await.unwrap();
                        r.fetch_add(1, Ordering::SeqCst);
                        assert!(!w.load(Ordering::SeqCst), "reader beside writer");
                        tokio::task::yield_now().await;
                        r.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(LONG, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("a task was never woken");
    assert_eq!(tree.node_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_rounds_of_futures_dropped_while_queued() {
    const ROUNDS: usize = 300;
    let tree = Arc::new(LockTree::new());
    let granted = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let holder = tree
            .try_lock_owned("/a", Mode::X)
            .unwrap_or_else(|e| panic!("round {round}: /a not free: {e:?}"));
        let mut tasks = Vec::new();
        for k in 0..3 {
            let (t, g, c) = (tree.clone(), granted.clone(), cancelled.clone());
            let (path, mode, micros, use_select) = {
                let mut rng = rand::thread_rng();
                let path = ["/a", "/a/b", "/a/b/c"][rng.gen_range(0..3)];
                let mode = common::MODES[rng.gen_range(0..5)];
                (path, mode, rng.gen_range(0..1500u64), rng.gen_bool(0.5))
            };
            tasks.push(tokio::spawn(async move {
                let limit = Duration::from_micros(micros);
                let fut = t.lock_owned_async(path, mode);
                let got = if use_select {
                    tokio::select! {
                        r = fut => Some(r),
                        _ = tokio::time::sleep(limit) => None,
                    }
                } else {
                    tokio::time::timeout(limit, fut).await.ok()
                };
                match got {
                    Some(r) => {
                        let guard = r.unwrap();
                        g.fetch_add(1, Ordering::Relaxed);
                        if k == 0 {
                            tokio::task::yield_now().await;
                        }
                        drop(guard);
                    }
                    None => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // The release races with the deadlines.
        let spins = rand::thread_rng().gen_range(0..6);
        tasks.push(tokio::spawn(async move {
            if spins == 5 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for _ in 0..spins {
                tokio::task::yield_now().await;
            }
            drop(holder);
        }));
        tokio::time::timeout(LONG, async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} hung"));
        assert_eq!(tree.node_count(), 0, "round {round}: nodes left behind");
    }
    drop(tree.try_lock("/a", Mode::X).unwrap());
    drop(tree.try_lock("/", Mode::X).unwrap());
    assert_eq!(tree.node_count(), 0);
    // Both outcomes were exercised.
    assert!(granted.load(Ordering::Relaxed) > 0);
    assert!(cancelled.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_tasks_leave_nothing_behind() {
    let tree = Arc::new(LockTree::new());
    for _ in 0..100 {
        let holder = tree.lock_owned("/a", Mode::S).unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let t = tree.clone();
                tokio::spawn(async move {
                    let _g = t
                        .lock_owned_async(format!("/a/{i}"), Mode::X)
                        .await
                        .unwrap();
                })
            })
            .collect();
        tokio::task::yield_now().await;
        for t in &tasks {
            t.abort();
        }
        drop(holder);
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(tree.node_count(), 0);
    }
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn current_thread_runtime_hand_off_between_tasks() {
    // One thread, several tasks: a lost wake-up would hang block_on.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let tree = Arc::new(LockTree::new());
    let t = tree.clone();
    watchdog(LONG, "current-thread runtime", move || {
        rt.block_on(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let tasks: Vec<_> = (0..8)
                        .map(|_| {
                            let t = t.clone();
                            tokio::task::spawn_local(async move {
                                for _ in 0..50 {
                                    let _g = t.lock_async("/a", Mode::X).await.unwrap();
                                    tokio::task::yield_now().await;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                })
                .await
        })
    });
    assert_eq!(tree.node_count(), 0);
}
