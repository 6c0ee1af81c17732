//! A bare HTTP round trip: the server framework the feeds use (axum) answering pre-serialised pages
//! of the same size, with no token check, no store and no encoding. What a read costs over HTTP
//! before it does anything.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use feeds::BoxError;

pub struct Bare {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves each `(name, body)` at `GET /{name}` on 127.0.0.1, on a port of the system's choosing.
pub async fn serve(pages: Vec<(&str, Bytes)>) -> Result<Bare, BoxError> {
    let mut app = Router::new();
    for (name, body) in pages {
        app = app.route(
            &format!("/{name}"),
            get(move || {
                let body = body.clone();
                async move { ([(CONTENT_TYPE, "application/json")], body) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            crate::log(&format!("the bare HTTP server stopped: {e}"));
        }
    });
    Ok(Bare { base, task })
}
