//! The sidecar channel's wire types, generated from `proto/channel.proto`. The operator
//! serves [`proto::plugin_channel_server::PluginChannel`]; sidecars use
//! [`proto::plugin_channel_client::PluginChannelClient`].

/// Generated protobuf and gRPC code.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("hotload.channel.v1");
}

/// The channel's codec: prost, with 512-byte instead of 8 KiB encode and decode buffers.
/// The operator holds one stream per pod, and its messages are a few hundred bytes; tonic's
/// default buffers were 16 KiB of every stream's memory (`bench rollout`, docs/benchmarks.md).
/// Buffers still grow for a larger message.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

const BUFFERS: fn() -> tonic::codec::BufferSettings =
    || tonic::codec::BufferSettings::new(512, 32 * 1024);

impl<T, U> tonic::codec::Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(BUFFERS())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(BUFFERS())
    }
}

/// The token audience the operator accepts from sidecars.
pub const TOKEN_AUDIENCE: &str = "hotload.dev/channel";
