//! The one way errors leave a Coffer service.
//!
//! Each service keeps its own error enum and maps every variant, in exactly
//! one function, to an [`ApiError`]: a code from the closed set [`ErrorCode`],
//! the AWS exception name, a message safe for the caller, and for validation
//! failures the offending field. [`ApiError::into_status`] renders it as a
//! `tonic::Status` with a `google.rpc.ErrorInfo` whose reason is the
//! exception name (and a `google.rpc.BadRequest` field violation).

use tonic_types::{ErrorDetails, StatusExt};

/// The gRPC codes Coffer answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
    /// An operation the service does not have, or a request encoded in a
    /// way it does not accept (gRPC's own code for both).
    Unimplemented,
}

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
            Self::Unimplemented => tonic::Code::Unimplemented,
        }
    }
}

/// An error as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// The AWS exception name, e.g. `NotFoundException`.
    pub exception: &'static str,
    /// Safe to show the caller: never key material, plaintext or internals.
    pub message: String,
    /// For ValidationException: the request field at fault (snake_case).
    pub field: Option<String>,
}

/// The generic message Internal errors carry; details go to the log only.
pub const INTERNAL_MESSAGE: &str =
    "an internal error occurred; the request id identifies it in the service logs";

impl ApiError {
    pub fn new(code: ErrorCode, exception: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            exception,
            message: message.into(),
            field: None,
        }
    }

    /// A ValidationException about `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            code: ErrorCode::InvalidArgument,
            exception: "ValidationException",
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "InternalFailure", INTERNAL_MESSAGE)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "UnrecognizedClientException",
            message,
        )
    }

    pub fn throttled() -> Self {
        Self::new(
            ErrorCode::ResourceExhausted,
            "ThrottlingException",
            "the service is at its concurrency limit; retry with backoff",
        )
    }

    pub fn deadline_exceeded() -> Self {
        Self::new(
            ErrorCode::DeadlineExceeded,
            "RequestTimeoutException",
            "the request did not complete before its deadline",
        )
    }

    /// `domain` is the service endpoint, e.g. `kms.coffer.internal`.
    pub fn into_status(self, domain: &str) -> tonic::Status {
        let mut details = ErrorDetails::with_error_info(
            self.exception,
            domain,
            std::collections::HashMap::<String, String>::new(),
        );
        if let Some(field) = &self.field {
            details.add_bad_request_violation(field.clone(), self.message.clone());
        }
        tonic::Status::with_error_details(self.code.grpc_code(), self.message, details)
    }
}

/// The AWS-style exception name for a status that did not come from a
/// handler (decoding, routing, transport).
pub fn exception_for_code(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "",
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => "ValidationException",
        tonic::Code::NotFound => "NotFoundException",
        tonic::Code::AlreadyExists => "AlreadyExistsException",
        tonic::Code::PermissionDenied => "AccessDeniedException",
        tonic::Code::Unauthenticated => "UnrecognizedClientException",
        tonic::Code::ResourceExhausted => "ThrottlingException",
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "RequestTimeoutException",
        tonic::Code::Unimplemented => "UnknownOperationException",
        tonic::Code::Unavailable => "ServiceUnavailableException",
        tonic::Code::FailedPrecondition | tonic::Code::Aborted => "InvalidStateException",
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::DataLoss => "InternalFailure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info_and_field() {
        let status = ApiError::validation("plaintext", "must be at most 4096 bytes")
            .into_status("kms.coffer.internal");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details
            .error_info()
            .map(|info| (info.reason.clone(), info.domain.clone()));
        assert_eq!(
            info,
            Some((
                "ValidationException".to_owned(),
                "kms.coffer.internal".to_owned()
            ))
        );
        let violations = details.bad_request().map(|b| b.field_violations.len());
        assert_eq!(violations, Some(1));
    }
}
