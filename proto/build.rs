//! Compiles records.proto with protox (no protoc needed) into prost messages,
//! plus tonic stubs when the `grpc` feature is on.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "tracegate/v1/records.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
