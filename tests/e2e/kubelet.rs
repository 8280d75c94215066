//! A real kubelet whose container runtime is wasmlet: kubelet v1.20 (built from Debian's
//! `kubernetes` source package with the control plane, `scripts/setup-kube.sh`) against
//! the real API server, controller-manager and scheduler, talking CRI (v1alpha2, all a
//! 1.20 kubelet speaks) to `wasmlet serve --cri-socket`. The kubelet owns the pods; wasmlet
//! runs their containers: a Wasm module in-process, busybox under runc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_standin::User;

use crate::control_plane::{ControlPlane, require_kube};
use crate::cri_client::agent_with_cri;
use crate::harness::{Apps, push_busybox};

const NODE: &str = "cri-node";

struct Kubelet(Child);

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kubelet's errors (klog `E`/`F` lines, panics), then the end of its log.
fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('E') || l.starts_with('F') || l.starts_with("panic") || l.starts_with("fatal"))
        .take(20)
        .collect();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('\t') && !l.starts_with("goroutine")).collect();
    format!("{}\n...\n{}", errors.join("\n"), lines[lines.len().saturating_sub(n)..].join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kubelet_runs_wasm_and_linux_pods_through_wasmlets_cri() {
    let api = ControlPlane::start().await;
    let (apps, busybox) = tokio::task::block_in_place(|| {
        let apps = Apps::push(&["hello", "sleep"]);
        let busybox = push_busybox(&apps.registry, "amd64", "latest");
        (apps, busybox)
    });
    let agent = tokio::task::block_in_place(|| agent_with_cri(&[]));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kubeconfig = d.join("kubelet.kubeconfig");
    let node = User::new(&format!("system:node:{NODE}"), &["system:nodes"]);
    std::fs::write(&kubeconfig, api.kubeconfig_cert(&node, api.api_port)).unwrap();
    std::fs::write(d.join("ca.crt"), &api.ca.cert_pem).unwrap();
    std::fs::create_dir_all(d.join("manifests")).unwrap();
    let socket = format!("unix://{}", agent.state_dir().join("cri.sock").display());
    let port = crate::common::free_port();
    let log = d.join("kubelet.log");
    let child = Command::new(require_kube("kubelet"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["--container-runtime=remote", "--runtime-request-timeout=2m"])
        .arg(format!("--container-runtime-endpoint={socket}"))
        .arg(format!("--image-service-endpoint={socket}"))
        .arg(format!("--root-dir={}", d.join("root").display()))
        .arg(format!("--cert-dir={}", d.join("pki").display()))
        .arg(format!("--pod-manifest-path={}", d.join("manifests").display()))
        .arg(format!("--volume-plugin-dir={}", d.join("plugins").display()))
        .arg(format!("--client-ca-file={}", d.join("ca.crt").display()))
        // a 1.20 kubelet refuses a loopback node IP: it reports the host's own address
        // (traffic to it stays on this machine) and listens there, for logs and exec
        .args([&format!("--hostname-override={NODE}"), "--address=0.0.0.0"])
        .args([&format!("--port={port}"), "--read-only-port=0", "--healthz-port=0"])
        .args(["--anonymous-auth=false", "--authorization-mode=AlwaysAllow"])
        // the host's cgroups are the test machine's: no QoS hierarchy, no allocatable
        // enforcement, no swap check, no eviction or image GC of the shared disk
        .args(["--fail-swap-on=false", "--cgroups-per-qos=false", "--enforce-node-allocatable="])
        .args(["--cgroup-driver=cgroupfs", "--eviction-hard=memory.available<1Ki", "--image-gc-high-threshold=100"])
        .args(["--resolv-conf=/etc/resolv.conf", "--logtostderr", "--v=1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut kubelet = Kubelet(child);

    // the node registers and turns Ready once the runtime reports RuntimeReady and NetworkReady
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out =
            api.kubectl(&["get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        if String::from_utf8_lossy(&out.stdout) == "True" {
            break;
        }
        if let Ok(Some(status)) = kubelet.0.try_wait() {
            panic!("the kubelet exited ({status}):\n{}", tail(&log, 40));
        }
        assert!(Instant::now() < deadline, "the node did not turn Ready:\n{}", tail(&log, 40));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let info = api.kubectl_ok(&["get", "node", NODE, "-o", "jsonpath={.status.nodeInfo.containerRuntimeVersion}"]);
    assert!(info.starts_with("wasmlet://"), "the kubelet reports wasmlet as its runtime: {info}");

    // a Wasm module: pulled through CRI, run to completion, its log read by the kubelet
    let hello = apps.image("hello", "v1");
    api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  nodeName: {NODE}\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {hello}\n    args: [\"from\", \"a\", \"kubelet\"]\n    env:\n    - name: WHO\n      value: cri\n"
    ));
    // a busybox pod that keeps running, for exec
    api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shell\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: shell\n    image: {busybox}\n    command: [\"sh\", \"-c\", \"echo up; sleep 3600\"]\n"
    ));
    let wait_phase = |pod: &str, phase: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = api.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
            if got == phase {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {pod} is {got:?}, not {phase}:\n{}\n--- kubelet:\n{}",
                api.kubectl_ok(&["get", "pod", pod, "-o", "yaml"]),
                tail(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    tokio::task::block_in_place(|| {
        wait_phase("hello", "Succeeded");
        let logs = api.kubectl_ok(&["logs", "hello"]);
        assert!(
            logs.contains("arg[0]=hello\narg[1]=from\narg[2]=a\narg[3]=kubelet") && logs.contains("WHO=cri"),
            "{logs}"
        );
        wait_phase("shell", "Running");
        assert_eq!(api.kubectl_ok(&["logs", "shell"]), "up\n");
        let out = api.kubectl_ok(&["exec", "shell", "--", "sh", "-c", "echo in $(hostname)"]);
        assert_eq!(out, "in shell\n");
        api.kubectl_ok(&["delete", "pod", "shell", "hello", "--wait=true", "--timeout=60s"]);
    });
    // the kubelet removed what it ran: no CRI container is left running
    let left = tokio::task::block_in_place(|| {
        let cri = crate::cri_client::Cri::connect(&agent);
        let running = k8s_cri::v1::ContainerFilter {
            state: Some(k8s_cri::v1::ContainerStateValue {
                state: k8s_cri::v1::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        cri.containers(running)
    });
    assert!(left.is_empty(), "{left:?}");
    drop(kubelet);
}
