//! Which response a method and path get. Kept apart from any server so that RSGI and ASGI agree.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `head` asks for the same status with no body.
    Serve {
        endpoint: Endpoint,
        head: bool,
    },
    MethodNotAllowed,
    NotFound,
}

/// The `Allow` header value sent with 405s.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

pub fn route(method: &str, path: &str) -> Route {
    let endpoint = match path {
        "/health" => Endpoint::Health,
        "/ready" => Endpoint::Ready,
        _ => return Route::NotFound,
    };
    match method {
        "GET" => Route::Serve {
            endpoint,
            head: false,
        },
        "HEAD" => Route::Serve {
            endpoint,
            head: true,
        },
        _ => Route::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_head_are_served() {
        assert_eq!(
            route("GET", "/health"),
            Route::Serve {
                endpoint: Endpoint::Health,
                head: false
            }
        );
        assert_eq!(
            route("HEAD", "/ready"),
            Route::Serve {
                endpoint: Endpoint::Ready,
                head: true
            }
        );
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"] {
            assert_eq!(route(method, "/ready"), Route::MethodNotAllowed, "{method}");
        }
    }

    #[test]
    fn unknown_paths_are_not_found_whatever_the_method() {
        for path in ["/", "/healthz", "/health/", "/ready/x", ""] {
            assert_eq!(route("GET", path), Route::NotFound, "{path}");
            assert_eq!(route("POST", path), Route::NotFound, "{path}");
        }
    }
}
