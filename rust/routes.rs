//! Which response a request gets, from its method, path, query and the two headers that matter.
//! Kept apart from any server so that RSGI and ASGI agree.

use subtle::ConstantTimeEq;

use crate::render::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Health,
    Live,
    Startup,
    Ready,
    /// `/ready/<name>`: one subsystem.
    ReadyOne(&'a str),
    /// Prometheus metrics.
    Metrics,
    /// The status page (HTML, or its data as JSON).
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `head` asks for the same status with no body.
    Serve {
        endpoint: Endpoint<'a>,
        head: bool,
    },
    MethodNotAllowed,
    NotFound,
}

/// The `Allow` header value sent with 405s.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// The endpoint a path names, whatever the method.
pub fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    Some(match path {
        "/health" => Endpoint::Health,
        "/ready" => Endpoint::Ready,
        "/live" => Endpoint::Live,
        "/startup" => Endpoint::Startup,
        "/metrics" => Endpoint::Metrics,
        "/status" => Endpoint::Status,
        _ => match path.strip_prefix("/ready/") {
            Some(name) if !name.is_empty() && !name.contains('/') => Endpoint::ReadyOne(name),
            _ => return None,
        },
    })
}

pub fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    let Some(endpoint) = endpoint(path) else {
        return Route::NotFound;
    };
    match method {
        "GET" => Route::Serve { endpoint, head: false },
        "HEAD" => Route::Serve { endpoint, head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// What a readiness query string asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pub verbose: bool,
    pub health_json: bool,
    pub exclude: Vec<String>,
}

impl Query {
    pub fn parse(query: &str) -> Self {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "verbose" => parsed.verbose = value != "false" && value != "0",
                // In a query string `+` decodes to a space, so `format=health+json` arrives as "health json".
                "format" => parsed.health_json = matches!(&*value, "health+json" | "health json"),
                "exclude" => parsed.exclude.push(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }

    /// The format asked for: `?verbose` wins, then `?format=health+json` or the `Accept` header.
    pub fn format(&self, accept: Option<&str>) -> Format {
        if self.verbose {
            Format::Verbose
        } else if self.health_json || accept.is_some_and(accepts_health_json) {
            Format::HealthJson
        } else {
            Format::Json
        }
    }
}

fn accepts_health_json(accept: &str) -> bool {
    accept.split(',').any(|item| {
        item.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/health+json"))
    })
}

/// Whether `authorization` carries `Bearer <token>`. Response times must not help guess the token:
/// both sides are hashed first and the digests compared in constant time, so neither the position
/// of the first difference nor the token's length (a comparison of unequal lengths ends at once)
/// shows in the time taken.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|value| {
        let (scheme, rest) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }) else {
        return false;
    };
    let digest = |text: &str| *blake3::hash(text.as_bytes()).as_bytes();
    !token.is_empty() && bool::from(digest(given).ct_eq(&digest(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_head_are_served() {
        assert_eq!(route("GET", "/health"), Route::Serve { endpoint: Endpoint::Health, head: false });
        assert_eq!(route("HEAD", "/ready"), Route::Serve { endpoint: Endpoint::Ready, head: true });
        assert_eq!(route("GET", "/live"), Route::Serve { endpoint: Endpoint::Live, head: false });
        assert_eq!(route("GET", "/startup"), Route::Serve { endpoint: Endpoint::Startup, head: false });
        assert_eq!(
            route("GET", "/ready/world_model"),
            Route::Serve { endpoint: Endpoint::ReadyOne("world_model"), head: false }
        );
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"] {
            assert_eq!(route(method, "/ready"), Route::MethodNotAllowed, "{method}");
            assert_eq!(route(method, "/ready/db"), Route::MethodNotAllowed, "{method}");
        }
    }

    #[test]
    fn unknown_paths_are_not_found_whatever_the_method() {
        for path in ["/", "/healthz", "/health/", "/ready/", "/ready/a/b", "/livez", ""] {
            assert_eq!(route("GET", path), Route::NotFound, "{path}");
            assert_eq!(route("POST", path), Route::NotFound, "{path}");
        }
    }

    #[test]
    fn query_selects_format_and_exclusions() {
        let q = Query::parse("verbose&exclude=db&exclude=cache");
        assert!(q.verbose);
        assert_eq!(q.exclude, ["db", "cache"]);
        assert_eq!(q.format(None), Format::Verbose);
        assert_eq!(Query::parse("format=health+json").format(None), Format::HealthJson);
        assert_eq!(Query::parse("format=health%2Bjson").format(None), Format::HealthJson);
        assert_eq!(Query::parse("").format(None), Format::Json);
        assert_eq!(Query::parse("verbose=false").format(None), Format::Json);
    }

    #[test]
    fn accept_header_selects_health_json() {
        let q = Query::default();
        assert_eq!(q.format(Some("application/health+json")), Format::HealthJson);
        assert_eq!(q.format(Some("text/html, application/health+json;q=0.9")), Format::HealthJson);
        assert_eq!(q.format(Some("application/json")), Format::Json);
        assert_eq!(q.format(Some("*/*")), Format::Json);
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some("bearer  s3cret "), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cret2"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), ""));
    }

    #[test]
    fn a_prefix_or_an_extension_of_the_token_does_not_match() {
        let token = "0123456789abcdef";
        for len in 0..token.len() {
            let prefix = format!("Bearer {}", &token[..len]);
            assert!(!bearer_matches(Some(&prefix), token), "{prefix}");
        }
        for tail in ["0", "\u{e9}", "0123456789abcdef"] {
            let extended = format!("Bearer {token}{tail}");
            assert!(!bearer_matches(Some(&extended), token), "{extended}");
        }
        let long_token = token.repeat(64);
        assert!(bearer_matches(Some(&format!("Bearer {long_token}")), &long_token));
        assert!(!bearer_matches(Some(&format!("Bearer {token}")), &long_token));
    }
}
