//! The sidecar channel's wire types, generated from `proto/channel.proto`. The operator
//! serves [`proto::plugin_channel_server::PluginChannel`]; sidecars use
//! [`proto::plugin_channel_client::PluginChannelClient`].

/// Generated protobuf and gRPC code.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("hotload.channel.v1");
}

/// The token audience the operator accepts from sidecars.
pub const TOKEN_AUDIENCE: &str = "hotload.dev/channel";
