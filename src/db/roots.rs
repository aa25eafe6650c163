//! The database's trusted roots, handed to OpenSSL unparsed: each is parsed
//! only when a handshake's verification asks the store for an issuer with
//! its subject name (as OpenSSL's own hashed-directory lookup does, from
//! memory instead of files).
//!
//! Why: OpenSSL 3 decodes every certificate's public key through its
//! decoder framework, about 85 µs of CPU each; parsing the 12 roots a
//! region trusts up front cost 1.1 ms of every cold start (`perf`,
//! BENCHMARKS.md), while a handshake needs one or two of them. The trust
//! is the same: the store finds exactly these certificates, nothing else,
//! and OpenSSL verifies the chain as before. A root that does not parse
//! when asked for is not found, so the handshake fails (closed).
//!
//! At set-up each certificate's outer structure is walked and its subject
//! parsed (no key decoding), so a file that is not a certificate bundle is
//! still refused at cold start.

use std::ffi::{c_char, c_int, c_long, c_uchar, c_void};
use std::sync::{Mutex, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

// libcrypto (statically linked with `vendored-openssl`): the lookup-method
// API openssl-sys leaves unbound, with opaque pointers.
unsafe extern "C" {
    fn X509_LOOKUP_meth_new(name: *const c_char) -> *mut c_void;
    fn X509_LOOKUP_meth_set_get_by_subject(method: *mut c_void, f: GetBySubject) -> c_int;
    fn X509_STORE_add_lookup(store: *mut c_void, method: *const c_void) -> *mut c_void;
    fn X509_LOOKUP_set_method_data(lookup: *mut c_void, data: *mut c_void) -> c_int;
    fn X509_LOOKUP_get_method_data(lookup: *const c_void) -> *mut c_void;
    fn X509_LOOKUP_get_store(lookup: *const c_void) -> *mut c_void;
    fn X509_OBJECT_set1_X509(object: *mut c_void, x509: *mut c_void) -> c_int;
    fn X509_STORE_add_cert(store: *mut c_void, x509: *mut c_void) -> c_int;
    fn X509_free(x509: *mut c_void);
    fn d2i_X509(out: *mut *mut c_void, der: *mut *const c_uchar, len: c_long) -> *mut c_void;
    fn d2i_X509_NAME(out: *mut *mut c_void, der: *mut *const c_uchar, len: c_long) -> *mut c_void;
    fn X509_NAME_free(name: *mut c_void);
    fn X509_NAME_cmp(a: *const c_void, b: *const c_void) -> c_int;
    fn SSL_CTX_get_cert_store(ctx: *const c_void) -> *mut c_void;
}

type GetBySubject = unsafe extern "C" fn(*mut c_void, c_int, *const c_void, *mut c_void) -> c_int;

/// `X509_LU_X509` of OpenSSL's `X509_LOOKUP_TYPE`.
const LOOKUP_CERTIFICATE: c_int = 1;

/// One root: its DER, and its subject parsed (an `X509_NAME`, owned).
struct Root {
    der: Vec<u8>,
    subject: *mut c_void,
}

/// The roots a store may find. Given to OpenSSL as the lookup's data, so
/// it lives as long as the process (one per connector built: one per cold
/// start). The mutex keeps OpenSSL's name comparisons, which may cache an
/// encoding on the name, to one thread at a time.
struct Roots(Mutex<Vec<Root>>);

impl Drop for Root {
    fn drop(&mut self) {
        // SAFETY: `subject` came from d2i_X509_NAME and is freed once.
        unsafe { X509_NAME_free(self.subject) };
    }
}

// SAFETY: the raw names are only touched under the mutex.
unsafe impl Send for Root {}

/// Every certificate of `pem`, ready for [`install`]; an error if there is
/// none, or one is not a certificate with a parsable subject.
pub fn parse(pem: &[u8]) -> Result<Vec<LazyRoot>, String> {
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM: {e:?}"))?;
        let der = cert.as_ref().to_vec();
        let subject = subject_of(&der).ok_or("a certificate whose structure does not parse")?;
        let mut p = subject.as_ptr();
        // SAFETY: `p` points into `subject`, whose length is given.
        let name = unsafe { d2i_X509_NAME(std::ptr::null_mut(), &mut p, subject.len() as c_long) };
        if name.is_null() {
            return Err("a certificate whose subject does not parse".into());
        }
        out.push(LazyRoot(Root { der, subject: name }));
    }
    if out.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(out)
}

/// A root parsed as far as its subject.
pub struct LazyRoot(Root);

/// Makes the store of `ctx` (an `SSL_CTX`) find `roots` by subject.
pub fn install(ctx: *mut c_void, roots: Vec<LazyRoot>) -> Result<(), String> {
    static METHOD: OnceLock<usize> = OnceLock::new();
    let method = *METHOD.get_or_init(|| {
        // SAFETY: a new method with a static name; the callback matches
        // OpenSSL's get_by_subject signature.
        unsafe {
            let m = X509_LOOKUP_meth_new(c"tenant-users lazy roots".as_ptr());
            if !m.is_null() && X509_LOOKUP_meth_set_get_by_subject(m, by_subject) != 1 {
                return 0;
            }
            m as usize
        }
    }) as *mut c_void;
    if method.is_null() {
        return Err("TLS set-up failed: no lookup method".into());
    }
    let roots = Box::new(Roots(Mutex::new(roots.into_iter().map(|r| r.0).collect())));
    // SAFETY: `ctx` is a live SSL_CTX; the store it returns is borrowed;
    // the lookup belongs to the store; the data is leaked on purpose (see
    // `Roots`), so the pointer stays valid for the store's life.
    unsafe {
        let store = SSL_CTX_get_cert_store(ctx);
        if store.is_null() {
            return Err("TLS set-up failed: no certificate store".into());
        }
        let lookup = X509_STORE_add_lookup(store, method);
        if lookup.is_null() {
            return Err("TLS set-up failed: the roots' lookup".into());
        }
        if X509_LOOKUP_set_method_data(lookup, Box::into_raw(roots).cast()) != 1 {
            return Err("TLS set-up failed: the roots' lookup data".into());
        }
    }
    Ok(())
}

/// OpenSSL's question: a certificate with subject `name`? Parses every
/// root with that subject (a CA re-keyed keeps its name), adds each to the
/// store, and answers with the first; 0 (not found) otherwise.
unsafe extern "C" fn by_subject(
    lookup: *mut c_void,
    kind: c_int,
    name: *const c_void,
    ret: *mut c_void,
) -> c_int {
    if kind != LOOKUP_CERTIFICATE || name.is_null() || ret.is_null() {
        return 0;
    }
    // SAFETY: the data was set by `install` to a leaked `Roots`.
    let (roots, store) = unsafe {
        (
            X509_LOOKUP_get_method_data(lookup) as *const Roots,
            X509_LOOKUP_get_store(lookup),
        )
    };
    if roots.is_null() || store.is_null() {
        return 0;
    }
    // SAFETY: see above; never freed.
    let Ok(roots) = (unsafe { &*roots }).0.lock() else {
        return 0;
    };
    let mut found = 0;
    for root in roots.iter() {
        // SAFETY: both are valid X509_NAMEs; ours is only used here, under
        // the lock.
        if unsafe { X509_NAME_cmp(root.subject, name) } != 0 {
            continue;
        }
        let mut p = root.der.as_ptr();
        // SAFETY: `p` points into `root.der`, whose length is given; the
        // parsed certificate is ours to free, the store and `ret` take
        // references of their own.
        unsafe {
            let x509 = d2i_X509(std::ptr::null_mut(), &mut p, root.der.len() as c_long);
            if x509.is_null() {
                continue;
            }
            if X509_STORE_add_cert(store, x509) == 1
                && found == 0
                && X509_OBJECT_set1_X509(ret, x509) == 1
            {
                found = 1;
            }
            X509_free(x509);
        }
    }
    found
}

/// The subject Name of a DER certificate, with its tag and length: the
/// sixth field of the TBSCertificate (after the optional version, serial,
/// signature algorithm, issuer and validity), RFC 5280 § 4.1.
fn subject_of(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(cert, 0x30)?;
    let (tbs, _) = element(contents(certificate)?, 0x30)?;
    let mut rest = contents(tbs)?;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    for tag in [0x02, 0x30, 0x30, 0x30] {
        rest = element(rest, tag)?.1;
    }
    Some(element(rest, 0x30)?.0)
}

/// The DER element at the start of `der` if its tag is `tag`: (the whole
/// element, what follows it).
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *der.first()? != tag {
        return None;
    }
    let (header, len) = match *der.get(1)? {
        n if n < 0x80 => (2, n as usize),
        0x81..=0x84 => {
            let k = (der[1] & 0x7f) as usize;
            let bytes = der.get(2..2 + k)?;
            (
                2 + k,
                bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize),
            )
        }
        _ => return None,
    };
    let end = header.checked_add(len)?;
    (end <= der.len()).then(|| der.split_at(end))
}

/// The contents of a DER element (without its tag and length).
fn contents(element: &[u8]) -> Option<&[u8]> {
    let header = match *element.get(1)? {
        n if n < 0x80 => 2,
        n => 2 + (n & 0x7f) as usize,
    };
    element.get(header..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509;

    #[test]
    fn the_subject_is_found_as_openssl_reads_it() {
        let pem = super::super::RDS_CA_BUNDLE.as_bytes();
        let parsed = X509::stack_from_pem(pem).unwrap();
        let ours: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(parsed.len(), ours.len());
        for (x509, der) in parsed.iter().zip(&ours) {
            assert_eq!(
                subject_of(der.as_ref()),
                Some(x509.subject_name().to_der().unwrap().as_slice())
            );
        }
    }

    #[test]
    fn what_is_not_a_certificate_bundle_is_refused() {
        assert!(parse(b"").is_err());
        assert!(parse(b"not a bundle").is_err());
        let bogus = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        assert!(parse(bogus.as_bytes()).is_err());
        assert!(parse(super::super::RDS_CA_BUNDLE.as_bytes()).is_ok());
    }

    /// A CA (or, with `issuer`, a certificate it signs) named `cn`.
    fn cert(
        cn: &str,
        issuer: Option<(
            &openssl::x509::X509Ref,
            &openssl::pkey::PKeyRef<openssl::pkey::Private>,
        )>,
    ) -> (X509, openssl::pkey::PKey<openssl::pkey::Private>) {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        use openssl::x509::extension::BasicConstraints;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        match issuer {
            None => {
                b.set_issuer_name(&name).unwrap();
                b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                    .unwrap();
                b.sign(&key, MessageDigest::sha256()).unwrap();
            }
            Some((ca, ca_key)) => {
                b.set_issuer_name(ca.subject_name()).unwrap();
                b.sign(ca_key, MessageDigest::sha256()).unwrap();
            }
        }
        (b.build(), key)
    }

    /// Whether `leaf` verifies against a connector's store holding `roots`
    /// (PEM) lazily, and nothing else.
    fn verifies(roots: &[u8], leaf: &X509) -> bool {
        use openssl::ssl::{SslConnector, SslMethod};
        use openssl::stack::Stack;
        use openssl::x509::X509StoreContext;
        use openssl::x509::store::X509StoreBuilder;
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.set_cert_store(X509StoreBuilder::new().unwrap().build());
        install(builder.as_ptr().cast(), parse(roots).unwrap()).unwrap();
        let connector = builder.build();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(
            connector.context().cert_store(),
            leaf,
            &Stack::new().unwrap(),
            |c| c.verify_cert(),
        )
        .unwrap()
    }

    #[test]
    fn only_a_chain_to_one_of_the_roots_verifies() {
        let (ca, ca_key) = cert("Trusted Root", None);
        let (other, other_key) = cert("Other Root", None);
        // Same name as the trusted root, another key.
        let (impostor, impostor_key) = cert("Trusted Root", None);
        let (good, _) = cert("db.test", Some((&ca, &ca_key)));
        let (bad, _) = cert("db.test", Some((&other, &other_key)));
        let (forged, _) = cert("db.test", Some((&impostor, &impostor_key)));
        let mut pem = other.to_pem().unwrap();
        pem.extend(ca.to_pem().unwrap());
        let only_ca = ca.to_pem().unwrap();
        assert!(verifies(&only_ca, &good));
        assert!(verifies(&pem, &good));
        assert!(!verifies(&only_ca, &bad), "another CA's certificate");
        assert!(
            !verifies(&only_ca, &forged),
            "a CA of the same name, another key"
        );
        assert!(!verifies(&only_ca, &other), "an untrusted root itself");
    }

    #[test]
    fn truncated_elements_are_not_read_past_their_end() {
        assert_eq!(element(&[0x30, 0x05, 1, 2], 0x30), None);
        assert_eq!(element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], 0x30), None);
        assert_eq!(
            element(&[0x02, 0x01, 7, 9], 0x02),
            Some((&[0x02, 0x01, 7][..], &[9][..]))
        );
        assert_eq!(subject_of(&[0x30, 0x00]), None);
    }
}
