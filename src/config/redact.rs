//! Secret redaction for the `/config` endpoint.

use serde_json::Value;

const MASK: &str = "***";

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "api_key", "apikey"]
        .iter()
        .any(|s| k.contains(s))
}

fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    is_secret_key(&n)
        || ["authorization", "cookie", "key", "auth"]
            .iter()
            .any(|s| n.contains(s))
}

/// Masks the password of `scheme://user:password@host/...`.
fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    Some(format!(
        "{scheme}://{user}:{MASK}@{host}{}",
        &rest[authority_end..]
    ))
}

pub(super) fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "headers" {
                    if let Value::Object(headers) = v {
                        for (name, hv) in headers.iter_mut() {
                            if is_secret_header(name) && !hv.as_str().is_some_and(str::is_empty) {
                                *hv = Value::String(MASK.into());
                            }
                        }
                    }
                } else if is_secret_key(key) {
                    if !v.as_str().is_some_and(str::is_empty) {
                        *v = Value::String(MASK.into());
                    }
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(r) = redact_url(s) {
                *s = r;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_secrets_headers_and_url_passwords() {
        let mut v = json!({
            "auth": {"type": "basic", "username": "u", "password": "p", "token": ""},
            "headers": {"Authorization": "Bearer x", "User-Agent": "ua", "X-Api-Key": "k"},
            "url": "https://u:pw@loki.example:3100/x",
            "plain": "http://loki:3100",
        });
        redact(&mut v);
        assert_eq!(v["auth"]["password"], "***");
        assert_eq!(v["auth"]["token"], "", "empty secrets stay visibly empty");
        assert_eq!(v["auth"]["username"], "u");
        assert_eq!(v["headers"]["Authorization"], "***");
        assert_eq!(v["headers"]["X-Api-Key"], "***");
        assert_eq!(v["headers"]["User-Agent"], "ua");
        assert_eq!(v["url"], "https://u:***@loki.example:3100/x");
        assert_eq!(v["plain"], "http://loki:3100");
    }
}
