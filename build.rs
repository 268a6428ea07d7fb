//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no system `protoc`
//! is needed) and writes the encoded descriptor set that gRPC reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/citycredit/v1/common.proto",
        "proto/citycredit/v1/indicator_service.proto",
        "proto/citycredit/v1/metric_submission_service.proto",
        "proto/citycredit/v1/code_audit_service.proto",
        "proto/citycredit/v1/scoring_service.proto",
        "proto/citycredit/v1/department_registry_service.proto",
        "proto/citycredit/v1/notification_service.proto",
        "proto/citycredit/v1/review_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(files, ["proto"])?;

    // `compile_fds` does not write the descriptor set reflection needs: encode it ourselves.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("citycredit_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
