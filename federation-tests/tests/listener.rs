//! The HTTPS federation listener's limits, spoken to over raw TLS connections: a request head
//! that is never finished is closed after the head timeout, a body that stops coming after the
//! idle timeout, and connections over the cap are closed at once (all were unbounded:
//! axum-server turns hyper's head timeout off).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FedServer, ca, init_crypto};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `ip:8448` with the handshake done; `Err` if the server closed it first.
fn connect(ip: &str) -> std::io::Result<Tls> {
    init_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca().pem()).expect("ca.pem")).expect("root");
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::try_from(ip.to_owned()).expect("ip");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut sock = TcpStream::connect((ip, 8448))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Reads until the server closes the connection (or the 10 s read timeout); returns what came.
fn read_to_close(tls: &mut Tls) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (out, false);
            }
            // A reset or a TLS close without close_notify: closed all the same.
            Err(_) => return (out, true),
        }
    }
}

/// One complete request on a fresh connection; the status code.
fn version_status(ip: &str) -> std::io::Result<u16> {
    let mut tls = connect(ip)?;
    tls.write_all(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let (answer, _) = read_to_close(&mut tls);
    let head = String::from_utf8_lossy(&answer);
    Ok(head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
}

#[tokio::test]
async fn half_sent_heads_time_out_and_connections_are_capped() {
    let ip = "127.0.50.11";
    let server = FedServer::start_with_env(
        ip,
        &[
            ("MYELIN_LISTEN__FEDERATION_HEADER_TIMEOUT_SECS", "1"),
            ("MYELIN_LISTEN__FEDERATION_IDLE_TIMEOUT_SECS", "2"),
            ("MYELIN_LISTEN__FEDERATION_MAX_CONNECTIONS", "4"),
        ],
    )
    .await;
    let ip_owned = ip.to_owned();
    tokio::task::spawn_blocking(move || {
        let ip = ip_owned.as_str();
        assert_eq!(version_status(ip).expect("a complete request"), 200);

        // The request that used to panic in ruma (login without "type") is a Matrix error on
        // this listener too, and the connection carries the next request.
        let mut tls = connect(ip).expect("handshake");
        let body = r#"{"identifier":{"type":"m.id.user","user":"a"},"password":"x"}"#;
        let login = format!(
            "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(login.as_bytes()).unwrap();
        tls.write_all(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let (answers, _) = read_to_close(&mut tls);
        let answers = String::from_utf8_lossy(&answers);
        assert!(answers.starts_with("HTTP/1.1 400"), "{answers}");
        assert!(answers.contains("M_BAD_JSON"), "{answers}");
        assert!(answers.matches("HTTP/1.1 ").count() == 2 && answers.contains("HTTP/1.1 200"), "{answers}");

        // A request head that is never finished, after the TLS handshake.
        let mut tls = connect(ip).expect("handshake");
        tls.write_all(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let (_, closed) = read_to_close(&mut tls);
        let waited = started.elapsed();
        eprintln!("half-sent head closed={closed} after {waited:?}");
        assert!(closed && waited < Duration::from_secs(5), "closed={closed} after {waited:?}");
        drop(tls);
        std::thread::sleep(Duration::from_millis(200));

        // A complete head whose body stops coming: no byte for the idle timeout closes it.
        let mut tls = connect(ip).expect("handshake");
        tls.write_all(
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"type\":",
        )
        .unwrap();
        let started = Instant::now();
        let (_, closed) = read_to_close(&mut tls);
        let waited = started.elapsed();
        eprintln!("stalled body closed={closed} after {waited:?}");
        assert!(
            closed && waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
            "closed={closed} after {waited:?}"
        );
        drop(tls);

        // Four idle connections fill the cap; a fifth is closed before its handshake.
        let held: Vec<Tls> = (0..4).map(|i| connect(ip).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect();
        let refused = connect(ip);
        assert!(refused.is_err(), "a fifth connection got through the cap of four");
        // Once one ends, there is room again.
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(version_status(ip).expect("room after the others closed"), 200);
    })
    .await
    .unwrap();
    drop(server);
}
