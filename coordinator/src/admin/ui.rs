//! The web console's files at `/ui`, embedded in the binary from `coordinator/ui/` (plain
//! HTML, CSS and hand-written JavaScript: no build step, nothing loaded from elsewhere).
//!
//! The files carry no data and are served without the token; every piece of data the console
//! shows comes from the `/v1` API with the admin token in the `Authorization` header, exactly
//! as `tandemctl` reads it. The token lives in the browser's `sessionStorage` only, never in a
//! URL. A strict Content-Security-Policy (`'self'` only, no inline script) keeps anything the
//! fleet reports (node names, job output) from running as script.

use super::{ApiError, Code};
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use include_dir::{include_dir, Dir};

static UI: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ui");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Response {
    match UI.get_file(path) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            f.contents(),
        )
            .into_response(),
        None => ApiError::new(Code::NotFound, format!("no console file `{path}`")).into_response(),
    }
}

/// `/ui` and `/ui/`: the console's page.
pub(super) async fn index() -> Response {
    file("index.html")
}

/// `/ui/{file}`: one of its files.
pub(super) async fn asset(Path(path): Path<String>) -> Response {
    if path.is_empty() {
        return file("index.html");
    }
    file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let index = UI.get_file("index.html").unwrap().contents_utf8().unwrap();
        for name in ["app.js", "style.css", "favicon.svg"] {
            assert!(index.contains(name), "index.html loads {name}");
            assert!(UI.get_file(name).is_some(), "{name} is embedded");
        }
        // Nothing from elsewhere.
        for f in UI.files() {
            // An SVG names its XML namespace with a URL; nothing is loaded from it.
            let text = f
                .contents_utf8()
                .unwrap_or_default()
                .replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{:?}",
                f.path()
            );
        }
    }
}
