//! The interrupt handler's decisions (IHS): what each signal means.
//!
//! The glue runs one IHS task per transfer that receives [`Signal`]s and
//! carries out the [`Action`]s decided here: saving to the DB, scheduling
//! link retries, hashing, stopping. Keeping the decisions here means they are
//! unit-tested without tasks, files or clocks.

use std::time::Instant;

use crate::{Config, LinkId};

/// A signal sent to the interrupt handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A link failed; its writer is paused (not closed). `requeued` are the
    /// chunks it carried that went back to the queue.
    Error {
        /// The failed link.
        link: LinkId,
        /// What went wrong, for people.
        reason: String,
        /// Chunks given back to the other links.
        requeued: Vec<u64>,
    },
    /// Every chunk is acknowledged; `ok` is the verdict on the whole-file hash.
    Complete {
        /// Whether the hashes matched.
        ok: bool,
    },
    /// Ctrl-C, SIGTERM or `gateway stop`.
    UserStop,
}

/// What the IHS task must do for a signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Save the frame and its metadata (signal name, link, reason) in the DB.
    SaveFrame {
        /// The signal's name as stored ("ERROR", "USER_STOP").
        signal: &'static str,
    },
    /// Re-check the link at this time, then every `retry_interval`.
    RetryLinkAt {
        /// The link to retry.
        link: LinkId,
        /// When.
        at: Instant,
    },
    /// Carry on with the other links.
    Continue,
    /// Delete the transfer's records on this side (COMPLETE, verdict ok).
    DeleteRecords,
    /// Keep the records: the transfer is not finished.
    KeepRecords,
    /// Make state durable, then end the process / transfer.
    Exit,
}

/// The IHS decisions for `signal` at `now`.
pub fn decide(signal: &Signal, cfg: &Config, now: Instant) -> Vec<Action> {
    match signal {
        Signal::Error { link, .. } => vec![
            Action::SaveFrame { signal: "ERROR" },
            Action::RetryLinkAt {
                link: *link,
                at: now + cfg.retry_interval,
            },
            Action::Continue,
        ],
        Signal::Complete { ok: true } => vec![Action::DeleteRecords],
        Signal::Complete { ok: false } => vec![Action::KeepRecords, Action::Exit],
        Signal::UserStop => vec![
            Action::SaveFrame {
                signal: "USER_STOP",
            },
            Action::Exit,
        ],
    }
}

impl Signal {
    /// The name stored in the DB.
    pub fn name(&self) -> &'static str {
        match self {
            Signal::Error { .. } => "ERROR",
            Signal::Complete { .. } => "COMPLETE",
            Signal::UserStop => "USER_STOP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_saves_frame_and_schedules_retry_after_interval() {
        let cfg = Config::default();
        let now = Instant::now();
        let acts = decide(
            &Signal::Error {
                link: 3,
                reason: "reset".into(),
                requeued: vec![1],
            },
            &cfg,
            now,
        );
        assert_eq!(
            acts,
            vec![
                Action::SaveFrame { signal: "ERROR" },
                Action::RetryLinkAt {
                    link: 3,
                    at: now + cfg.retry_interval
                },
                Action::Continue
            ]
        );
    }

    #[test]
    fn user_stop_saves_and_exits() {
        let acts = decide(&Signal::UserStop, &Config::default(), Instant::now());
        assert_eq!(
            acts,
            vec![
                Action::SaveFrame {
                    signal: "USER_STOP"
                },
                Action::Exit
            ]
        );
    }

    #[test]
    fn complete_ok_deletes_records_and_bad_keeps_them() {
        let now = Instant::now();
        let cfg = Config::default();
        assert_eq!(
            decide(&Signal::Complete { ok: true }, &cfg, now),
            vec![Action::DeleteRecords]
        );
        assert_eq!(
            decide(&Signal::Complete { ok: false }, &cfg, now),
            vec![Action::KeepRecords, Action::Exit]
        );
    }
}
