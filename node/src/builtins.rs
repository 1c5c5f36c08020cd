//! The built-in service `mesh` every node serves and never advertises: `mesh.Health`,
//! `mesh.Info`, `mesh.Stats`, `mesh.Members` and `mesh.Registry`, and the types they return.

use std::sync::Arc;
use std::time::Instant;

use mesh_membership::MembershipHandle;
use mesh_protocol::{RpcError, ServiceInfo, BUILTIN_SERVICE, FRAMEWORK_ERROR_ID};
use serde::{Deserialize, Serialize};

use crate::rpc::handler::typed;
use crate::rpc::router::Router;
use crate::stats::Stats;

fn stopped(_: mesh_membership::Stopped) -> RpcError {
    RpcError::unavailable(FRAMEWORK_ERROR_ID, "node is shut down")
}

/// What `mesh.Info` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// mesh version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Services served.
    pub services: Vec<ServiceInfo>,
}

/// What `mesh.Health` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`. (A node shutting down refuses every call with a 503, this one included.)
    pub status: String,
}

/// A member as `mesh.Members` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
    /// Generation of this run.
    pub generation: u64,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
}

impl From<mesh_membership::MemberInfo> for MemberView {
    fn from(m: mesh_membership::MemberInfo) -> Self {
        Self {
            name: m.name,
            addr: m.id.addr.to_string(),
            generation: m.id.generation,
            state: m.state.as_str().to_owned(),
        }
    }
}

pub(crate) fn add_builtins(
    router: &mut Router,
    name: &str,
    services: &[ServiceInfo],
    stats: Arc<Stats>,
    started: Instant,
    view: Arc<std::sync::OnceLock<MembershipHandle>>,
) {
    let unavailable = || RpcError::unavailable(FRAMEWORK_ERROR_ID, "membership not started");
    let v = view.clone();
    router.insert(
        BUILTIN_SERVICE,
        "Members",
        Arc::new(typed(move |_req, _: ()| {
            let v = v.clone();
            async move {
                let m = v.get().ok_or_else(unavailable)?;
                let members = m.members().await.map_err(stopped)?;
                Ok(members
                    .into_iter()
                    .map(MemberView::from)
                    .collect::<Vec<_>>())
            }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Registry",
        Arc::new(typed(move |_req, _: ()| {
            let v = view.clone();
            async move {
                let m = v.get().ok_or_else(unavailable)?;
                m.visible_records().await.map_err(stopped)
            }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Health",
        Arc::new(typed(|_req, _: ()| async move {
            Ok(Health {
                status: "ok".into(),
            })
        })),
    );
    let info = NodeInfo {
        name: name.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: 0,
        services: services.to_vec(),
    };
    router.insert(
        BUILTIN_SERVICE,
        "Info",
        Arc::new(typed(move |_req, _: ()| {
            let mut info = info.clone();
            info.uptime_s = started.elapsed().as_secs();
            async move { Ok(info) }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Stats",
        Arc::new(typed(move |_req, _: ()| {
            let snap = stats.snapshot();
            async move { Ok(snap) }
        })),
    );
}
