//! Where the control plane puts what it proves: exports and receipts in
//! the stack's bucket, every object encrypted with the stack's KMS key
//! (SSE-KMS), and receipts signed with the stack's asymmetric KMS key, so
//! that anyone with its public key can check one.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use tenant_users::secret::describe_sdk_error;

/// The algorithm of every receipt's signature (the key is ECC_NIST_P256).
pub const SIGNING_ALGORITHM: &str = "ECDSA_SHA_256";

/// KMS signs a message of at most this many bytes (`MessageType::Raw`).
pub const MAX_SIGNED_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Call(String),
    #[error("the receipt is {0} bytes; KMS signs at most {MAX_SIGNED_BYTES}")]
    TooLarge(usize),
}

/// The bucket and its encryption key.
#[derive(Clone)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    pub name: String,
    key_id: String,
}

impl Bucket {
    pub fn new(sdk: &aws_types::SdkConfig, name: String, key_id: String) -> Self {
        let mut config = aws_sdk_s3::config::Builder::from(sdk);
        // A local endpoint (moto in tests) serves buckets by path only.
        if sdk.endpoint_url().is_some() {
            config = config.force_path_style(true);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            name,
            key_id,
        }
    }

    /// Writes `body` at `key`, encrypted with the bucket's KMS key.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&self.key_id)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(drop)
            .map_err(|e| StoreError::Call(describe_sdk_error("s3", &e)))
    }
}

/// The receipts' signing key.
#[derive(Clone)]
pub struct Signer {
    client: aws_sdk_kms::Client,
    pub key_id: String,
}

impl Signer {
    pub fn new(sdk: &aws_types::SdkConfig, key_id: String) -> Self {
        Self {
            client: aws_sdk_kms::Client::new(sdk),
            key_id,
        }
    }

    /// The DER signature (ECDSA over SHA-256 of `message`, as KMS computes
    /// it for a raw message).
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StoreError> {
        if message.len() > MAX_SIGNED_BYTES {
            return Err(StoreError::TooLarge(message.len()));
        }
        let output = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| StoreError::Call(describe_sdk_error("kms", &e)))?;
        output
            .signature()
            .map(|s| s.as_ref().to_vec())
            .ok_or_else(|| StoreError::Call("kms: Sign returned no signature".into()))
    }
}
