//! Maille's certificate authority: a root made on first start and kept in the store (or a CA
//! the user gives, such as an intermediate of their own PKI), which signs each proxy a
//! short-lived certificate naming its SPIFFE ID ([`names::spiffe_id`]), served to its Envoy
//! over SDS on its ADS stream, and the control server's own certificate.
//!
//! Keys are ECDSA P-256. A certificate is valid from a minute before it is made (clocks
//! differ) for the configured lifetime; each ADS stream replaces its proxy's at half of it.

use crate::store::{Store, StoreError};
use maille_translate::names;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Default lifetime of a proxy's certificate.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Shortest lifetime accepted: a certificate is replaced at half its lifetime, and an Envoy
/// needs a moment to take a new one.
pub const MIN_LIFETIME: Duration = Duration::from_secs(4);

/// Lifetime of the root Maille makes.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far back a certificate's validity starts, for clocks that differ.
const BACKDATE: Duration = Duration::from_secs(60);

/// The store's name of the CA.
const STORED: &str = "ca";

/// The store's name of the control server's key (ADS and the admin port).
const SERVER_KEY: &str = "control-key";

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate or key cannot be read or made.
    #[error("certificate authority: {0}")]
    Cert(String),
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> CaError + '_ {
    move |e| CaError::Cert(format!("{what}: {e}"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    /// PEM: the signing CA's certificate first, then its chain to the root.
    certificate: String,
    /// PEM (PKCS#8) key of the signing CA.
    key: String,
}

/// A certificate and its key, as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM: the certificate, then the CA's chain.
    pub certificate_chain: String,
    /// PEM (PKCS#8).
    pub private_key: String,
    /// The end of its validity.
    pub not_after: SystemTime,
}

/// The certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The signing CA's certificate and its chain (appended to every certificate issued).
    chain: String,
    /// The trust bundle proxies verify peers with.
    trust: String,
    lifetime: Duration,
    issued: AtomicU64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("lifetime", &self.lifetime)
            .field("issued", &self.issued())
            .finish_non_exhaustive()
    }
}

fn root() -> Result<Stored, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(cert_err("making the root key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Maille");
    dn.push(DnType::CommonName, "Maille mesh CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + ROOT_LIFETIME).into();
    p.serial_number = Some(serial());
    let cert = p.self_signed(&key).map_err(cert_err("signing the root"))?;
    Ok(Stored {
        certificate: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn serial() -> SerialNumber {
    // rand's thread generator: a CSPRNG seeded from the system.
    let mut b: [u8; 16] = rand::random();
    // Positive, and never a leading zero byte.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

impl Ca {
    /// The CA kept in `store`, made (and kept) on first use: every server on the same store
    /// signs with the same CA, and a restart keeps it.
    pub fn load_or_create(store: &dyn Store, lifetime: Duration) -> Result<Ca, CaError> {
        let fresh = serde_json::to_vec(&root()?).map_err(|e| CaError::Cert(e.to_string()))?;
        let kept = store.create_secret(STORED, &fresh)?;
        let s: Stored = serde_json::from_slice(&kept)
            .map_err(|e| CaError::Cert(format!("the stored CA is unreadable: {e}")))?;
        Ca::from_pem(&s.certificate, &s.key, lifetime)
    }

    /// A CA from PEM: `certificate` the signing CA's certificate first, then its chain to
    /// the root (all of it becomes the trust bundle); `key` its private key (PKCS#8).
    pub fn from_pem(certificate: &str, key: &str, lifetime: Duration) -> Result<Ca, CaError> {
        if lifetime < MIN_LIFETIME {
            return Err(CaError::Cert(format!(
                "certificate lifetime {lifetime:?} is shorter than {MIN_LIFETIME:?}"
            )));
        }
        let key = KeyPair::from_pem(key).map_err(cert_err("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(certificate, key)
            .map_err(cert_err("reading the CA certificate"))?;
        Ok(Ca {
            issuer,
            chain: certificate.to_owned(),
            trust: certificate.to_owned(),
            lifetime,
            issued: AtomicU64::new(0),
        })
    }

    /// The trust bundle (PEM).
    pub fn trust_bundle(&self) -> &str {
        &self.trust
    }

    /// The lifetime of the certificates issued.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// How many certificates were issued since start.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// A new key and certificate for `spiffe_id` (a client and server certificate), with
    /// `hosts` (DNS names and IP addresses) too, for the configured lifetime.
    pub fn issue(&self, spiffe_id: &str, hosts: &[String]) -> Result<Issued, CaError> {
        self.issue_for(spiffe_id, hosts, self.lifetime)
    }

    /// As [`Ca::issue`], valid for `lifetime`.
    pub fn issue_for(
        &self,
        spiffe_id: &str,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("making a key"))?;
        self.issue_with(key, spiffe_id, hosts, lifetime)
    }

    /// The control server's certificate, for `hosts`, with a key kept in `store` (made on
    /// first start): a new certificate at each start, the same key, so that a client that
    /// pinned it (a browser told to take it) still takes it after a restart.
    pub fn issue_server(
        &self,
        store: &dyn Store,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let fresh = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("making a key"))?;
        let kept = store.create_secret(SERVER_KEY, fresh.serialize_pem().as_bytes())?;
        let pem = String::from_utf8(kept)
            .map_err(|_| CaError::Cert("the stored server key is not PEM".into()))?;
        let key = KeyPair::from_pem(&pem).map_err(cert_err("the stored server key"))?;
        self.issue_with(key, names::CONTROL_SPIFFE_ID, hosts, lifetime)
    }

    fn issue_with(
        &self,
        key: KeyPair,
        spiffe_id: &str,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Maille");
        p.distinguished_name = dn;
        let uri = spiffe_id
            .to_owned()
            .try_into()
            .map_err(cert_err("the SPIFFE ID"))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        for h in hosts {
            p.subject_alt_names
                .push(match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(h.clone().try_into().map_err(cert_err("a DNS name"))?)
                    }
                });
        }
        p.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign; they do not encipher (RFC 5480).
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + lifetime;
        p.not_before = (now - BACKDATE).into();
        p.not_after = not_after.into();
        p.serial_number = Some(serial());
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("signing"))?;
        self.issued.fetch_add(1, Ordering::Relaxed);
        Ok(Issued {
            certificate_chain: format!("{}{}", cert.pem(), self.chain),
            private_key: key.serialize_pem(),
            not_after,
        })
    }

    /// A certificate for the proxy `proxy` of `mesh`.
    pub fn issue_proxy(&self, mesh: &str, proxy: &str) -> Result<Issued, CaError> {
        self.issue(&names::spiffe_id(mesh, proxy), &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| p.unwrap().contents)
            .collect()
    }

    #[test]
    fn a_proxy_certificate_names_its_spiffe_id_and_chains_to_the_stored_root() {
        let store = MemoryStore::default();
        let ca = Ca::load_or_create(&store, Duration::from_secs(3600)).unwrap();
        // The same store gives the same CA.
        let again = Ca::load_or_create(&store, Duration::from_secs(3600)).unwrap();
        assert_eq!(ca.trust_bundle(), again.trust_bundle());
        let other = Ca::load_or_create(&MemoryStore::default(), Duration::from_secs(3600)).unwrap();
        assert_ne!(ca.trust_bundle(), other.trust_bundle());

        let issued = ca.issue_proxy("colorapp", "white").unwrap();
        let ders = parse(&issued.certificate_chain);
        assert_eq!(ders.len(), 2, "the certificate and the CA's");
        let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
        let roots = parse(ca.trust_bundle());
        let (_, root) = X509Certificate::from_der(&roots[0]).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec!["URI(spiffe://maille/mesh/colorapp/virtualNode/white)"]
        );
        assert!(!leaf.is_ca());
        assert!(root.is_ca());
        leaf.verify_signature(Some(root.public_key())).unwrap();
        // Signed by this CA and no other.
        let others = parse(other.trust_bundle());
        let (_, other_root) = X509Certificate::from_der(&others[0]).unwrap();
        assert!(leaf
            .verify_signature(Some(other_root.public_key()))
            .is_err());
        let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60);
        assert_eq!(ca.issued(), 1);

        let gw = ca
            .issue_proxy("colorapp", &names::gateway_proxy("ingress"))
            .unwrap();
        let gw_ders = parse(&gw.certificate_chain);
        let (_, leaf) = X509Certificate::from_der(&gw_ders[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names[0].to_string(),
            "URI(spiffe://maille/mesh/colorapp/virtualGateway/ingress)"
        );
    }

    #[test]
    fn the_servers_certificate_keeps_its_key_across_starts() {
        let store = MemoryStore::default();
        let ca = Ca::load_or_create(&store, Duration::from_secs(3600)).unwrap();
        let hosts = ["127.0.0.1".to_owned(), "maille.internal".to_owned()];
        let key_of = |issued: &Issued| -> (Vec<u8>, Vec<String>) {
            let der = parse(&issued.certificate_chain).remove(0);
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            let sans = c
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect();
            (c.public_key().raw.to_vec(), sans)
        };
        let one = ca
            .issue_server(&store, &hosts, Duration::from_secs(60))
            .unwrap();
        let two = ca
            .issue_server(&store, &hosts, Duration::from_secs(60))
            .unwrap();
        assert_ne!(
            one.certificate_chain, two.certificate_chain,
            "a new certificate"
        );
        let (k1, sans) = key_of(&one);
        assert_eq!(k1, key_of(&two).0, "the same key");
        assert_eq!(
            sans,
            [
                "URI(spiffe://maille/control)",
                "IPAddress(7f:00:00:01)",
                "DNSName(maille.internal)"
            ]
        );
        // Another store: another key.
        let other = ca
            .issue_server(&MemoryStore::default(), &hosts, Duration::from_secs(60))
            .unwrap();
        assert_ne!(k1, key_of(&other).0);
    }

    #[test]
    fn a_lifetime_too_short_or_a_bad_ca_is_refused() {
        let e = Ca::load_or_create(&MemoryStore::default(), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("shorter than"), "{e}");
        let e = Ca::from_pem("not a certificate", "not a key", DEFAULT_LIFETIME).unwrap_err();
        assert!(e.to_string().contains("reading the CA key"), "{e}");
    }
}
