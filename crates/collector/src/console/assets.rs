//! The console's static files, compiled into the binary. uPlot is vendored at a pinned
//! version (`assets/uplot/README.md`) under a versioned path, so it is cached for a
//! year as immutable; the console's own CSS and JS are revalidated (they change with
//! the collector).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub const UPLOT_VERSION: &str = "1.6.32";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    immutable: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "uplot-1.6.32/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/uplot/uPlot.iife.min.js"),
        immutable: true,
    },
    Asset {
        path: "uplot-1.6.32/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/uplot/uPlot.min.css"),
        immutable: true,
    },
    Asset {
        path: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/console.js"),
        immutable: false,
    },
    Asset {
        path: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/console.css"),
        immutable: false,
    },
];

pub async fn serve(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (
                    header::CACHE_CONTROL,
                    if a.immutable {
                        "public, max-age=31536000, immutable"
                    } else {
                        "public, max-age=300, must-revalidate"
                    },
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_uplot_is_the_pinned_version() {
        assert!(ASSETS
            .iter()
            .filter(|a| a.path.starts_with("uplot-"))
            .all(|a| a.path.starts_with(&format!("uplot-{UPLOT_VERSION}/"))));
        let readme = include_str!("../../assets/uplot/README.md");
        assert!(readme.contains(&format!("uplot@{UPLOT_VERSION}")));
    }
}
