//! [`SecurityError`]: why credentials could not be loaded or used.

/// Why credentials could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// An empty cluster key.
    #[error("the cluster key is empty")]
    EmptyKey,
    /// Generating or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (for example a certificate that is not a valid CA).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate or key file could not be read or parsed.
    #[error("{0}")]
    Load(String),
}
