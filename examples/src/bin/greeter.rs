//! Serves `Greeter.Hello` until Ctrl-C, then leaves the cluster gracefully.
//!
//! ```sh
//! MESH_CLUSTER_KEY=secret cargo run -p mesh-examples --bin greeter -- --bind 127.0.0.1:7000
//! ```

use mesh_examples::{Args, HelloRequest, HelloResponse};
use mesh_node::{typed, Service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_examples::init_tracing();
    let args = Args::parse(&[])?;
    let greeter = Service::new("Greeter")
        .version("1.0.0")
        .idempotent_endpoint(
            "Hello",
            typed(|_req, r: HelloRequest| async move {
                Ok(HelloResponse {
                    greeting: format!("Hello {}", r.name),
                })
            }),
        );
    let node = args.builder("greeter")?.service(greeter).spawn().await?;
    println!("{} serving Greeter.Hello at {}", node.name(), node.addr());
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
