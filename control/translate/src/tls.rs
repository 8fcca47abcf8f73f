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
