//! Generates the `orch.v1` API from `proto/` at build time.
//!
//! `protox` is a protobuf compiler written in Rust, so a fresh machine builds
//! with `cargo` alone: no system `protoc`. The encoded descriptor set is written
//! next to the generated code and served by the manager's gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "orch/v1/types.proto",
    "orch/v1/service.proto",
    "orch/v1/events.proto",
    "orch/v1/cluster.proto",
    "orch/v1/dispatcher.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("orch_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
