//! Hand-off between a request that waits until its deadline and the task
//! that runs its Redis command to the end.
//!
//! The command runs in a spawned task so that it is never abandoned
//! half-way: a claim whose `SET NX` succeeds after its request was already
//! answered 503 must be released again, and only the task can see that.
//! Exactly one side wins: either the task delivers the result to a request
//! that still waits ([`Reply::send`] returns `true`), or the request gave up
//! first (deadline passed, or the client went away) and the task learns it
//! (`send` returns `false`). The decision is one compare-and-swap on a shared
//! state, so a result that arrives at the very moment the deadline fires is
//! either answered or cleaned up, never both and never neither.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const ABANDONED: u8 = 2;

/// The task's end.
#[derive(Debug)]
pub struct Reply<T> {
    state: Arc<AtomicU8>,
    tx: oneshot::Sender<T>,
}

/// The request's end.
#[derive(Debug)]
pub struct Waiter<T> {
    state: Arc<AtomicU8>,
    rx: oneshot::Receiver<T>,
}

/// A connected pair.
pub fn pair<T>() -> (Reply<T>, Waiter<T>) {
    let state = Arc::new(AtomicU8::new(PENDING));
    let (tx, rx) = oneshot::channel();
    (
        Reply {
            state: Arc::clone(&state),
            tx,
        },
        Waiter { state, rx },
    )
}

impl<T> Reply<T> {
    /// Delivers `value` if the request still waits. `false`: nobody will
    /// answer with it, the caller cleans up whatever it did.
    pub fn send(self, value: T) -> bool {
        if self
            .state
            .compare_exchange(PENDING, DELIVERED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.tx.send(value).is_ok()
    }
}

impl<T> Waiter<T> {
    /// The task's result, or `None` when the deadline passed first (or the
    /// task ended without a result).
    pub async fn wait(mut self, deadline: Instant) -> Option<T> {
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(result) => result.ok(),
            Err(_elapsed) => {
                if self
                    .state
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    None
                } else {
                    // The task won the race: the value is being sent right now.
                    (&mut self.rx).await.ok()
                }
            }
        }
    }
}

impl<T> Drop for Waiter<T> {
    /// A request dropped before its answer (client gone) counts as abandoned.
    fn drop(&mut self) {
        let _ =
            self.state
                .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_result_in_time_is_delivered() {
        let (reply, waiter) = pair();
        let task = tokio::spawn(async move { reply.send(7) });
        let got = waiter
            .wait(Instant::now() + Duration::from_millis(10))
            .await;
        assert_eq!(got, Some(7));
        assert!(task.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_result_is_returned_to_the_task() {
        let (reply, waiter) = pair::<u8>();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            reply.send(7)
        });
        let got = waiter
            .wait(Instant::now() + Duration::from_millis(10))
            .await;
        assert_eq!(got, None);
        assert!(!task.await.unwrap(), "the task must learn it was too late");
    }

    #[tokio::test]
    async fn a_dropped_request_counts_as_abandoned() {
        let (reply, waiter) = pair::<u8>();
        drop(waiter);
        assert!(!reply.send(1));
    }

    #[tokio::test]
    async fn a_task_that_ends_without_result_yields_none() {
        let (reply, waiter) = pair::<u8>();
        drop(reply);
        assert_eq!(
            waiter.wait(Instant::now() + Duration::from_secs(5)).await,
            None
        );
    }

    #[test]
    fn exactly_one_side_wins_every_race() {
        // Many real races between the deadline and the result: each ends
        // either delivered-and-received or abandoned-and-told, never both,
        // never neither.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut delivered, mut abandoned) = (0, 0);
            for i in 0..2000u32 {
                let (reply, waiter) = pair::<u32>();
                let deadline = Instant::now() + Duration::from_micros(u64::from(i % 50));
                let task = tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    reply.send(i)
                });
                let got = waiter.wait(deadline).await;
                let sent = task.await.unwrap();
                match (got, sent) {
                    (Some(v), true) => {
                        assert_eq!(v, i);
                        delivered += 1;
                    }
                    (None, false) => abandoned += 1,
                    other => panic!("both or neither side won: {other:?}"),
                }
            }
            assert_eq!(delivered + abandoned, 2000);
        });
    }
}
