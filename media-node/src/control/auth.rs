//! Bearer-token check on every control request, in constant time.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor that requires `authorization: Bearer <token>`; with
/// no token configured (development) every request passes.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Vec<u8>>,
}

impl TokenCheck {
    /// Expects this token; `None` accepts every request.
    pub fn new(token: Option<String>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes()),
        }
    }

    /// Checks one request.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if got.len() == expected.len() && bool::from(got.ct_eq(expected)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut()
                .insert("authorization", h.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn only_the_right_token_passes() {
        let c = TokenCheck::new(Some("s3cret".into()));
        assert!(c.check(req(Some("Bearer s3cret"))).is_ok());
        assert!(c.check(req(Some("Bearer s3cre"))).is_err());
        assert!(c.check(req(Some("Bearer s3cretX"))).is_err());
        assert!(c.check(req(None)).is_err());
        assert!(TokenCheck::new(None).check(req(None)).is_ok());
    }
}
