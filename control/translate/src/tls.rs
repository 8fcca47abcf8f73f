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

pub(crate) fn validation_context(
    v: &TlsValidation,
) -> tls::common_tls_context::ValidationContextType {
    tls::common_tls_context::ValidationContextType::ValidationContext(
        tls::CertificateValidationContext {
            trusted_ca: v.trust.file.as_ref().map(|f| file(&f.certificate_chain)),
            match_typed_subject_alt_names: v
                .subject_alternative_names
                .iter()
                .flat_map(|s| s.matches.exact.iter())
                .map(|name| tls::SubjectAltNameMatcher {
                    san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                            name.clone(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

pub(crate) fn downstream_tls(t: &ListenerTls) -> core::TransportSocket {
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: tls_certificates(&t.certificate),
            validation_context_type: t.validation.as_ref().map(validation_context),
            ..Default::default()
        }),
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
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: t
                .certificate
                .as_ref()
                .map(tls_certificates)
                .unwrap_or_default(),
            validation_context_type: Some(validation_context(&t.validation)),
            ..Default::default()
        }),
        sni: t
            .validation
            .subject_alternative_names
            .as_ref()
            .and_then(|s| s.matches.exact.first().cloned())
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
