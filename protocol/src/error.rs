//! The structured error that crosses the wire in a reply: id, code, detail, status.

use serde::{Deserialize, Serialize};

/// `id` of errors raised by the framework itself, not by a handler. Only a 429 or 503 with this id
/// means "refused before any handler ran"; a handler's own error with this id is re-labelled with
/// its service's name (see `docs/PROTOCOL.md`).
pub const FRAMEWORK_ERROR_ID: &str = "mesh";

/// HTTP-like error codes used by mesh. Other values may appear on the wire and must be passed
/// through unchanged by implementations that do not know them.
pub mod code {
    /// The request was malformed: undecodable body, unknown content type, bad arguments.
    pub const BAD_REQUEST: u16 = 400;
    /// The caller presented no credentials, or credentials that did not verify.
    pub const UNAUTHORIZED: u16 = 401;
    /// The caller is known but not allowed to do this.
    pub const FORBIDDEN: u16 = 403;
    /// No such service, endpoint, or node.
    pub const NOT_FOUND: u16 = 404;
    /// The deadline passed before a reply was produced.
    pub const TIMEOUT: u16 = 408;
    /// The request conflicts with the current state.
    pub const CONFLICT: u16 = 409;
    /// The callee is over its concurrency or rate limit. Safe to retry elsewhere.
    pub const TOO_MANY_REQUESTS: u16 = 429;
    /// The caller went away before the reply (nginx's "Client Closed Request").
    pub const CLIENT_CLOSED: u16 = 499;
    /// The handler failed (or panicked).
    pub const INTERNAL: u16 = 500;
    /// The callee is shutting down, or no node can serve the request.
    pub const UNAVAILABLE: u16 = 503;

    /// The standard reason phrase for `code`, or `"Unknown"`.
    pub fn status(code: u16) -> &'static str {
        match code {
            BAD_REQUEST => "Bad Request",
            UNAUTHORIZED => "Unauthorized",
            FORBIDDEN => "Forbidden",
            NOT_FOUND => "Not Found",
            TIMEOUT => "Request Timeout",
            CONFLICT => "Conflict",
            TOO_MANY_REQUESTS => "Too Many Requests",
            CLIENT_CLOSED => "Client Closed Request",
            INTERNAL => "Internal Server Error",
            UNAVAILABLE => "Service Unavailable",
            _ => "Unknown",
        }
    }
}

/// An error reply, in go-micro's shape.
///
/// On the wire it is a MessagePack map `{"id": str, "code": u16, "detail": str, "status": str}`.
///
/// # Examples
///
/// ```
/// use mesh_protocol::{code, RpcError};
///
/// let e = RpcError::not_found("Greeter", "no endpoint Greeter.Bye");
/// assert_eq!(e.code, code::NOT_FOUND);
/// assert_eq!(e.status, "Not Found");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("{id}: {code} {status}: {detail}")]
pub struct RpcError {
    /// Who raised it, usually the service name (`"Greeter"`) or `"mesh"` for the framework.
    #[serde(default)]
    pub id: String,
    /// HTTP-like code; see [`code`].
    pub code: u16,
    /// Human-readable detail.
    #[serde(default)]
    pub detail: String,
    /// Reason phrase of `code` (`"Not Found"`).
    #[serde(default)]
    pub status: String,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(id: impl Into<String>, detail: impl Into<String>) -> Self {
                Self::new(id, code::$code, detail)
            }
        )*
    };
}

impl RpcError {
    /// An error with `code` and its standard status phrase.
    pub fn new(id: impl Into<String>, code: u16, detail: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            code,
            detail: detail.into(),
            status: code::status(code).to_owned(),
        }
    }

    constructors! {
        /// 400: the request was malformed.
        bad_request => BAD_REQUEST,
        /// 401: the caller is not authenticated.
        unauthorized => UNAUTHORIZED,
        /// 403: the caller is not allowed.
        forbidden => FORBIDDEN,
        /// 404: no such service or endpoint.
        not_found => NOT_FOUND,
        /// 408: the deadline passed.
        timeout => TIMEOUT,
        /// 409: conflict with current state.
        conflict => CONFLICT,
        /// 429: the callee is over its limit.
        too_many_requests => TOO_MANY_REQUESTS,
        /// 500: the handler failed.
        internal => INTERNAL,
        /// 503: unavailable.
        unavailable => UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{from_msgpack, to_msgpack};

    #[test]
    fn constructors_set_code_and_status() {
        let cases = [
            (RpcError::bad_request("s", "d"), 400, "Bad Request"),
            (RpcError::unauthorized("s", "d"), 401, "Unauthorized"),
            (RpcError::forbidden("s", "d"), 403, "Forbidden"),
            (RpcError::not_found("s", "d"), 404, "Not Found"),
            (RpcError::timeout("s", "d"), 408, "Request Timeout"),
            (RpcError::conflict("s", "d"), 409, "Conflict"),
            (
                RpcError::too_many_requests("s", "d"),
                429,
                "Too Many Requests",
            ),
            (RpcError::internal("s", "d"), 500, "Internal Server Error"),
            (RpcError::unavailable("s", "d"), 503, "Service Unavailable"),
        ];
        for (e, c, s) in cases {
            assert_eq!((e.code, e.status.as_str(), e.id.as_str()), (c, s, "s"));
        }
        assert_eq!(RpcError::new("x", 418, "teapot").status, "Unknown");
    }

    #[test]
    fn wire_shape_is_a_named_map() {
        let e = RpcError::timeout("Greeter", "deadline exceeded");
        let bytes = to_msgpack(&e).unwrap();
        let v: serde_json::Value = from_msgpack(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"Greeter","code":408,"detail":"deadline exceeded","status":"Request Timeout"})
        );
        // A peer may omit everything but the code.
        let minimal: RpcError =
            from_msgpack(&to_msgpack(&serde_json::json!({"code": 503})).unwrap()).unwrap();
        assert_eq!(minimal.code, 503);
    }
}
