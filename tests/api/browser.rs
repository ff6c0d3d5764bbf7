//! Browser rules: helmet-equivalent security headers, CORS for `ALLOWED_ORIGINS`, and the same
//! list checked on WebSocket upgrades.

use our_memories::config::AllowedOrigins;
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, assert_error};

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| c.allowed_origins = AllowedOrigins::parse(APP)).await
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn().await;
    for path in ["/health", "/nowhere"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "SAMEORIGIN");
        assert_eq!(
            h["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cross-origin-opener-policy"], "same-origin");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'")
        );
        assert_eq!(h["x-xss-protection"], "0");
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let app = spawn().await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/signal"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight(APP).await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(ok.headers()["access-control-allow-origin"], APP);
    assert!(
        ok.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let denied = preflight(EVIL).await.unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let res = app
        .http
        .get(app.url("/health"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], APP);
    assert!(
        res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("etag")
    );
    let res = app
        .http
        .get(app.url("/health"))
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "a disallowed origin gets the response, just no CORS"
    );
    assert!(res.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_check_the_browser_origin() {
    let app = spawn().await;
    let connect = |origin: Option<&str>| {
        let mut req = format!("ws://{}/ws", app.addr)
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    assert!(connect(Some(APP)).await.is_ok());
    assert!(connect(None).await.is_ok(), "native apps send no Origin");
    let own = format!("http://{}", app.addr);
    assert!(
        connect(Some(&own)).await.is_ok(),
        "the server's own pages (the demo): Origin names the Host"
    );
    match connect(Some(EVIL)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    // The same refusal over plain HTTP shows the JSON error.
    let res = app
        .http
        .get(app.url("/ws"))
        .header("origin", EVIL)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::FORBIDDEN, "origin_not_allowed").await;
    app.stop().await;
}

#[tokio::test]
async fn the_demo_page_is_served_from_the_binary_under_the_security_headers() {
    let app = spawn().await;
    let get = |path: &str| app.http.get(app.url(path)).send();
    let manual = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = manual.get(app.url("/demo")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()["location"], "/demo/");
    let res = get("/demo/").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="demo.js">"#));
    assert!(
        !html.contains("<script>"),
        "the CSP allows no inline script"
    );
    for (path, media) in [
        ("/demo/demo.js", "text/javascript; charset=utf-8"),
        ("/demo/demo.css", "text/css; charset=utf-8"),
    ] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()["content-type"], media, "{path}");
    }
    // The page runs the reference client itself, not a copy of it.
    let client = get("/demo/our-memories.js")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(client, include_str!("../../web/our-memories.js"));
    assert_error(
        get("/demo/nothing.js").await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn without_demo_every_path_under_it_is_not_found() {
    let app = TestApp::spawn_with(|c| c.demo = false).await;
    for path in ["/demo", "/demo/", "/demo/demo.js", "/demo/our-memories.js"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    app.stop().await;
}
