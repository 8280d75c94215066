//! Wasm HTTP components served by the real daemon: real requests from curl against
//! components built from `wasm-apps/` (`wasi:http/incoming-handler`).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Registry, free_port, require};
use crate::harness::{Agent, Apps};

/// `curl` a URL: (status, body). `args` go before the URL.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let curl = require("curl", "curl");
    let out = Command::new(curl)
        .args(["-s", "-S", "--max-time", "20", "-o", "-", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // the status is the last three characters
    let (body, code) = text.split_at(text.len().saturating_sub(3));
    (code.parse().unwrap_or(0), body.to_string())
}

fn http_pod(name: &str, image: &str, port: u16, annotations: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    wasmlet.dev/note: test\n{annotations}spec:\n  containers:\n  - name: app\n    image: {image}\n    ports:\n    - containerPort: {port}\n      hostPort: {port}\n{extra}"
    )
}

fn wait_serving(port: u16) {
    crate::common::wait_until(Duration::from_secs(30), "the component to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

#[test]
fn http_components_serve_requests_each_in_a_fresh_instance() {
    let apps = Apps::push(&["http_hello", "http_echo", "http_trap"]);
    let agent = Agent::start();
    let (hello, echo, trap) = (free_port(), free_port(), free_port());
    let probe = format!(
        "    readinessProbe:\n      httpGet:\n        port: {hello}\n        path: /healthz\n      periodSeconds: 1\n"
    );
    agent.apply(&http_pod("hello", &apps.image("http_hello", "p2"), hello, "", &probe));
    agent.apply(&http_pod("echo", &apps.image("http_echo", "p2"), echo, "", ""));
    agent.apply(&http_pod("trap", &apps.image("http_trap", "p2"), trap, "", ""));
    for port in [hello, echo, trap] {
        wait_serving(port);
    }

    // a greeting; every request is the first of its instance
    let (status, body) = curl(&format!("http://127.0.0.1:{hello}/x?y=1"), &[]);
    assert_eq!((status, body.as_str()), (200, "hello from a wasm component at /x?y=1 (request 1 of this instance)\n"));
    let handles: Vec<_> =
        (0..32).map(|i| std::thread::spawn(move || curl(&format!("http://127.0.0.1:{hello}/c{i}"), &[]))).collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("hello from a wasm component at /c{i} (request 1 of this instance)\n"));
    }
    // the guest's stdout is the container log; the readiness probe passes against it
    let logs = agent.ok(&["logs", "hello"]);
    assert!(logs.contains("GET /x?y=1\n") && logs.contains("GET /c31\n"), "{logs}");
    agent.wait_pod("hello", "Ready", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    });

    // bodies, headers and status codes go through
    let (status, body) = curl(
        &format!("http://127.0.0.1:{echo}/?status=201"),
        &["-X", "POST", "--data-binary", "ping", "-H", "X-Test: yes", "-D", "/dev/stderr"],
    );
    assert_eq!((status, body.as_str()), (201, "ping"));
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-H", "X-Test: yes"])
        .arg(format!("http://127.0.0.1:{echo}/"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.contains("x-echo-x-test: yes"), "{head}");

    // a trap is a 500 for that request only
    let (status, body) = curl(&format!("http://127.0.0.1:{trap}/"), &[]);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("wasm trap"), "{body}");
    assert_eq!(curl(&format!("http://127.0.0.1:{hello}/after"), &[]).0, 200);
    let logs = agent.ok(&["logs", "trap"]);
    assert!(logs.contains("about to trap") && logs.contains("wasmlet: request failed: wasm trap"), "{logs}");
    let pods = agent.ok(&["get", "pods"]);
    assert!(pods.lines().filter(|l| l.contains("Running")).count() == 3, "{pods}");
}

#[test]
fn http_deadlines_concurrency_caps_and_outbound_grants() {
    let apps = Apps::push(&["http_slow", "http_echo"]);
    let registry = Registry::start();
    let agent = Agent::start();
    let (slow, denied, granted) = (free_port(), free_port(), free_port());
    let limits = "    wasmlet.dev/http-request-timeout: 1s\n    wasmlet.dev/http-max-concurrency: \"2\"\n";
    agent.apply(&http_pod("slow", &apps.image("http_slow", "p2"), slow, limits, ""));
    agent.apply(&http_pod("denied", &apps.image("http_echo", "p2"), denied, "", ""));
    let grant = format!("    wasmlet.dev/allow-outbound: \"{}\"\n", registry.host);
    agent.apply(&http_pod("granted", &apps.image("http_echo", "p2"), granted, &grant, ""));
    for port in [slow, denied, granted] {
        wait_serving(port);
    }

    // the deadline: a handler that would sleep 5 s gets 504 after 1 s
    let t = Instant::now();
    let (status, _) = curl(&format!("http://127.0.0.1:{slow}/?ms=5000"), &[]);
    assert_eq!(status, 504);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    assert_eq!(curl(&format!("http://127.0.0.1:{slow}/?ms=10"), &[]), (200, "slept 10 ms\n".into()));

    // the cap: two requests in flight, the third gets 503 at once
    let busy: Vec<_> =
        (0..2).map(|_| std::thread::spawn(move || curl(&format!("http://127.0.0.1:{slow}/?ms=800"), &[]))).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (status, _) = curl(&format!("http://127.0.0.1:{slow}/?ms=10"), &[]);
    assert_eq!(status, 503);
    assert!(t.elapsed() < Duration::from_millis(500));
    for b in busy {
        assert_eq!(b.join().unwrap().0, 200);
    }
    let events = agent.ok(&["get", "events"]);
    assert!(events.contains("TooManyRequests") && events.contains("2 requests already in flight"), "{events}");
    let sock = agent.state_dir().join("wasmlet.sock");
    let metrics = Command::new("curl")
        .args(["-s", "--unix-socket", sock.to_str().unwrap(), "http://wasmlet/v1/metrics"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("wasmlet_http_requests_rejected_total 1\n"), "{metrics}");

    // outbound HTTP: only to what the pod grants
    let target = format!("http://{}/v2/", registry.host);
    let (status, body) = curl(&format!("http://127.0.0.1:{denied}/?fetch={target}"), &[]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let logs = agent.ok(&["logs", "denied"]);
    assert!(logs.contains(&format!("outbound HTTP request to {} denied", registry.host)), "{logs}");
    let (status, body) = curl(&format!("http://127.0.0.1:{granted}/?fetch={target}"), &[]);
    assert_eq!((status, body.lines().next()), (200, Some("status 200")), "{body}");

    // the memory limit holds per instance: a body bigger than it fails that request only
    let small = free_port();
    let limit = "    resources:\n      limits:\n        memory: 8Mi\n";
    agent.apply(&http_pod("small", &apps.image("http_echo", "p2"), small, "", limit));
    wait_serving(small);
    let big = agent.state_dir().join("big.bin");
    std::fs::write(&big, vec![b'x'; 16 << 20]).unwrap();
    // The server answers 500 and closes with the rest of the body unread, so the
    // kernel may reset the connection before curl reads the answer (it then reports the
    // last code it saw: 100 Continue). Known; a lingering close would fix it. Try a few
    // times for the 500; every attempt must fail.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (status, body) =
            curl(&format!("http://127.0.0.1:{small}/"), &["--data-binary", &format!("@{}", big.display())]);
        assert_ne!(status, 200, "a body over the memory limit was accepted");
        seen.push((status, body.clone()));
        if status == 500 {
            assert!(body.contains("memory limit reached"), "{body}");
            break;
        }
    }
    assert!(seen.iter().any(|(s, _)| *s == 500), "never got the 500: {seen:?}");
    assert_eq!(curl(&format!("http://127.0.0.1:{small}/"), &["--data-binary", "tiny"]), (200, "tiny".into()));

    // a bad annotation names itself
    let path = agent.state_dir().join("bad.yaml");
    std::fs::write(
        &path,
        http_pod("bad", &apps.image("http_slow", "p2"), 1, "    wasmlet.dev/http-max-concurrency: none\n", ""),
    )
    .unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metadata.annotations[wasmlet.dev/http-max-concurrency]: Invalid value"), "{err}");
}

#[test]
fn wasi_sockets_reach_only_what_the_pod_grants() {
    use std::io::{Read, Write};
    let apps = Apps::push(&["tcp-echo"]);
    let agent = Agent::start();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (open_port, closed_port) = (open.local_addr().unwrap().port(), closed.local_addr().unwrap().port());
    let (echo, undeclared) = (free_port(), free_port());
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sockets\n  annotations:\n    wasmlet.dev/allow-outbound: \"127.0.0.1:{open_port}\"\nspec:\n  containers:\n  - name: app\n    image: {}\n    args: [\"{echo}\", \"--try-bind\", \"{undeclared}\", \"--try-connect\", \"127.0.0.1:{open_port}\", \"--try-connect\", \"127.0.0.1:{closed_port}\"]\n    ports:\n    - containerPort: {echo}\n",
        apps.image("tcp-echo", "p2")
    );
    agent.apply(&manifest);
    wait_serving(echo);
    // a plain TCP echo server, listening on its declared port
    let mut s = std::net::TcpStream::connect(("127.0.0.1", echo)).unwrap();
    s.write_all(b"ping over wasi:sockets\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping over wasi:sockets\n");
    let logs = agent.ok(&["logs", "sockets"]);
    assert!(logs.contains(&format!("connect 127.0.0.1:{open_port}: ok")), "{logs}");
    let refused = |what: &str| logs.lines().any(|l| l.starts_with(what) && !l.ends_with(": ok"));
    assert!(refused(&format!("bind {undeclared}: ")), "binding an undeclared port: {logs}");
    assert!(refused(&format!("connect 127.0.0.1:{closed_port}: ")), "connecting where not granted: {logs}");
    assert!(logs.contains(&format!("wasmlet: TCP connect to 127.0.0.1:{closed_port} denied")), "{logs}");
    assert!(logs.contains(&format!("wasmlet: TCP bind to 127.0.0.1:{undeclared} denied")), "{logs}");
    let events = agent.ok(&["get", "events"]);
    assert!(events.contains("NetworkAccessDenied") && events.contains("not a declared containerPort"), "{events}");

    // with no ports declared, the same program may not listen at all
    let bare = manifest
        .replace("name: sockets", "name: no-ports")
        .replace(&format!("    ports:\n    - containerPort: {echo}\n"), "");
    let bare = bare.replace(&format!("[\"{echo}\","), &format!("[\"{}\",", free_port()));
    agent.apply(&bare);
    let p = agent.wait_pod("no-ports", "the guest to fail", |p| {
        crate::harness::state(p).0 == "terminated" || crate::harness::restarts(p) > 0
    });
    let logs = agent.ok(&["logs", "no-ports"]);
    assert!(logs.contains("not a declared containerPort"), "{logs}\n{p}");
    drop((open, closed));
}

#[test]
fn an_http_component_in_a_mixed_pod_serves_on_the_pod_ip_and_its_localhost() {
    let apps = Apps::push(&["http_hello"]);
    let busybox = crate::harness::push_busybox(&apps.registry, "amd64", "latest");
    let agent = Agent::start();
    let port = free_port();
    // the Wasm container comes first: it still joins the pod network the Linux one needs
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mixed-http\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {}\n    ports:\n    - containerPort: {port}\n    readinessProbe:\n      httpGet:\n        port: {port}\n      periodSeconds: 1\n  - name: box\n    image: {busybox}\n    command: [\"sleep\", \"3600\"]\n",
        apps.image("http_hello", "p2")
    );
    agent.apply(&manifest);
    let p = agent.wait_pod("mixed-http", "both containers ready", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    });
    let ip = p["status"]["podIP"].as_str().expect("a pod IP").to_string();
    // from the host, on the pod IP
    let (status, body) = curl(&format!("http://{ip}:{port}/from-host"), &[]);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from a wasm component at /from-host (request 1 of this instance)\n")
    );
    // from the Linux container, on the pod's localhost
    let out = agent.ok(&[
        "exec",
        "mixed-http",
        "-c",
        "box",
        "--",
        "wget",
        "-qO-",
        &format!("http://127.0.0.1:{port}/from-box"),
    ]);
    assert_eq!(out, "hello from a wasm component at /from-box (request 1 of this instance)\n");
    // not on the host's own loopback: the component lives in the pod network
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
