//! The one reading of AWS failures, shared by the X-Ray and CloudWatch exporters: what is
//! worth retrying and what refuses the request's content, for a failed call and for the
//! error code X-Ray gives a single document. The AWS SDK's own lists of throttling and
//! transient error codes decide, with the HTTP status.

use crate::delivery::SendError;
use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Codes that say AWS failed inside, or that concurrent requests conflicted (CloudWatch
/// Logs' `OperationAbortedException`), not that the request is wrong.
const SERVER_ERRORS: [&str; 6] = [
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "OperationAbortedException",
];

/// Codes of credentials that are expired, not yet valid or not yet permitted: an operator
/// (or the credential provider) can fix them, and what waits is kept meanwhile.
const ACCESS_ERRORS: [&str; 9] = [
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "RequestExpired",
];

/// Whether an AWS error code might go away if the same request is sent again.
pub(crate) fn code_is_retryable(code: &str) -> bool {
    THROTTLING_ERRORS.contains(&code)
        || TRANSIENT_ERRORS.contains(&code)
        || SERVER_ERRORS.contains(&code)
        || ACCESS_ERRORS.contains(&code)
}

/// A failed SDK call, read: retryable (throttling, 5xx, 429, timeouts, the endpoint away,
/// credentials) or refused for its content (any other client error, or a request the SDK
/// could not build from it).
pub(crate) fn classify<E>(service: &str, err: &SdkError<E, HttpResponse>) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let context = aws_smithy_types::error::display::DisplayErrorContext(err);
    match err {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let code = e.err().code().unwrap_or("");
            let msg = format!(
                "{service} HTTP {status} {code}: {}",
                e.err().message().unwrap_or("")
            );
            let retryable_status = status >= 500 || matches!(status, 401 | 403 | 429);
            if retryable_status || code_is_retryable(code) {
                SendError::Retryable(msg)
            } else {
                SendError::Refused(msg)
            }
        }
        SdkError::ConstructionFailure(_) => SendError::Refused(format!("{service}: {context}")),
        _ => SendError::Retryable(format!("{service}: {context}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[derive(Debug)]
    struct Err(ErrorMetadata);
    impl std::fmt::Display for Err {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0.code())
        }
    }
    impl std::error::Error for Err {}
    impl ProvideErrorMetadata for Err {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    fn service_error(status: u16, code: &str) -> SdkError<Err, HttpResponse> {
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(
            Err(ErrorMetadata::builder().code(code).message("m").build()),
            raw,
        )
    }

    #[test]
    fn throttling_server_errors_and_credentials_are_retried_content_errors_are_not() {
        let retryable = |s, c| {
            matches!(
                classify("X-Ray", &service_error(s, c)),
                SendError::Retryable(_)
            )
        };
        assert!(retryable(400, "ThrottlingException"));
        assert!(
            retryable(400, "Throttling"),
            "CloudWatch's query-protocol throttling"
        );
        assert!(retryable(429, "TooManyRequestsException"));
        assert!(retryable(500, "InternalFailure"));
        assert!(retryable(503, ""));
        assert!(retryable(403, "ExpiredTokenException"));
        assert!(!retryable(400, "InvalidRequestException"));
        assert!(!retryable(400, "InvalidParameterValue"));
        assert!(!retryable(413, ""));
        match classify("CloudWatch", &service_error(400, "InvalidParameterValue")) {
            SendError::Refused(m) => assert!(
                m.contains("CloudWatch")
                    && m.contains("400")
                    && m.contains("InvalidParameterValue"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(code_is_retryable("ThrottledException"));
        assert!(retryable(400, "OperationAbortedException"));
        assert!(!code_is_retryable("InvalidSegment"));
        assert!(!code_is_retryable("MissingParam"));
    }
}
