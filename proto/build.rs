//! Compiles `tollgate/v1/*.proto` with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tollgate/v1/distribution.proto",
        "tollgate/v1/admin.proto",
        "tollgate/v1/quota.proto",
        "tollgate/v1/approvals.proto",
        "tollgate/v1/rollouts.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
