//! CRI conformance, from the CRI API's documented behaviour: a generated CRI v1 client
//! (`k8s-cri`) over the real agent's unix socket (`serve --cri-socket`), with images
//! from the real registry, Wasm guests in wasmtime and Linux containers under runc.
//! The streaming URLs Exec, Attach and PortForward return are driven with SPDY/3.1 as
//! the kubelet's client speaks it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1;
use tonic::Code;

use crate::common::{PASSWORD, Registry, USER};
use crate::cri_client::{Cri, agent_with_cri};
use crate::harness::{Apps, WASMLET, push_busybox};

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sandbox_config(name: &str, log_dir: &std::path::Path, pairs: &[(&str, &str)]) -> v1::PodSandboxConfig {
    std::fs::create_dir_all(log_dir).unwrap();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: labels(pairs),
        ..Default::default()
    }
}

fn container(name: &str, image: &str, command: &[&str], args: &[&str]) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: labels(&[("container", name)]),
        envs: vec![v1::KeyValue { key: "GREETING".into(), value: "from-cri".into() }],
        ..Default::default()
    }
}

/// The message bodies of a CRI log file (`TIME STREAM TAG MESSAGE` lines).
fn log_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string)).collect()
}

#[test]
fn wasm_sandboxes_and_containers_follow_the_cri_lifecycle() {
    let apps = Apps::push(&["exit", "sleep", "hello", "chatty"]);
    let agent = agent_with_cri(&[]);
    let cri = Cri::connect(&agent);

    let v = cri.rs(|mut c| async move { c.version(v1::VersionRequest { version: "v1".into() }).await }).unwrap();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("wasmlet", "v1"));
    let status = cri.rs(|mut c| async move { c.status(v1::StatusRequest { verbose: false }).await }).unwrap();
    let conditions = status.status.unwrap().conditions;
    assert!(conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status), "{conditions:?}");
    assert!(conditions.iter().any(|c| c.r#type == "NetworkReady"), "{conditions:?}");
    let handlers: Vec<String> = status.runtime_handlers.iter().map(|h| h.name.clone()).collect();
    assert!(handlers.contains(&"wasm".to_string()) && handlers.contains(&String::new()), "{handlers:?}");
    let rc = cri.rs(|mut c| async move { c.runtime_config(v1::RuntimeConfigRequest {}).await }).unwrap();
    assert_eq!(rc.linux.unwrap().cgroup_driver, v1::CgroupDriver::Cgroupfs as i32);

    // images: absent is an empty status, not an error; pulled ones are listed by id
    let exit_image = apps.image("exit", "v1");
    let absent = cri
        .is(|mut c| {
            let image = Some(v1::ImageSpec { image: exit_image.clone(), ..Default::default() });
            async move { c.image_status(v1::ImageStatusRequest { image, verbose: false }).await }
        })
        .unwrap();
    assert!(absent.image.is_none());
    let exit_id = cri.pull(&exit_image);
    assert!(exit_id.starts_with("sha256:"), "{exit_id}");
    let sleep_image = apps.image("sleep", "p2");
    cri.pull(&sleep_image);
    cri.pull(&apps.image("chatty", "v1"));
    let listed = cri.is(|mut c| async move { c.list_images(v1::ListImagesRequest { filter: None }).await }).unwrap();
    let exit = listed.images.iter().find(|i| i.id == exit_id).expect("the pulled image is listed");
    assert_eq!(exit.repo_tags, vec![exit_image.clone()]);
    assert!(exit.repo_digests[0].contains("@sha256:") && exit.size > 0, "{exit:?}");

    // a sandbox for Wasm only: no network namespace
    let logs = agent.state_dir().join("pod-logs");
    let sb_config = sandbox_config("wasm-pod", &logs, &[("app", "demo")]);
    let sb = cri.run_sandbox(sb_config.clone(), "wasm");
    assert_eq!(sb.len(), 64);
    let again = cri.rs(|mut c| {
        let config = Some(sb_config.clone());
        async move { c.run_pod_sandbox(v1::RunPodSandboxRequest { config, runtime_handler: "wasm".into() }).await }
    });
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists, "the same name and attempt twice");
    let s = cri.sandbox_status(&sb).unwrap();
    assert_eq!(s.state, v1::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.runtime_handler, "wasm");
    assert_eq!(s.labels, labels(&[("app", "demo")]));

    // a container that exits 3: its status, reason and CRI-format log where asked
    let exit_c = cri.create(&sb, &sb_config, container("exiter", &exit_id, &[], &["3"])).unwrap();
    assert_eq!(cri.status(&exit_c).state, v1::ContainerState::ContainerCreated as i32);
    cri.start(&exit_c).unwrap();
    let done = cri.wait_state(&exit_c, v1::ContainerState::ContainerExited);
    assert_eq!((done.exit_code, done.reason.as_str()), (3, "Error"), "{done:?}");
    assert!(done.started_at > 0 && done.finished_at >= done.started_at && done.created_at > 0, "{done:?}");
    assert_eq!(done.log_path, logs.join("exiter/0.log").display().to_string());
    assert!(!log_lines(&logs.join("exiter/0.log")).is_empty(), "the guest's line is in the log");
    assert_eq!(
        cri.start(&exit_c).unwrap_err().code(),
        Code::FailedPrecondition,
        "an exited container does not start again"
    );
    let dup = cri.create(&sb, &sb_config, container("exiter", &exit_id, &[], &["3"]));
    assert_eq!(dup.unwrap_err().code(), Code::AlreadyExists);

    // a long runner, with stats, a reopened log and filters
    let sleeper = cri.create(&sb, &sb_config, container("sleeper", &sleep_image, &[], &["600"])).unwrap();
    cri.start(&sleeper).unwrap();
    cri.wait_state(&sleeper, v1::ContainerState::ContainerRunning);
    let chatty =
        cri.create(&sb, &sb_config, container("chatty", &apps.image("chatty", "v1"), &[], &["0", "8", "20"])).unwrap();
    cri.start(&chatty).unwrap();
    let running = v1::ContainerFilter {
        state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    let ids: Vec<String> = cri.containers(running).into_iter().map(|c| c.id).collect();
    assert!(ids.contains(&sleeper) && ids.contains(&chatty) && !ids.contains(&exit_c), "{ids:?}");
    let by_label = v1::ContainerFilter { label_selector: labels(&[("container", "exiter")]), ..Default::default() };
    assert_eq!(cri.containers(by_label).into_iter().map(|c| c.id).collect::<Vec<_>>(), vec![exit_c.clone()]);
    let by_sandbox = v1::ContainerFilter { pod_sandbox_id: sb[..12].into(), ..Default::default() };
    assert_eq!(cri.containers(by_sandbox).len(), 3, "a sandbox id prefix selects its containers");
    let stats = cri
        .rs(|mut c| {
            let id = chatty.clone();
            async move { c.container_stats(v1::ContainerStatsRequest { container_id: id }).await }
        })
        .unwrap()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0, "a running guest has memory");
    let pod_stats = cri
        .rs(|mut c| {
            let id = sb.clone();
            async move { c.pod_sandbox_stats(v1::PodSandboxStatsRequest { pod_sandbox_id: id }).await }
        })
        .unwrap();
    assert_eq!(pod_stats.stats.unwrap().linux.unwrap().containers.len(), 3);

    // log rotation as the kubelet does it: rename, then ReopenContainerLog
    let chatty_log = logs.join("chatty/0.log");
    crate::common::wait_until(Duration::from_secs(10), "chatty's output", || chatty_log.exists());
    let rotated = logs.join("chatty/0.log.20260101-000000");
    std::fs::rename(&chatty_log, &rotated).unwrap();
    cri.rs(|mut c| {
        let id = chatty.clone();
        async move { c.reopen_container_log(v1::ReopenContainerLogRequest { container_id: id }).await }
    })
    .unwrap();
    crate::common::wait_until(Duration::from_secs(10), "a new log file after reopening", || {
        !log_lines(&chatty_log).is_empty()
    });

    // exec is refused with a reason for a Wasm guest (no processes to run a command in)
    let e = cri.exec_sync(&sleeper, &["ls"], 0).unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");

    // stop and remove: a stop with a grace period ends it; removes are idempotent
    let t0 = Instant::now();
    cri.stop(&sleeper, 5);
    assert!(t0.elapsed() < Duration::from_secs(5), "a Wasm guest stops at once");
    let stopped = cri.status(&sleeper);
    assert_eq!(stopped.state, v1::ContainerState::ContainerExited as i32, "{stopped:?}");
    cri.stop(&sleeper, 5);
    cri.remove(&sleeper).unwrap();
    cri.remove(&sleeper).unwrap();
    let gone = cri.rs(|mut c| async move {
        c.container_status(v1::ContainerStatusRequest { container_id: "f".repeat(64), verbose: false }).await
    });
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);

    // an image in use cannot be removed; the sandbox stops and goes with its containers
    let in_use = cri.is(|mut c| {
        let image = Some(v1::ImageSpec { image: exit_id.clone(), ..Default::default() });
        async move { c.remove_image(v1::RemoveImageRequest { image }).await }
    });
    assert_eq!(in_use.unwrap_err().code(), Code::FailedPrecondition);
    cri.stop_sandbox(&sb).unwrap();
    cri.stop_sandbox(&sb).unwrap();
    assert_eq!(cri.sandbox_status(&sb).unwrap().state, v1::PodSandboxState::SandboxNotready as i32);
    assert_eq!(cri.status(&chatty).state, v1::ContainerState::ContainerExited as i32);
    let not_ready = v1::PodSandboxFilter {
        state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxNotready as i32 }),
        ..Default::default()
    };
    assert_eq!(cri.sandboxes(not_ready).len(), 1);
    cri.remove_sandbox(&sb).unwrap();
    cri.remove_sandbox(&sb).unwrap();
    assert_eq!(cri.sandbox_status(&sb).unwrap_err().code(), Code::NotFound);
    assert!(cri.containers(v1::ContainerFilter::default()).is_empty());
    cri.is(|mut c| {
        let image = Some(v1::ImageSpec { image: exit_id.clone(), ..Default::default() });
        async move { c.remove_image(v1::RemoveImageRequest { image }).await }
    })
    .unwrap();
    let listed = cri.is(|mut c| async move { c.list_images(v1::ListImagesRequest { filter: None }).await }).unwrap();
    assert!(!listed.images.iter().any(|i| i.id == exit_id), "removed");
    let fs = cri.is(|mut c| async move { c.image_fs_info(v1::ImageFsInfoRequest {}).await }).unwrap();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value > 0 && usage.inodes_used.as_ref().unwrap().value > 0, "{fs:?}");
}

#[test]
fn a_wasm_and_a_linux_container_share_a_sandbox_exec_and_survive_a_restart() {
    let apps = Apps::push(&["sleep", "chatty", "http_hello"]);
    let busybox = push_busybox(&apps.registry, "amd64", "latest");
    let mut agent = agent_with_cri(&[]);
    let cri = Cri::connect(&agent);
    let bb = cri.pull(&busybox);
    let sleep = cri.pull(&apps.image("sleep", "v1"));
    let chatty = cri.pull(&apps.image("chatty", "v1"));
    let http = cri.pull(&apps.image("http_hello", "p2"));
    let logs = agent.state_dir().join("pod-logs");
    let mut sb_config = sandbox_config("mixed", &logs, &[]);
    sb_config.port_mappings = vec![
        v1::PortMapping { container_port: 8080, ..Default::default() },
        v1::PortMapping { container_port: 8081, ..Default::default() },
    ];
    let sb = cri.run_sandbox(sb_config.clone(), "");
    let ip = cri.sandbox_status(&sb).unwrap().network.unwrap().ip;
    assert!(ip.starts_with("10.89."), "a pod IP from the pod network: {ip:?}");

    // a Linux runner serving a page on the pod IP, and a Wasm guest beside it
    let script = "echo linux says $GREETING; mkdir -p /www; echo served > /www/index.html; httpd -f -p 8080 -h /www";
    let web = cri.create(&sb, &sb_config, container("web", &bb, &["sh", "-c", script], &[])).unwrap();
    let guest = cri.create(&sb, &sb_config, container("guest", &sleep, &[], &["600"])).unwrap();
    cri.start(&web).unwrap();
    cri.start(&guest).unwrap();
    cri.wait_state(&web, v1::ContainerState::ContainerRunning);
    cri.wait_state(&guest, v1::ContainerState::ContainerRunning);
    crate::common::wait_until(Duration::from_secs(10), "the Linux container's log", || {
        log_lines(&logs.join("web/0.log")).contains(&"linux says from-cri".to_string())
    });

    // a Wasm HTTP component serves on its own declared port (the kubelet's
    // io.kubernetes.container.ports annotation) at the sandbox's pod IP
    let mut hello = container("hello", &http, &[], &[]);
    hello
        .annotations
        .insert("io.kubernetes.container.ports".into(), r#"[{"containerPort":8081,"protocol":"TCP"}]"#.into());
    let hello = cri.create(&sb, &sb_config, hello).unwrap();
    cri.start(&hello).unwrap();
    cri.wait_state(&hello, v1::ContainerState::ContainerRunning);
    let page = http_get(&format!("{ip}:8081"), "/cri");
    assert!(page.contains("200 OK") && page.contains("/cri"), "{page}");

    // Attach follows a container's output from now on
    let talker = cri.create(&sb, &sb_config, container("talker", &chatty, &[], &["0", "8", "20"])).unwrap();
    cri.start(&talker).unwrap();
    let url = cri
        .rs(|mut c| {
            let id = talker.clone();
            async move {
                c.attach(v1::AttachRequest { container_id: id, stdout: true, stderr: true, ..Default::default() }).await
            }
        })
        .unwrap()
        .url;
    let attached = cri.rt.block_on(spdy_stream(&url, Some("\n")));
    assert_eq!(attached.status, 101, "{attached:?}");
    assert!(attached.stdout.lines().count() >= 1, "lines arrive while it runs: {attached:?}");

    // UpdateContainerResources: a Linux container's memory limit changes in place (its
    // cgroup says so from inside); a Wasm guest's cap is fixed, and the call says why
    let update = |id: &str| v1::UpdateContainerResourcesRequest {
        container_id: id.to_string(),
        linux: Some(v1::LinuxContainerResources { memory_limit_in_bytes: 100 << 20, ..Default::default() }),
        ..Default::default()
    };
    let req = update(&web);
    cri.rs(|mut c| async move { c.update_container_resources(req).await }).unwrap();
    let read = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    let limit = cri.exec_sync(&web, &["sh", "-c", read], 5).unwrap().stdout;
    assert_eq!(String::from_utf8_lossy(&limit).trim(), (100u64 << 20).to_string());
    let shown = cri.status(&web).resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
    assert_eq!(shown, Some(100 << 20));
    let req = update(&guest);
    let e = cri.rs(|mut c| async move { c.update_container_resources(req).await }).unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");

    // ExecSync: output, exit code and a timeout
    let r = cri.exec_sync(&web, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10).unwrap();
    assert_eq!((r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code), (&b"out\n"[..], &b"err\n"[..], 7));
    let t0 = Instant::now();
    let slow = cri.exec_sync(&web, &["sleep", "30"], 1).unwrap_err();
    assert_eq!(slow.code(), Code::DeadlineExceeded, "{slow}");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // Exec and PortForward through the streaming server's URLs
    let url = cri
        .rs(|mut c| {
            let id = web.clone();
            async move {
                c.exec(v1::ExecRequest {
                    container_id: id,
                    cmd: vec!["sh".into(), "-c".into(), "echo streamed; exit 3".into()],
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await
            }
        })
        .unwrap()
        .url;
    let out = cri.rt.block_on(spdy_stream(&url, None));
    assert_eq!(out.stdout, "streamed\n", "{out:?}");
    assert!(out.error.contains("exit code 3"), "the exit travels on the error stream: {out:?}");
    let again = cri.rt.block_on(spdy_stream(&url, None));
    assert_eq!(again.status, 404, "a URL is good for one session");
    // the same over WebSocket (v5.channel.k8s.io), with stdin closed by the v5 signal
    let url = cri
        .rs(|mut c| {
            let id = web.clone();
            async move {
                c.exec(v1::ExecRequest {
                    container_id: id,
                    cmd: vec!["sh".into(), "-c".into(), "cat; echo oops >&2; exit 2".into()],
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await
            }
        })
        .unwrap()
        .url;
    let ws = cri.rt.block_on(websocket_exec(&url, b"piped\n"));
    assert_eq!((ws.stdout.as_str(), ws.stderr.as_str()), ("piped\n", "oops\n"), "{ws:?}");
    assert!(ws.error.contains("exit code 2"), "{ws:?}");
    let url = cri
        .rs(|mut c| {
            let id = sb.clone();
            async move { c.port_forward(v1::PortForwardRequest { pod_sandbox_id: id, port: vec![8080] }).await }
        })
        .unwrap()
        .url;
    let page = cri.rt.block_on(spdy_port_forward(&url, 8080, b"GET /index.html HTTP/1.0\r\n\r\n"));
    assert!(page.contains("200 OK") && page.contains("served"), "{page}");

    // kill -9: the Linux container runs on and is adopted; the Wasm guest died with the
    // agent and is reported exited, for the kubelet to restart
    let pid = std::fs::read_to_string(find_file(agent.state_dir(), "pidfile").expect("runc pidfile")).ok();
    agent.kill9();
    // the killed agent's socket file stays; the new one binds it again
    std::fs::remove_file(agent.state_dir().join("cri.sock")).unwrap();
    agent.restart();
    crate::common::wait_until(Duration::from_secs(10), "the CRI socket", || {
        agent.state_dir().join("cri.sock").exists()
    });
    let cri = Cri::connect(&agent);
    let after = cri.sandboxes(v1::PodSandboxFilter::default());
    assert_eq!(after.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![sb.clone()], "the same sandbox");
    assert_eq!(cri.status(&web).state, v1::ContainerState::ContainerRunning as i32, "adopted, never restarted");
    if let Some(pid) = pid {
        assert!(std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "the same process");
    }
    let lost = cri.status(&guest);
    assert_eq!(lost.state, v1::ContainerState::ContainerExited as i32, "{lost:?}");
    assert!(lost.message.contains("wasmlet"), "{lost:?}");
    assert_eq!(cri.exec_sync(&web, &["cat", "/www/index.html"], 5).unwrap().stdout, b"served\n");

    cri.stop_sandbox(&sb).unwrap();
    assert_eq!(cri.status(&web).state, v1::ContainerState::ContainerExited as i32);
    cri.remove_sandbox(&sb).unwrap();
    assert!(cri.containers(v1::ContainerFilter::default()).is_empty());
    let runc = std::process::Command::new("runc")
        .args(["--root", &agent.state_dir().join("linux/runc").display().to_string(), "list", "-q"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&runc.stdout).trim().is_empty(), "runc holds nothing");
}

#[test]
fn pulls_send_credentials_only_to_their_registry_and_bad_input_is_refused_by_name() {
    let registry = Registry::start_with_auth();
    let image = format!("{}/private/hello:v1", registry.host);
    let wasm = crate::common::wasm_app("hello", "wasm32-wasip1");
    let out = std::process::Command::new(WASMLET)
        .args(["push", "--creds", &format!("{USER}:{PASSWORD}"), wasm.to_str().unwrap(), &image])
        .output()
        .unwrap();
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    let agent = agent_with_cri(&[]);
    let cri = Cri::connect(&agent);
    let pull = |auth: Option<v1::AuthConfig>| {
        let spec = Some(v1::ImageSpec { image: image.clone(), ..Default::default() });
        cri.is(
            |mut c| async move { c.pull_image(v1::PullImageRequest { image: spec, auth, sandbox_config: None }).await },
        )
    };
    let denied = pull(None).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    let elsewhere = pull(Some(v1::AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        server_address: "registry.example.com".into(),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(elsewhere.code(), Code::InvalidArgument, "{elsewhere}");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let pulled = pull(Some(v1::AuthConfig { auth, server_address: registry.host.clone(), ..Default::default() }));
    assert!(pulled.unwrap().image_ref.starts_with("sha256:"));

    // bad input names what is wrong
    let logs = agent.state_dir().join("pod-logs");
    let sb_config = sandbox_config("p", &logs, &[]);
    let bad_handler = cri.rs(|mut c| {
        let config = Some(sb_config.clone());
        async move { c.run_pod_sandbox(v1::RunPodSandboxRequest { config, runtime_handler: "kata".into() }).await }
    });
    let e = bad_handler.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("kata"), "{e}");
    let sb = cri.run_sandbox(sb_config.clone(), "runc");
    let wrong_kind = cri.create(&sb, &sb_config, container("hello", &image, &[], &[])).unwrap_err();
    assert!(wrong_kind.message().contains("runc") && wrong_kind.message().contains("wasm"), "{wrong_kind}");
    let missing = cri.create(&sb, &sb_config, container("x", "127.0.0.1:1/none:v1", &[], &[])).unwrap_err();
    assert!(missing.code() == Code::NotFound && missing.message().contains("none:v1"), "{missing}");
    let mut tty = container("t", &image, &[], &[]);
    tty.tty = true;
    let sb2 = cri.run_sandbox(sandbox_config("q", &logs, &[]), "");
    let e = cri.create(&sb2, &sb_config, tty).unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("tty"), "{e}");
    assert_eq!(cri.start(&"0".repeat(64)).unwrap_err().code(), Code::NotFound);
}

/// Finds a file named `name` under `root` (a few levels deep).
fn find_file(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir()
            && !p.is_symlink()
            && let Some(f) = find_file(&p, name)
        {
            return Some(f);
        }
    }
    None
}

#[derive(Debug, Default)]
struct Streamed {
    status: u16,
    stdout: String,
    stderr: String,
    error: String,
}

/// Connects to a streaming URL and upgrades to SPDY/3.1 with `protocol`.
async fn upgrade(url: &str, protocol: &str) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, s)
}

/// An exec or attach session as the kubelet's client runs it: error, stdout and stderr
/// streams; with `until`, the client hangs up once stdout holds that text.
async fn spdy_stream(url: &str, until: Option<&str>) -> Streamed {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, mut s) = upgrade(url, "v4.channel.k8s.io").await;
    let mut out = Streamed { status, ..Default::default() };
    if status != 101 {
        return out;
    }
    let mut codec = spdy::Codec::new();
    for (id, kind) in [(1u32, "error"), (5, "stdout"), (7, "stderr")] {
        let f = spdy::Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        };
        s.write_all(&codec.encode(&f)).await.unwrap();
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = codec.decode(&buf).unwrap() {
            buf.drain(..used);
            match f {
                spdy::Frame::Data { id: 1, data, .. } => out.error.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::Data { id: 5, data, .. } => out.stdout.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::Data { id: 7, data, .. } => out.stderr.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::GoAway { .. } => break 'read,
                _ => {}
            }
        }
        if until.is_some_and(|u| out.stdout.contains(u)) {
            break;
        }
    }
    out
}

/// A plain HTTP/1.0 GET: the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// An exec as a WebSocket client (`v5.channel.k8s.io`) runs it: `stdin` on channel 0,
/// then the close signal `[255, 0]`; output read by channel until the server closes.
async fn websocket_exec(url: &str, stdin: &[u8]) -> Streamed {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_be_bytes());
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_ne!(s.read(&mut byte).await.unwrap(), 0, "the server hung up in the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let expected = {
        let mut input = key.as_bytes().to_vec();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input).as_ref())
    };
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains(&format!("sec-websocket-accept: {}", expected.to_lowercase())), "{head}");
    assert!(head.contains("sec-websocket-protocol: v5.channel.k8s.io"), "{head}");
    // client frames are masked
    let frame = |payload: &[u8]| {
        let mask = fastrand::u32(..).to_be_bytes();
        let mut f = vec![0x82, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    let mut data = vec![0u8];
    data.extend_from_slice(stdin);
    s.write_all(&frame(&data)).await.unwrap();
    s.write_all(&frame(&[255, 0])).await.unwrap();
    let mut out = Streamed { status: 101, ..Default::default() };
    loop {
        let mut h = [0u8; 2];
        if tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut h)).await.is_err() {
            break;
        }
        let len = match h[1] & 0x7F {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        match (h[0] & 0x0F, payload.split_first()) {
            (0x8, _) => break,
            (0x2, Some((1, d))) => out.stdout.push_str(&String::from_utf8_lossy(d)),
            (0x2, Some((2, d))) => out.stderr.push_str(&String::from_utf8_lossy(d)),
            (0x2, Some((3, d))) => out.error.push_str(&String::from_utf8_lossy(d)),
            _ => {}
        }
    }
    out
}

/// One forwarded connection, as `kubectl port-forward` opens it: an error and a data
/// stream naming the port; `request` is written, and the reply read to its end.
async fn spdy_port_forward(url: &str, port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, mut s) = upgrade(url, "portforward.k8s.io").await;
    assert_eq!(status, 101, "port-forward upgrade");
    let mut codec = spdy::Codec::new();
    for (id, kind) in [(1u32, "error"), (3, "data")] {
        let f = spdy::Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), "0".into()),
            ],
        };
        s.write_all(&codec.encode(&f)).await.unwrap();
    }
    s.write_all(&codec.encode(&spdy::Frame::Data { id: 3, flags: 0, data: request.to_vec() })).await.unwrap();
    let mut page = String::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut fin = false;
        while let Some((f, used)) = codec.decode(&buf).unwrap() {
            buf.drain(..used);
            if let spdy::Frame::Data { id: 3, data, flags } = f {
                page.push_str(&String::from_utf8_lossy(&data));
                fin |= flags & spdy::FLAG_FIN != 0;
            }
        }
        if fin {
            break;
        }
    }
    page
}

#[test]
fn a_kubelet_before_1_23_is_served_cri_v1alpha2() {
    use k8s_cri::v1alpha2 as a2;
    let apps = Apps::push(&["exit"]);
    let agent = agent_with_cri(&[]);
    let cri = Cri::connect(&agent);
    let channel = cri.channel();
    let mut rs = a2::runtime_service_client::RuntimeServiceClient::new(channel.clone());
    let mut is = a2::image_service_client::ImageServiceClient::new(channel);
    let logs = agent.state_dir().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    cri.rt.block_on(async move {
        let v = rs.version(a2::VersionRequest { version: "v1alpha2".into() }).await.unwrap().into_inner();
        assert_eq!(v.runtime_name, "wasmlet");
        let image = Some(a2::ImageSpec { image: apps.image("exit", "v1"), ..Default::default() });
        let pulled = is.pull_image(a2::PullImageRequest { image, ..Default::default() }).await.unwrap().into_inner();
        let config = a2::PodSandboxConfig {
            metadata: Some(a2::PodSandboxMetadata {
                name: "old".into(),
                uid: "old-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            ..Default::default()
        };
        let sb = rs
            .run_pod_sandbox(a2::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "wasm".into() })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let c = a2::ContainerConfig {
            metadata: Some(a2::ContainerMetadata { name: "x".into(), attempt: 0 }),
            image: Some(a2::ImageSpec { image: pulled.image_ref, ..Default::default() }),
            args: vec!["4".into()],
            log_path: "x.log".into(),
            ..Default::default()
        };
        let id = rs
            .create_container(a2::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(c),
                sandbox_config: Some(config),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rs.start_container(a2::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = rs
                .container_status(a2::ContainerStatusRequest { container_id: id.clone(), verbose: false })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.state == a2::ContainerState::ContainerExited as i32 {
                assert_eq!((s.exit_code, s.reason.as_str()), (4, "Error"));
                assert_eq!(s.log_path, logs.join("x.log").display().to_string());
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rs.remove_pod_sandbox(a2::RemovePodSandboxRequest { pod_sandbox_id: sb }).await.unwrap();
    });
}
