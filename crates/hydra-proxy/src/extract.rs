//! Extractors whose rejections are [`ApiError`]s, so that bad input always gets the JSON error
//! body, from the server and the agent alike.
//!
//! Every text that enters through them is checked against the text rule first
//! (`hydra_api::text`: no control character; `\n` and `\t` only in free-text fields), so no
//! handler sees a NUL or a control character, and the 400 names the field at fault.

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use hydra_api::text::{ControlCharacter, check_json_text, check_parameter};
use serde::de::DeserializeOwned;

use crate::api_error::ApiError;

/// `axum::Json` with a JSON error body naming the bad field; refuses a control character in any
/// string of the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        // Read once (within the body limit), then let axum's own extractor check the content
        // type and parse, so its messages stay as they were.
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| ApiError::from(JsonRejection::from(rejection)))?;
        let rebuilt = Request::from_parts(parts, Body::from(bytes.clone()));
        let parsed = axum::Json::<T>::from_request(rebuilt, state).await;
        if let Err(rejection @ JsonRejection::MissingJsonContentType(_)) = parsed {
            return Err(rejection.into());
        }
        // Before the parse error: a control character is the better answer (and serde's
        // message would quote it).
        check_json_text(&bytes).map_err(|error| refused("invalid request body", &error))?;
        let axum::Json(value) = parsed?;
        Ok(Json(value))
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with a JSON error body naming the bad parameter; refuses a control
/// character in any parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(axum::extract::Query(pairs)) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        {
            for (name, value) in &pairs {
                check_parameter(name, value)
                    .map_err(|error| refused("invalid query string", &error))?;
            }
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// `axum::extract::Path` with a JSON error body; refuses a control character in any segment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(axum::extract::Path(segments)) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state).await
        {
            for (name, value) in &segments {
                check_parameter(name, value).map_err(|error| refused("invalid path", &error))?;
            }
        }
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

fn refused(context: &str, error: &ControlCharacter) -> ApiError {
    ApiError::invalid(format!("{context}: {error}"))
}

/// Checks a fleet word (`hydra_core::text::check_word`), refusing it with a 400 naming `field`.
pub fn check_word(field: &str, value: &str) -> Result<(), ApiError> {
    hydra_core::text::check_word(field, value).map_err(ApiError::invalid)
}

/// Parses a JSON body already read (the agent reads bodies itself to forward them), or answers
/// 400 with serde's message (which names the field); a string with a control character is
/// refused naming its field (`hydra_api::text`, the rule [`Json`] applies).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let parsed = serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("invalid request body: {error}")))?;
    check_json_text(body).map_err(|error| refused("invalid request body", &error))?;
    Ok(parsed)
}
