//! [`Service`]: a name, a version, metadata and endpoints with their handlers, as an application
//! declares them.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_protocol::{EndpointInfo, ServiceInfo};

use crate::rpc::handler::Handler;
use crate::rpc::streaming::StreamingHandler;

/// A service: a name, a version, metadata, and endpoints with their handlers.
///
/// # Examples
///
/// ```
/// use mesh_node::{typed, Service};
/// # #[derive(serde::Deserialize)] struct Hello { name: String }
/// # #[derive(serde::Serialize)] struct Greeting { greeting: String }
/// let greeter = Service::new("Greeter")
///     .version("1.0.0")
///     .idempotent_endpoint("Hello", typed(|_req, h: Hello| async move {
///         Ok(Greeting { greeting: format!("Hello {}", h.name) })
///     }));
/// ```
pub struct Service {
    pub(crate) info: ServiceInfo,
    pub(crate) handlers: Vec<(String, Arc<dyn Handler>)>,
    pub(crate) streams: Vec<(String, Arc<dyn StreamingHandler>)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service named `name` with no endpoints.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            info: ServiceInfo {
                name: name.into(),
                ..Default::default()
            },
            handlers: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// Adds a streaming endpoint (server, client or bidirectional stream: the handler reads
    /// and sends as many messages as it likes). Advertised with metadata `stream = "true"`.
    /// Streaming calls are never retried once the stream is open.
    pub fn stream_endpoint(mut self, name: &str, h: impl StreamingHandler) -> Self {
        self.info.endpoints.push(EndpointInfo {
            name: name.to_owned(),
            idempotent: false,
            metadata: [("stream".to_owned(), "true".to_owned())].into(),
        });
        self.streams.push((name.to_owned(), Arc::new(h)));
        self
    }

    /// Sets the advertised version.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.info.version = v.into();
        self
    }

    /// Adds advertised metadata.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.info.metadata.insert(key.into(), value.into());
        self
    }

    fn add(mut self, name: &str, idempotent: bool, h: impl Handler) -> Self {
        self.info.endpoints.push(EndpointInfo {
            name: name.to_owned(),
            idempotent,
            metadata: BTreeMap::new(),
        });
        self.handlers.push((name.to_owned(), Arc::new(h)));
        self
    }

    /// Adds an endpoint that must not run twice for one call: clients retry it only where the
    /// request provably never reached a handler.
    pub fn endpoint(self, name: &str, h: impl Handler) -> Self {
        self.add(name, false, h)
    }

    /// Adds an endpoint that is safe to run more than once: clients retry it on another node after
    /// any transport failure.
    pub fn idempotent_endpoint(self, name: &str, h: impl Handler) -> Self {
        self.add(name, true, h)
    }
}
