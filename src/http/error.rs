//! The one place errors become HTTP responses (ERR-1, ERR-5, MTH-2, MTH-3).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::xks::{ErrorName, XksError};

/// An API failure: a spec error, or 405 for a non-POST method on an API URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// An XKS error with its spec status.
    Xks(XksError),
    /// MTH-2: 405 with an `Allow` header (`POST` on the API, `GET` on `/ping`). The spec
    /// defines no errorName for it; the JSON body uses `UnsupportedOperationException` so
    /// every error carries one (ERR-5).
    MethodNotAllowed {
        /// The method the resource accepts.
        allow: &'static str,
    },
}

impl ApiError {
    /// The `errorName` for logs.
    pub fn name(&self) -> ErrorName {
        match self {
            Self::Xks(e) => e.name(),
            Self::MethodNotAllowed { .. } => ErrorName::UnsupportedOperationException,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Xks(e) => e.status(),
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl<E: Into<XksError>> From<E> for ApiError {
    fn from(err: E) -> Self {
        Self::Xks(err.into())
    }
}

impl IntoResponse for ApiError {
    /// The response carries the error itself as an extension, for the audit layer.
    fn into_response(self) -> Response {
        let error = self.clone();
        let mut response = match self {
            Self::Xks(err) => json_response(err.status(), err.to_json()),
            Self::MethodNotAllowed { allow } => {
                let err = XksError::new(
                    ErrorName::UnsupportedOperationException,
                    format!("this URI accepts only {allow}"),
                );
                let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, err.to_json());
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
        };
        response.extensions_mut().insert(error);
        response
    }
}

/// A response with a JSON body and `Content-Type: application/json` (MTH-3).
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Body for a handler that panicked: the connection and process survive (ERR-5).
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    ApiError::Xks(XksError::internal("internal error")).into_response()
}
