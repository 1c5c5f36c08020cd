//! [`Failure`]: an error with the exit code it deserves (1 the operation failed, 2 bad usage).

/// A failure with the exit code it deserves.
pub(crate) struct Failure(pub(crate) u8, pub(crate) anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(1, e.into())
    }
}

/// Bad usage (flags, JSON, files): exit code 2.
pub(crate) fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}
