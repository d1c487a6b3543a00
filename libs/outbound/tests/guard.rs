//! The guard against a real HTTP server on loopback.

use std::net::SocketAddr;

use switchboard_outbound::{ClientOptions, GuardedClient, OutboundError, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A tiny HTTP/1.1 server: `/` answers 200, `/to-metadata` redirects to the cloud
/// metadata address, `/to-self` redirects to `/`.
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = match path.as_str() {
                    "/to-metadata" => "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    "/to-self" => "HTTP/1.1 302 Found\r\nlocation: /\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned(),
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

fn client(policy: Policy, max_redirects: usize) -> GuardedClient {
    GuardedClient::new(
        policy,
        &ClientOptions {
            max_redirects,
            ..Default::default()
        },
    )
    .unwrap()
}

async fn get(client: &GuardedClient, url: &str) -> Result<reqwest::Response, OutboundError> {
    let request = client.inner().get(url).build().unwrap();
    client.execute(request).await
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let addr = server().await;
    let public = client(Policy::public_only(), 0);
    for url in [
        format!("http://127.0.0.1:{}/", addr.port()),
        format!("http://localhost:{}/", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/", addr.port()),
    ] {
        match get(&public, &url).await {
            Err(OutboundError::Blocked(blocked)) => assert_eq!(blocked.reason, "loopback", "{url}"),
            other => panic!("{url}: expected a refusal, got {other:?}"),
        }
    }
    let allowed = client(Policy::allowing(&["127.0.0.0/8", "::1/128"]).unwrap(), 0);
    let response = get(&allowed, &format!("http://localhost:{}/", addr.port()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn cloud_metadata_is_refused_directly_and_through_a_redirect() {
    let addr = server().await;
    let guarded = client(Policy::allowing(&["127.0.0.0/8"]).unwrap(), 5);
    let err = get(&guarded, "http://169.254.169.254/latest/meta-data")
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutboundError::Blocked(ref b) if b.reason.starts_with("link-local")),
        "{err:?}"
    );
    let err = get(
        &guarded,
        &format!("http://127.0.0.1:{}/to-metadata", addr.port()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, OutboundError::Blocked(ref b) if b.ip.to_string() == "169.254.169.254"),
        "{err:?}"
    );
    // An allowed redirect is followed.
    let ok = get(
        &guarded,
        &format!("http://127.0.0.1:{}/to-self", addr.port()),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn redirects_are_not_followed_unless_asked() {
    let addr = server().await;
    let guarded = client(Policy::allowing(&["127.0.0.0/8"]).unwrap(), 0);
    let response = get(
        &guarded,
        &format!("http://127.0.0.1:{}/to-metadata", addr.port()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 302, "the 3xx is the answer");
}
