//! Starts the ops HTTP server on an ephemeral port and scrapes it over plain HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_runtime::http::{ops_router, serve_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    response
}

#[tokio::test]
async fn serves_probes_and_metrics_until_cancelled() {
    let handle = switchboard_runtime::metrics::prometheus();
    metrics::counter!("switchboard_runtime_http_test_total").increment(1);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_http(listener, ops_router(handle), shutdown.clone()));

    for path in ["/healthz", "/readyz"] {
        let response = get(addr, path).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(response.ends_with("ok"), "{path}: {response}");
    }
    let response = get(addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain"), "{response}");
    assert!(
        response.contains("switchboard_runtime_http_test_total 1"),
        "{response}"
    );
    let response = get(addr, "/nope").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve_http returns after cancellation")
        .expect("serve task")
        .expect("serve result");
}
