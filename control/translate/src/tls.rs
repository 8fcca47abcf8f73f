//! App Mesh TLS (listener TLS, client policy TLS, validation) as Envoy transport sockets.

use crate::proto::*;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use maille_model::*;

pub(crate) fn tls_certificates(c: &TlsCertificate) -> Vec<tls::TlsCertificate> {
    c.file
        .iter()
        .map(|f| tls::TlsCertificate {
            certificate_chain: Some(file(&f.certificate_chain)),
            private_key: Some(file(&f.private_key)),
            ..Default::default()
        })
        .collect()
}

/// Whether `c` is App Mesh's `sds` or `acm` source, which Maille's CA serves: the proxy's
/// own certificate over SDS.
fn from_maille_ca(c: &TlsCertificate) -> bool {
    c.file.is_none() && (c.sds.is_some() || c.acm.is_some())
}

/// Sets `ctx`'s certificate: the files, or the proxy's own from Maille's CA (App Mesh's
/// `sds` and `acm` sources).
fn certificates(c: &TlsCertificate, ctx: &mut tls::CommonTlsContext) {
    if from_maille_ca(c) {
        ctx.tls_certificate_sds_secret_configs = vec![sds(crate::names::IDENTITY_SECRET)];
    } else {
        ctx.tls_certificates = tls_certificates(c);
    }
}

/// A SAN as App Mesh names it: a SPIFFE ID (`spiffe://...`) is a URI, anything else a DNS
/// name.
fn san(name: &str) -> tls::SubjectAltNameMatcher {
    let pattern = matcher::string_matcher::MatchPattern::Exact(name.to_owned());
    if name.starts_with("spiffe://") {
        return uri_san(pattern);
    }
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// App Mesh's validation: trust from files, or the mesh's trust bundle from Maille's CA
/// (App Mesh's `sds` and `acm` trust); the SANs asked for.
pub(crate) fn validation_context(
    v: &TlsValidation,
) -> tls::common_tls_context::ValidationContextType {
    let mut ctx = tls::CertificateValidationContext {
        trusted_ca: v.trust.file.as_ref().map(|f| file(&f.certificate_chain)),
        match_typed_subject_alt_names: v
            .subject_alternative_names
            .iter()
            .flat_map(|s| s.matches.exact.iter())
            .map(|name| san(name))
            .collect(),
        ..Default::default()
    };
    if v.trust.file.is_none() && (v.trust.sds.is_some() || v.trust.acm.is_some()) {
        ctx.trusted_ca = None;
        return tls::common_tls_context::ValidationContextType::CombinedValidationContext(
            tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(ctx),
                validation_context_sds_secret_config: Some(sds(crate::names::TRUST_SECRET)),
                ..Default::default()
            },
        );
    }
    tls::common_tls_context::ValidationContextType::ValidationContext(ctx)
}

/// What App Mesh's `sds` and `acm` sources of the TLS at `at` become (Maille's CA serves
/// them), one note each, for the translation's warnings.
pub(crate) fn ca_notes(
    at: &str,
    cert: Option<&TlsCertificate>,
    trust: Option<&TlsTrust>,
) -> Vec<String> {
    let name = |v: &serde_json::Value, field: &str| {
        v.get(field)
            .and_then(|n| n.as_str())
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    if let Some(c) = cert.filter(|c| c.file.is_none()) {
        if let Some(v) = &c.sds {
            out.push(format!("{at}.certificate.sds: the proxy's own certificate from Maille's CA, over SDS, instead of secret{}", name(v, "secretName")));
        }
        if let Some(v) = &c.acm {
            out.push(format!("{at}.certificate.acm: the proxy's own certificate from Maille's CA instead of ACM certificate{}", name(v, "certificateArn")));
        }
    }
    if let Some(t) = trust.filter(|t| t.file.is_none()) {
        if let Some(v) = &t.sds {
            out.push(format!("{at}.validation.trust.sds: the mesh's trust bundle from Maille's CA instead of secret{}", name(v, "secretName")));
        }
        if t.acm.is_some() {
            out.push(format!("{at}.validation.trust.acm: the mesh's trust bundle from Maille's CA instead of the ACM Private CAs"));
        }
    }
    out
}

pub(crate) fn downstream_tls(t: &ListenerTls) -> core::TransportSocket {
    let mut common = tls::CommonTlsContext {
        validation_context_type: t.validation.as_ref().map(validation_context),
        ..Default::default()
    };
    certificates(&t.certificate, &mut common);
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: t
            .validation
            .as_ref()
            .map(|_| envoy_types::pb::google::protobuf::BoolValue { value: true }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

pub(crate) fn upstream_tls(t: &ClientPolicyTls) -> core::TransportSocket {
    let mut common = tls::CommonTlsContext {
        validation_context_type: Some(validation_context(&t.validation)),
        ..Default::default()
    };
    if let Some(c) = &t.certificate {
        certificates(c, &mut common);
    }
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: t
            .validation
            .subject_alternative_names
            .as_ref()
            // A DNS name, not a SPIFFE ID.
            .and_then(|s| {
                s.matches
                    .exact
                    .iter()
                    .find(|n| !n.starts_with("spiffe://"))
                    .cloned()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// The mutual TLS of node `vn`'s listeners (its own setting, else its mesh's; `STRICT` when
/// the mesh is not there yet), and whether it takes calls only from the proxies that declare
/// it as a backend (under `STRICT`, unless the mesh says `NONE`).
pub(crate) fn node_mtls(cx: &crate::world::Ctx<'_>, vn: &VirtualNode) -> (MtlsMode, bool) {
    let mesh = match cx.get(Kind::Mesh, &vn.mesh_name, &vn.mesh_name) {
        Some(Resource::Mesh(m)) => Some(m),
        _ => None,
    };
    let mode = vn.mtls(mesh);
    let authorize = mode == MtlsMode::Strict
        && mesh.is_none_or(|m| {
            m.maille.as_ref().and_then(|o| o.authorization.as_deref()) != Some("NONE")
        });
    (mode, authorize)
}

/// An SDS secret served on the proxy's ADS stream.
fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

/// The proxy's certificate from Maille's CA, the mesh's trust bundle, and `sans` the peer's
/// certificate must name (one of).
fn mesh_common_tls(sans: Vec<tls::SubjectAltNameMatcher>, alpn: &[&str]) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(crate::names::IDENTITY_SECRET)],
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(crate::names::TRUST_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn uri_san(pattern: matcher::string_matcher::MatchPattern) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node listener's side of mesh mTLS: its certificate, and a client certificate required
/// from a proxy of `mesh` (a SPIFFE ID under the mesh's).
pub(crate) fn mesh_downstream_tls(mesh: &str, proto: &str) -> core::TransportSocket {
    let prefix = format!("spiffe://{}/mesh/{mesh}/", crate::names::TRUST_DOMAIN);
    let alpn: &[&str] = match proto {
        "http" | "http2" | "grpc" => &["h2", "http/1.1"],
        _ => &[],
    };
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(mesh_common_tls(
            vec![uri_san(matcher::string_matcher::MatchPattern::Prefix(
                prefix,
            ))],
            alpn,
        )),
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: true,
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// A cluster's side of mesh mTLS: the proxy's certificate, and the target's SPIFFE ID
/// required of the peer.
pub(crate) fn mesh_upstream_tls(target_spiffe_id: &str, proto: &str) -> core::TransportSocket {
    let alpn: &[&str] = match proto {
        "http2" | "grpc" => &["h2"],
        "http" => &["http/1.1"],
        _ => &[],
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(mesh_common_tls(
            vec![uri_san(matcher::string_matcher::MatchPattern::Exact(
                target_spiffe_id.to_owned(),
            ))],
            alpn,
        )),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Envoy RBAC rules that allow only the peers whose certificates name one of `callers`
/// (none: every call is refused).
pub(crate) fn callers_rbac(callers: &[&str]) -> envoy_types::pb::envoy::config::rbac::v3::Rbac {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    let mut policies = std::collections::HashMap::new();
    if !callers.is_empty() {
        policies.insert(
            "maille-backends".to_owned(),
            rbac::Policy {
                permissions: vec![rbac::Permission {
                    rule: Some(rbac::permission::Rule::Any(true)),
                }],
                principals: callers
                    .iter()
                    .map(|c| rbac::Principal {
                        identifier: Some(rbac::principal::Identifier::Authenticated(
                            rbac::principal::Authenticated {
                                principal_name: Some(matcher::StringMatcher {
                                    match_pattern: Some(
                                        matcher::string_matcher::MatchPattern::Exact(
                                            (*c).to_owned(),
                                        ),
                                    ),
                                    ..Default::default()
                                }),
                            },
                        )),
                    })
                    .collect(),
                ..Default::default()
            },
        );
    }
    rbac::Rbac {
        action: rbac::rbac::Action::Allow as i32,
        policies,
        ..Default::default()
    }
}
