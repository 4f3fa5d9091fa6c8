//! Compiles proto/switchboard/**.proto with the vendored protoc, so building
//! needs no system protobuf compiler, and generates serde (proto3 JSON)
//! implementations so configurations can be read from and written to files.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "switchboard/v1alpha1/routing.proto",
    "switchboard/v1alpha1/control.proto",
    "switchboard/v1alpha1/calls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc) };

    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("switchboard_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        // Types carrying secrets get a hand-written, redacting Debug.
        // A node keeps a snapshot's numbers as slices of the request's
        // buffer (`Bytes`), not copies.
        .bytes(".switchboard.v1alpha1.RoutingConfigView.numbers")
        .skip_debug([
            ".switchboard.v1alpha1.Credentials",
            ".switchboard.v1alpha1.Agent",
            ".switchboard.v1alpha1.TlsClient",
            // Encoded numbers hold agents' bearer tokens.
            ".switchboard.v1alpha1.RoutingConfigView",
        ])
        .compile_protos(PROTOS, &["."])?;

    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".switchboard"])?;

    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
