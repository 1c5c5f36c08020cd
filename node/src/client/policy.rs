//! The retry and ejection policy of a call, without IO: how an attempt failed goes in; whether to
//! eject the node, try another, or give up comes out. This is where "a non-idempotent handler
//! never runs twice" is decided, and it is tested here exhaustively.

use std::time::{Duration, Instant};

use mesh_protocol::{code, RpcError, FRAMEWORK_ERROR_ID};

/// How one attempt failed, which decides whether another attempt is safe.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Nothing was sent: no connection, or no stream. Always safe to retry.
    NotSent(RpcError),
    /// The request may have reached a handler (the stream broke after we wrote, or the attempt
    /// ran out of time).
    MaybeRun(RpcError),
    /// The callee answered with an error.
    Reply(RpcError),
}

impl Failure {
    /// The error the caller sees if this failure is the last.
    pub(crate) fn into_error(self) -> RpcError {
        match self {
            Self::NotSent(e) | Self::MaybeRun(e) | Self::Reply(e) => e,
        }
    }
}

/// What to do about the node and the call after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Avoid this node for a while: it failed at the transport level or is shutting down.
    pub(crate) eject: bool,
    /// Another attempt on another node is safe.
    pub(crate) retry: bool,
}

/// Whether an error reply was issued by the framework before any handler ran (overload,
/// shutdown): safe to retry elsewhere whatever the endpoint.
pub(crate) fn refused_before_running(e: &RpcError) -> bool {
    e.id == FRAMEWORK_ERROR_ID && matches!(e.code, code::TOO_MANY_REQUESTS | code::UNAVAILABLE)
}

/// The verdict on `failure` of an attempt at an endpoint that is `idempotent` or not.
///
/// - A refusal before any handler ran (429 or 503 from the framework) is retried; a 503 also
///   ejects the node (it is shutting down), a 429 does not (it is only busy).
/// - Any other error reply is the handler's answer: returned as it is, and never held against
///   the node.
/// - Nothing sent: retried, and the node ejected.
/// - Maybe run: the node is ejected; the call is retried only if the endpoint is idempotent.
pub(crate) fn judge(failure: &Failure, idempotent: bool) -> Verdict {
    match failure {
        Failure::Reply(e) if refused_before_running(e) => Verdict {
            eject: e.code == code::UNAVAILABLE,
            retry: true,
        },
        Failure::Reply(_) => Verdict {
            eject: false,
            retry: false,
        },
        Failure::NotSent(_) => Verdict {
            eject: true,
            retry: true,
        },
        Failure::MaybeRun(_) => Verdict {
            eject: true,
            retry: idempotent,
        },
    }
}

/// Whether and when the next attempt of a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Try another node after this pause.
    Retry {
        /// The jittered backoff.
        pause: Duration,
    },
    /// No attempt is left, or the next would start after the deadline.
    Stop,
}

/// The retry budget of one call: attempts left, the backoff that doubles between them, and the
/// deadline none may start after.
#[derive(Debug, Clone)]
pub(crate) struct Retries {
    attempt: u32,
    max_retries: u32,
    backoff: Duration,
    deadline: Instant,
}

impl Retries {
    /// A budget of `max_retries` attempts after the first, the first pause `backoff`.
    pub(crate) fn new(max_retries: u32, backoff: Duration, deadline: Instant) -> Self {
        Self {
            attempt: 0,
            max_retries,
            backoff,
            deadline,
        }
    }

    /// The number of the attempt about to run: 0 for the first, 1 for the first retry.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a failure whose verdict allows a retry: whether another attempt runs, and after
    /// what pause. `jitter` (drawn from 0.5..1.5) scales the backoff.
    pub(crate) fn next(&mut self, now: Instant, jitter: f64) -> Step {
        if self.attempt >= self.max_retries {
            return Step::Stop;
        }
        let pause = Duration::try_from_secs_f64(self.backoff.as_secs_f64() * jitter)
            .unwrap_or(Duration::MAX);
        match now.checked_add(pause) {
            Some(at) if at < self.deadline => {}
            _ => return Step::Stop,
        }
        self.attempt += 1;
        self.backoff = self.backoff.saturating_mul(2);
        Step::Retry { pause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framework(code: u16) -> RpcError {
        RpcError::new(FRAMEWORK_ERROR_ID, code, "framework")
    }

    fn handler(code: u16) -> RpcError {
        RpcError::new("Greeter", code, "handler")
    }

    /// Every kind of failure, against both kinds of endpoint, with the verdict it must get.
    #[test]
    fn every_failure_gets_its_verdict() {
        let eject_retry = Verdict {
            eject: true,
            retry: true,
        };
        let retry_only = Verdict {
            eject: false,
            retry: true,
        };
        let eject_fail = Verdict {
            eject: true,
            retry: false,
        };
        let fail = Verdict {
            eject: false,
            retry: false,
        };
        let transport = || RpcError::unavailable(FRAMEWORK_ERROR_ID, "stream broke");
        // (failure, verdict for a non-idempotent endpoint, for an idempotent one)
        let table: Vec<(Failure, Verdict, Verdict)> = vec![
            (Failure::NotSent(transport()), eject_retry, eject_retry),
            (Failure::MaybeRun(transport()), eject_fail, eject_retry),
            (
                Failure::Reply(framework(code::UNAVAILABLE)),
                eject_retry,
                eject_retry,
            ),
            (
                Failure::Reply(framework(code::TOO_MANY_REQUESTS)),
                retry_only,
                retry_only,
            ),
            // The same codes from a handler: it ran, so they are its answer.
            (Failure::Reply(handler(code::UNAVAILABLE)), fail, fail),
            (Failure::Reply(handler(code::TOO_MANY_REQUESTS)), fail, fail),
            // Other framework replies are final: the call reached the node and was judged.
            (Failure::Reply(framework(code::NOT_FOUND)), fail, fail),
            (Failure::Reply(framework(code::BAD_REQUEST)), fail, fail),
            (Failure::Reply(framework(code::TIMEOUT)), fail, fail),
            (Failure::Reply(framework(code::INTERNAL)), fail, fail),
            (Failure::Reply(handler(code::INTERNAL)), fail, fail),
            (Failure::Reply(handler(code::BAD_REQUEST)), fail, fail),
        ];
        for (failure, plain, idempotent) in table {
            assert_eq!(judge(&failure, false), plain, "{failure:?}, not idempotent");
            assert_eq!(judge(&failure, true), idempotent, "{failure:?}, idempotent");
        }
    }

    /// The one rule that matters most, stated on its own: nothing that may have reached a
    /// non-idempotent handler is ever retried.
    #[test]
    fn a_non_idempotent_call_that_may_have_run_is_never_retried() {
        for e in [
            RpcError::unavailable(FRAMEWORK_ERROR_ID, "stream broke"),
            RpcError::timeout(FRAMEWORK_ERROR_ID, "attempt timeout"),
            framework(code::TOO_MANY_REQUESTS),
        ] {
            assert!(!judge(&Failure::MaybeRun(e), false).retry);
        }
    }

    #[test]
    fn refusals_before_running_are_framework_429_and_503_only() {
        for c in [
            code::BAD_REQUEST,
            code::NOT_FOUND,
            code::TIMEOUT,
            code::INTERNAL,
            code::CLIENT_CLOSED,
        ] {
            assert!(!refused_before_running(&framework(c)), "{c}");
        }
        assert!(refused_before_running(&framework(code::UNAVAILABLE)));
        assert!(refused_before_running(&framework(code::TOO_MANY_REQUESTS)));
        assert!(!refused_before_running(&handler(code::UNAVAILABLE)));
    }

    #[test]
    fn retries_stop_after_the_budget_with_doubling_backoff() {
        let now = Instant::now();
        let mut r = Retries::new(3, Duration::from_millis(10), now + Duration::from_secs(60));
        assert_eq!(r.attempt(), 0);
        let mut pauses = Vec::new();
        while let Step::Retry { pause } = r.next(now, 1.0) {
            pauses.push(pause);
        }
        assert_eq!(
            pauses,
            [10, 20, 40].map(Duration::from_millis).to_vec(),
            "three retries, the backoff doubling"
        );
        assert_eq!(r.attempt(), 3);
        assert_eq!(r.next(now, 1.0), Step::Stop);
    }

    #[test]
    fn jitter_scales_the_pause() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        let mut low = Retries::new(1, Duration::from_millis(100), deadline);
        let mut high = low.clone();
        assert_eq!(
            low.next(now, 0.5),
            Step::Retry {
                pause: Duration::from_millis(50)
            }
        );
        assert_eq!(
            high.next(now, 1.5),
            Step::Retry {
                pause: Duration::from_millis(150)
            }
        );
    }

    #[test]
    fn no_retry_starts_at_or_after_the_deadline() {
        let now = Instant::now();
        let mut r = Retries::new(
            5,
            Duration::from_millis(100),
            now + Duration::from_millis(100),
        );
        assert_eq!(
            r.next(now, 1.0),
            Step::Stop,
            "the pause would end at the deadline"
        );
        let mut r = Retries::new(
            5,
            Duration::from_millis(100),
            now + Duration::from_millis(101),
        );
        assert!(matches!(r.next(now, 1.0), Step::Retry { .. }));
        assert_eq!(
            r.next(now, 1.0),
            Step::Stop,
            "the second pause (200 ms) would pass it"
        );
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        let now = Instant::now();
        let mut r = Retries::new(0, Duration::from_millis(1), now + Duration::from_secs(1));
        assert_eq!(r.next(now, 1.0), Step::Stop);
    }

    #[test]
    fn huge_backoffs_stop_instead_of_overflowing() {
        let now = Instant::now();
        let mut r = Retries::new(u32::MAX, Duration::MAX, now + Duration::from_secs(1));
        assert_eq!(r.next(now, 1.5), Step::Stop);
    }
}
