//! Connecting with retries: a Bluetooth connect right after discovery, or
//! while the peer's controller is busy paging, fails often (about half the
//! time on BlueZ) and works a moment later. `open` tries again with doubling
//! back-off until its time budget is spent, and says how many tries it took.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

/// How `open` retries a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// The whole budget: no new try starts after it, and a try in flight is cut off at it.
    pub budget: Duration,
    /// The wait after the first failed try; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait between tries.
    pub max_backoff: Duration,
    /// The longest one try may take: a try the kernel never answers is
    /// given up and made again (the budget's third, at least this).
    pub min_attempt: Duration,
}

impl RetryConfig {
    /// How long one try may take: a third of the budget, at least
    /// `min_attempt`. RFCOMM's own connect timer is 30 s: a DLC whose
    /// answer was lost (on the rig, a stale DM from the link just closed on
    /// the same channel took it) would otherwise hold the whole budget.
    pub fn attempt_limit(&self) -> Duration {
        (self.budget / 3).max(self.min_attempt)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            budget: Duration::from_secs(30),
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            min_attempt: Duration::from_secs(10),
        }
    }
}

/// Why connecting failed for good.
#[derive(Debug)]
pub enum GaveUp {
    /// An error no retry can mend (bad address, no kernel support, permission).
    Fatal(io::Error),
    /// Every try failed until the budget ran out; the last try's error.
    Exhausted {
        /// Tries made.
        tries: u32,
        /// The last try's error, or `None` if the last try was cut off by the budget.
        last: Option<io::Error>,
    },
}

/// Errors that say trying again cannot help.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EAFNOSUPPORT
                | libc::EPROTONOSUPPORT
                | libc::EINVAL
                | libc::EADDRNOTAVAIL
                | libc::EPERM
                | libc::ENODEV
        )
    )
}

/// Calls `attempt` until it succeeds, a fatal error comes, or the budget is
/// spent; returns the value and the number of tries it took.
pub async fn connect_with_retry<T, F, Fut>(
    cfg: RetryConfig,
    mut attempt: F,
) -> Result<(T, u32), GaveUp>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let deadline = Instant::now() + cfg.budget;
    let mut backoff = cfg.first_backoff;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let cut_off = (Instant::now() + cfg.attempt_limit()).min(deadline);
        let last = match timeout_at(cut_off, attempt(tries)).await {
            Ok(Ok(v)) => {
                if tries > 1 {
                    tracing::info!(tries, "Bluetooth connect worked after retrying");
                }
                return Ok((v, tries));
            }
            Ok(Err(e)) if is_fatal(&e) => return Err(GaveUp::Fatal(e)),
            Ok(Err(e)) => e,
            Err(_) if Instant::now() >= deadline => {
                return Err(GaveUp::Exhausted { tries, last: None });
            }
            Err(_) => io::Error::from_raw_os_error(libc::ETIMEDOUT),
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(GaveUp::Exhausted {
                tries,
                last: Some(last),
            });
        }
        tracing::debug!(tries, error = %last, ?backoff, "Bluetooth connect failed; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> RetryConfig {
        RetryConfig {
            budget: Duration::from_secs(10),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            min_attempt: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_connect_that_fails_twice_then_works_is_retried_and_counted() {
        let r = connect_with_retry(quick(), |n| async move {
            if n < 3 {
                Err(io::Error::from_raw_os_error(libc::EHOSTDOWN))
            } else {
                Ok(n)
            }
        })
        .await;
        assert!(matches!(r, Ok((3, 3))), "{r:?}");
    }

    #[tokio::test]
    async fn a_fatal_error_is_not_retried() {
        let mut calls = 0;
        let r: Result<((), u32), _> = connect_with_retry(quick(), |_| {
            calls += 1;
            async { Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)) }
        })
        .await;
        assert!(matches!(r, Err(GaveUp::Fatal(_))));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_ends_the_retries_with_the_last_error() {
        let cfg = RetryConfig {
            budget: Duration::from_secs(3),
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(1),
            min_attempt: Duration::from_secs(10),
        };
        let r: Result<((), u32), _> = connect_with_retry(cfg, |_| async {
            Err(io::Error::from_raw_os_error(libc::ECONNREFUSED))
        })
        .await;
        match r {
            // Tries at 0, 0.25, 0.75, 1.75 and 2.75 s; the next would start past 3 s.
            Err(GaveUp::Exhausted {
                tries,
                last: Some(e),
            }) => {
                assert_eq!(tries, 5);
                assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_that_hangs_is_cut_off_at_the_budget() {
        let cfg = RetryConfig {
            budget: Duration::from_secs(2),
            ..quick()
        };
        let r: Result<((), u32), _> =
            connect_with_retry(cfg, |_| std::future::pending::<io::Result<()>>()).await;
        assert!(matches!(
            r,
            Err(GaveUp::Exhausted {
                tries: 1,
                last: None
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_the_kernel_never_answers_is_given_up_and_made_again() {
        let cfg = RetryConfig {
            budget: Duration::from_secs(30),
            ..quick()
        };
        let started = Instant::now();
        let r = connect_with_retry(cfg, |n| async move {
            if n == 1 {
                std::future::pending::<io::Result<u32>>().await
            } else {
                Ok(n)
            }
        })
        .await;
        assert!(matches!(r, Ok((2, 2))), "{r:?}");
        // Cut off at the 10 s floor (a third of 30 s is 10 s too), then the first back-off.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(11),
            "{took:?}"
        );
    }
}
