//! Hardened pods through the real daemon and runc, checked from inside the container:
//! seccomp (`/proc/self/status` and a blocked call), capabilities for root and non-root,
//! privileged, groups and fsGroup on volumes, sysctls, host namespaces, the node's
//! policy flags, a Pod Security Standards "restricted" Deployment, and what a Wasm guest
//! accepts and refuses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{Registry, free_port};
use crate::harness::{Agent, Apps, container_state, phase, push_busybox};

fn busybox() -> (Registry, String) {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    (registry, image)
}

/// A pod whose one container runs `script` under `sh -c` once; `pod_extra` goes under
/// `spec:`, `container_extra` under the container.
fn pod(name: &str, image: &str, script: &str, pod_extra: &str, container_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n{pod_extra}  containers:\n  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", {script:?}]\n{container_extra}"
    )
}

/// The pod's log once it has succeeded.
fn output(agent: &Agent, name: &str) -> String {
    agent.wait_pod(name, "Succeeded", |p| phase(p) == "Succeeded" || phase(p) == "Failed");
    let log = agent.ok(&["logs", name]);
    let p = agent.pod(name);
    assert_eq!(phase(&p), "Succeeded", "pod {name} failed: {}\nits log:\n{log}", p["status"]["containerStatuses"]);
    log
}

/// `Name:\tvalue` (as in /proc/self/status) and `name=value` lines of a log, by name;
/// a later line wins.
fn fields(log: &str) -> HashMap<String, String> {
    log.lines()
        .filter_map(|l| l.find([':', '=']).map(|i| (&l[..i], &l[i + 1..])))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const STATUS: &str = "grep -E '^(Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status";

/// containerd's and CRI-O's default capability set, as a /proc mask.
const DEFAULT_CAPS: &str = "00000000a80425fb";

#[test]
fn seccomp_profiles_filter_system_calls_inside_the_container() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let profiles = agent.state_dir().join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let no_mkdir = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#;
    std::fs::write(profiles.join("no-mkdir.json"), no_mkdir).unwrap();
    let script = format!("{STATUS}; unshare -U true 2>&1; echo unshare=$?; mkdir /tmp/d 2>&1; echo mkdir=$?");
    let default = "  securityContext:\n    seccompProfile:\n      type: RuntimeDefault\n";
    agent.apply(&pod("runtime-default", &image, &script, default, ""));
    agent.apply(&pod("unconfined", &image, &script, "", ""));
    let localhost = "    securityContext:\n      seccompProfile:\n        type: Localhost\n        localhostProfile: profiles/no-mkdir.json\n";
    agent.apply(&pod("localhost", &image, &script, "", localhost));
    // the container's profile wins over the pod's
    let unconfined = "    securityContext:\n      seccompProfile:\n        type: Unconfined\n";
    agent.apply(&pod("override", &image, &script, default, unconfined));

    let log = output(&agent, "runtime-default");
    let f = fields(&log);
    assert_eq!(f["Seccomp"], "2", "{log}");
    assert!(log.contains("Operation not permitted") && f["unshare"] != "0", "a new user namespace is refused: {log}");
    assert_eq!(f["mkdir"], "0", "ordinary calls pass: {log}");

    let log = output(&agent, "unconfined");
    let f = fields(&log);
    assert_eq!(f["Seccomp"], "0", "no filter without a profile (the kubelet's default): {log}");
    assert_eq!(f["unshare"], "0", "the same call passes with no filter: {log}");

    let log = output(&agent, "localhost");
    let f = fields(&log);
    assert_eq!(f["Seccomp"], "2", "{log}");
    assert_ne!(f["mkdir"], "0", "the profile's rule applies: {log}");

    let log = output(&agent, "override");
    assert_eq!(fields(&log)["Seccomp"], "0", "{log}");

    // a profile that is not there: a start error naming the file
    let missing = "    securityContext:\n      seccompProfile:\n        type: Localhost\n        localhostProfile: profiles/absent.json\n";
    agent.apply(&pod("missing", &image, "true", "", missing));
    let p = agent.wait_pod("missing", "a start error", |p| {
        p["status"]["containerStatuses"][0].to_string().contains("absent.json")
    });
    let text = p["status"]["containerStatuses"][0].to_string();
    assert!(text.contains("seccomp profile") && text.contains("No such file"), "{text}");

    // bad profiles are refused at apply, with the field
    let bad = "  securityContext:\n    seccompProfile:\n      type: Localhost\n";
    let err = apply_err(&agent, &pod("bad", &image, "true", bad, ""));
    assert!(err.contains("spec.securityContext.seccompProfile.localhostProfile: Required value"), "{err}");
    let escape = "    securityContext:\n      seccompProfile:\n        type: Localhost\n        localhostProfile: ../../etc/passwd\n";
    let err = apply_err(&agent, &pod("bad", &image, "true", "", escape));
    assert!(err.contains("spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value"), "{err}");
}

/// `apply` of `yaml` must fail; its stderr.
fn apply_err(agent: &Agent, yaml: &str) -> String {
    let path = agent.state_dir().join(format!("bad-{}.yaml", fastrand::u32(..)));
    std::fs::write(&path, yaml).unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success(), "apply should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn capabilities_for_root_non_root_and_privileged_containers() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let sc = |s: &str| format!("    securityContext:\n{s}");
    agent.apply(&pod("root", &image, STATUS, "", ""));
    agent.apply(&pod("root-drop-all", &image, STATUS, "", &sc("      capabilities:\n        drop: [ALL]\n")));
    agent.apply(&pod(
        "root-drop-raw",
        &image,
        STATUS,
        "",
        &sc("      capabilities:\n        drop: [NET_RAW, CAP_MKNOD]\n"),
    ));
    agent.apply(&pod("user", &image, STATUS, "", &sc("      runAsUser: 1000\n")));
    let add = "      runAsUser: 1000\n      capabilities:\n        drop: [ALL]\n        add: [NET_BIND_SERVICE]\n";
    let bind = format!("{STATUS}; nc -l -p 80 & sleep 0.3; if kill $! 2>/dev/null; then echo port80=bound; fi");
    agent.apply(&pod("user-add", &image, &bind, "", &sc(add)));
    agent.apply(&pod("user-no-add", &image, &bind, "", &sc("      runAsUser: 1000\n")));
    let privileged = format!(
        "{STATUS}; grep -q ' /sys sysfs rw' /proc/mounts && echo sys=rw; test -c /dev/kmsg && echo kmsg=yes; \
         echo masked=$(grep -c ' /proc/keys ' /proc/mounts)"
    );
    let seccomp = "      privileged: true\n      seccompProfile:\n        type: RuntimeDefault\n";
    agent.apply(&pod("privileged", &image, &privileged, "", &sc(seccomp)));

    let f = fields(&output(&agent, "root"));
    assert_eq!((f["CapEff"].as_str(), f["CapBnd"].as_str()), (DEFAULT_CAPS, DEFAULT_CAPS), "{f:?}");
    assert_eq!(f["CapAmb"], "0000000000000000");
    let f = fields(&output(&agent, "root-drop-all"));
    assert_eq!((f["CapEff"].as_str(), f["CapBnd"].as_str()), ("0000000000000000", "0000000000000000"), "{f:?}");
    let f = fields(&output(&agent, "root-drop-raw"));
    // NET_RAW is bit 13, MKNOD bit 27
    assert_eq!(f["CapEff"], format!("{:016x}", 0xa80425fb_u64 & !(1 << 13) & !(1 << 27)), "{f:?}");
    let f = fields(&output(&agent, "user"));
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(f[set], "0000000000000000", "a non-root process holds no {set}: {f:?}");
    }
    assert_eq!(f["CapBnd"], DEFAULT_CAPS);
    let log = output(&agent, "user-add");
    let f = fields(&log);
    // NET_BIND_SERVICE is bit 10
    for set in ["CapPrm", "CapEff", "CapAmb", "CapBnd"] {
        assert_eq!(f[set], "0000000000000400", "{set}: {f:?}");
    }
    assert_eq!(f.get("port80").map(String::as_str), Some("bound"), "uid 1000 binds port 80 with the capability: {log}");
    let log = output(&agent, "user-no-add");
    assert!(!log.contains("port80=bound"), "and not without it: {log}");

    let log = output(&agent, "privileged");
    let f = fields(&log);
    // every capability the agent may pass on: its bounding set, the same as this test's
    let all = fields(&std::fs::read_to_string("/proc/self/status").unwrap())["CapBnd"].clone();
    assert_eq!((f["CapEff"].as_str(), f["CapBnd"].as_str()), (all.as_str(), all.as_str()), "{log}");
    assert_eq!(f["Seccomp"], "0", "privileged runs unconfined: {log}");
    assert_eq!(f.get("sys").map(String::as_str), Some("rw"), "{log}");
    assert_eq!(f.get("kmsg").map(String::as_str), Some("yes"), "host devices: {log}");
    assert_eq!(f.get("masked").map(String::as_str), Some("0"), "no masked paths: {log}");

    let err =
        apply_err(&agent, &pod("bad", &image, "true", "", &sc("      capabilities:\n        add: [NOT_A_CAP]\n")));
    assert!(
        err.contains("spec.containers[0].securityContext.capabilities.add[0]: Invalid value: \"NOT_A_CAP\""),
        "{err}"
    );
    let contradiction = "      privileged: true\n      allowPrivilegeEscalation: false\n";
    let err = apply_err(&agent, &pod("bad", &image, "true", "", &sc(contradiction)));
    assert!(err.contains("allowPrivilegeEscalation"), "{err}");
}

#[test]
fn groups_fs_group_volumes_and_sysctls() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let script = "id -u; id -G; stat -c 'data=%g %a' /data; touch /data/f && stat -c 'new=%g' /data/f; \
                  stat -L -c 'cfg=%g %a' /cfg/key; stat -L -c 'sec=%g %a' /sec/key; cat /sec/key; echo; \
                  cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start";
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  key: value\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: sec\nstringData:\n  key: s3cret\n---\n{}",
        pod(
            "groups",
            &image,
            script,
            "  securityContext:\n    runAsUser: 1000\n    runAsGroup: 3000\n    fsGroup: 2000\n    supplementalGroups: [4000]\n    sysctls:\n    - name: kernel.shm_rmid_forced\n      value: \"1\"\n    - name: net/ipv4/ip_unprivileged_port_start\n      value: \"80\"\n  volumes:\n  - name: data\n    emptyDir: {}\n  - name: cfg\n    configMap:\n      name: cfg\n  - name: sec\n    secret:\n      secretName: sec\n      defaultMode: 0400\n",
            "    volumeMounts:\n    - name: data\n      mountPath: /data\n    - name: cfg\n      mountPath: /cfg\n    - name: sec\n      mountPath: /sec\n",
        )
    );
    agent.apply(&manifest);
    let log = output(&agent, "groups");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "1000", "{log}");
    assert_eq!(lines[1], "3000 2000 4000", "runAsGroup, then fsGroup and supplementalGroups: {log}");
    let f = fields(&log);
    assert_eq!(f["data"], "2000 2777", "the emptyDir is the fsGroup's and set-group-ID: {log}");
    assert_eq!(f["new"], "2000", "a new file inherits the group: {log}");
    assert_eq!(f["cfg"], "2000 644", "{log}");
    assert_eq!(f["sec"], "2000 440", "a 0400 secret file is readable by the group: {log}");
    assert!(log.contains("s3cret"), "uid 1000 reads the secret through the group: {log}");
    assert_eq!(&lines[lines.len() - 2..], &["1", "80"], "the safe sysctls are set in the pod's namespaces: {log}");

    // an unsafe sysctl is refused at admission, in the kubelet's words
    let unsafe_ = "  securityContext:\n    sysctls:\n    - name: net.core.somaxconn\n      value: \"1024\"\n";
    agent.apply(&pod("unsafe", &image, "true", unsafe_, ""));
    let p = agent.wait_pod("unsafe", "Failed", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "SysctlForbidden", "{}", p["status"]);
    assert!(p["status"]["message"].as_str().unwrap_or_default().contains("net.core.somaxconn"));
    // a name that is no sysctl's is refused at apply
    let err = apply_err(
        &agent,
        &pod("bad", &image, "true", "  securityContext:\n    sysctls:\n    - name: \"Vm!\"\n      value: \"1\"\n", ""),
    );
    assert!(err.contains("spec.securityContext.sysctls[0].name: Invalid value"), "{err}");
}

#[test]
fn host_network_pid_and_ipc_share_the_hosts_namespaces() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let port = free_port();
    let script = format!(
        "for ns in net ipc pid uts; do echo $ns=$(readlink /proc/self/ns/$ns); done; hostname; \
         mkdir /www && echo served-on-the-host > /www/index.html && exec httpd -f -p {port} -h /www"
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: host\nspec:\n  hostNetwork: true\n  hostPID: true\n  hostIPC: true\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", {script:?}]\n    ports:\n    - containerPort: {port}\n"
    );
    agent.apply(&manifest);
    let p = agent.wait_pod("host", "running", |p| container_state(p, "app").0 == "running");
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"], "a host-network pod has the node's IP");
    assert_eq!(p["spec"]["containers"][0]["ports"][0]["hostPort"].as_u64(), Some(port as u64), "hostPort defaults");
    let reply = http_get(&format!("127.0.0.1:{port}"));
    assert!(reply.contains("served-on-the-host"), "{reply}");
    let log = agent.ok(&["logs", "host"]);
    let f = fields(&log);
    for ns in ["net", "ipc", "pid", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_eq!(f[ns], host.to_string_lossy(), "{ns}: {log}");
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(log.lines().any(|l| l == hostname.trim()), "the host's name: {log}");

    // and an ordinary pod has namespaces of its own
    let script = "for ns in net ipc pid uts; do echo $ns=$(readlink /proc/self/ns/$ns); done";
    agent.apply(&pod("own", &image, script, "", ""));
    let log = output(&agent, "own");
    let f = fields(&log);
    for ns in ["net", "ipc", "pid", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(f[ns], host.to_string_lossy(), "{ns}: {log}");
    }
    // hostPort must be containerPort on the host network
    let bad = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  hostNetwork: true\n  containers:\n  - name: app\n    image: {image}\n    ports:\n    - containerPort: 80\n      hostPort: 8080\n"
    );
    let err = apply_err(&agent, &bad);
    assert!(err.contains("spec.containers[0].ports[0].hostPort: Invalid value: 8080"), "{err}");
}

fn http_get(addr: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match std::net::TcpStream::connect(addr) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                return out;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("connect {addr}: {last}");
}

#[test]
fn the_nodes_policy_flags_refuse_privileged_default_to_runtime_default_and_allow_unsafe_sysctls() {
    let (_r, image) = busybox();
    let agent = Agent::start_with(&[
        "--allow-privileged=false",
        "--seccomp-default",
        "--allowed-unsafe-sysctls",
        "net.core.somaxconn,kernel.msg*",
    ]);
    agent.apply(&pod("privileged", &image, "true", "", "    securityContext:\n      privileged: true\n"));
    let p = agent.wait_pod("privileged", "Failed", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "Forbidden", "{}", p["status"]);
    assert!(p["status"]["message"].as_str().unwrap_or_default().contains("--allow-privileged=false"));
    agent.apply(&pod("plain", &image, STATUS, "", ""));
    let log = output(&agent, "plain");
    assert_eq!(fields(&log)["Seccomp"], "2", "--seccomp-default: RuntimeDefault for a pod that names none: {log}");
    let sysctls = "  securityContext:\n    sysctls:\n    - name: net.core.somaxconn\n      value: \"1234\"\n    - name: kernel.msgmax\n      value: \"9000\"\n";
    agent.apply(&pod("unsafe", &image, "cat /proc/sys/net/core/somaxconn /proc/sys/kernel/msgmax", sysctls, ""));
    assert_eq!(output(&agent, "unsafe"), "1234\n9000\n");
    // a node-wide sysctl stays refused whatever the flag
    let node_wide = "  securityContext:\n    sysctls:\n    - name: vm.swappiness\n      value: \"1\"\n";
    agent.apply(&pod("node-wide", &image, "true", node_wide, ""));
    let p = agent.wait_pod("node-wide", "Failed", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "SysctlForbidden", "{}", p["status"]);
}

#[test]
fn a_restricted_deployment_applies_and_serves() {
    let (_r, image) = busybox();
    let apps = Apps::push(&["http_hello"]);
    let agent = Agent::start();
    // the Pod Security Standards' "restricted" profile, as charts write it
    let restricted_pod = "      securityContext:\n        runAsNonRoot: true\n        runAsUser: 1000\n        seccompProfile:\n          type: RuntimeDefault\n";
    let restricted_container = "        securityContext:\n          allowPrivilegeEscalation: false\n          readOnlyRootFilesystem: true\n          capabilities:\n            drop: [ALL]\n";
    let deployment = |name: &str, image: &str, extra: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      terminationGracePeriodSeconds: 0\n{restricted_pod}      containers:\n      - name: app\n        image: {image}\n{restricted_container}{extra}"
        )
    };
    let web = "        command: [\"sh\", \"-c\", \"grep Seccomp: /proc/self/status; exec httpd -f -p 8080 -h /www\"]\n        ports:\n        - containerPort: 8080\n        volumeMounts:\n        - name: www\n          mountPath: /www\n      volumes:\n      - name: www\n        configMap:\n          name: www\n";
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: www\ndata:\n  index.html: restricted-and-serving\n---\n{}---\n{}",
        deployment("web", &image, web),
        deployment("wasm", &apps.image("http_hello", "p2"), "        ports:\n        - containerPort: 8080\n")
    );
    agent.apply(&manifest);
    let running = |app: &str| {
        let name = app.to_string();
        crate::common::wait_until(Duration::from_secs(60), "a running replica", || {
            agent
                .pods()
                .iter()
                .any(|p| p["metadata"]["labels"]["app"] == name.as_str() && container_state(p, "app").0 == "running")
        });
        agent.pods().into_iter().find(|p| p["metadata"]["labels"]["app"] == name.as_str()).unwrap()
    };
    let p = running("web");
    let ip = p["status"]["podIP"].as_str().expect("a pod IP").to_string();
    let reply = http_get(&format!("{ip}:8080"));
    assert!(reply.contains("restricted-and-serving"), "{reply}");
    let name = p["metadata"]["name"].as_str().unwrap().to_string();
    assert!(agent.ok(&["logs", &name]).contains("Seccomp:\t2"));
    running("wasm");
}

#[test]
fn wasm_guests_accept_what_takes_away_and_refuse_what_grants() {
    let apps = Apps::push(&["hello"]);
    let agent = Agent::start();
    let image = apps.image("hello", "v1");
    let with = |name: &str, sc: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  securityContext:\n    runAsNonRoot: true\n    runAsUser: 1000\n    fsGroup: 2000\n    seccompProfile:\n      type: RuntimeDefault\n  containers:\n  - name: app\n    image: {image}\n    securityContext:\n{sc}"
        )
    };
    let restricted = "      allowPrivilegeEscalation: false\n      readOnlyRootFilesystem: true\n      capabilities:\n        drop: [ALL]\n";
    agent.apply(&with("restricted", restricted));
    let p = agent.wait_pod("restricted", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(phase(&p), "Succeeded");
    agent.apply(&with("privileged", "      privileged: true\n"));
    agent.apply(&with("adds", "      capabilities:\n        add: [NET_ADMIN]\n"));
    for (name, what) in [("privileged", "cannot hold host privileges"), ("adds", "NET_ADMIN")] {
        let p = agent.wait_pod(name, "a config error", |p| {
            container_state(p, "app").1["reason"] == "CreateContainerConfigError"
        });
        let message = container_state(&p, "app").1["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(what), "{name}: {message}");
    }
}

#[test]
fn a_pod_without_host_users_has_its_own_ids_and_cannot_touch_root_files() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    // a root-owned file only root may read, shared to both pods as a hostPath
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "host-only\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(host.path().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = "cat /proc/self/uid_map; echo uid=$(id -u); touch /data/made; echo made=$?; \
                  echo x > /etc/probe && echo etc=writable; cat /host/secret 2>&1; echo read=$?; \
                  grep -c ' /proc/keys ' /proc/mounts; true";
    let volumes = format!(
        "  volumes:\n  - name: data\n    emptyDir: {{}}\n  - name: host\n    hostPath:\n      path: {}\n",
        host.path().display()
    );
    let mounts =
        "    volumeMounts:\n    - name: data\n      mountPath: /data\n    - name: host\n      mountPath: /host\n";
    agent.apply(&pod("own-ids", &image, script, &format!("  hostUsers: false\n{volumes}"), mounts));
    agent.apply(&pod("host-ids", &image, script, &volumes, mounts));
    let unmasked = format!("{mounts}    securityContext:\n      procMount: Unmasked\n");
    agent.apply(&pod("unmasked", &image, script, &format!("  hostUsers: false\n{volumes}"), &unmasked));

    let log = output(&agent, "own-ids");
    let map: Vec<u64> = log.lines().next().unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(map[0], 0, "{log}");
    assert!(map[1] >= 65_536 && map[1].is_multiple_of(65_536) && map[2] == 65_536, "a range of its own: {log}");
    let f = fields(&log);
    assert_eq!((f["uid"].as_str(), f["made"].as_str()), ("0", "0"), "root inside writes its emptyDir: {log}");
    assert_eq!(f.get("etc").map(String::as_str), Some("writable"), "and its own rootfs: {log}");
    assert!(log.contains("Permission denied") && f["read"] != "0", "but not a root-owned host file: {log}");
    assert_eq!(log.lines().last(), Some("1"), "/proc (its keys, say) is masked by default: {log}");
    // on the host, what it made belongs to the pod's range, not to root
    let uid = agent.pod("own-ids")["metadata"]["uid"].as_str().unwrap().to_string();
    let made = agent.state_dir().join("pods").join(&uid).join("volumes/data/made");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&made).unwrap().uid() as u64, map[1], "{}", made.display());

    let log = output(&agent, "host-ids");
    assert!(log.starts_with("         0          0 4294967295"), "{log}");
    assert!(log.contains("host-only"), "root without a user namespace reads the same file: {log}");

    let log = output(&agent, "unmasked");
    assert_eq!(log.lines().last(), Some("0"), "procMount: Unmasked leaves /proc unmasked: {log}");

    // deleting the pods leaves no mounts behind (idmapped layers, rootfs)
    for name in ["own-ids", "unmasked"] {
        agent.ok(&["delete", "pod", name]);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&uid), "mounts of the pod left behind");
    assert!(!mounts.contains(agent.state_dir().to_str().unwrap()) || !mounts.contains("/lower/"));

    let bad = format!("{volumes}  hostUsers: false\n  hostNetwork: true\n");
    let err = apply_err(&agent, &pod("bad", &image, "true", &bad, ""));
    assert!(err.contains("spec.hostUsers: Forbidden: when `hostNetwork` is set"), "{err}");
}
