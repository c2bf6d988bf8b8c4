//! Redaction of error texts before they reach a client or the log.
//!
//! A failing check is reported by its error text, in `/ready` bodies and in the status-change log line.
//! Drivers put what they were given into their errors: connection URLs with their passwords,
//! `password=...` pairs from a DSN, `Authorization` values, file paths. [`redact`] is applied once, to
//! every check's error text, before it is stored, so no later path can show the original.

/// What a credential is replaced with.
pub const REDACTED: &str = "<redacted>";

/// What a file-system path is replaced with.
pub const PATH: &str = "<path>";

/// Key names (matched case-insensitively, anywhere in the key: `db_password`, `X-Api-Key`,
/// `AWS_SECRET_ACCESS_KEY`) whose value, after `=` or `:`, is a secret.
const SECRET_KEYS: [&str; 12] = [
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "private_key",
    "authorization",
];

/// HTTP authentication schemes: in `Authorization: Bearer abc` the secret is the word after the
/// scheme, which is kept so that the text still says what kind of credential was refused.
const AUTH_SCHEMES: [&str; 5] = ["basic", "bearer", "digest", "negotiate", "token"];

/// The text with credentials and file-system paths replaced:
///
/// - the password of a URL's user info (`postgres://app:<redacted>@db/app`), or the whole user info
///   when it has no `:` (`https://<redacted>@host`, a token used as user name);
/// - the value of a `key=value` or `key: value` pair (also quoted, as in JSON) whose key contains
///   one of [`SECRET_KEYS`];
/// - the word after `Bearer`;
/// - file-system paths (`/var/lib/x`, `./x`, `~/x`, `C:\x`), which reveal the deployment's layout.
pub fn redact(text: &str) -> String {
    let text = redact_url_credentials(text);
    let text = redact_secret_values(&text);
    redact_paths(&text)
}

/// Replaces what sits between `://` and the last `@` of the same word. Cutting at the last `@`
/// rather than at the first `/` may hide a little more than the user info (an `@` in a URL's path),
/// but never leaves a password containing `/`, `?` or `#` behind.
fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let word_len = tail.find(|c: char| c.is_whitespace() || "\"'<>`".contains(c)).unwrap_or(tail.len());
        let (word, after) = tail.split_at(word_len);
        match word.rfind('@') {
            Some(end) => {
                if let Some((user, _)) = word[..end].split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(REDACTED);
                out.push_str(&word[end..]);
            }
            None => out.push_str(word),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|secret| key.contains(secret))
}

/// Where an unquoted value ends: at white space or at punctuation that closes or separates it.
fn unquoted_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b",;&)]}\"'<>".contains(&b))
        .map_or(bytes.len(), |len| from + len)
}

fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&b| b == b' ' || b == b'\t') {
        at += 1;
    }
    at
}

/// The span of the secret that follows the key ending at `key_end`, if there is one: the value of a
/// secret key's pair, or the credential after `Bearer`.
fn secret_after(text: &str, key: &str, key_end: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    if key.eq_ignore_ascii_case("bearer") {
        let start = skip_spaces(bytes, key_end);
        let end = unquoted_end(bytes, start);
        return (start > key_end && end > start).then_some((start, end));
    }
    if !is_secret_key(key) {
        return None;
    }
    // A quoted key (`"password": ...`) is closed before its separator.
    let mut at = key_end;
    if matches!(bytes.get(at), Some(b'"' | b'\'')) {
        at += 1;
    }
    at = skip_spaces(bytes, at);
    if !matches!(bytes.get(at), Some(b'=' | b':')) {
        return None;
    }
    let start = skip_spaces(bytes, at + 1);
    let (start, end) = match bytes.get(start) {
        Some(&quote @ (b'"' | b'\'')) => {
            let inner = start + 1;
            let end = bytes[inner..].iter().position(|&b| b == quote).map_or(bytes.len(), |len| inner + len);
            (inner, end)
        }
        _ => {
            let end = unquoted_end(bytes, start);
            // `Authorization: Basic abc`: keep the scheme, redact what follows it.
            let word = &text[start..end];
            if AUTH_SCHEMES.iter().any(|s| word.eq_ignore_ascii_case(s)) {
                let credential = skip_spaces(bytes, end);
                (credential, unquoted_end(bytes, credential))
            } else {
                (start, end)
            }
        }
    };
    let already = text[start..].starts_with(REDACTED);
    (end > start && !already).then_some((start, end))
}

/// Replaces the values of secret pairs and bearer credentials. Works on bytes: every boundary it
/// cuts at is an ASCII byte, so slicing never splits a UTF-8 character.
fn redact_secret_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if !is_key_byte(bytes[at]) {
            at += 1;
            continue;
        }
        let key_start = at;
        while at < bytes.len() && is_key_byte(bytes[at]) {
            at += 1;
        }
        if let Some((start, end)) = secret_after(text, &text[key_start..at], at) {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
            at = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces file-system paths with `<path>`: errors are shown to probe clients, and paths reveal
/// the deployment's layout.
fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_matches(|c: char| "'\"(),;:[]<>".contains(c));
        let looks_like_path = (core.starts_with('/') && core.len() > 1)
            || core.starts_with("~/")
            || core.starts_with("./")
            || core.starts_with("../")
            || core.get(1..3).is_some_and(|s| s == ":\\");
        if looks_like_path {
            out.push_str(&word.replace(core, PATH));
        } else {
            out.push_str(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_example_keeps_no_password() {
        let text = "ConnectionError: could not connect to postgres://app:hunter2@db/app password=hunter2";
        assert_eq!(
            redact(text),
            "ConnectionError: could not connect to postgres://app:<redacted>@db/app password=<redacted>"
        );
    }

    #[test]
    fn url_user_info_is_redacted() {
        assert_eq!(
            redact("GET https://ghp_abc123@github.com/x failed"),
            "GET https://<redacted>@github.com/x failed"
        );
        assert_eq!(
            redact("redis://:s3cr/et@cache:6379/0 refused"),
            "redis://:<redacted>@cache:6379/0 refused"
        );
        assert_eq!(redact("amqp://guest:pa@ss@mq/ down"), "amqp://guest:<redacted>@mq/ down");
        assert_eq!(redact("no route to http://db:5432/app"), "no route to http://db:5432/app");
    }

    #[test]
    fn secret_pairs_are_redacted_in_every_form() {
        let cases = [
            ("password=hunter2", "password=<redacted>"),
            ("PGPASSWORD=hunter2 psql", "PGPASSWORD=<redacted> psql"),
            ("passwd = hunter2, user=app", "passwd = <redacted>, user=app"),
            ("pwd:hunter2", "pwd:<redacted>"),
            ("password: hunter2", "password: <redacted>"),
            ("?api_key=abc&limit=5", "?api_key=<redacted>&limit=5"),
            ("apikey=abc;", "apikey=<redacted>;"),
            ("access_token=abc", "access_token=<redacted>"),
            ("X-Api-Key: abc", "X-Api-Key: <redacted>"),
            ("client_secret='a b c'", "client_secret='<redacted>'"),
            (r#"{"token": "abc", "user": "app"}"#, r#"{"token": "<redacted>", "user": "app"}"#),
            ("secret=\"never closed", "secret=\"<redacted>"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn bearer_and_authorization_values_are_redacted() {
        assert_eq!(redact("401 for Bearer abc.def-ghi"), "401 for Bearer <redacted>");
        assert_eq!(redact("sent Authorization: Bearer abc"), "sent Authorization: Bearer <redacted>");
        assert_eq!(
            redact("authorization=Basic dXNlcjpwYXNz rejected"),
            "authorization=Basic <redacted> rejected"
        );
        assert_eq!(redact("Authorization: raw-token"), "Authorization: <redacted>");
    }

    #[test]
    fn ordinary_texts_are_unchanged() {
        for text in [
            "timed out after 500 ms (still running from an earlier round)",
            "coherence 0.50 <= 0.85",
            "ValueError: boom",
            "the store is already open (one process owns it)",
            "ratio 1/2 is fine / ok",
            "password",
            "Bearer",
            "",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn non_ascii_text_is_redacted_without_panicking() {
        assert_eq!(
            redact("échec: mot_de_passe=x password=héhé€ fin"),
            "échec: mot_de_passe=x password=<redacted> fin"
        );
        assert_eq!(redact("token=€"), "token=<redacted>");
        assert_eq!(redact("€://€@€"), "€://<redacted>@€");
    }

    #[test]
    fn paths_are_redacted() {
        assert_eq!(redact("cannot open /var/lib/phoenix/x.redb: denied"), "cannot open <path>: denied");
        assert_eq!(redact("file '/etc/secret' missing"), "file '<path>' missing");
        assert_eq!(redact("see ./conf.toml and C:\\data\\x"), "see <path> and <path>");
    }
}
