//! The control socket's protocol without a datapath (no root): the
//! collector's own server loop (`control::serve`) in front of a stand-in
//! agent, reached by the collector's own client (`control::apply`,
//! `status`, `Subscription`) and by raw lines as the CNI plugin writes them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sightline_collector::control::{self, ClientError, Handler, Status, StreamItem, Subscription};
use sightline_collector::decoder::Record;
use sightline_collector::registry::Registration;
use sightline_collector::state::NodeState;
use tokio::sync::broadcast;

/// An agent that records what it is asked and refuses states of nodes
/// other than `node-1`.
struct Agent {
    applied: Mutex<Vec<String>>,
    endpoints: Mutex<Vec<(String, String)>>,
    events: broadcast::Sender<Arc<Record>>,
}

impl Handler for Agent {
    fn control_uid(&self) -> u32 {
        u32::MAX
    }

    fn apply(&self, state: &NodeState) -> Result<(), String> {
        if state.node_name != "node-1" {
            return Err(format!("this collector runs node-1, not {}", state.node_name));
        }
        self.applied.lock().unwrap().push(state.pod_cidr.clone());
        Ok(())
    }

    fn endpoint_add(&self, r: Registration) -> Result<(), String> {
        if r.ip.is_unspecified() {
            return Err("no address".into());
        }
        self.endpoints.lock().unwrap().push((r.container_id, r.ifname));
        Ok(())
    }

    fn endpoint_del(&self, container_id: &str, ifname: &str) -> Result<(), String> {
        self.endpoints.lock().unwrap().retain(|(c, i)| (c.as_str(), i.as_str()) != (container_id, ifname));
        Ok(())
    }

    fn status(&self) -> Status {
        Status { node: "node-1".into(), endpoints: self.endpoints.lock().unwrap().len(), ..Status::default() }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.events.subscribe()
    }
}

struct Server {
    agent: Arc<Agent>,
    socket: PathBuf,
    dir: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server(name: &str, events: usize) -> Server {
    let dir = std::env::temp_dir().join(format!("sl-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let agent = Arc::new(Agent {
        applied: Mutex::new(Vec::new()),
        endpoints: Mutex::new(Vec::new()),
        events: broadcast::channel(events).0,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    let served = Arc::clone(&agent);
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(control::serve(Arc::clone(&served), stream));
        }
    });
    Server { agent, socket, dir, _runtime: runtime }
}

/// Sends raw lines on one connection; the answer line to each.
fn raw(socket: &Path, lines: &[&[u8]]) -> Vec<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut answers = Vec::new();
    for line in lines {
        // The server may answer and close before it has read all of an
        // over-long line: the rest of the write then fails, the answer is
        // still there to read.
        let written = stream.write_all(line).and_then(|()| stream.write_all(b"\n"));
        let mut answer = String::new();
        if reader.read_line(&mut answer).unwrap_or(0) == 0 {
            break;
        }
        answers.push(serde_json::from_str(&answer).unwrap());
        if written.is_err() {
            break;
        }
    }
    answers
}

#[test]
fn apply_and_status_answer_once_done_and_refusals_carry_the_reason() {
    let s = server("apply", 16);
    control::apply(&s.socket, &NodeState::empty("node-1", "10.244.1.0/24", "10.244.1.1".parse().unwrap())).expect("apply");
    assert_eq!(*s.agent.applied.lock().unwrap(), ["10.244.1.0/24"], "answered before the state was applied");
    let err = control::apply(&s.socket, &NodeState::empty("node-2", "10.244.2.0/24", "10.244.2.1".parse().unwrap())).unwrap_err();
    match err {
        ClientError::Refused(why) => assert!(why.contains("not node-2"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let status = control::status(&s.socket).expect("status");
    assert_eq!((status.node.as_str(), status.endpoints), ("node-1", 0));
}

#[test]
fn bad_lines_are_answered_and_the_connection_goes_on_until_one_is_too_long() {
    let s = server("bad", 16);
    let add = serde_json::json!({
        "op": "endpoint_add", "container_id": "c1", "ifname": "eth0", "namespace": "x", "name": "a",
        "ip": "10.244.1.5", "mac": "02:00:0a:f4:01:05", "host_ifname": "lxc1", "host_mac": "06:00:0a:f4:01:05",
        "netns": "/var/run/netns/c1"
    })
    .to_string();
    let answers = raw(&s.socket, &[b"{not json", br#"{"op":"launch"}"#, br#"{"op":"status","extra":1}"#, add.as_bytes(), br#"{"op":"status"}"#]);
    assert_eq!(answers.len(), 5, "{answers:?}");
    for bad in &answers[..3] {
        assert_eq!(bad["ok"], false, "{bad}");
        assert!(bad["error"].as_str().is_some_and(|e| e.starts_with("bad request")), "{bad}");
    }
    assert_eq!(answers[3]["ok"], true, "{}", answers[3]);
    assert_eq!(answers[4]["status"]["endpoints"], 1);
    let del = raw(&s.socket, &[br#"{"op":"endpoint_del","container_id":"c1","ifname":"eth0"}"#, br#"{"op":"endpoint_del","container_id":"c1","ifname":"eth0"}"#]);
    assert!(del.iter().all(|a| a["ok"] == true), "DEL twice is fine: {del:?}");
    assert!(s.agent.endpoints.lock().unwrap().is_empty());

    // Past the bound: answered, then the connection is closed.
    let long = vec![b'x'; sightline_collector::guard::MAX_REQUEST_BYTES + 10];
    let answers = raw(&s.socket, &[&long, br#"{"op":"status"}"#]);
    assert_eq!(answers.len(), 1, "the connection stayed open: {answers:?}");
    assert!(answers[0]["error"].as_str().is_some_and(|e| e.contains("longer than")), "{}", answers[0]);
}

#[test]
fn a_subscriber_gets_every_event_or_hears_how_many_it_missed() {
    let s = server("subscribe", 4);
    let mut sub = Subscription::open(&s.socket).expect("subscribe");
    let record = |i: u64| Arc::new(Record { ifindex: i as u32, ..Record::default() });
    s.agent.events.send(record(1)).unwrap();
    match sub.next_timeout(Duration::from_secs(10)).unwrap() {
        Some(StreamItem::Record(r)) => assert_eq!(r.ifindex, 1),
        other => panic!("expected the record, got {other:?}"),
    }
    // More than the channel holds while the subscriber's task cannot keep
    // up: it is told how many it lost, then gets the rest.
    let mut lost = 0;
    let mut got = 0;
    for i in 0..64 {
        s.agent.events.send(record(100 + i)).unwrap();
    }
    while got + lost < 64 {
        match sub.next_timeout(Duration::from_secs(10)).unwrap() {
            Some(StreamItem::Record(_)) => got += 1,
            Some(StreamItem::Lost { lost: n }) => lost += n,
            None => panic!("the stream stopped after {got} records and {lost} lost"),
        }
    }
    assert_eq!(got + lost, 64, "every event is delivered or counted as lost");
}
