//! `GET /`: the live page, one HTML file with plain JavaScript (no build
//! step) that draws the graph from `/api/graph` and updates it each second
//! from `/api/metrics/stream`.

use axum::response::Html;

/// The page, compiled into the binary.
pub const PAGE: &str = include_str!("page.html");

/// `GET /`.
pub async fn index() -> Html<&'static str> {
    Html(PAGE)
}
