//! The OAuth wire format: `application/x-www-form-urlencoded` bodies in (RFC 6749 §3.2 rules),
//! `no-store` answers out.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

use tessera_core::SpiffeId;

use crate::domain::issue::{GrantType, IssueRequest, MintOptions, OAuthCode};
use crate::error::ApiError;
use crate::tls::ConnInfo;

/// A parsed `application/x-www-form-urlencoded` body. RFC 6749 §3.2: parameters must not
/// repeat (except the RFC 8707/8693 target parameters); empty values count as absent.
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
    targets: Vec<String>,
}

impl Form {
    pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Self, ApiError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut form = Self::default();
        for (k, v) in form_urlencoded::parse(body) {
            if v.is_empty() {
                continue;
            }
            if k == "resource" || k == "audience" {
                form.targets.push(v.into_owned());
                continue;
            }
            if form
                .params
                .insert(k.clone().into_owned(), v.into_owned())
                .is_some()
            {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidRequest,
                    format!("parameter `{}` appears more than once", truncate(&k, 40)),
                ));
            }
        }
        Ok(form)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The issuance request of a token-endpoint grant: its targets and scope from this form, the
    /// address from the connection; options and claim as the grant sets them.
    pub(crate) fn issue_request(
        &self,
        conn: &ConnInfo,
        caller: SpiffeId,
        client_id: String,
        auth: &'static str,
        grant_type: GrantType,
    ) -> IssueRequest {
        IssueRequest {
            caller,
            client_id,
            auth,
            grant_type,
            targets: self.targets.clone(),
            scope: self.get("scope").map(str::to_owned),
            source_ip: conn.source_ip,
            options: MintOptions::default(),
            audit_actor: None,
            claim: None,
        }
    }

    /// The `audience` and `resource` values, in order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }
}

/// At most `n` characters of `s`, for quoting input in an error.
pub(crate) fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// RFC 6749 §5.1: token responses are not cached.
pub(crate) fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn form_rules() {
        let h = headers("application/x-www-form-urlencoded; charset=UTF-8");
        let f = Form::parse(
            &h,
            &Bytes::from_static(
                b"grant_type=client_credentials&scope=a+b&resource=x&audience=&client_id=c%3A1",
            ),
        )
        .unwrap();
        assert_eq!(f.get("scope"), Some("a b"));
        assert_eq!(f.get("client_id"), Some("c:1"));
        assert_eq!(f.targets, vec!["x"]);
        let e = Form::parse(&h, &Bytes::from_static(b"scope=a&scope=b")).unwrap_err();
        assert!(format!("{e:?}").contains("appears more than once"));
        assert!(Form::parse(&headers("application/json"), &Bytes::from_static(b"{}")).is_err());
        assert!(Form::parse(&HeaderMap::new(), &Bytes::from_static(b"a=b")).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any body: a parsed form or an RFC 6749 error, never a panic.
        #[test]
        fn form_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            let _ = Form::parse(&h, &Bytes::from(body));
        }
    }
}
