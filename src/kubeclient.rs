//! The Kubernetes API client the controller and the CLI use.
//!
//! kube's own `Client::try_from(Config)` speaks HTTP/1.1 only (its TLS
//! connector offers no ALPN): every in-flight request holds a connection of
//! its own, and every response wakes that connection's task for one small
//! read. This builds the same stack — base URI, kube's server-error retry,
//! the auth layer (token files re-read, exec plugins), the configured extra
//! headers, the TLS config kube derives from the kubeconfig — over a
//! connector that offers `h2` as well, so against an API server (which
//! speaks HTTP/2, as client-go uses it) all requests and watches share one
//! multiplexed connection, kept honest by HTTP/2 pings: a connection that
//! stops answering pings is closed and its requests fail over to a new one,
//! as client-go's `ReadIdleTimeout`/`PingTimeout` do.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use tower::ServiceBuilder;

/// Ping an HTTP/2 connection that has been silent this long…
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// …and close it when the ping is not answered within this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP/2 flow control as client-go sets it (Go's `http2.Transport`): a
/// watch whose events are not being read holds at most one stream window
/// of the connection's; with hyper's defaults (2 MiB per stream, 5 MiB per
/// connection) three stalled watches would stop every other request on
/// the shared connection.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 1 << 30;

/// Which HTTP versions the client offers the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    // Offer `h2` and `http/1.1` by ALPN; the server picks (an API server
    // picks `h2`). All requests and watches share one connection.
    #[default]
    Http2,
    // HTTP/1.1 only: one connection per request in flight (kube's own
    // client). Also what a kubeconfig with a `proxy-url` gets.
    Http1,
}

impl Protocol {
    /// The flag value that selects it (`--api-protocol`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http2 => "http2",
            Protocol::Http1 => "http1",
        }
    }
}

/// Builds the API client for `config`.
pub fn build(config: kube::Config, protocol: Protocol) -> Result<kube::Client, kube::Error> {
    // kube's client knows the kubeconfig's proxy-url (HTTP CONNECT, SOCKS)
    if protocol == Protocol::Http1 || config.proxy_url.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = config.tls_server_name.as_ref() {
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = tls.enable_http1().enable_http2().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;

    /// What the test API server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        h2_requests: AtomicUsize,
        h1_requests: AtomicUsize,
    }

    type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

    /// `/big` streams 64 MiB (never finished by a reader that stops),
    /// anything else answers `{}`.
    async fn answer(
        req: hyper::Request<hyper::body::Incoming>,
        seen: Arc<Seen>,
    ) -> Result<hyper::Response<Body>, std::convert::Infallible> {
        match req.version() {
            hyper::Version::HTTP_2 => seen.h2_requests.fetch_add(1, Ordering::SeqCst),
            _ => seen.h1_requests.fetch_add(1, Ordering::SeqCst),
        };
        let body: Body = if req.uri().path() == "/big" {
            let chunks = futures::stream::iter(
                (0..1024).map(|_| Ok(Frame::data(Bytes::from(vec![b' '; 64 << 10])))),
            );
            StreamBody::new(chunks).boxed()
        } else {
            Full::new(Bytes::from_static(b"{}")).boxed()
        };
        Ok(hyper::Response::new(body))
    }

    /// A TLS server on 127.0.0.1 offering `alpn`; returns its URL, CA and
    /// counters. Stops with the test's runtime.
    async fn server(alpn: &[&[u8]]) -> (http::Uri, Vec<u8>, Arc<Seen>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let ca = ck.cert.der().to_vec();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let counters = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let svc = hyper::service::service_fn(move |r| answer(r, seen.clone()));
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        (url.parse().unwrap(), ca, counters)
    }

    fn config(url: http::Uri, ca: Vec<u8>) -> kube::Config {
        let mut c = kube::Config::new(url);
        c.root_cert = Some(vec![ca]);
        c
    }

    async fn get(client: &kube::Client, path: &str) -> hyper::Response<kube::client::Body> {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        client
            .send(req.map(kube::client::Body::from))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn requests_in_flight_share_one_http2_connection() {
        let (url, ca, seen) = server(&[b"h2", b"http/1.1"]).await;
        let client = build(config(url, ca), Protocol::Http2).unwrap();
        // (requests racing before the first connection's ALPN is known each
        // open one; hyper closes all but the first to negotiate h2)
        assert_eq!(
            get(&client, "/small").await.version(),
            hyper::Version::HTTP_2
        );
        let answers = futures::future::join_all((0..20).map(|_| get(&client, "/small"))).await;
        for a in answers {
            assert_eq!(a.status(), 200);
            assert_eq!(a.version(), hyper::Version::HTTP_2);
        }
        assert_eq!(seen.h2_requests.load(Ordering::SeqCst), 21);
        assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 0);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http1_and_servers_without_h2_get_http1() {
        let (url, ca, seen) = server(&[b"http/1.1"]).await;
        let client = build(config(url, ca), Protocol::Http2).unwrap();
        assert_eq!(
            get(&client, "/small").await.version(),
            hyper::Version::HTTP_11
        );
        let (url, ca, seen1) = server(&[b"h2", b"http/1.1"]).await;
        let client = build(config(url, ca), Protocol::Http1).unwrap();
        let answers = futures::future::join_all((0..4).map(|_| get(&client, "/small"))).await;
        assert!(
            answers
                .iter()
                .all(|a| a.version() == hyper::Version::HTTP_11)
        );
        assert_eq!(seen.h1_requests.load(Ordering::SeqCst), 1);
        assert_eq!(seen1.h2_requests.load(Ordering::SeqCst), 0);
        assert_eq!(seen1.h1_requests.load(Ordering::SeqCst), 4);
    }

    /// Watches whose events are not read (a busy consumer) must not stop
    /// the other requests on the shared connection: with hyper's default
    /// windows three such streams take the whole connection window.
    #[tokio::test]
    async fn unread_streams_do_not_stall_the_connection() {
        let (url, ca, seen) = server(&[b"h2"]).await;
        let client = build(config(url, ca), Protocol::Http2).unwrap();
        let mut unread = Vec::new();
        for _ in 0..4 {
            let r = get(&client, "/big").await;
            assert_eq!(r.version(), hyper::Version::HTTP_2);
            unread.push(r);
        }
        // the server fills each unread stream's window meanwhile
        tokio::time::sleep(Duration::from_millis(500)).await;
        let small = tokio::time::timeout(Duration::from_secs(10), async {
            let r = get(&client, "/small").await;
            r.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("a small request behind unread streams on the same connection stalled");
        assert_eq!(&small[..], b"{}");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        drop(unread);
    }
}
