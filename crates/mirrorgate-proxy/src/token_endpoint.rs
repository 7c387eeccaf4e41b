//! `https://<route host>/token`: the Docker token endpoint, GET (Basic or anonymous) and POST (form,
//! `grant_type=password|refresh_token`; containerd tries POST first). Parsing, granting and signing live in
//! `mirrorgate-auth`; this module moves the HTTP.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_auth::{Action, TokenRequest};
use mirrorgate_registry::{ErrorCode, RegistryError};

use crate::admission::{auth_refusal, Ask};
use crate::body::{full, GatewayBody};
use crate::error::ProxyError;
use crate::router::CompiledRoute;
use crate::runtime::Gateway;

/// Token requests are small forms; anything larger is refused before it is buffered.
const MAX_FORM: usize = 16 * 1024;

pub async fn serve_token(
    gw: &Gateway,
    route: &CompiledRoute,
    req: Request<Incoming>,
    authority: &str,
    client_ip: IpAddr,
) -> Result<Response<GatewayBody>, ProxyError> {
    let Some(auth) = gw.auth.as_ref().filter(|a| a.token_issuer().is_some()) else {
        return Err(RegistryError::new(
            ErrorCode::NotFound,
            "this gateway has no token server ([auth.token])",
        )
        .into());
    };
    let ask = Ask {
        route_host: &route.label,
        route_anonymous: route.config.anonymous,
        authority,
        repository: None,
        action: Action::Pull,
        mount_from: None,
        reference: None,
    };
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let parsed = match *req.method() {
        Method::GET => TokenRequest::from_query(req.uri().query().unwrap_or_default()),
        Method::POST => {
            let body = http_body_util::Limited::new(req.into_body(), MAX_FORM)
                .collect()
                .await
                .map_err(|_| {
                    RegistryError::new(
                        ErrorCode::InvalidRequest,
                        "token request body too large or broken",
                    )
                })?
                .to_bytes();
            TokenRequest::from_form(&body)
        }
        _ => {
            return Err(RegistryError::new(
                ErrorCode::Unsupported,
                "the token endpoint takes GET or POST",
            )
            .into())
        }
    }
    .map_err(|e| auth_refusal(gw, &ask, &e))?;
    let answer = auth
        .token(
            &parsed,
            authorization.as_ref(),
            client_ip,
            &route.label,
            route.config.anonymous,
        )
        .await
        .map_err(|e| auth_refusal(gw, &ask, &e))?;
    let json = serde_json::to_vec(&answer)
        .map_err(|e| ProxyError::Internal(format!("token JSON: {e}")))?;
    let mut resp = Response::new(full(Bytes::from(json)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
