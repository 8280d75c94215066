//! Pods as people copy them from the Kubernetes documentation, run with `wasmlet apply`
//! on busybox shaped as Docker Hub ships it (no ENTRYPOINT, `CMD ["sh"]`). Only the
//! image reference is changed, to the local registry's.

use std::time::Duration;

use crate::common::Registry;
use crate::harness::{Agent, container_state, phase, push_busybox_like_hub};

/// The YAML with `busybox:1.28`, `registry.k8s.io/busybox` and `debian` pointing at the
/// local busybox.
fn docs(yaml: &str, image: &str) -> String {
    let local = format!("image: {image}");
    let lines: Vec<String> = yaml
        .lines()
        .map(|l| match l.trim() {
            "image: busybox:1.28" | "image: registry.k8s.io/busybox" | "image: debian" => l.replace(l.trim(), &local),
            _ => l.to_string(),
        })
        .collect();
    lines.join("\n") + "\n"
}

#[test]
fn the_docs_pods_run_as_in_kubernetes() {
    let registry = Registry::start();
    let image = push_busybox_like_hub(&registry, "1.28");
    let agent = Agent::start();

    // concepts/cluster-administration/logging: `args` only, in an image with no
    // ENTRYPOINT, run as the command
    agent.apply(&docs(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: counter
spec:
  containers:
  - name: count
    image: busybox:1.28
    args: [/bin/sh, -c,
            'i=0; while true; do echo "$i: $(date)"; i=$((i+1)); sleep 1; done']
"#,
        &image,
    ));
    // tasks/configure-pod-container/configure-liveness-readiness-startup-probes
    agent.apply(&docs(
        r#"apiVersion: v1
kind: Pod
metadata:
  labels:
    test: liveness
  name: liveness-exec
spec:
  containers:
  - name: liveness
    image: registry.k8s.io/busybox
    args:
    - /bin/sh
    - -c
    - touch /tmp/healthy; sleep 30; rm -f /tmp/healthy; sleep 600
    livenessProbe:
      exec:
        command:
        - cat
        - /tmp/healthy
      initialDelaySeconds: 5
      periodSeconds: 5
"#,
        &image,
    ));
    // tasks/configure-pod-container/configure-projected-volume-storage, with the two
    // Secrets `kubectl create secret generic user/pass --from-file` would make
    agent.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: user\ndata:\n  username.txt: YWRtaW4=\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pass\ndata:\n  password.txt: MWYyZDFlMmU2N2Rm\n",
    );
    agent.apply(&docs(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: test-projected-volume
spec:
  containers:
  - name: test-projected-volume
    image: busybox:1.28
    args:
    - sleep
    - "86400"
    volumeMounts:
    - name: all-in-one
      mountPath: "/projected-volume"
      readOnly: true
  volumes:
  - name: all-in-one
    projected:
      sources:
      - secret:
          name: user
      - secret:
          name: pass
"#,
        &image,
    ));
    // tasks/debug/debug-application/determine-reason-pod-failure
    agent.apply(&docs(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: termination-demo
spec:
  containers:
  - name: termination-demo-container
    image: debian
    command: ["/bin/sh"]
    args: ["-c", "sleep 10 && echo Sleep expired > /dev/termination-log"]
"#,
        &image,
    ));
    // tasks/inject-data-application/environment-variable-expose-pod-information
    agent.apply(&docs(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: dapi-envars-fieldref
spec:
  containers:
    - name: test-container
      image: registry.k8s.io/busybox
      command: [ "sh", "-c"]
      args:
      - while true; do
          echo -en '\n';
          printenv MY_NODE_NAME MY_POD_NAME MY_POD_NAMESPACE;
          printenv MY_POD_IP MY_POD_SERVICE_ACCOUNT;
          sleep 10;
        done;
      env:
        - name: MY_NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: MY_POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: MY_POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: MY_POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: MY_POD_SERVICE_ACCOUNT
          valueFrom:
            fieldRef:
              fieldPath: spec.serviceAccountName
  restartPolicy: Never
"#,
        &image,
    ));
    // a last line with no newline, as `cat` of such a file prints it
    agent.apply(&docs(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: no-newline\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:1.28\n    args: [/bin/sh, -c, 'echo first; printf last-without-newline']\n",
        &image,
    ));

    for name in ["counter", "liveness-exec", "test-projected-volume"] {
        agent.wait_pod(name, "Running", |p| {
            phase(p) == "Running"
                && container_state(p, p["spec"]["containers"][0]["name"].as_str().unwrap()).0 == "running"
        });
    }
    crate::common::wait_until(Duration::from_secs(10), "the counter counts", || {
        String::from_utf8_lossy(&agent.cli(&["logs", "counter"]).stdout).starts_with("0: ")
    });
    let ls = agent.ok(&["exec", "test-projected-volume", "--", "ls", "/projected-volume/"]);
    assert_eq!(ls, "password.txt\nusername.txt\n");
    let user = agent.ok(&["exec", "test-projected-volume", "--", "cat", "/projected-volume/username.txt"]);
    assert_eq!(user, "admin");

    // the node's name, the pod's name, namespace, IP and service account, as printenv
    // prints them (the pod's IP is its network's: Linux pods have one)
    crate::common::wait_until(Duration::from_secs(15), "the downward API env", || {
        String::from_utf8_lossy(&agent.cli(&["logs", "dapi-envars-fieldref"]).stdout).lines().count() >= 6
    });
    let env = agent.ok(&["logs", "dapi-envars-fieldref"]);
    let lines: Vec<&str> = env.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 5, "five values printed: {env:?}");
    assert!(!lines[0].is_empty(), "spec.nodeName: {env:?}");
    assert_eq!(&lines[1..3], ["dapi-envars-fieldref", "default"], "{env:?}");
    assert!(lines[3].parse::<std::net::IpAddr>().is_ok(), "status.podIP: {env:?}");
    assert_eq!(lines[4], "default", "spec.serviceAccountName: {env:?}");

    let p = agent.wait_pod("no-newline", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(container_state(&p, "c").1["exitCode"], 0);
    assert_eq!(agent.ok(&["logs", "no-newline"]), "first\nlast-without-newline");
    assert_eq!(agent.ok(&["logs", "no-newline", "--tail", "1"]), "last-without-newline");

    // the termination message, read back as the docs' `kubectl get pod -o go-template`
    let p = agent.wait_pod("termination-demo", "the first exit", |p| {
        p["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object()
            || container_state(p, "termination-demo-container").0 == "terminated"
    });
    let st = &p["status"]["containerStatuses"][0];
    let term = if st["lastState"]["terminated"].is_object() {
        &st["lastState"]["terminated"]
    } else {
        &st["state"]["terminated"]
    };
    assert_eq!(term["message"], "Sleep expired\n", "{st}");
    for name in ["counter", "liveness-exec", "test-projected-volume"] {
        let p = agent.pod(name);
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{name}: {}", p["status"]);
    }
}
