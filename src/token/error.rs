//! OAuth 2.0 errors (RFC 6749 §5.2, RFC 8707 §2, RFC 8693 §2.2.2) as the token core reports
//! them. The HTTP layer turns them into status codes, JSON bodies and `WWW-Authenticate`.

use serde::Serialize;

/// The `error` codes this server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed request: missing or repeated parameter, bad encoding, oversized body.
    InvalidRequest,
    /// Client authentication failed (unknown client, wrong secret or key, disabled account).
    InvalidClient,
    /// The grant or assertion is invalid, expired, replayed or wrongly addressed.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// A requested scope is not granted.
    InvalidScope,
    /// The audience / resource is unknown, missing or not granted (RFC 8707).
    InvalidTarget,
    /// RFC 7009 §2.2.1: the token type cannot be revoked.
    UnsupportedTokenType,
    /// The server cannot answer yet (its read model is not loaded); retry shortly.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An OAuth error with a human-readable description. The description never holds a secret,
/// an assertion or a token, and for failed client authentication never says whether the
/// client exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    /// The error code.
    pub code: ErrorCode,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    /// An error with a description.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    /// `invalid_client`, always with the same description so that an attacker learns nothing
    /// about which part failed.
    pub fn invalid_client() -> Self {
        Self::new(ErrorCode::InvalidClient, "client authentication failed")
    }

    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidGrant, description)
    }

    /// `invalid_target`.
    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidTarget, description)
    }

    /// The JSON body of RFC 6749 §5.2.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: self.code.as_str(),
            error_description: &self.description,
        }
    }
}

/// The JSON error response body.
#[derive(Serialize, Debug)]
pub struct ErrorBody<'a> {
    /// The code.
    pub error: &'static str,
    /// The description.
    pub error_description: &'a str,
}
