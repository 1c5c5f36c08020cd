//! What a handler is: the [`Request`] it sees, the [`Handler`] trait, [`typed`] handlers from async
//! functions, and [`Wrapper`]s (middleware) around them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_protocol::{CallHeader, ContentType, RpcError};
use serde::{de::DeserializeOwned, Serialize};

use crate::wire::BoxFuture;

/// A call as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Service name.
    pub service: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Caller metadata.
    pub metadata: BTreeMap<String, String>,
    /// When the caller stops waiting, if it set a deadline.
    pub deadline: Option<Instant>,
    /// Content type of the body (and of the reply).
    pub content_type: ContentType,
    /// The routing key the caller used, if any.
    pub routing_key: Option<String>,
    /// The caller's advertised address (from its certificate).
    pub caller: SocketAddr,
    /// The encoded request body.
    pub body: Bytes,
}

impl Request {
    /// The request a handler sees for a call with `header` from `caller`.
    pub(crate) fn from_header(
        header: CallHeader,
        content_type: ContentType,
        caller: SocketAddr,
        body: Bytes,
    ) -> Self {
        Self {
            deadline: header
                .deadline_us
                .map(|us| Instant::now() + Duration::from_micros(us)),
            service: header.service,
            endpoint: header.endpoint,
            metadata: header.metadata,
            content_type,
            routing_key: header.routing_key,
            caller,
            body,
        }
    }

    /// Decodes the body as `T`; a body that does not decode is a 400.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        self.content_type
            .decode(&self.body)
            .map_err(|e| RpcError::bad_request(&self.service, format!("undecodable request: {e}")))
    }

    /// Encodes a reply in the request's content type.
    pub fn encode<T: Serialize>(&self, reply: &T) -> Result<Bytes, RpcError> {
        self.content_type
            .encode(reply)
            .map(Bytes::from)
            .map_err(|e| RpcError::internal(&self.service, format!("unencodable reply: {e}")))
    }
}

/// Serves one endpoint: takes a request, returns the encoded reply or an error.
pub trait Handler: Send + Sync + 'static {
    /// Handles `req`.
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(req))
    }
}

/// A handler from a typed async function: the request body is decoded into `Req` (a 400 if it
/// does not decode), the `Resp` is encoded in the caller's content type.
///
/// # Examples
///
/// ```
/// use mesh_node::typed;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Hello { name: String }
/// #[derive(Serialize)]
/// struct Greeting { greeting: String }
///
/// let handler = typed(|_req, hello: Hello| async move {
///     Ok(Greeting { greeting: format!("Hello {}", hello.name) })
/// });
/// # let _ = handler;
/// ```
pub fn typed<Req, Resp, F, Fut>(f: F) -> impl Handler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Request, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    let f = Arc::new(f);
    move |req: Request| {
        let f = f.clone();
        async move {
            let body: Req = req.decode()?;
            let reply = f(req.clone(), body).await?;
            req.encode(&reply)
        }
    }
}

/// Middleware around handlers (go-micro's handler wrappers): gets the request and the next
/// handler, and may inspect, change, short-circuit or time the call.
pub trait Wrapper: Send + Sync + 'static {
    /// Handles `req`, usually by calling `next`.
    fn wrap(&self, req: Request, next: Arc<dyn Handler>) -> BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> Wrapper for F
where
    F: Fn(Request, Arc<dyn Handler>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn wrap(&self, req: Request, next: Arc<dyn Handler>) -> BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(req, next))
    }
}

struct Wrapped {
    wrapper: Arc<dyn Wrapper>,
    inner: Arc<dyn Handler>,
}

impl Handler for Wrapped {
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>> {
        self.wrapper.wrap(req, self.inner.clone())
    }
}

/// Applies `wrappers` around `handler`, the first wrapper outermost.
pub(crate) fn wrap_all(
    handler: Arc<dyn Handler>,
    wrappers: &[Arc<dyn Wrapper>],
) -> Arc<dyn Handler> {
    wrappers.iter().rev().fold(handler, |inner, w| {
        Arc::new(Wrapped {
            wrapper: w.clone(),
            inner,
        })
    })
}
