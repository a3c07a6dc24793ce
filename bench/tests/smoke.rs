//! The benchmark's smoke mode against a real Myelin on SQLite, so the load generator never rots:
//! every scenario (but `federation`, which needs a second server) runs at tiny sizes and must
//! finish without error (`storage` reads the server's SQLite file, `at_rest` its RSS). Figures are not checked here; `bench/run.py` measures them.

use std::net::TcpListener;
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
