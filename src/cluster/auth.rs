//! NATS credentials: taken from the `--cluster` URLs (`nats://USER:PASSWORD@HOST:PORT`,
//! `nats://TOKEN@HOST:PORT`) or from the environment ([`USER_ENV`], [`PASSWORD_ENV`],
//! [`TOKEN_ENV`]), handed to the NATS client through its connect options, and never shown:
//! every URL printed is [`redact`]ed.

use super::Error;

/// User name for NATS, with [`PASSWORD_ENV`] (kept out of the process list, unlike a URL).
pub const USER_ENV: &str = "BOOTHCAST_NATS_USER";
/// Password for NATS, with [`USER_ENV`].
pub const PASSWORD_ENV: &str = "BOOTHCAST_NATS_PASSWORD";
/// Token for NATS (`nats-server --auth`), instead of a user and password.
pub const TOKEN_ENV: &str = "BOOTHCAST_NATS_TOKEN";

/// Credentials for the NATS servers of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: *** }}")
            }
            Credentials::Token(_) => write!(f, "Token(***)"),
        }
    }
}

impl Credentials {
    /// The credentials the environment gives ([`USER_ENV`] with [`PASSWORD_ENV`], or
    /// [`TOKEN_ENV`]), if any.
    ///
    /// # Errors
    /// [`Error::Credentials`] when only one of user and password is set, or a token beside them.
    pub fn from_env() -> Result<Option<Credentials>, Error> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Credentials::from_parts(get(USER_ENV), get(PASSWORD_ENV), get(TOKEN_ENV))
    }

    fn from_parts(
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
    ) -> Result<Option<Credentials>, Error> {
        match (user, password, token) {
            (None, None, None) => Ok(None),
            (Some(user), Some(password), None) => {
                Ok(Some(Credentials::UserPassword { user, password }))
            }
            (None, None, Some(t)) => Ok(Some(Credentials::Token(t))),
            (_, _, Some(_)) => Err(Error::Credentials(format!(
                "{TOKEN_ENV} is set beside {USER_ENV}/{PASSWORD_ENV}: give one or the other"
            ))),
            (Some(_), None, None) => Err(Error::Credentials(format!(
                "{USER_ENV} is set without {PASSWORD_ENV}"
            ))),
            (None, Some(_), None) => Err(Error::Credentials(format!(
                "{PASSWORD_ENV} is set without {USER_ENV}"
            ))),
        }
    }

    /// The secret part (password or token), to be kept out of anything shown.
    pub(super) fn secret(&self) -> &str {
        match self {
            Credentials::UserPassword { password, .. } => password,
            Credentials::Token(t) => t,
        }
    }

    /// `options` authenticating with these credentials.
    pub(super) fn apply(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        match self {
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(t) => options.token(t.clone()),
        }
    }
}

/// Where a URL's authority (`[userinfo@]host[:port]`) lies: from after `scheme://` (or the
/// start) to the first `/`, `?` or `#`.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map(|i| start + i)
        .unwrap_or(url.len());
    (start, end)
}

/// `url` as it may be shown: any credentials replaced by `***`
/// (`nats://bc:pw@10.0.0.5:4222` → `nats://***@10.0.0.5:4222`).
pub fn redact(url: &str) -> String {
    let (start, end) = authority(url);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// The URLs of `urls`, redacted and joined with commas, for messages and logs.
pub fn shown(urls: &[String]) -> String {
    urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
}

/// Decodes `%XX` escapes (a password holding `@`, `:`, `/` or `,` is written with them).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The servers of one `--cluster`: each URL without its credentials (for the NATS client),
/// and the credentials to use. Every URL carrying credentials must carry the same ones, and
/// credentials in URLs exclude those of the environment (`env`).
///
/// # Errors
/// [`Error::Credentials`] (never showing a secret) when URLs carry different credentials,
/// some URLs carry them and others not, the URLs and the environment both give them, or a
/// URL's credentials cannot be read (empty, or a bad `%` escape).
pub fn split(
    urls: &[String],
    env: Option<Credentials>,
) -> Result<(Vec<String>, Option<Credentials>), Error> {
    let mut clean = Vec::with_capacity(urls.len());
    let mut found: Vec<Option<Credentials>> = Vec::with_capacity(urls.len());
    for url in urls {
        let (start, end) = authority(url);
        let Some(at) = url[start..end].rfind('@') else {
            clean.push(url.clone());
            found.push(None);
            continue;
        };
        let info = &url[start..start + at];
        let bad = || {
            Error::Credentials(format!(
                "cannot read the credentials of {} (write USER:PASSWORD@ or TOKEN@, with %XX \
                 for @ : / , and %)",
                redact(url)
            ))
        };
        let creds = match info.split_once(':') {
            Some((u, p)) => {
                let user = percent_decode(u).ok_or_else(bad)?;
                let password = percent_decode(p).ok_or_else(bad)?;
                if user.is_empty() || password.is_empty() {
                    return Err(bad());
                }
                Credentials::UserPassword { user, password }
            }
            None => {
                let token = percent_decode(info).ok_or_else(bad)?;
                if token.is_empty() {
                    return Err(bad());
                }
                Credentials::Token(token)
            }
        };
        clean.push(format!("{}{}", &url[..start], &url[start + at + 1..]));
        found.push(Some(creds));
    }
    let first = found.iter().flatten().next().cloned();
    let Some(first) = first else {
        return Ok((clean, env));
    };
    if found.iter().any(|c| c.as_ref() != Some(&first)) {
        return Err(Error::Credentials(format!(
            "the NATS URLs {} do not all carry the same credentials: give every URL the same \
             USER:PASSWORD@ (or TOKEN@), or none and set {USER_ENV} and {PASSWORD_ENV} \
             (or {TOKEN_ENV})",
            shown(urls)
        )));
    }
    if env.is_some() {
        return Err(Error::Credentials(format!(
            "NATS credentials both in the URLs and in the environment ({USER_ENV}, \
             {PASSWORD_ENV} or {TOKEN_ENV}): give them in one place"
        )));
    }
    Ok((clean, Some(first)))
}

/// `text` with `secret` replaced by `***` (a message from the NATS client or server).
pub(super) fn scrub(text: &str, creds: Option<&Credentials>) -> String {
    match creds.map(Credentials::secret).filter(|s| !s.is_empty()) {
        Some(s) => text.replace(s, "***"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls_and_redacted_when_shown() {
        let u = urls(&[
            "nats://bc:s3cretpw@127.0.0.1:4222",
            "nats://bc:s3cretpw@10.0.0.2:4222",
        ]);
        let (clean, creds) = split(&u, None).unwrap();
        assert_eq!(clean, ["nats://127.0.0.1:4222", "nats://10.0.0.2:4222"]);
        assert_eq!(
            creds,
            Some(Credentials::UserPassword {
                user: "bc".into(),
                password: "s3cretpw".into()
            })
        );
        assert_eq!(
            shown(&u),
            "nats://***@127.0.0.1:4222,nats://***@10.0.0.2:4222"
        );
        assert!(!format!("{creds:?}").contains("s3cretpw"));
    }

    #[test]
    fn a_token_and_escapes_are_read() {
        let (clean, creds) = split(&urls(&["nats://t0k3n@h:1"]), None).unwrap();
        assert_eq!(clean, ["nats://h:1"]);
        assert_eq!(creds, Some(Credentials::Token("t0k3n".into())));
        let (_, creds) = split(&urls(&["nats://bc:p%40ss%2Cw@h:1/"]), None).unwrap();
        assert_eq!(
            creds,
            Some(Credentials::UserPassword {
                user: "bc".into(),
                password: "p@ss,w".into()
            })
        );
        assert_eq!(redact("nats://bc:p%40ss@h:1/x@y"), "nats://***@h:1/x@y");
        assert_eq!(redact("h:1"), "h:1");
        assert_eq!(redact("bc:pw@h:1"), "***@h:1");
    }

    #[test]
    fn different_or_doubled_credentials_are_refused_without_the_secret() {
        for u in [
            urls(&["nats://bc:one-secret@a:1", "nats://bc:two-secret@b:1"]),
            urls(&["nats://bc:one-secret@a:1", "nats://b:1"]),
        ] {
            let e = split(&u, None).unwrap_err().to_string();
            assert!(e.contains("same credentials"), "{e}");
            assert!(
                !e.contains("one-secret") && !e.contains("two-secret"),
                "{e}"
            );
        }
        let env = Some(Credentials::Token("env-secret".into()));
        let e = split(&urls(&["nats://bc:one-secret@a:1"]), env.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("in one place") && !e.contains("secret@"), "{e}");
        let (clean, creds) = split(&urls(&["nats://a:1"]), env.clone()).unwrap();
        assert_eq!((clean, creds), (urls(&["nats://a:1"]), env));
        let e = split(&urls(&["nats://bc:%zz@a:1"]), None).unwrap_err();
        assert!(e.to_string().contains("nats://***@a:1"), "{e}");
    }

    #[test]
    fn half_given_environment_credentials_are_refused() {
        assert!(Credentials::from_parts(Some("u".into()), None, None).is_err());
        assert!(Credentials::from_parts(None, Some("p".into()), None).is_err());
        assert!(Credentials::from_parts(None, None, None).unwrap().is_none());
        assert!(
            Credentials::from_parts(Some("u".into()), Some("p".into()), Some("t".into())).is_err()
        );
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let c = Credentials::UserPassword {
            user: "bc".into(),
            password: "s3cretpw".into(),
        };
        assert_eq!(scrub("bad s3cretpw here", Some(&c)), "bad *** here");
    }
}
