//! URLs as they may appear in logs, metrics, API answers and errors: without credentials.

use std::fmt;

use url::Url;

/// Displays a URL with its user name, password and query string replaced, since stream URLs
/// often carry credentials or signed tokens.
pub struct RedactedUrl<'a>(pub &'a Url);

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.0;
        write!(f, "{}://", u.scheme())?;
        if !u.username().is_empty() || u.password().is_some() {
            f.write_str("***@")?;
        }
        if let Some(host) = u.host_str() {
            f.write_str(host)?;
        }
        if let Some(port) = u.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(u.path())?;
        if u.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

/// Removes every occurrence of the URL's password and user name from a message produced by a
/// library that may echo what it was given.
pub fn scrub(message: &str, url: &Url) -> String {
    let mut out = message.to_string();
    for secret in [url.password().unwrap_or(""), url.username()] {
        if secret.len() >= 3 {
            out = out.replace(secret, "***");
            if let Ok(decoded) = percent_encoding::percent_decode_str(secret).decode_utf8() {
                if decoded.len() >= 3 {
                    out = out.replace(decoded.as_ref(), "***");
                }
            }
        }
    }
    if let Some(q) = url.query() {
        if !q.is_empty() {
            out = out.replace(q, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_are_hidden() {
        let u = Url::parse("rtsp://admin:s3cret@10.1.2.3:554/live/1?token=abc").unwrap();
        let shown = RedactedUrl(&u).to_string();
        assert_eq!(shown, "rtsp://***@10.1.2.3:554/live/1?***");
        assert!(!shown.contains("s3cret") && !shown.contains("admin"));
    }

    #[test]
    fn plain_url_is_unchanged() {
        let u = Url::parse("rtsp://127.0.0.1:8554/cam0").unwrap();
        assert_eq!(RedactedUrl(&u).to_string(), "rtsp://127.0.0.1:8554/cam0");
    }

    #[test]
    fn scrub_removes_echoed_secrets() {
        let u = Url::parse("rtmp://bob:p%40ssword@h/app").unwrap();
        let m = scrub(
            "failed to open rtmp://bob:p@ssword@h/app and p%40ssword",
            &u,
        );
        assert!(
            !m.contains("p@ssword") && !m.contains("p%40ssword") && !m.contains("bob"),
            "{m}"
        );
    }
}
