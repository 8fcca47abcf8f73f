//! What becomes of each field of App Mesh's resources in Maille: the rules behind the field
//! table of the README. A field's status is that of the longest rule that is a prefix of its
//! path (`spec.listeners[].tls.certificate.acm.certificateArn`); a field no rule names is
//! translated. A test walks every field of App Mesh's API model (botocore's, in `.venv`),
//! checks each against Maille's model (a field the model does not know must be refused here)
//! and regenerates the README table from these rules.

use crate::spec::Kind;

/// What Maille does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    /// It reaches Envoy (or the control server, for discovery) with App Mesh's meaning.
    Translated,
    /// Some values reach Envoy; for the others a warning names the field.
    Partly,
    /// Accepted, not honoured, and a warning names it.
    Warned,
    /// Refused at validation, with the reason.
    Refused,
}

impl Coverage {
    /// How the table says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Translated => "translated",
            Coverage::Partly => "partly",
            Coverage::Warned => "warned, not honoured",
            Coverage::Refused => "refused",
        }
    }
}

/// A rule: the kind, a field path prefix, what Maille does and why.
pub type Rule = (Kind, &'static str, Coverage, &'static str);

const ACM_CERT: &str =
    "Maille's CA serves the proxy's own certificate instead (over SDS; the ARN is not used), warned";
const ACM_TRUST: &str =
    "Maille's CA serves the mesh's trust bundle instead of the ACM Private CAs, warned";
const SDS: &str =
    "Maille's CA serves the proxy's own certificate or the mesh's trust bundle over SDS instead (the secret name is not used), warned";

/// Every field that is not simply translated.
pub const RULES: &[Rule] = &[
    (
        Kind::Mesh,
        "spec.egressFilter.type",
        Coverage::Partly,
        "DROP_ALL is what Maille does; ALLOW_ALL is warned (no transparent egress to pass other traffic)",
    ),
    (Kind::VirtualNode, "spec.listeners[].tls.certificate.acm", Coverage::Partly, ACM_CERT),
    (Kind::VirtualNode, "spec.listeners[].tls.certificate.sds", Coverage::Partly, SDS),
    (Kind::VirtualNode, "spec.listeners[].tls.validation.trust.sds", Coverage::Partly, SDS),
    (Kind::VirtualNode, "spec.backendDefaults.clientPolicy.tls.certificate.sds", Coverage::Partly, SDS),
    (Kind::VirtualNode, "spec.backendDefaults.clientPolicy.tls.validation.trust.acm", Coverage::Partly, ACM_TRUST),
    (Kind::VirtualNode, "spec.backendDefaults.clientPolicy.tls.validation.trust.sds", Coverage::Partly, SDS),
    (Kind::VirtualNode, "spec.backends[].virtualService.clientPolicy.tls.certificate.sds", Coverage::Partly, SDS),
    (Kind::VirtualNode, "spec.backends[].virtualService.clientPolicy.tls.validation.trust.acm", Coverage::Partly, ACM_TRUST),
    (Kind::VirtualNode, "spec.backends[].virtualService.clientPolicy.tls.validation.trust.sds", Coverage::Partly, SDS),
    (Kind::VirtualGateway, "spec.listeners[].tls.certificate.acm", Coverage::Partly, ACM_CERT),
    (Kind::VirtualGateway, "spec.listeners[].tls.certificate.sds", Coverage::Partly, SDS),
    (Kind::VirtualGateway, "spec.listeners[].tls.validation.trust.sds", Coverage::Partly, SDS),
    (Kind::VirtualGateway, "spec.backendDefaults.clientPolicy.tls.certificate.sds", Coverage::Partly, SDS),
    (Kind::VirtualGateway, "spec.backendDefaults.clientPolicy.tls.validation.trust.acm", Coverage::Partly, ACM_TRUST),
    (Kind::VirtualGateway, "spec.backendDefaults.clientPolicy.tls.validation.trust.sds", Coverage::Partly, SDS),
    (
        Kind::VirtualGateway,
        "spec.listeners[].healthCheck",
        Coverage::Partly,
        "the gateway answers `200` on the path (http, http2, on the listener's port); the thresholds and timings are the checker's (the load balancer in front); a grpc or tcp check, or another port, is warned",
    ),
    (
        Kind::GatewayRoute,
        "spec.httpRoute.action.rewrite.hostname.defaultTargetHostname",
        Coverage::Partly,
        "ENABLED (the default) is what Maille does; DISABLED is warned: the Host becomes the target's name",
    ),
    (
        Kind::GatewayRoute,
        "spec.http2Route.action.rewrite.hostname.defaultTargetHostname",
        Coverage::Partly,
        "ENABLED (the default) is what Maille does; DISABLED is warned: the Host becomes the target's name",
    ),
    (
        Kind::GatewayRoute,
        "spec.grpcRoute.action.rewrite.hostname.defaultTargetHostname",
        Coverage::Partly,
        "ENABLED (the default) is what Maille does; DISABLED is warned: the Host becomes the target's name",
    ),
];

/// The status of field `path` of `kind`, and the reason when it is not translated.
pub fn coverage(kind: Kind, path: &str) -> (Coverage, &'static str) {
    RULES
        .iter()
        .filter(|(k, prefix, _, _)| {
            *k == kind
                && path.starts_with(prefix)
                && matches!(path.as_bytes().get(prefix.len()), None | Some(b'.' | b'['))
        })
        .max_by_key(|(_, prefix, _, _)| prefix.len())
        .map_or((Coverage::Translated, ""), |(_, _, c, why)| (*c, *why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_rule_decides_and_unnamed_fields_are_translated() {
        assert_eq!(
            coverage(
                Kind::VirtualNode,
                "spec.listeners[].tls.certificate.acm.certificateArn"
            )
            .0,
            Coverage::Partly
        );
        assert_eq!(
            coverage(
                Kind::VirtualNode,
                "spec.listeners[].tls.certificate.file.privateKey"
            )
            .0,
            Coverage::Translated
        );
        // A prefix of a segment is not a prefix of the path.
        assert_eq!(
            coverage(Kind::VirtualGateway, "spec.listeners[].healthCheckX").0,
            Coverage::Translated
        );
        assert_eq!(
            coverage(Kind::Route, "spec.priority").0,
            Coverage::Translated
        );
    }
}
