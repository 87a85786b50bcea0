//! Compiles the test protos with protox (a pure-Rust protobuf compiler, so
//! no `protoc` is needed): the tonic server and client of the library
//! service, and its descriptor set (imports included) for the gateway's
//! `grpc` routes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "meridian/test/v1/library.proto";
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true);
    compiler.open_file(proto)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("library.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
