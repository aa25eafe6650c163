//! RS256 signatures checked with `ring` (already built for the AWS SDK's
//! TLS, and cross-compiled for arm64 with it): several times faster than
//! the `rsa` crate, which rebuilds the public key for every verification.
//! Everything else (signing, other algorithms, keys given as DER or of a
//! size `ring` does not take) stays with jsonwebtoken's RustCrypto
//! provider, so what verifies, and what is refused, does not change.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

struct RingRs256 {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl Verifier<Vec<u8>> for RingRs256 {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), Error> {
        ring::signature::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature,
        )
        .map_err(|_| Error::new())
    }
}

impl JwtVerifier for RingRs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// Bits of a big-endian modulus.
fn bits(n: &[u8]) -> usize {
    let n = &n[n.iter().take_while(|b| **b == 0).count()..];
    n.first()
        .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize)
}

fn verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *alg == Algorithm::RS256
        && let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind()
        && (2048..=8192).contains(&bits(n))
    {
        return Ok(Box::new(RingRs256 {
            n: n.clone(),
            e: e.clone(),
        }));
    }
    (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key)
}

/// Makes this the process's jsonwebtoken provider, if none was chosen
/// yet (the first use of jsonwebtoken fixes it). Idempotent.
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let base = &rust_crypto::DEFAULT_PROVIDER;
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: base.signer_factory,
        verifier_factory: verifier,
        key_utils: base.key_utils.clone(),
    });
    let _ = provider.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(bits(&[0, 0x80, 0]), 16);
        assert_eq!(bits(&[0x01]), 1);
        assert_eq!(bits(&[]), 0);
        assert_eq!(bits(&[0xff; 256]), 2048);
    }
}
