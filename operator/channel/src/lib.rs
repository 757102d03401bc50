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

/// Puts the sidecar's pod token on an attach request as `authorization: Bearer <token>`,
/// marked sensitive so HPACK sends it as a never-indexed literal (RFC 7541 §7.1.3): a
/// credential is never kept in either peer's header table.
///
/// # Errors
/// The token is not a valid header value (say, a newline inside it).
pub fn authorize<T>(
    request: &mut tonic::Request<T>,
    token: &str,
) -> Result<(), tonic::metadata::errors::InvalidMetadataValue> {
    let mut bearer: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {}", token.trim()).parse()?;
    bearer.set_sensitive(true);
    request.metadata_mut().insert("authorization", bearer);
    Ok(())
}

/// The bearer token [`authorize`] put on `metadata`, if there is one.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_travels_as_a_sensitive_bearer() {
        let mut request = tonic::Request::new(());
        authorize(&mut request, "abc.def\n").expect("a valid token");
        let value = request.metadata().get("authorization").expect("set");
        assert!(value.is_sensitive());
        assert_eq!(bearer_token(request.metadata()), Some("abc.def"));
    }

    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        let mut request = tonic::Request::new(());
        assert!(authorize(&mut request, "abc\ndef").is_err());
        assert_eq!(bearer_token(request.metadata()), None);
    }

    #[test]
    fn other_schemes_are_no_bearer_token() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Basic dTpw".parse().expect("ascii"));
        assert_eq!(bearer_token(request.metadata()), None);
    }
}
