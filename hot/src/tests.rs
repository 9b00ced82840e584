//! Each test starts a server on its own socket and talks raw HTTP to it.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Echoes, unless the input asks otherwise.
fn handler(req: Request) -> Result<Vec<u8>, String> {
    match req.body.as_slice() {
        b"fail" => Err("asked to fail".into()),
        b"panic" => panic!("asked to panic"),
        b"describe" => {
            let deadline = req
                .deadline
                .map(|d| d.duration_since(SystemTime::UNIX_EPOCH).unwrap());
            let lines = [
                format!("id={}", req.id),
                format!("function={}", req.function),
                format!("trigger={}", req.trigger),
                format!("attempt={}", req.attempt),
                format!("deadline={:?}", deadline.map(|d| d.as_millis())),
                format!("event={:?}", req.header("granda-webhook-event")),
                format!("host={:?}", req.header("HOST")),
                format!(
                    "remaining={:?}",
                    req.remaining().map(|r| r > Duration::ZERO)
                ),
            ];
            Ok(lines.join("\n").into())
        }
        _ => Ok(req.body),
    }
}

/// A server in a thread; its directory goes when the test ends.
struct Server {
    dir: PathBuf,
    path: PathBuf,
}

impl Server {
    fn start() -> Server {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("granda-hot-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("granda.sock");
        // A stale file where the socket goes is replaced.
        std::fs::write(&path, "stale").unwrap();
        let at = path.clone();
        thread::spawn(move || serve_at(at, handler));
        for _ in 0..500 {
            if UnixStream::connect(&path).is_ok() {
                return Server { dir, path };
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("the server did not start at {}", path.display());
    }

    fn connect(&self) -> Client {
        let output = UnixStream::connect(&self.path).unwrap();
        output
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            input: BufReader::new(output.try_clone().unwrap()),
            output,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Client {
    input: BufReader<UnixStream>,
    output: UnixStream,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        values.next().map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl Client {
    fn send(&mut self, raw: &[u8]) -> Reply {
        self.output.write_all(raw).unwrap();
        self.reply()
    }

    fn reply(&mut self) -> Reply {
        let mut line = String::new();
        self.input.read_line(&mut line).unwrap();
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .unwrap_or_else(|| {
                panic!("not a status line: {line:?}");
            });
        let status = status.parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.input.read_line(&mut line).unwrap();
            let line = line
                .strip_suffix("\r\n")
                .expect("a header line ends with CRLF");
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").unwrap();
            headers.push((name.to_string(), value.to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if status != 100 {
            let length: usize = reply
                .header("Content-Length")
                .expect("Content-Length")
                .parse()
                .unwrap();
            reply.body = vec![0; length];
            self.input.read_exact(&mut reply.body).unwrap();
        }
        reply
    }

    /// Whether the server closed the connection (rather than sending more).
    fn closed(&mut self) -> bool {
        let mut byte = [0];
        matches!(self.input.read(&mut byte), Ok(0))
    }
}

fn invoke(body: &[u8], headers: &str) -> Vec<u8> {
    let head = format!(
        "POST /invoke HTTP/1.1\r\nHost: granda\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

#[test]
fn keep_alive_serves_requests_in_turn() {
    let server = Server::start();
    let mut client = server.connect();
    for input in ["one", "two"] {
        let reply = client.send(&invoke(input.as_bytes(), ""));
        assert_eq!((reply.status, reply.text()), (200, input));
        assert_eq!(reply.header("Connection"), None);
    }
}

#[test]
fn an_err_is_a_500_with_the_message() {
    let server = Server::start();
    let reply = server.connect().send(&invoke(b"fail", ""));
    assert_eq!((reply.status, reply.text()), (500, "asked to fail"));
    assert_eq!(
        reply.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn a_panic_is_a_500_and_serving_goes_on() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(&invoke(b"panic", ""));
    assert_eq!(
        (reply.status, reply.text()),
        (500, "the function panicked: asked to panic")
    );
    let reply = client.send(&invoke(b"after", ""));
    assert_eq!((reply.status, reply.text()), (200, "after"));
    let reply = server.connect().send(&invoke(b"again", ""));
    assert_eq!((reply.status, reply.text()), (200, "again"));
}

#[test]
fn granda_headers_are_parsed() {
    let server = Server::start();
    let headers = "Granda-Invocation-Id: 0190a0c4-1d2e-7000-8000-000000000001\r\n\
                   granda-deadline-ms: 4102444800000\r\n\
                   Granda-Function:  resize\t\r\n\
                   Granda-Trigger: webhook\r\n\
                   Granda-Attempt: 3\r\n\
                   Granda-Webhook-Event: push\r\n";
    let reply = server.connect().send(&invoke(b"describe", headers));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected = "id=0190a0c4-1d2e-7000-8000-000000000001\nfunction=resize\ntrigger=webhook\n\
                    attempt=3\ndeadline=Some(4102444800000)\nevent=Some(\"push\")\n\
                    host=Some(\"granda\")\nremaining=Some(true)";
    assert_eq!(reply.text(), expected);
}

#[test]
fn missing_granda_headers_have_defaults() {
    let server = Server::start();
    let reply = server.connect().send(&invoke(b"describe", ""));
    let expected = "id=\nfunction=\ntrigger=\nattempt=1\ndeadline=None\nevent=None\n\
                    host=Some(\"granda\")\nremaining=None";
    assert_eq!((reply.status, reply.text()), (200, expected));
}

#[test]
fn a_malformed_granda_header_is_a_400_and_the_connection_goes_on() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(&invoke(b"x", "Granda-Attempt: two\r\n"));
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("granda-attempt"), "{}", reply.text());
    let reply = client.send(&invoke(b"x", "Granda-Deadline-Ms: -1\r\n"));
    assert_eq!(reply.status, 400);
    assert_eq!(client.send(&invoke(b"ok", "")).text(), "ok");
}

#[test]
fn an_empty_body_is_served() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(&invoke(b"", ""));
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    assert_eq!(reply.header("Content-Length"), Some("0"));
    // No Content-Length at all is an empty body too.
    let reply = client.send(b"POST /invoke HTTP/1.1\r\nHost: granda\r\n\r\n");
    assert_eq!((reply.status, reply.body.len()), (200, 0));
}

#[test]
fn a_megabyte_goes_through_both_ways() {
    let server = Server::start();
    let body: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut client = server.connect();
    let reply = client.send(&invoke(&body, ""));
    assert_eq!(reply.status, 200);
    assert!(reply.body == body, "the body came back changed");
    assert_eq!(client.send(&invoke(b"next", "")).text(), "next");
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(&invoke(b"last", "Connection: close\r\n"));
    assert_eq!((reply.status, reply.text()), (200, "last"));
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn http10_is_one_request_per_connection() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(b"POST /invoke HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!((reply.status, reply.text()), (200, "hi"));
    assert!(client.closed());
}

#[test]
fn a_probe_that_sends_nothing_breaks_nothing() {
    let server = Server::start();
    for _ in 0..3 {
        drop(UnixStream::connect(&server.path).unwrap());
    }
    // An idle connection does not hold up another one.
    let _idle = server.connect();
    let mut half = server.connect();
    half.output.write_all(b"POST /invoke HTTP/1.1\r\n").unwrap();
    let reply = server.connect().send(&invoke(b"still here", ""));
    assert_eq!((reply.status, reply.text()), (200, "still here"));
}

#[test]
fn health_answers_200_empty() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(b"GET /health HTTP/1.1\r\nHost: granda\r\n\r\n");
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    assert_eq!(client.send(&invoke(b"then", "")).text(), "then");
}

#[test]
fn other_paths_and_methods_are_refused() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(reply.status, 404);
    let reply = client.send(b"GET /invoke HTTP/1.1\r\n\r\n");
    assert_eq!((reply.status, reply.header("Allow")), (405, Some("POST")));
    let reply = client.send(b"DELETE /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!((reply.status, reply.header("Allow")), (405, Some("GET")));
    // The connection is still in step.
    assert_eq!(client.send(&invoke(b"fine", "")).text(), "fine");
}

#[test]
fn bad_requests_are_400_and_closed() {
    let server = Server::start();
    let bad: [&[u8]; 7] = [
        b"POST /invoke\r\n\r\n",
        b"POST  /invoke HTTP/1.1\r\n\r\n",
        b"hello\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nno colon\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /invoke HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    ];
    for raw in bad {
        let mut client = server.connect();
        let reply = client.send(raw);
        assert_eq!(
            reply.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(raw),
            reply.text()
        );
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(client.closed());
    }
    let reply = server.connect().send(b"POST /invoke HTTP/2.0\r\n\r\n");
    assert_eq!(reply.status, 505);
}

#[test]
fn a_chunked_body_is_411() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client
        .send(b"POST /invoke HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    assert_eq!(reply.status, 411);
    assert!(client.closed());
}

#[test]
fn headers_over_64_kib_are_431() {
    let server = Server::start();
    let mut client = server.connect();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let reply = client.send(&invoke(b"x", &filler.repeat(70)));
    assert_eq!(reply.status, 431);
    // Just under the limit is fine.
    let reply = server.connect().send(&invoke(b"x", &filler.repeat(60)));
    assert_eq!(reply.status, 200);
}

#[test]
fn expect_100_continue_is_answered() {
    let server = Server::start();
    let mut client = server.connect();
    let head = "POST /invoke HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(client.send(head.as_bytes()).status, 100);
    assert_eq!(client.send(b"hello").text(), "hello");
}

#[test]
fn empty_lines_before_a_request_and_bare_lf_are_tolerated() {
    let server = Server::start();
    let mut client = server.connect();
    let reply = client.send(b"\r\n\nPOST /invoke HTTP/1.1\nContent-Length: 3\n\nabc");
    assert_eq!((reply.status, reply.text()), (200, "abc"));
}

#[test]
fn remaining_is_zero_past_the_deadline() {
    let past = Request {
        deadline: Some(SystemTime::now() - Duration::from_secs(1)),
        ..Request::default()
    };
    assert_eq!(past.remaining(), Some(Duration::ZERO));
    assert_eq!(Request::default().remaining(), None);
}

#[test]
fn the_journal_keeps_each_answer_before_it_is_sent_and_only_the_last_few() {
    let dir = std::env::temp_dir().join(format!("granda-hot-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let journal = Journal::at(Some(dir.clone()));
    let ids: Vec<String> = (0..5)
        .map(|i| format!("00000000-0000-0000-0000-00000000000{i}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        journal.begin(id);
        let mut response = Response::new(if i == 1 { 500 } else { 200 }, format!("answer {i}"));
        response.headers.push(("X-Kind".into(), "test".into()));
        journal.write(id, 1_000 + i as u128, &response);
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The last answer and the two before it; no temporary file left.
    assert_eq!(names, ids[2..].to_vec());
    let entry = std::fs::read_to_string(dir.join(&ids[4])).unwrap();
    let (first, rest) = entry.split_once('\n').unwrap();
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields[..2], ["200", "1004"]);
    assert!(fields[2].parse::<u128>().unwrap() >= 1004);
    assert_eq!(rest, "X-Kind: test\n\nanswer 4");
    // An id that is no UUID-like name is never a path.
    journal.write("../escape", 1, &Response::new(200, "no"));
    assert!(!dir.join("../escape").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
