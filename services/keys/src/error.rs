//! The keys service's errors and their one mapping to what callers see.

use coffer_platform::error::{ApiError, ErrorCode};
use thiserror::Error;

use crate::domain::types::KeyState;
use crate::store::StoreError;

pub type Result<T, E = KeysError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum KeysError {
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("invalid ciphertext")]
    InvalidCiphertext,
    #[error("{key_arn} is disabled")]
    Disabled { key_arn: String },
    #[error("{key_arn} is {state}")]
    InvalidState { key_arn: String, state: KeyState },
    /// CancelKeyDeletion of a key that is not pending deletion.
    #[error("{key_arn} is not pending deletion")]
    NotPendingDeletion { key_arn: String },
    #[error("{0}")]
    InvalidKeyUsage(String),
    #[error("the key id does not identify the key that encrypted the ciphertext")]
    IncorrectKey,
    #[error("the marker was not issued by ListKeys")]
    InvalidMarker,
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// KMS's ConflictException: the request collides with work already
    /// under way on the resource.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidAliasName(String),
    #[error("the signature is not valid")]
    InvalidSignature,
    #[error("the MAC is not valid")]
    InvalidMac,
    /// A denial answered as `shown` (what a missing resource gets) and
    /// audited as the AccessDeniedException `denied`: for keys of the
    /// caller's own account, whose trail is the key owner's.
    #[error("{denied}")]
    Concealed {
        shown: Box<KeysError>,
        denied: String,
    },
    #[error("{0}")]
    MalformedPolicy(String),
    #[error("the grant token is not valid")]
    InvalidGrantToken,
    #[error("{0}")]
    InvalidGrantId(String),
    /// The call would have succeeded, but its DryRun flag was set.
    #[error("dry run")]
    DryRun,
    /// More slow crypto is waiting than the service queues.
    #[error("the service is busy")]
    Throttled,
    /// A fault of the service itself, logged; the caller sees a generic
    /// message.
    #[error("{0}")]
    Internal(String),
    #[error("storage failure")]
    Store(#[from] StoreError),
    #[error("cryptographic failure")]
    Crypto(#[from] coffer_crypto::CryptoError),
}

impl KeysError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }
}

/// AWS's DryRun: a call that got this far would have succeeded, so a dry
/// run stops here, its answer unsent and nothing written.
pub fn dry_run_stops(dry_run: bool) -> Result<()> {
    if dry_run {
        Err(KeysError::DryRun)
    } else {
        Ok(())
    }
}

fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

const INVALID_CIPHERTEXT_MESSAGE: &str = "The ciphertext is invalid, was not made by this service, or does not match the key or encryption context";

/// Every keys error as the caller sees it. Server faults are logged here
/// with their cause chain and reach the caller only as a generic message.
pub fn api_error(error: &KeysError) -> ApiError {
    match error {
        KeysError::Validation { field, message } => ApiError::validation(*field, message.clone()),
        KeysError::NotFound(message) => {
            ApiError::new(ErrorCode::NotFound, "NotFoundException", message.clone())
        }
        KeysError::InvalidCiphertext => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidCiphertextException",
            INVALID_CIPHERTEXT_MESSAGE,
        ),
        KeysError::Disabled { key_arn } => ApiError::new(
            ErrorCode::FailedPrecondition,
            "DisabledException",
            format!("{key_arn} is disabled."),
        ),
        KeysError::InvalidState { key_arn, state } => ApiError::new(
            ErrorCode::FailedPrecondition,
            "KMSInvalidStateException",
            format!("{key_arn} is {}.", state_in_words(*state)),
        ),
        KeysError::NotPendingDeletion { key_arn } => ApiError::new(
            ErrorCode::FailedPrecondition,
            "KMSInvalidStateException",
            format!("{key_arn} is not pending deletion."),
        ),
        KeysError::InvalidKeyUsage(message) => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidKeyUsageException",
            message.clone(),
        ),
        KeysError::IncorrectKey => ApiError::new(
            ErrorCode::InvalidArgument,
            "IncorrectKeyException",
            "The key ID in the request does not identify the key that encrypted the ciphertext.",
        ),
        KeysError::InvalidMarker => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidMarkerException",
            "The marker is not one that this list operation returned.",
        ),
        KeysError::Tag(message) => {
            ApiError::new(ErrorCode::InvalidArgument, "TagException", message.clone())
        }
        KeysError::Unsupported(message) => ApiError::new(
            ErrorCode::InvalidArgument,
            "UnsupportedOperationException",
            message.clone(),
        ),
        KeysError::AccessDenied(message) => ApiError::new(
            ErrorCode::PermissionDenied,
            "AccessDeniedException",
            message.clone(),
        ),
        KeysError::AlreadyExists(message) => ApiError::new(
            ErrorCode::AlreadyExists,
            "AlreadyExistsException",
            message.clone(),
        ),
        KeysError::Conflict(message) => ApiError::new(
            ErrorCode::FailedPrecondition,
            "ConflictException",
            message.clone(),
        ),
        KeysError::LimitExceeded(message) => ApiError::new(
            ErrorCode::ResourceExhausted,
            "LimitExceededException",
            message.clone(),
        ),
        KeysError::InvalidSignature => ApiError::new(
            ErrorCode::InvalidArgument,
            "KMSInvalidSignatureException",
            "The signature is not valid for this message, key and signing algorithm.",
        ),
        KeysError::InvalidMac => ApiError::new(
            ErrorCode::InvalidArgument,
            "KMSInvalidMacException",
            "The MAC is not valid for this message, key and MAC algorithm.",
        ),
        KeysError::InvalidAliasName(message) => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidAliasNameException",
            message.clone(),
        ),
        KeysError::Concealed { shown, .. } => api_error(shown),
        KeysError::MalformedPolicy(message) => ApiError::new(
            ErrorCode::InvalidArgument,
            "MalformedPolicyDocumentException",
            message.clone(),
        ),
        KeysError::InvalidGrantToken => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidGrantTokenException",
            "The grant token is not valid.",
        ),
        KeysError::InvalidGrantId(message) => ApiError::new(
            ErrorCode::InvalidArgument,
            "InvalidGrantIdException",
            message.clone(),
        ),
        KeysError::DryRun => ApiError::new(
            ErrorCode::FailedPrecondition,
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        ),
        KeysError::Throttled => ApiError::new(
            ErrorCode::ResourceExhausted,
            "ThrottlingException",
            "Too much cryptographic work is waiting; retry with backoff.",
        ),
        // A change that lost its race with concurrent ones on every attempt:
        // the caller may retry, as after any throttling.
        KeysError::Store(StoreError::Conflict) => {
            tracing::warn!(
                "a change lost to concurrent changes of the same resource on every attempt"
            );
            ApiError::new(
                ErrorCode::ResourceExhausted,
                "ThrottlingException",
                "Concurrent requests are changing the same resource; retry with backoff.",
            )
        }
        // Scheduled for deletion between the caller's read of the key and
        // the write: refused as the state refuses it. The domain's writes
        // name the key (`KeysDomain::write_refused`); this is for any other.
        KeysError::Store(StoreError::PendingDeletion) => ApiError::new(
            ErrorCode::FailedPrecondition,
            "KMSInvalidStateException",
            "The key is pending deletion.",
        ),
        KeysError::Store(_) | KeysError::Crypto(_) | KeysError::Internal(_) => {
            tracing::error!(error = %cause_chain(error), "keys request failed");
            let mut internal = ApiError::internal();
            internal.exception = "KMSInternalException";
            internal
        }
    }
}

/// A key state as KMS's messages put it: "<key ARN> is pending deletion."
fn state_in_words(state: KeyState) -> &'static str {
    match state {
        KeyState::Creating => "being created",
        KeyState::Enabled => "enabled",
        KeyState::Disabled => "disabled",
        KeyState::PendingDeletion => "pending deletion",
        KeyState::PendingImport => "pending import",
        KeyState::PendingReplicaDeletion => "pending replica deletion",
        KeyState::Unavailable => "unavailable",
        KeyState::Updating => "being updated",
    }
}

#[cfg(test)]
mod tests {
    use super::{KeysError, api_error};
    use crate::store::StoreError;
    use coffer_platform::error::ErrorCode;

    #[test]
    fn a_change_that_keeps_losing_its_race_is_throttled_not_internal() {
        let error = api_error(&KeysError::Store(StoreError::Conflict));
        assert_eq!(error.code, ErrorCode::ResourceExhausted);
        assert_eq!(error.exception, "ThrottlingException");
        let error = api_error(&KeysError::Store(StoreError::Corrupt("row 7".into())));
        assert_eq!(error.exception, "KMSInternalException");
        assert_eq!(error.message, coffer_platform::error::INTERNAL_MESSAGE);
    }

    #[test]
    fn a_write_that_finds_its_key_pending_deletion_is_an_invalid_state() {
        let error = api_error(&KeysError::Store(StoreError::PendingDeletion));
        assert_eq!(error.code, ErrorCode::FailedPrecondition);
        assert_eq!(error.exception, "KMSInvalidStateException");
    }
}
