//! The benchmark's smoke mode against a real Myelin on SQLite, so the load generator never rots:
//! every scenario (but `federation`, which needs a second server) runs at tiny sizes and must
//! finish without error (`storage` reads the server's SQLite file, `at_rest` its RSS); and
//! `big_room_join` between two federating Myelins. Figures are not checked here; `bench/run.py`
//! measures them.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::myelin_bin;

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn smoke_every_scenario_against_myelin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("myelin.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[listen]\nclient = \"127.0.0.1:{port}\"\n\
             [registration]\nmode = \"open\"\n[rate_limits]\nenabled = false\n[log]\nlevel = \"warn\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut cmd = Command::new(myelin_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("MYELIN_") {
            cmd.env_remove(k);
        }
    }
    let child =
        cmd.args(["serve", "--config"]).arg(&config).stdout(Stdio::null()).stderr(log).spawn().expect("start myelin");
    let pid = child.id();
    let _server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "myelin did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = Command::new(env!("CARGO_BIN_EXE_myelin-bench"))
        .args(["--url", &url, "--smoke", "--fail-on-error", "--label", "smoke", "--pid", &pid.to_string()])
        .args([
            "--scenario",
            "send_latency,send_throughput,fanout,idle_syncers,history,join_storm,sliding_sync,big_account,storage,at_rest,\
             deep_history",
        ])
        .arg("--db")
        .arg(dir.path().join("data").join("myelin.db"))
        .args(["--case-timeout", "300"])
        .output()
        .expect("run myelin-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let server_log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "myelin-bench --smoke failed\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{server_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> =
        stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    for scenario in [
        "send_latency",
        "send_throughput",
        "fanout",
        "idle_syncers",
        "history",
        "join_storm",
        "sliding_sync",
        "big_account",
        "storage",
        "at_rest",
        "deep_history",
    ] {
        let mine: Vec<&serde_json::Value> = lines.iter().filter(|l| l["scenario"] == scenario).collect();
        assert!(!mine.is_empty(), "no result line for {scenario}: {stdout}");
        for l in mine {
            assert_eq!(l["status"], "ok", "{scenario} did not succeed: {l}");
        }
    }
    // Fan-out must deliver every message exactly once, in order, even at smoke sizes.
    for l in lines.iter().filter(|l| l["scenario"] == "fanout") {
        for key in ["lost", "duplicated", "out_of_order"] {
            if let Some(n) = l.get(key).and_then(|v| v.as_u64()) {
                assert_eq!(n, 0, "fanout {key}: {l}");
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a Myelin that federates over TLS on `fed_port` (named after it); returns it with its
/// client port.
fn federating_myelin(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> (Server, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let (port, fed_port) = (free_port(), free_port());
    let config = dir.join("myelin.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"127.0.0.1:{fed_port}\"\ndata_dir = \"{}\"\n\
             [listen]\nclient = \"127.0.0.1:{port}\"\nfederation = \"127.0.0.1:{fed_port}\"\n\
             [registration]\nmode = \"open\"\n[rate_limits]\nenabled = false\n[log]\nlevel = \"warn\"\n\
             [federation]\nenabled = true\ntrusted_ca = \"{}\"\nallow_private_addresses = true\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("data").display(),
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut cmd = Command::new(myelin_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("MYELIN_") {
            cmd.env_remove(k);
        }
    }
    let child =
        cmd.args(["serve", "--config"]).arg(&config).stdout(Stdio::null()).stderr(log).spawn().expect("start myelin");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in [port, fed_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(Instant::now() < deadline, "myelin did not start; see {}", dir.join("server.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (server, port)
}

#[test]
fn smoke_big_room_join_between_two_myelins() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A throw-away CA and one certificate for 127.0.0.1, shared by both servers.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "myelin-bench smoke CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) =
        (dir.path().join("ca.pem"), dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let (_a, port_a) = federating_myelin(&dir.path().join("a"), &ca_path, &cert_path, &key_path);
    let (b, port_b) = federating_myelin(&dir.path().join("b"), &ca_path, &cert_path, &key_path);
    let out = Command::new(env!("CARGO_BIN_EXE_myelin-bench"))
        .args(["--url", &format!("http://127.0.0.1:{port_a}"), "--url2", &format!("http://127.0.0.1:{port_b}")])
        .args(["--pid2", &b.0.id().to_string(), "--smoke", "--fail-on-error", "--label", "smoke"])
        .args(["--scenario", "big_room_join", "--case-timeout", "120"])
        .output()
        .expect("run myelin-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs = ["a", "b"]
        .map(|s| std::fs::read_to_string(dir.path().join(s).join("server.log")).unwrap_or_default())
        .join("\n-- b --\n");
    assert!(
        out.status.success(),
        "myelin-bench big_room_join failed\nstdout:\n{stdout}\nstderr:\n{}\nserver logs (a, then b):\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The generator marks the timed part on stdout (bench/run.py counts the bytes between them).
    assert!(stdout.contains("#mark big_room_join start") && stdout.contains("#mark big_room_join end"), "{stdout}");
    let line: serde_json::Value =
        serde_json::from_str(stdout.lines().find(|l| l.starts_with('{')).expect("a result line")).expect("JSON line");
    assert_eq!(line["status"], "ok", "{line}");
    // Every member of A's room is listed on B, the joiner too; B's state holds them all.
    let members = line["members"].as_u64().unwrap();
    assert!(line["room_state_on_b"].as_u64().unwrap() > members, "{line}");
    assert!(line["b_peak_rss_bytes"].as_u64().unwrap() > 0, "{line}");
    assert!(line["timeline_events"].as_u64().unwrap() > 0, "{line}");
}
