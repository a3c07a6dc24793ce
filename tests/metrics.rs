//! Prometheus metrics (`listen.metrics`): the scrape parses as the Prometheus text format (read
//! by the official Python client's parser, `prometheus_client.parser`, in the test virtualenv),
//! its counters move after requests, routes are labelled by pattern rather than raw path, and the waiting-`/sync` gauge
//! follows a held long-poll. `/metrics` is never served on the client listener.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One sample of a scrape: metric name (with `_bucket`/`_sum`/`_count` for histograms), labels
/// and value.
struct Sample {
    metric: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
}

/// A parsed scrape.
struct Scrape {
    samples: Vec<Sample>,
}

/// Parses the Prometheus text format with `prometheus_client.parser.text_string_to_metric_families`
/// (it raises on anything malformed).
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"metric": s.name, "labels": s.labels, "value": s.value}))
"#;

fn parse(text: &str) -> Scrape {
    use std::io::Write;
    let mut child = std::process::Command::new(nio_python())
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing the scrape");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "the scrape does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let samples = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("json sample");
            Sample {
                metric: v["metric"].as_str().expect("name").to_owned(),
                labels: serde_json::from_value(v["labels"].clone()).expect("labels"),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect();
    Scrape { samples }
}

/// Scrapes the metrics listener configured for `server` and parses the answer.
async fn scrape(server: &TestServer) -> Scrape {
    let addr = server.config()["listen"]["metrics"].as_str().expect("listen.metrics is set").to_owned();
    let res = http_client().get(format!("http://{addr}/metrics")).send().await.expect("scraping /metrics");
    assert_eq!(res.status().as_u16(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = res.text().await.expect("metrics body");
    tokio::task::spawn_blocking(move || parse(&text)).await.expect("parsing")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn samples<'a>(scrape: &'a Scrape, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    scrape.samples.iter().filter(move |s| s.metric == name)
}

fn with_metrics(config: &mut toml::Table) {
    set_config(config, "listen.metrics", format!("127.0.0.1:{}", free_port()));
}

both_backends!(metrics_scrape_parses_and_counters_move, with with_metrics, |server| async move {
    let alice = server.register("alice").await;
    let before = scrape(&server).await;
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 1e6, "process memory is reported");
    assert!(samples(&before, "process_cpu_seconds_total").next().is_some(), "process CPU is reported");
    assert!(value(&before, "process_open_fds", &[]) > 0.0, "open file descriptors are reported");
    assert!(samples(&before, "myelin_db_pool_connections").next().is_some(), "the database pool is reported");

    let versions = [("endpoint", "/_matrix/client/versions"), ("method", "GET"), ("status", "200")];
    let seen = value(&before, "myelin_http_requests_total", &versions);
    for _ in 0..3 {
        assert_eq!(server.get("/_matrix/client/versions").await.0, 200);
    }
    let (s, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
    assert_eq!(s, 200, "{body}");
    let room = body["room_id"].as_str().expect("room_id").to_owned();
    for i in 0..2 {
        let (s, body) = alice
            .put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m{i}", enc(&room)), &json!({"body": "hi"}))
            .await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(server.get("/_matrix/client/v3/no/such/endpoint").await.0, 404);

    let after = scrape(&server).await;
    assert_eq!(value(&after, "myelin_http_requests_total", &versions), seen + 3.0, "three more /versions");
    let latency = value(&after, "myelin_http_request_duration_seconds_count", &versions[..2]);
    assert!(latency >= 3.0, "the latency histogram counts them too ({latency})");
    // Routes are labelled by their pattern: no room id (nor any raw path) becomes a label.
    let send = samples(&after, "myelin_http_requests_total")
        .filter_map(|s| s.labels.get("endpoint"))
        .find(|e| e.contains("/send/"))
        .expect("the send endpoint is counted")
        .to_owned();
    assert!(send.contains("{room_id}") || send.contains("{roomId}"), "labelled by pattern: {send}");
    assert!(
        samples(&after, "myelin_http_requests_total").all(|s| !s.labels.get("endpoint").is_some_and(|e| e.contains(&room))),
        "no raw room id in any label"
    );
    assert!(value(&after, "myelin_http_requests_total", &[("endpoint", "unrouted"), ("status", "404")]) >= 1.0);
    assert!(value(&after, "myelin_event_writer_batch_size_count", &[]) >= 2.0, "the writer's batches are counted (two sends)");
    assert!(value(&after, "myelin_db_commit_duration_seconds_count", &[]) >= 3.0, "commits are timed");

    // Not on the client listener.
    let (s, body) = server.get("/metrics").await;
    assert_eq!((s, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{body}");
});

both_backends!(waiting_syncs_are_a_gauge, with with_metrics, |server| async move {
    let alice = server.register("alice").await;
    let (s, first) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200, "{first}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let path = format!("/_matrix/client/v3/sync?since={}&timeout=20000", enc(&since));
    let waiting = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.get(&path).await })
    };
    let mut held = 0.0;
    for _ in 0..100 {
        held = value(&scrape(&server).await, "myelin_sync_waiting", &[]);
        if held >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 1.0, "one long-poll is waiting");
    // A message wakes it; the gauge goes back down.
    let (s, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = waiting.await.expect("sync task");
    assert_eq!(s, 200);
    assert_eq!(value(&scrape(&server).await, "myelin_sync_waiting", &[]), 0.0, "nothing waits any more");
});

/// Every metric `docs/grafana-dashboard.json` draws is documented in `docs/metrics.md` and
/// recorded somewhere in `src/` (or is a process metric): a renamed metric must not leave the
/// dashboard drawing nothing.
#[test]
fn the_dashboard_draws_only_documented_recorded_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap()).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let mut source = String::new();
    for entry in walk(&root.join("src")) {
        source.push_str(&std::fs::read_to_string(entry).unwrap());
    }
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("myelin_") || word.starts_with("process_") {
                    let base = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                    names.insert(base.to_owned());
                }
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        assert!(doc.contains(&format!("`{name}`")) || doc.contains(&format!("`{name}`,")), "{name} is documented");
        if name.starts_with("myelin_") {
            assert!(source.contains(&format!("\"{name}\"")), "{name} is recorded in src/");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
