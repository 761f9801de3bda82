//! The Azure Monitor sink against the local Logs Ingestion and Entra ID
//! stand-in (`sightline_standins::azure`), over HTTPS on 127.0.0.1 with a
//! throw-away CA. Nothing here reaches any other host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sightline_export::encode::azure::COLUMNS;
use sightline_export::sink::azure::{AzureAuth, AzureError, AzureOptions, AzureSink, MAX_REQUEST_BYTES};
use sightline_export::sink::{Delivery, Outcome, Sink};
use sightline_standins::azure::{AzureStandin, ColumnKind, Grant, StandinOptions};
use sightline_standins::tls::TestCa;

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("sightline-azure-sink-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in, its CA (written to a file) and a folder for credentials.
struct Env {
    standin: AzureStandin,
    dir: TempDir,
    ca_file: PathBuf,
}

fn columns() -> Vec<(String, ColumnKind)> {
    COLUMNS
        .iter()
        .map(|(name, kind)| ((*name).to_owned(), ColumnKind::from_arm_name(kind.arm_name()).expect("known ARM type")))
        .collect()
}

async fn env_with(configure: impl FnOnce(&mut StandinOptions)) -> Env {
    let ca = TestCa::new("azure sink test CA").expect("CA");
    let mut opts = StandinOptions::new(columns());
    configure(&mut opts);
    let standin = AzureStandin::start(&ca, opts).await.expect("stand-in");
    let dir = TempDir::new();
    let ca_file = ca.write_ca(&dir.0).expect("CA file");
    Env { standin, dir, ca_file }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    fn options(&self, auth: AzureAuth) -> AzureOptions {
        let mut opts =
            AzureOptions::new(self.standin.endpoint(), self.standin.dcr_immutable_id(), self.standin.stream(), auth);
        opts.ca_file = Some(self.ca_file.clone());
        opts.request_timeout = Duration::from_secs(10);
        opts
    }

    fn secret_file(&self) -> PathBuf {
        self.dir.0.join("client-secret")
    }

    /// Client-secret auth, the secret written with a trailing newline as
    /// `kubectl create secret --from-file` leaves it.
    fn secret_auth(&self) -> AzureAuth {
        let o = self.standin.options();
        write(&self.secret_file(), &format!("{}\n", o.client_secret));
        AzureAuth::ClientSecret {
            tenant_id: o.tenant_id,
            client_id: o.client_id,
            secret_file: self.secret_file(),
            authority_host: self.standin.authority_host(),
        }
    }

    fn secret_sink(&self) -> AzureSink {
        AzureSink::new(self.options(self.secret_auth())).expect("sink")
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// A row as the encoder makes it (a subset of the columns).
fn row(i: usize) -> Vec<u8> {
    json!({
        "TimeGenerated": "2026-03-01T12:00:00.123Z",
        "UUID": format!("4b1c0000-0000-4000-8000-{i:012}"),
        "Verdict": "FORWARDED",
        "TrafficDirection": "EGRESS",
        "Reply": i % 2 == 1,
        "SourceNamespace": "pets",
        "SourceIdentity": 4242,
        "SourceWorkloads": [{"name": "frontend", "kind": "Deployment"}],
        "Layer4": {"TCP": {"source_port": 40000 + i, "destination_port": 443, "flags": {"SYN": true}}},
        "Layer7": null,
        "EgressFlowCount": 1,
    })
    .to_string()
    .into_bytes()
}

fn rows(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(row).collect()
}

fn sent() -> Delivery {
    Delivery { outcome: Outcome::Sent, code: "204".to_owned() }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn retry_after(delivery: &Delivery) -> Option<Duration> {
    match &delivery.outcome {
        Outcome::Retry { after, .. } => *after,
        other => panic!("not a retry: {other:?}"),
    }
}

#[tokio::test]
async fn rows_arrive_intact_as_gzip_arrays_with_fresh_request_ids() {
    let env = env().await;
    let mut sink = env.secret_sink();
    let first = rows(0..3);
    let second = rows(3..5);
    assert_eq!(sink.send(&first).await, sent());
    assert_eq!(sink.send(&second).await, sent());
    assert_eq!(sink.send(&[]).await, sent());

    let want: Vec<Value> = first.iter().chain(&second).map(|r| serde_json::from_slice(r).expect("row")).collect();
    assert_eq!(env.standin.rows(), want);
    let requests = env.standin.requests();
    assert_eq!(requests.len(), 3);
    for (request, batch) in requests.iter().zip([&first, &second, &Vec::new()]) {
        assert_eq!(request.status, 204);
        assert_eq!(request.rows, batch.len());
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
        let json_len = 2 + batch.iter().map(Vec::len).sum::<usize>() + batch.len().saturating_sub(1);
        assert_eq!(request.uncompressed_bytes, json_len);
        assert!(request.request_id.as_deref().is_some_and(is_uuid_v4), "{:?}", request.request_id);
    }
    assert!(requests[0].body_bytes < requests[0].uncompressed_bytes);
    let mut ids: Vec<_> = requests.iter().filter_map(|r| r.request_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "request ids repeat");
    // One token serves every request.
    assert_eq!(env.standin.tokens_issued(), 1);
    let tokens = env.standin.token_requests();
    assert_eq!(tokens[0].grant, Grant::ClientSecret);
    assert_eq!(tokens[0].scope.as_deref(), Some("https://monitor.azure.com/.default"));
    assert_eq!(env.standin.early_retries(), 0);
}

#[tokio::test]
async fn limits_leave_room_for_brackets_and_commas() {
    let env = env().await;
    let sink = env.secret_sink();
    assert_eq!(sink.max_batch_records(), 5000);
    assert_eq!(sink.max_batch_bytes(), MAX_REQUEST_BYTES - 2 - 5000);
    assert_eq!(
        sink.url(),
        format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
            env.standin.endpoint(),
            env.standin.dcr_immutable_id(),
            env.standin.stream()
        )
    );
}

#[tokio::test]
async fn workload_identity_sends_the_federated_token_file() {
    let env = env().await;
    let o = env.standin.options();
    let token_file = env.dir.0.join("azure-identity-token");
    write(&token_file, &o.federated_token);
    let auth = AzureAuth::WorkloadIdentity {
        tenant_id: o.tenant_id.clone(),
        client_id: o.client_id.clone(),
        token_file: token_file.clone(),
        authority_host: env.standin.authority_host(),
    };
    let mut sink = AzureSink::new(env.options(auth)).expect("sink");
    assert_eq!(sink.send(&rows(0..2)).await, sent());
    let tokens = env.standin.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].grant, Grant::ClientAssertion);
    assert_eq!(tokens[0].scope.as_deref(), Some("https://monitor.azure.com/.default"));
    assert_eq!(tokens[0].client_id.as_deref(), Some(o.client_id.as_str()));

    // The projected token is rotated: the file is read again for the next token.
    env.standin.set_federated_token("eyJ.rotated.token");
    write(&token_file, "eyJ.rotated.token");
    env.standin.revoke_tokens();
    assert_eq!(sink.send(&rows(2..3)).await, sent());
    assert_eq!(env.standin.tokens_issued(), 2);
    assert_eq!(env.standin.rows().len(), 3);
}

#[tokio::test]
async fn managed_identity_asks_imds_for_the_monitor_resource() {
    let env = env().await;
    let o = env.standin.options();
    for client_id in [None, Some(o.client_id.clone())] {
        let auth = AzureAuth::ManagedIdentity { client_id: client_id.clone(), endpoint: env.standin.imds_endpoint() };
        let mut sink = AzureSink::new(env.options(auth)).expect("sink");
        assert_eq!(sink.send(&rows(0..1)).await, sent());
        let last = env.standin.token_requests().pop().expect("token request");
        assert_eq!(last.grant, Grant::ManagedIdentity);
        assert_eq!(last.status, 200);
        assert_eq!(last.scope.as_deref(), Some("https://monitor.azure.com/"));
        assert_eq!(last.client_id, client_id);
    }
    assert_eq!(env.standin.tokens_issued(), 2);
    // An identity IMDS does not know: no token, retried later.
    let auth =
        AzureAuth::ManagedIdentity { client_id: Some("unknown".to_owned()), endpoint: env.standin.imds_endpoint() };
    let mut sink = AzureSink::new(env.options(auth)).expect("sink");
    let delivery = sink.send(&rows(0..1)).await;
    assert_eq!(delivery.code, "error");
    assert!(
        matches!(&delivery.outcome, Outcome::Retry { after: None, reason } if reason.contains("Identity not found")),
        "{delivery:?}"
    );
}

#[tokio::test]
async fn a_rotated_secret_file_is_read_for_the_next_token() {
    let env = env().await;
    let mut sink = env.secret_sink();
    assert_eq!(sink.send(&rows(0..1)).await, sent());

    // The secret changes in Entra ID first; the old token is revoked.
    env.standin.set_client_secret("rotated secret");
    env.standin.revoke_tokens();
    let delivery = sink.send(&rows(1..2)).await;
    assert_eq!(delivery.code, "error");
    match &delivery.outcome {
        Outcome::Retry { after: None, reason } => {
            assert!(reason.contains("invalid_client"), "{reason}");
            assert!(!reason.contains("stand-in secret"), "the secret leaked into {reason}");
        }
        other => panic!("{other:?}"),
    }
    // Then the mounted file follows: the next token works.
    write(&env.secret_file(), "rotated secret\n");
    assert_eq!(sink.send(&rows(1..2)).await, sent());
    assert_eq!(env.standin.tokens_issued(), 2);

    // A missing or empty secret file: retried later, the file named.
    env.standin.revoke_tokens();
    write(&env.secret_file(), "\n");
    let delivery = sink.send(&rows(2..3)).await;
    assert!(
        matches!(&delivery.outcome, Outcome::Retry { reason, .. } if reason.contains(&env.secret_file().display().to_string())),
        "{delivery:?}"
    );
    std::fs::remove_file(env.secret_file()).expect("remove");
    let delivery = sink.send(&rows(2..3)).await;
    assert_eq!(delivery.code, "error");
    assert!(
        matches!(&delivery.outcome, Outcome::Retry { reason, .. } if reason.contains("client-secret")),
        "{delivery:?}"
    );
    assert_eq!(env.standin.rows().len(), 2);
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let lifetime = Duration::from_secs(4);
    let env = env_with(|o| o.token_lifetime = lifetime).await;
    let mut sink = env.secret_sink();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    // Keep sending until three tokens were needed (4 s tokens refreshed at
    // half their lifetime: about every 2 s).
    while env.standin.tokens_issued() < 3 {
        assert!(Instant::now() < deadline, "only {} tokens after 15 s", env.standin.tokens_issued());
        assert_eq!(sink.send(&rows(i..i + 1)).await, sent());
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Never a 401: each token was replaced before it expired.
    let requests = env.standin.requests();
    assert!(requests.iter().all(|r| r.status == 204), "{requests:?}");
    assert_eq!(env.standin.rows().len(), i);
    // And not sooner than needed: a token serves about half its lifetime.
    let fetched: Vec<_> = env.standin.token_requests().iter().map(|t| t.at).collect();
    for pair in fetched.windows(2) {
        let gap = pair[1].duration_since(pair[0]).expect("in order");
        assert!(gap >= Duration::from_secs(1) && gap < lifetime, "tokens fetched {gap:?} apart");
    }
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_resends_within_one_send() {
    let env = env().await;
    let mut sink = env.secret_sink();
    assert_eq!(sink.send(&rows(0..1)).await, sent());
    env.standin.revoke_tokens();
    assert_eq!(sink.send(&rows(1..3)).await, sent());
    let statuses: Vec<u16> = env.standin.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [204, 401, 204]);
    assert_eq!(env.standin.tokens_issued(), 2);
    assert_eq!(env.standin.rows().len(), 3);
    let ids: Vec<_> = env.standin.requests().into_iter().filter_map(|r| r.request_id).collect();
    assert_ne!(ids[1], ids[2], "a resend is a new request");

    // A fresh token refused as well: not the rows' fault, retried later.
    env.standin.respond_next(2, 401, None);
    let delivery = sink.send(&rows(3..4)).await;
    assert_eq!(delivery.code, "401");
    assert_eq!(retry_after(&delivery), None);
    assert_eq!(env.standin.tokens_issued(), 3);
    assert_eq!(env.standin.rows().len(), 3);
}

#[tokio::test]
async fn throttling_and_unavailability_retry_after_the_announced_delay() {
    let env = env().await;
    let mut sink = env.secret_sink();
    let batch = rows(0..2);

    env.standin.respond_next(1, 429, Some(Duration::from_secs(1)));
    let delivery = sink.send(&batch).await;
    assert_eq!(delivery.code, "429");
    let after = retry_after(&delivery).expect("Retry-After");
    assert_eq!(after, Duration::from_secs(1));
    // The delivery loop's part: wait as told, then send again.
    tokio::time::sleep(after).await;

    env.standin.respond_next(1, 503, Some(Duration::from_secs(2)));
    let delivery = sink.send(&batch).await;
    assert_eq!(delivery.code, "503");
    let after = retry_after(&delivery).expect("Retry-After");
    assert_eq!(after, Duration::from_secs(2));
    tokio::time::sleep(after).await;

    env.standin.respond_next(1, 503, None);
    let delivery = sink.send(&batch).await;
    assert_eq!((delivery.code.as_str(), retry_after(&delivery)), ("503", None));

    assert_eq!(sink.send(&batch).await, sent());
    assert_eq!(env.standin.early_retries(), 0);
    assert_eq!(env.standin.rows().len(), 2);
}

#[tokio::test]
async fn server_errors_retry_with_back_off() {
    let env = env().await;
    let mut sink = env.secret_sink();
    for status in [500, 502, 504, 408] {
        env.standin.respond_next(1, status, None);
        let delivery = sink.send(&rows(0..1)).await;
        assert_eq!(delivery.code, status.to_string());
        match &delivery.outcome {
            Outcome::Retry { after: None, reason } => assert!(reason.contains(&status.to_string()), "{reason}"),
            other => panic!("{status}: {other:?}"),
        }
    }
    assert!(env.standin.rows().is_empty());
}

#[tokio::test]
async fn a_413_asks_for_halves() {
    let env = env().await;
    let mut sink = env.secret_sink();
    env.standin.respond_next(1, 413, None);
    assert_eq!(sink.send(&rows(0..4)).await, Delivery { outcome: Outcome::TooLarge, code: "413".to_owned() });
}

#[tokio::test]
async fn rejections_carry_azures_error_code_and_message() {
    let env = env().await;
    let mut sink = env.secret_sink();

    let unknown = [br#"{"UUID":"a","NotAColumn":1}"#.to_vec()];
    let delivery = sink.send(&unknown).await;
    assert_eq!(delivery.code, "400");
    match &delivery.outcome {
        Outcome::Rejected { error_code, message } => {
            assert_eq!(error_code, "UnknownColumn");
            assert!(message.contains("NotAColumn"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let reserved = [br#"{"UUID":"a","TenantId":"t"}"#.to_vec()];
    assert!(
        matches!(sink.send(&reserved).await.outcome, Outcome::Rejected { error_code, .. } if error_code == "ReservedColumn")
    );
    let mistyped = [br#"{"UUID":"a","SourceIdentity":"many"}"#.to_vec()];
    assert!(
        matches!(sink.send(&mistyped).await.outcome, Outcome::Rejected { error_code, .. } if error_code == "InvalidColumnValue")
    );

    env.standin.respond_next(1, 403, None);
    let delivery = sink.send(&rows(0..1)).await;
    assert_eq!(delivery.code, "403");
    assert!(
        matches!(&delivery.outcome, Outcome::Rejected { error_code, message }
        if error_code == "OperationFailed" && message.contains("does not have access")),
        "{delivery:?}"
    );
    assert!(env.standin.rows().is_empty());

    // A DCR or stream the service does not know: 404.
    for (dcr, stream) in [
        ("dcr-ffffffffffffffffffffffffffffffff".to_owned(), env.standin.stream()),
        (env.standin.dcr_immutable_id(), "Custom-Nope".to_owned()),
    ] {
        let mut opts = env.options(env.secret_auth());
        opts.dcr_immutable_id = dcr;
        opts.stream = stream;
        let mut sink = AzureSink::new(opts).expect("sink");
        let delivery = sink.send(&rows(0..1)).await;
        assert_eq!(delivery.code, "404");
        assert!(
            matches!(&delivery.outcome, Outcome::Rejected { error_code, .. } if error_code == "NotFound"),
            "{delivery:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_retried() {
    let env = env().await;
    let mut sink = env.secret_sink();
    assert_eq!(sink.send(&rows(0..1)).await, sent());
    env.standin.set_down(true).expect("down");
    let delivery = sink.send(&rows(1..2)).await;
    assert_eq!(delivery.code, "error");
    assert_eq!(retry_after(&delivery), None);
    env.standin.set_down(false).expect("up");
    assert_eq!(sink.send(&rows(1..2)).await, sent());
    assert_eq!(env.standin.rows().len(), 2);
}

#[tokio::test]
async fn the_ca_file_is_needed_and_read_when_the_sink_is_built() {
    let env = env().await;
    let mut opts = env.options(env.secret_auth());
    opts.ca_file = None;
    let mut untrusting = AzureSink::new(opts).expect("sink");
    let delivery = untrusting.send(&rows(0..1)).await;
    assert_eq!(delivery.code, "error");
    match &delivery.outcome {
        Outcome::Retry { after: None, reason } => assert!(reason.to_lowercase().contains("certificate"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.standin.tokens_issued(), 0);
    assert!(env.standin.requests().is_empty());

    let mut trusting = env.secret_sink();
    assert_eq!(trusting.send(&rows(0..1)).await, sent());

    let mut opts = env.options(env.secret_auth());
    opts.ca_file = Some(env.dir.0.join("missing.pem"));
    assert!(matches!(AzureSink::new(opts), Err(AzureError::ReadCaFile { path, .. }) if path.ends_with("missing.pem")));
    let not_pem = env.dir.0.join("not.pem");
    write(&not_pem, "hello\n");
    let mut opts = env.options(env.secret_auth());
    opts.ca_file = Some(not_pem);
    let error = AzureSink::new(opts).expect_err("no certificate");
    assert!(matches!(error, AzureError::EmptyCaFile { .. }), "{error}");
    assert!(error.to_string().contains("not.pem"));
    let broken = env.dir.0.join("broken.pem");
    write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let mut opts = env.options(env.secret_auth());
    opts.ca_file = Some(broken);
    assert!(matches!(AzureSink::new(opts), Err(AzureError::ParseCaFile { .. })));
}

#[tokio::test]
async fn bodies_over_a_million_bytes_are_too_large_without_a_request() {
    let env = env().await;
    let mut sink = env.secret_sink();
    let too_large = Delivery { outcome: Outcome::TooLarge, code: "error".to_owned() };

    // Uncompressed: two rows of 500 000 bytes plus brackets and a comma.
    let half = format!(r#"{{"UUID":"{}"}}"#, "x".repeat(500_000 - 11)).into_bytes();
    assert_eq!(half.len(), 500_000);
    assert_eq!(sink.send(&[half.clone(), half.clone()]).await, too_large);

    // Compressed: incompressible bytes that fit uncompressed (999 992
    // bytes with the brackets) but not once gzip adds its framing.
    let noise: Vec<u8> = (0..999_990).map(|_| fastrand::u8(..)).collect();
    assert_eq!(sink.send(&[noise]).await, too_large);

    assert!(env.standin.requests().is_empty());
    assert_eq!(env.standin.tokens_issued(), 0, "nothing should be contacted");

    // Exactly at the limit is fine.
    let exact = format!(r#"{{"UUID":"{}"}}"#, "y".repeat(MAX_REQUEST_BYTES - 2 - 11)).into_bytes();
    assert_eq!(sink.send(&[exact]).await, sent());
    assert_eq!(env.standin.requests()[0].uncompressed_bytes, MAX_REQUEST_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_token_fetch() {
    let env = env().await;
    let sink = env.secret_sink();
    let tokens = sink.token_source();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let tokens = Arc::clone(&tokens);
            tokio::spawn(async move { tokens.token().await.expect("token") })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("task"));
    }
    assert!(got.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(env.standin.tokens_issued(), 1);
    assert_eq!(tokens.scope(), "https://monitor.azure.com/.default");
}
