//! The OTLP sink against the OTLP receiver stand-in, over gRPC and
//! HTTP/protobuf, in the clear and over TLS; and the stand-in's own
//! contract (what it refuses).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message as _;
use sightline_export::sink::otlp::{
    OtlpError, OtlpOptions, OtlpProtocol, OtlpSink, any_array, any_bool, any_double, any_int, any_string, key_value,
};
use sightline_export::sink::{Delivery, Outcome, Sink as _};
use sightline_standins::otlp::OtlpReceiver;
use sightline_standins::tls::TestCa;

const PROTOCOLS: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

/// A record as the `otlp` encoder makes it, with every kind of attribute.
fn record(i: u16) -> LogRecord {
    let time = 1_760_000_000_000_000_000 + u64::from(i) * 1_000;
    let dropped = i % 2 == 1;
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time + 5_000_000,
        severity_number: if dropped { 13 } else { 9 },
        severity_text: if dropped { "WARN" } else { "INFO" }.to_owned(),
        event_name: "sightline.flow".to_owned(),
        body: Some(any_string(format!(
            r#"{{"uuid":"0d9e2c4a-{i:04}","verdict":"{}","source":{{"namespace":"default","pod_name":"client"}}}}"#,
            if dropped { "DROPPED" } else { "FORWARDED" }
        ))),
        attributes: vec![
            key_value("sightline.flow.uuid", any_string(format!("0d9e2c4a-{i:04}"))),
            key_value("source.address", any_string("10.0.1.7")),
            key_value("source.port", any_int(40_000 + i64::from(i))),
            key_value("destination.port", any_int(8080)),
            key_value("network.transport", any_string("tcp")),
            key_value("sightline.reply", any_bool(i.is_multiple_of(3))),
            key_value("sightline.sample_weight", any_double(0.25)),
            key_value("sightline.source.workloads", any_array(vec![any_string("client"), any_string("Deployment")])),
            key_value("k8s.namespace.name", any_string("default")),
        ],
        ..LogRecord::default()
    }
}

fn records(n: u16) -> (Vec<LogRecord>, Vec<Vec<u8>>) {
    let sent: Vec<LogRecord> = (0..n).map(record).collect();
    let payloads = sent.iter().map(prost::Message::encode_to_vec).collect();
    (sent, payloads)
}

fn options(endpoint: String, protocol: OtlpProtocol) -> OtlpOptions {
    let mut opts = OtlpOptions::new(endpoint, protocol);
    opts.headers = BTreeMap::from([("x-api-key".to_owned(), "s3cret".to_owned())]);
    opts.timeout = Duration::from_secs(5);
    opts.resource = vec![
        ("service.name".to_owned(), "sightline-relay".to_owned()),
        ("k8s.cluster.name".to_owned(), "default".to_owned()),
    ];
    opts
}

fn endpoint(receiver: &OtlpReceiver, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => receiver.grpc_endpoint(),
        OtlpProtocol::HttpProtobuf => receiver.http_endpoint(),
    }
}

fn ok_code(protocol: OtlpProtocol) -> &'static str {
    match protocol {
        OtlpProtocol::Grpc => "OK",
        OtlpProtocol::HttpProtobuf => "200",
    }
}

fn sent(protocol: OtlpProtocol) -> Delivery {
    Delivery { outcome: Outcome::Sent, code: ok_code(protocol).to_owned() }
}

fn assert_retry(delivery: &Delivery, code: &str) {
    assert!(matches!(delivery.outcome, Outcome::Retry { after: None, .. }), "{delivery:?}");
    assert_eq!(delivery.code, code, "{delivery:?}");
}

/// Sends `payloads` until they are acknowledged (each failed attempt must
/// be a `Retry`), for at most ten seconds.
async fn send_until_sent(sink: &mut OtlpSink, payloads: &[Vec<u8>]) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let delivery = sink.send(payloads).await;
        if delivery.outcome == Outcome::Sent {
            return delivery;
        }
        assert!(matches!(delivery.outcome, Outcome::Retry { .. }), "{delivery:?}");
        assert!(Instant::now() < deadline, "still not delivered: {delivery:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("sightline-otlp-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_arrives_intact_over_both_protocols() {
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(None).await.expect("receiver");
        let mut sink = OtlpSink::new(options(endpoint(&receiver, protocol), protocol)).expect("sink");
        let (sent_records, payloads) = records(3);
        assert_eq!(sink.send(&payloads).await, sent(protocol), "{protocol:?}");

        let received = receiver.records();
        assert_eq!(received.len(), 3, "{protocol:?}");
        for (got, want) in received.iter().zip(&sent_records) {
            assert_eq!(got.record, *want, "{protocol:?}");
            // The SDK keeps resource attributes in a hash map: no order.
            let mut resource = got.resource.clone();
            resource.sort();
            assert_eq!(
                resource,
                vec![
                    ("k8s.cluster.name".to_owned(), "default".to_owned()),
                    ("service.name".to_owned(), "sightline-relay".to_owned()),
                ],
                "{protocol:?}"
            );
            assert_eq!(got.scope.as_ref().map(|s| s.name.as_str()), Some("sightline"), "{protocol:?}");
        }

        let headers = receiver.headers();
        assert_eq!(headers.len(), 1, "{protocol:?}: one request");
        assert!(headers[0].contains(&("x-api-key".to_owned(), "s3cret".to_owned())), "{protocol:?}: {headers:?}");
        let content_type = headers[0].iter().find(|(name, _)| name == "content-type").map(|(_, v)| v.as_str());
        let want = match protocol {
            OtlpProtocol::Grpc => "application/grpc",
            OtlpProtocol::HttpProtobuf => "application/x-protobuf",
        };
        assert_eq!(content_type, Some(want), "{protocol:?}");
        assert_eq!(sink.skipped_records(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_retried_with_the_service_code() {
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(None).await.expect("receiver");
        let mut sink = OtlpSink::new(options(endpoint(&receiver, protocol), protocol)).expect("sink");
        let (_, payloads) = records(2);
        receiver.fail_next(1);
        let code = match protocol {
            OtlpProtocol::Grpc => "UNAVAILABLE",
            OtlpProtocol::HttpProtobuf => "503",
        };
        // One request only: the exporter's own retries are off.
        assert_retry(&sink.send(&payloads).await, code);
        assert_eq!(receiver.headers().len(), 1, "{protocol:?}: the exporter retried by itself");
        assert!(receiver.records().is_empty());
        assert_eq!(sink.send(&payloads).await, sent(protocol), "{protocol:?}");
        assert_eq!(receiver.records().len(), 2, "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_means_retry_until_it_is_back() {
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(None).await.expect("receiver");
        let mut sink = OtlpSink::new(options(endpoint(&receiver, protocol), protocol)).expect("sink");
        let (_, payloads) = records(2);
        assert_eq!(sink.send(&payloads).await, sent(protocol), "{protocol:?}: warm connection");

        receiver.set_down(true).await.expect("down");
        for _ in 0..2 {
            assert_retry(&sink.send(&payloads).await, "error");
        }
        // Once the old connection is gone, connecting is refused; the
        // reason says so (opentelemetry-otlp's own error says only
        // "network error" for HTTP).
        let refused = sink.send(&payloads).await;
        assert!(
            matches!(&refused.outcome, Outcome::Retry { reason, .. } if reason.contains("Connection refused")),
            "{protocol:?}: {refused:?}"
        );
        assert_eq!(receiver.records().len(), 2, "{protocol:?}");

        receiver.set_down(false).await.expect("up");
        assert_eq!(send_until_sent(&mut sink, &payloads).await, sent(protocol), "{protocol:?}");
        assert_eq!(receiver.records().len(), 4, "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_from_the_start_is_not_an_error_at_build_time() {
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(None).await.expect("receiver");
        receiver.set_down(true).await.expect("down");
        let mut sink = OtlpSink::new(options(endpoint(&receiver, protocol), protocol)).expect("lazy sink");
        let (_, payloads) = records(1);
        assert_retry(&sink.send(&payloads).await, "error");
        receiver.set_down(false).await.expect("up");
        assert_eq!(send_until_sent(&mut sink, &payloads).await, sent(protocol), "{protocol:?}");
        assert_eq!(receiver.records().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_works_with_the_ca_file_and_fails_without_it() {
    let ca = TestCa::new("sightline OTLP test CA").expect("CA");
    let dir = temp_dir("tls");
    let ca_file = ca.write_ca(&dir).expect("CA file");
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(Some(&ca)).await.expect("receiver");
        let endpoint = endpoint(&receiver, protocol);
        assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
        let (sent_records, payloads) = records(2);

        let mut untrusting = OtlpSink::new(options(endpoint.clone(), protocol)).expect("sink");
        let refused = untrusting.send(&payloads).await;
        assert_retry(&refused, "error");
        assert!(
            matches!(&refused.outcome, Outcome::Retry { reason, .. } if reason.contains("UnknownIssuer")),
            "{protocol:?}: not refused for its certificate: {refused:?}"
        );
        assert!(receiver.records().is_empty(), "{protocol:?}");

        let mut opts = options(endpoint, protocol);
        opts.ca_file = Some(ca_file.clone());
        let mut trusting = OtlpSink::new(opts).expect("sink");
        assert_eq!(trusting.send(&payloads).await, sent(protocol), "{protocol:?}");
        let received: Vec<LogRecord> = receiver.records().into_iter().map(|r| r.record).collect();
        assert_eq!(received, sent_records, "{protocol:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_skipped_and_the_rest_delivered() {
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start(None).await.expect("receiver");
        let mut sink = OtlpSink::new(options(endpoint(&receiver, protocol), protocol)).expect("sink");
        let (sent_records, mut payloads) = records(2);
        payloads.insert(1, vec![0xff, 0xff, 0xff, 0xff]);
        assert_eq!(sink.send(&payloads).await, sent(protocol), "{protocol:?}");
        let received: Vec<LogRecord> = receiver.records().into_iter().map(|r| r.record).collect();
        assert_eq!(received, sent_records, "{protocol:?}");
        assert_eq!(sink.skipped_records(), 1);

        // Nothing decodes: nothing is sent, the batch is rejected for good.
        let garbage = vec![vec![0xff, 0xff], vec![0x0a, 0x7f]];
        let delivery = sink.send(&garbage).await;
        assert!(matches!(delivery.outcome, Outcome::Rejected { .. }), "{delivery:?}");
        assert_eq!(sink.skipped_records(), 3);
        assert_eq!(receiver.headers().len(), 1, "{protocol:?}: no request for garbage");

        // An empty batch needs no request.
        assert_eq!(sink.send(&[]).await, sent(protocol));
        assert_eq!(receiver.headers().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_endpoint_path_that_is_given_is_used_as_is() {
    let receiver = OtlpReceiver::start(None).await.expect("receiver");
    let mut sink =
        OtlpSink::new(options(format!("{}/custom/logs", receiver.http_endpoint()), OtlpProtocol::HttpProtobuf))
            .expect("sink");
    let delivery = sink.send(&records(1).1).await;
    assert_eq!(delivery.code, "404");
    assert!(matches!(&delivery.outcome, Outcome::Rejected { error_code, .. } if error_code == "404"), "{delivery:?}");

    let mut sink =
        OtlpSink::new(options(format!("{}/", receiver.http_endpoint()), OtlpProtocol::HttpProtobuf)).expect("sink");
    assert_eq!(sink.send(&records(1).1).await, sent(OtlpProtocol::HttpProtobuf));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_limits() {
    let receiver = OtlpReceiver::start(None).await.expect("receiver");
    let sink = OtlpSink::new(options(receiver.grpc_endpoint(), OtlpProtocol::Grpc)).expect("sink");
    assert_eq!(sink.max_batch_records(), 1000);
    assert_eq!(sink.max_batch_bytes(), 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_fits_one_grpc_message() {
    let receiver = OtlpReceiver::start(None).await.expect("receiver");
    let mut sink = OtlpSink::new(options(receiver.grpc_endpoint(), OtlpProtocol::Grpc)).expect("sink");
    let mut payloads = Vec::new();
    let mut bytes = 0;
    let mut i = 0u16;
    while payloads.len() < 1000 {
        let mut record = record(i);
        record.body = Some(any_string("x".repeat(1000)));
        let payload = record.encode_to_vec();
        if bytes + payload.len() > 1024 * 1024 {
            break;
        }
        bytes += payload.len();
        payloads.push(payload);
        i += 1;
    }
    assert_eq!(sink.send(&payloads).await, sent(OtlpProtocol::Grpc));
    assert_eq!(receiver.records().len(), payloads.len());
}

#[test]
fn options_are_checked_when_the_sink_is_built() {
    let http = |endpoint: &str| OtlpOptions::new(endpoint, OtlpProtocol::HttpProtobuf);
    assert!(matches!(OtlpSink::new(http("127.0.0.1:4318")), Err(OtlpError::Endpoint { .. })));
    assert!(matches!(OtlpSink::new(http("unix:///tmp/otlp.sock")), Err(OtlpError::Endpoint { .. })));

    let mut opts = http("http://127.0.0.1:4318");
    opts.headers.insert("bad name".to_owned(), "v".to_owned());
    assert!(matches!(OtlpSink::new(opts), Err(OtlpError::Header { .. })));

    let mut opts = http("https://127.0.0.1:4318");
    opts.ca_file = Some(PathBuf::from("/nonexistent/sightline/ca.pem"));
    assert!(matches!(OtlpSink::new(opts), Err(OtlpError::ReadCaFile { .. })));

    let dir = temp_dir("badca");
    let path = dir.join("ca.pem");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(b"not a certificate\n")).expect("write");
    let mut opts = http("https://127.0.0.1:4318");
    opts.ca_file = Some(path);
    assert!(matches!(OtlpSink::new(opts), Err(OtlpError::ParseCaFile { .. })));
    let _ = std::fs::remove_dir_all(dir);

    // HTTP needs no runtime to be built; gRPC does, and says so.
    assert!(OtlpSink::new(http("http://127.0.0.1:4318")).is_ok());
    let grpc = OtlpOptions::new("http://127.0.0.1:4317", OtlpProtocol::Grpc);
    assert!(matches!(OtlpSink::new(grpc), Err(OtlpError::NoRuntime)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_headers_are_checked_too() {
    let mut opts = OtlpOptions::new("http://127.0.0.1:4317", OtlpProtocol::Grpc);
    opts.headers.insert("x-key-bin".to_owned(), "v".to_owned());
    assert!(matches!(OtlpSink::new(opts), Err(OtlpError::Header { .. })));
}

// The stand-in's contract, checked with a plain HTTP client.

fn client(http2_prior_knowledge: bool) -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
    let builder = if http2_prior_knowledge { builder.http2_prior_knowledge() } else { builder };
    builder.build().expect("client")
}

fn export_request() -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: vec![record(7)], ..ScopeLogs::default() }],
            ..ResourceLogs::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_receiver_enforces_otlp_http() {
    let receiver = OtlpReceiver::start(None).await.expect("receiver");
    let url = format!("{}/v1/logs", receiver.http_endpoint());
    let client = client(false);
    let post = |url: String, content_type: &'static str, body: Vec<u8>| {
        client.post(url).header("content-type", content_type).body(body).send()
    };

    let status = |r: Result<reqwest::Response, reqwest::Error>| r.expect("response").status().as_u16();
    assert_eq!(status(post(url.clone(), "application/json", b"{}".to_vec()).await), 415);
    assert_eq!(status(post(url.clone(), "text/plain", export_request()).await), 415);
    assert_eq!(status(client.get(&url).send().await), 405);
    let wrong_path = format!("{}/v1/traces", receiver.http_endpoint());
    assert_eq!(status(post(wrong_path, "application/x-protobuf", export_request()).await), 404);
    assert_eq!(status(post(url.clone(), "application/x-protobuf", vec![0xff, 0xff, 0xff]).await), 400);
    let unknown_encoding = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "br")
        .body(export_request())
        .send()
        .await;
    assert_eq!(status(unknown_encoding), 415);
    assert!(receiver.records().is_empty());

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&export_request()).expect("gzip");
    let gzipped = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .await;
    assert_eq!(status(gzipped), 200);
    assert_eq!(receiver.records().into_iter().map(|r| r.record).collect::<Vec<_>>(), vec![record(7)]);
    assert_eq!(receiver.headers().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_receiver_answers_invalid_argument_to_garbage() {
    let receiver = OtlpReceiver::start(None).await.expect("receiver");
    let url = format!("{}/opentelemetry.proto.collector.logs.v1.LogsService/Export", receiver.grpc_endpoint());
    let frame = |message: &[u8]| {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("length").to_be_bytes());
        frame.extend_from_slice(message);
        frame
    };
    let client = client(true);
    let call = |body: Vec<u8>| {
        client.post(&url).header("content-type", "application/grpc").header("te", "trailers").body(body).send()
    };
    let garbage = call(frame(&[0xff, 0xff, 0xff])).await.expect("response");
    assert_eq!(garbage.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"3"[..]));
    assert!(receiver.records().is_empty());

    let good = call(frame(&export_request())).await.expect("response");
    assert_eq!(good.status().as_u16(), 200);
    let _ = good.bytes().await.expect("body");
    assert_eq!(receiver.records().len(), 1);
}
