//! The bandwidth budget every transfer draws on: a token bucket whose
//! waiters are served by urgency, not by arrival.
//!
//! A transfer asks for the bytes of its next batch with an [`Urgency`] (its
//! order's priority and deadline). When the bucket can pay at once and
//! nobody waits, it goes; otherwise it queues, and the budget always goes
//! to the most urgent waiter first — priority high to low, then deadline
//! early to late (none last), then arrival. So an urgent pre-fetch that
//! arrives behind freshness refreshes or low-priority orders is next in
//! line, not last. Only the head of the queue sleeps, for the time the
//! bucket needs to refill; a more urgent arrival takes its place and the
//! former head waits to be woken. The lock is a short `parking_lot`
//! section, never held across an `.await`.
//!
//! A take larger than the burst runs the bucket into debt (it goes once the
//! bucket is full), which the next takes wait out: the long-run rate holds.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How urgently a transfer needs bandwidth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Urgency {
    /// Higher first (an order's priority).
    pub priority: f64,
    /// Earlier first, `None` after every deadline (Unix ms).
    pub deadline_unix_ms: Option<u64>,
}

impl Urgency {
    /// A freshness refresh of a hosted shard: an ordinary order's priority
    /// (1.0, an order's default) and no deadline. A pre-fetch that asks for
    /// more, or has a deadline, goes first; one that asks for less waits.
    pub const REFRESH: Urgency = Urgency {
        priority: 1.0,
        deadline_unix_ms: None,
    };
}

impl Default for Urgency {
    fn default() -> Self {
        Urgency::REFRESH
    }
}

/// A waiter's place in the queue: the smallest key is served first.
#[derive(Debug, Clone, Copy)]
struct Key {
    priority: f64,
    deadline: u64,
    seq: u64,
}

impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        o.priority
            .total_cmp(&self.priority)
            .then(self.deadline.cmp(&o.deadline))
            .then(self.seq.cmp(&o.seq))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Key {}

struct State {
    tokens: f64,
    at: Instant,
    seq: u64,
    queue: BTreeMap<Key, Arc<Notify>>,
}

/// A bandwidth budget in bytes per second; `0` means unlimited.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

impl TokenBucket {
    pub fn new(bytes_per_s: u64) -> TokenBucket {
        let rate = bytes_per_s as f64;
        // A quarter second of burst keeps the rate smooth at the scale of
        // a few batches.
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                at: Instant::now(),
                seq: 0,
                queue: BTreeMap::new(),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// The burst: what a full bucket pays at once, bytes.
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Transfers waiting for bandwidth now.
    pub fn waiting(&self) -> usize {
        self.state.lock().queue.len()
    }

    fn refill(&self, st: &mut State) {
        let now = Instant::now();
        st.tokens =
            (st.tokens + now.duration_since(st.at).as_secs_f64() * self.rate).min(self.burst);
        st.at = now;
    }

    /// Wait until `n` bytes may be sent, served by `urgency` among the
    /// waiters; returns how long it waited. Dropping the future gives up
    /// the place in the queue.
    pub async fn take(&self, n: usize, urgency: Urgency) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let start = Instant::now();
        let n = n as f64;
        let need = n.min(self.burst);
        let (key, wake) = {
            let mut st = self.state.lock();
            self.refill(&mut st);
            if st.queue.is_empty() && st.tokens >= need {
                st.tokens -= n;
                return Duration::ZERO;
            }
            st.seq += 1;
            let key = Key {
                priority: if urgency.priority.is_nan() {
                    f64::MIN
                } else {
                    urgency.priority
                },
                deadline: urgency.deadline_unix_ms.unwrap_or(u64::MAX),
                seq: st.seq,
            };
            let wake = Arc::new(Notify::new());
            st.queue.insert(key, wake.clone());
            (key, wake)
        };
        let mut place = Place {
            bucket: self,
            key,
            served: false,
        };
        loop {
            let sleep = {
                let mut st = self.state.lock();
                self.refill(&mut st);
                let head = st.queue.keys().next() == Some(&key);
                if head && st.tokens >= need {
                    st.tokens -= n;
                    st.queue.remove(&key);
                    place.served = true;
                    if let Some(next) = st.queue.values().next() {
                        next.notify_one();
                    }
                    return start.elapsed();
                }
                head.then(|| {
                    Duration::from_secs_f64((need - st.tokens) / self.rate)
                        .max(Duration::from_millis(1))
                })
            };
            // The head sleeps until the bucket can pay it (or a waiter
            // ahead of it leaves); everyone else until the head is served.
            match sleep {
                Some(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = wake.notified() => {}
                },
                None => wake.notified().await,
            }
        }
    }
}

/// A waiter's place; leaving the queue unserved (a cancelled transfer)
/// wakes the new head.
struct Place<'a> {
    bucket: &'a TokenBucket,
    key: Key,
    served: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut st = self.bucket.state.lock();
        let was_head = st.queue.keys().next() == Some(&self.key);
        st.queue.remove(&self.key);
        if was_head {
            if let Some(next) = st.queue.values().next() {
                next.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn urgency(priority: f64, deadline_unix_ms: Option<u64>) -> Urgency {
        Urgency {
            priority,
            deadline_unix_ms,
        }
    }

    /// Saturate `b`, queue one waiter per urgency in order (each in line
    /// before the next arrives), and return the order they were served in.
    async fn served_order(b: Arc<TokenBucket>, bytes: usize, waiters: &[Urgency]) -> Vec<usize> {
        assert_eq!(
            b.take(b.burst() as usize, Urgency::REFRESH).await,
            Duration::ZERO,
            "a full bucket pays its burst at once"
        );
        let served = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for (i, u) in waiters.iter().copied().enumerate() {
            let (b2, served) = (b.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                b2.take(bytes, u).await;
                served.lock().push(i);
            }));
            // In line before the next one arrives (time is paused: nobody
            // is served meanwhile).
            while b.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let v = served.lock().clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_transfer_that_arrives_last_is_served_first() {
        let b = Arc::new(TokenBucket::new(100_000));
        let mut waiters = vec![urgency(1.0, None); 5];
        waiters.push(urgency(9.0, Some(1)));
        let t0 = Instant::now();
        let order = served_order(b.clone(), 10_000, &waiters).await;
        assert_eq!(order, vec![5, 0, 1, 2, 3, 4], "urgent first, then arrival");
        // And the budget held: 6 × 10 kB after the burst at 100 kB/s.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(590), "{took:?}");
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_goes_before_none_and_earlier_before_later() {
        let b = Arc::new(TokenBucket::new(100_000));
        let order = served_order(
            b,
            5_000,
            &[
                urgency(1.0, None),
                urgency(1.0, Some(900)),
                urgency(1.0, Some(100)),
                urgency(0.5, Some(1)),
            ],
        )
        .await;
        assert_eq!(order, vec![2, 1, 0, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_hands_its_place_on() {
        let b = Arc::new(TokenBucket::new(100_000));
        b.take(b.burst() as usize, Urgency::REFRESH).await;
        let head = {
            let b = b.clone();
            tokio::spawn(async move { b.take(50_000, urgency(9.0, None)).await })
        };
        while b.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let next = {
            let b = b.clone();
            tokio::spawn(async move { b.take(1_000, urgency(1.0, None)).await })
        };
        while b.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        head.abort();
        let _ = head.await;
        let waited = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the next waiter is served once the head leaves")
            .unwrap();
        assert!(waited <= Duration::from_millis(20), "{waited:?}");
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_above_the_burst_runs_into_debt_the_next_take_waits_out() {
        let b = TokenBucket::new(100_000);
        let burst = b.burst() as usize;
        assert_eq!(
            b.take(burst + 100_000, Urgency::REFRESH).await,
            Duration::ZERO
        );
        let waited = b.take(1, Urgency::REFRESH).await;
        assert!(waited >= Duration::from_millis(999), "{waited:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With the budget saturated, waiters are served by (priority
        /// desc, deadline asc, arrival), whatever order they arrive in.
        #[test]
        fn saturated_waiters_are_served_by_urgency(
            ws in proptest::collection::vec((0u8..4, proptest::option::of(0u64..4)), 1..10)
        ) {
            let waiters: Vec<Urgency> = ws
                .iter()
                .map(|(p, d)| urgency(f64::from(*p), *d))
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let got = rt.block_on(served_order(Arc::new(TokenBucket::new(1_000_000)), 20_000, &waiters));
            let mut want: Vec<usize> = (0..waiters.len()).collect();
            want.sort_by(|&a, &b| {
                let (ua, ub) = (waiters[a], waiters[b]);
                ub.priority
                    .total_cmp(&ua.priority)
                    .then(ua.deadline_unix_ms.unwrap_or(u64::MAX).cmp(&ub.deadline_unix_ms.unwrap_or(u64::MAX)))
                    .then(a.cmp(&b))
            });
            prop_assert_eq!(got, want);
        }
    }
}
