//! Which pod fields this node honours. One table serves validation (a field that is
//! not listed, or listed as rejected, fails `apply` with its path) and
//! `wasmlet explain-support`, so the two cannot drift apart.

/// What wasmlet does with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Implemented with the kubelet's semantics (the note says where it differs).
    Honoured(&'static str),
    /// Accepted and without effect on a single node, as on the kubelet (scheduling
    /// hints the scheduler has already used, say).
    NoEffect(&'static str),
    /// Refused at `apply`: it would change behaviour and wasmlet does not do it.
    Rejected(&'static str),
}

use Support::{Honoured, NoEffect, Rejected};

/// Every field of the pod spec a manifest may set, by path (`[]` marks a list).
pub const FIELDS: &[(&str, Support)] = &[
    ("spec.containers", Honoured("Wasm modules/components (wasmtime) and Linux images (runc), by image kind")),
    ("spec.initContainers", Honoured("in order, each to completion; `restartPolicy: Always` makes a sidecar")),
    ("spec.volumes", Honoured("see spec.volumes[] below")),
    ("spec.restartPolicy", Honoured("Always, OnFailure, Never; back-off 10 s doubling to 300 s")),
    ("spec.terminationGracePeriodSeconds", Honoured("default 30; preStop time is taken from it")),
    ("spec.activeDeadlineSeconds", Honoured("the pod is killed and Failed with reason DeadlineExceeded")),
    ("spec.hostname", Honoured("the container hostname (Linux)")),
    ("spec.securityContext", Honoured("see spec.securityContext below")),
    ("spec.serviceAccountName", Honoured("for the downward API only; no tokens are mounted in local mode")),
    ("spec.serviceAccount", Honoured("deprecated alias of serviceAccountName")),
    ("spec.automountServiceAccountToken", NoEffect("local mode has no API server to issue tokens")),
    ("spec.enableServiceLinks", NoEffect("local mode has no Services to link")),
    (
        "spec.dnsPolicy",
        NoEffect("no cluster DNS in local mode: pods get the host's resolver, as the kubelet does without clusterDNS"),
    ),
    ("spec.nodeName", NoEffect("every pod runs on this node")),
    ("spec.nodeSelector", NoEffect("scheduling: this node runs what it is given")),
    ("spec.affinity", NoEffect("scheduling")),
    ("spec.tolerations", NoEffect("scheduling")),
    ("spec.topologySpreadConstraints", NoEffect("scheduling")),
    ("spec.schedulerName", NoEffect("scheduling")),
    ("spec.schedulingGates", NoEffect("scheduling")),
    ("spec.priority", NoEffect("scheduling and preemption")),
    ("spec.priorityClassName", NoEffect("scheduling and preemption")),
    ("spec.preemptionPolicy", NoEffect("scheduling and preemption")),
    (
        "spec.imagePullSecrets",
        Honoured("dockerconfigjson and dockercfg Secrets; each credential goes only to the registry it names"),
    ),
    ("spec.ephemeralContainers", Rejected("ephemeral containers are not supported by wasmlet yet")),
    (
        "spec.hostNetwork",
        Honoured(
            "Linux: the host's network and UTS namespaces, /etc/hosts and resolv.conf; the pod IP is the node's and \
             hostPort equals containerPort. Wasm: a server listens on the node's addresses at containerPort",
        ),
    ),
    ("spec.hostPID", Honoured("Linux: the host's PID namespace; no effect on Wasm guests, which see no processes")),
    ("spec.hostIPC", Honoured("Linux: the host's IPC namespace; no effect on Wasm guests, which have no IPC")),
    (
        "spec.hostUsers",
        Honoured(
            "Linux: false gives the pod a user namespace of its own (65,536 host ids; idmapped image layers; its \
             volumes owned by its root); hostPath files stay the host's. No effect on Wasm guests, which have no uids",
        ),
    ),
    ("spec.hostAliases", Rejected("hostAliases are not supported by wasmlet yet")),
    ("spec.dnsConfig", Rejected("dnsConfig is not supported by wasmlet yet")),
    ("spec.readinessGates", Rejected("readiness gates need a controller; not supported")),
    (
        "spec.runtimeClassName",
        Honoured("only `wasmlet` (docs/cluster.md has the RuntimeClass); the image kind picks Wasm or Linux"),
    ),
    ("spec.shareProcessNamespace", Rejected("not supported by wasmlet yet")),
    ("spec.setHostnameAsFQDN", Rejected("not supported by wasmlet yet")),
    ("spec.subdomain", Rejected("not supported by wasmlet yet")),
    ("spec.os", Rejected("not supported by wasmlet yet")),
    ("spec.overhead", Rejected("not supported by wasmlet yet")),
    ("spec.resources", Rejected("pod-level resources are not supported by wasmlet yet")),
    ("spec.resourceClaims", Rejected("dynamic resource allocation is not supported")),
    ("spec.securityContext.runAsUser", Honoured("Linux; the containers' default")),
    ("spec.securityContext.runAsGroup", Honoured("Linux; the containers' default")),
    ("spec.securityContext.runAsNonRoot", Honoured("a container that would run as uid 0 is not started")),
    (
        "spec.securityContext.fsGroup",
        Honoured(
            "emptyDir, configMap, secret, downwardAPI and projected volumes are made group-owned (setgid directories, \
             group rw) and Linux containers get the group; Wasm guests have no groups",
        ),
    ),
    ("spec.securityContext.fsGroupChangePolicy", Honoured("Always (default) or OnRootMismatch")),
    ("spec.securityContext.supplementalGroups", Honoured("Linux: extra groups of every container process")),
    (
        "spec.securityContext.supplementalGroupsPolicy",
        Honoured("Linux: Merge (default) adds the image's /etc/group memberships; Strict does not"),
    ),
    (
        "spec.securityContext.sysctls",
        Honoured(
            "Linux: the kubelet's safe set; other namespaced ones with --allowed-unsafe-sysctls (the pod fails \
             SysctlForbidden otherwise); no effect on Wasm guests, which have no kernel",
        ),
    ),
    (
        "spec.securityContext.seccompProfile",
        Honoured(
            "Linux: RuntimeDefault (a moby-equivalent filter), Localhost (under --seccomp-profile-root), Unconfined \
             (default unless --seccomp-default). Wasm: accepted, a guest makes no syscalls",
        ),
    ),
    (
        "spec.securityContext.seLinuxOptions",
        NoEffect("containers are not labelled; refused at admission on a host where SELinux is enabled"),
    ),
    (
        "spec.securityContext.seLinuxChangePolicy",
        NoEffect("containers are not labelled; refused at admission on a host where SELinux is enabled"),
    ),
    (
        "spec.securityContext.appArmorProfile",
        Honoured(
            "Linux: Localhost names a loaded profile (refused when the host has no AppArmor, as the kubelet does); \
             RuntimeDefault and Unconfined run with no profile. Wasm: Unconfined/RuntimeDefault accepted",
        ),
    ),
    ("spec.containers[].name", Honoured("")),
    ("spec.containers[].image", Honoured("Wasm artifacts and Linux images from OCI registries")),
    ("spec.containers[].imagePullPolicy", Honoured("Always, IfNotPresent, Never; defaulted from the tag")),
    ("spec.containers[].command", Honoured("with `$(VAR)` expansion")),
    ("spec.containers[].args", Honoured("with `$(VAR)` expansion")),
    ("spec.containers[].workingDir", Honoured("Linux")),
    ("spec.containers[].env", Honoured("value, configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef")),
    ("spec.containers[].envFrom", Honoured("configMapRef and secretRef, with prefix and optional")),
    (
        "spec.containers[].ports",
        Honoured("hostPort is published for Linux pods; a Wasm HTTP component serves on containerPort and hostPort"),
    ),
    ("spec.containers[].resources", Honoured("memory limit for both runtimes; CPU limit and request for Linux")),
    ("spec.containers[].volumeMounts", Honoured("readOnly and subPath; Wasm mounts are preopened directories")),
    ("spec.containers[].livenessProbe", Honoured("exec (Linux), httpGet, tcpSocket, grpc")),
    ("spec.containers[].readinessProbe", Honoured("exec (Linux), httpGet, tcpSocket, grpc")),
    ("spec.containers[].startupProbe", Honoured("exec (Linux), httpGet, tcpSocket, grpc")),
    ("spec.containers[].lifecycle", Honoured("postStart and preStop: exec (Linux), httpGet, sleep")),
    ("spec.containers[].terminationMessagePath", Honoured("a file the container may write; read at exit")),
    ("spec.containers[].terminationMessagePolicy", Honoured("File and FallbackToLogsOnError")),
    ("spec.containers[].restartPolicy", Honoured("only `Always`, on init containers (sidecars)")),
    ("spec.containers[].securityContext", Honoured("see below")),
    ("spec.containers[].securityContext.runAsUser", Honoured("Linux; Wasm guests have no uid (no effect)")),
    ("spec.containers[].securityContext.runAsGroup", Honoured("Linux; Wasm guests have no gid (no effect)")),
    ("spec.containers[].securityContext.runAsNonRoot", Honoured("a container that would run as uid 0 is not started")),
    (
        "spec.containers[].securityContext.readOnlyRootFilesystem",
        Honoured("Linux; a Wasm guest has no root filesystem to write (no effect)"),
    ),
    (
        "spec.containers[].securityContext.allowPrivilegeEscalation",
        Honoured("Linux: no_new_privs unless true (false is the default here); Wasm: no effect"),
    ),
    (
        "spec.containers[].securityContext.privileged",
        Honoured(
            "Linux: every capability, no seccomp, no masked paths, writable /sys, the host's devices; refused \
             with --allow-privileged=false. Wasm: refused (a guest cannot hold host privileges)",
        ),
    ),
    (
        "spec.containers[].securityContext.capabilities",
        Honoured(
            "Linux: add/drop (ALL too) over containerd's default set; a non-root process holds only what is added. \
             Wasm: drop accepted, add refused",
        ),
    ),
    ("spec.containers[].securityContext.seccompProfile", Honoured("as the pod's, and wins over it")),
    (
        "spec.containers[].securityContext.seLinuxOptions",
        NoEffect("containers are not labelled; refused at admission on a host where SELinux is enabled"),
    ),
    ("spec.containers[].securityContext.appArmorProfile", Honoured("as the pod's, and wins over it")),
    (
        "spec.containers[].securityContext.procMount",
        Honoured(
            "Default: /proc masked as the kubelet's runtimes mask it; Unmasked (with hostUsers: false) unmasks it",
        ),
    ),
    ("spec.containers[].stdin", Rejected("attach is not supported by wasmlet yet")),
    ("spec.containers[].stdinOnce", Rejected("attach is not supported by wasmlet yet")),
    ("spec.containers[].tty", Rejected("attach is not supported by wasmlet yet")),
    ("spec.containers[].resizePolicy", Rejected("in-place resize is not supported by wasmlet yet")),
    ("spec.containers[].volumeDevices", Rejected("block devices are not supported")),
    ("spec.volumes[].emptyDir", Honoured("node disk, or tmpfs for `medium: Memory` (size = sizeLimit)")),
    ("spec.volumes[].hostPath", Honoured("with the type checks")),
    ("spec.volumes[].configMap", Honoured("items, defaultMode, optional; updated in place (atomic ..data swap)")),
    ("spec.volumes[].secret", Honoured("as configMap, on tmpfs")),
    ("spec.volumes[].downwardAPI", Honoured("metadata fields and resourceFieldRef")),
    (
        "spec.volumes[].projected",
        Honoured("configMap, secret and downwardAPI sources; serviceAccountToken in cluster mode (TokenRequest)"),
    ),
    ("Deployment.spec.replicas", Honoured("default 1")),
    ("Deployment.spec.selector", Honoured("must match the template's labels")),
    ("Deployment.spec.template", Honoured("as a pod; a change rolls the pods out")),
    ("Deployment.spec.strategy", Honoured("RollingUpdate (maxSurge, maxUnavailable; 25% each) or Recreate")),
    ("Deployment.spec.minReadySeconds", Honoured("a pod counts as available after this long ready")),
    ("Deployment.spec.progressDeadlineSeconds", Honoured("Progressing turns False with ProgressDeadlineExceeded")),
    ("Deployment.spec.revisionHistoryLimit", NoEffect("no ReplicaSets are kept: the pods belong to the Deployment")),
    ("Deployment.spec.paused", Rejected("pausing rollouts is not supported by wasmlet yet")),
    ("Job.spec.completions", Honoured("unset with parallelism set: a work queue")),
    ("Job.spec.parallelism", Honoured("default 1")),
    ("Job.spec.backoffLimit", Honoured("default 6; failed pods and (OnFailure) container restarts count")),
    ("Job.spec.completionMode", Honoured("NonIndexed and Indexed (JOB_COMPLETION_INDEX)")),
    ("Job.spec.activeDeadlineSeconds", Honoured("the Job fails with DeadlineExceeded")),
    ("Job.spec.ttlSecondsAfterFinished", Honoured("the Job and its pods are deleted that long after it ends")),
    ("Job.spec.suspend", Honoured("no pods run while suspended; active ones are deleted")),
    ("Job.spec.podReplacementPolicy", Honoured("TerminatingOrFailed only")),
    ("Job.spec.template", Honoured("as a pod; restartPolicy OnFailure or Never")),
    ("Job.spec.manualSelector", Rejected("wasmlet generates the Job's selector")),
    ("Job.spec.selector", Rejected("wasmlet generates the Job's selector")),
    ("Job.spec.podFailurePolicy", Rejected("not supported by wasmlet yet")),
    ("Job.spec.successPolicy", Rejected("not supported by wasmlet yet")),
    ("Job.spec.backoffLimitPerIndex", Rejected("not supported by wasmlet yet")),
    ("Job.spec.maxFailedIndexes", Rejected("not supported by wasmlet yet")),
    ("Job.spec.managedBy", Rejected("only the built-in Job controller")),
];

/// How a field is treated; `None` for a field that is not listed (so refused).
pub fn lookup(path: &str) -> Option<Support> {
    FIELDS.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// The table, for `wasmlet explain-support`.
pub fn render() -> String {
    let mut out = String::from("FIELD                                                         SUPPORT     NOTE\n");
    for (path, s) in FIELDS {
        let (what, note) = match s {
            Honoured(n) => ("honoured", *n),
            NoEffect(n) => ("no effect", *n),
            Rejected(n) => ("rejected", *n),
        };
        out.push_str(&format!("{path:<62}{what:<12}{note}\n"));
    }
    out.push_str(
        "\nInit containers take the fields of spec.containers[]. Deployment and Job templates take the pod fields.\n\
         Any field not listed is rejected.\n",
    );
    out
}
