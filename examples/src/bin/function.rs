//! A function: joins the cluster, serves exactly one `Function.Reverse` call, replies, and
//! leaves cleanly. Call it with `greeter-client`'s sibling, any node's `call`, or:
//!
//! ```sh
//! MESH_CLUSTER_KEY=secret cargo run -p mesh-examples --bin function -- --join 127.0.0.1:7000
//! ```

use mesh_examples::Args;
use mesh_node::{typed, Service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_examples::init_tracing();
    let args = Args::parse(&[])?;
    let reverse = Service::new("Function").endpoint(
        "Reverse",
        typed(|_req, s: String| async move { Ok(s.chars().rev().collect::<String>()) }),
    );
    println!("function waiting for one Function.Reverse call");
    args.builder("function")?
        .service(reverse)
        .run_function()
        .await?;
    println!("served one call; left the cluster");
    Ok(())
}
