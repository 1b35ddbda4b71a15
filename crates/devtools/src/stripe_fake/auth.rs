//! Secret-key authentication as Stripe accepts it: `Authorization: Bearer <key>`, or
//! HTTP Basic with the key as the user name and an empty password.

use base64::Engine;

use super::error::ApiError;

/// The key a request presents, if its `Authorization` header carries one.
/// `Err(raw)` for a header that is there but not in a form Stripe reads.
pub fn presented_key(header: Option<&str>) -> Option<Result<String, String>> {
    let header = header?.trim();
    if header.is_empty() {
        return None;
    }
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return if rest.is_empty() {
            None
        } else {
            Some(Ok(rest.to_owned()))
        };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        return match decoded {
            Some(user_pass) => {
                let user = user_pass.split(':').next().unwrap_or_default();
                if user.is_empty() {
                    None
                } else {
                    Some(Ok(user.to_owned()))
                }
            }
            None => Some(Err(rest.to_owned())),
        };
    }
    Some(Err(header.to_owned()))
}

/// Accepts the request if it presents one of `keys`.
pub fn check(keys: &[String], header: Option<&str>) -> Result<(), ApiError> {
    match presented_key(header) {
        None => Err(ApiError::no_api_key()),
        Some(Err(raw)) => Err(ApiError::invalid_api_key(&raw)),
        Some(Ok(key)) if keys.contains(&key) => Ok(()),
        Some(Ok(key)) if key.starts_with("pk_") => Err(ApiError::publishable_key()),
        Some(Ok(key)) => Err(ApiError::invalid_api_key(&key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec!["sk_test_good".to_owned()]
    }

    #[test]
    fn bearer_and_basic_with_the_key_as_user_are_accepted() {
        check(&keys(), Some("Bearer sk_test_good")).unwrap();
        check(&keys(), Some("bearer  sk_test_good ")).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("sk_test_good:");
        check(&keys(), Some(&format!("Basic {basic}"))).unwrap();
    }

    #[test]
    fn a_missing_key_and_a_wrong_key_are_401_with_different_messages() {
        let missing = check(&keys(), None).unwrap_err();
        assert_eq!(missing.status, 401);
        assert!(missing
            .message
            .starts_with("You did not provide an API key."));
        assert_eq!(
            check(&keys(), Some("Bearer ")).unwrap_err().message,
            missing.message
        );
        let wrong = check(&keys(), Some("Bearer sk_test_wrong_key1234")).unwrap_err();
        assert_eq!(wrong.status, 401);
        assert_eq!(
            wrong.message,
            "Invalid API Key provided: sk_test_*********1234"
        );
    }

    #[test]
    fn a_publishable_key_needs_a_secret_key_instead() {
        let err = check(&keys(), Some("Bearer pk_test_abc")).unwrap_err();
        assert_eq!((err.status, err.code), (401, Some("secret_key_required")));
    }

    #[test]
    fn an_unreadable_header_is_an_invalid_key() {
        assert_eq!(check(&keys(), Some("Token abc")).unwrap_err().status, 401);
        assert_eq!(check(&keys(), Some("Basic !!!")).unwrap_err().status, 401);
    }
}
