//! Generates the Rust code and the encoded descriptor set for every Coffer
//! proto. protoc comes from `protoc-bin-vendored`, so a fresh machine needs no
//! system protoc.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "coffer/common/v1/common.proto",
    "coffer/keys/v1/keys.proto",
    "coffer/audit/v1/audit.proto",
    "coffer/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let well_known_includes = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("coffer_descriptor.bin"))
        .compile_with_config(
            prost_config,
            &PROTO_FILES.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("."), well_known_includes],
        )?;

    for proto in PROTO_FILES {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
