//! Compiles proto/channel.proto with protox (a pure-Rust protobuf compiler), so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/channel.proto");
    let descriptors = protox::compile(["proto/channel.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::SmallBufferCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
