//! Code generated from `proto/citycredit/v1` by `build.rs` (prost messages, tonic clients and
//! servers), and the encoded descriptor set that gRPC reflection serves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `citycredit.v1`.
pub mod v1 {
    tonic::include_proto!("citycredit.v1");
}

/// The encoded `FileDescriptorSet` of every citycredit proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/citycredit_descriptor.bin"));
