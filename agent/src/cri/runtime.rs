//! CRI's `RuntimeService`: sandboxes and containers over [`wasmlet_runtime::Runtimes`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};
use wasmlet_runtime::{Capabilities, Mount, RuntimeKind, SandboxConfig, Seccomp, ServePort};

use super::{ContainerRecord, Cri, Phase, SandboxRecord, Service, lock, new_id, now_ns, status, store_status};

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> Reply<T> {
    Ok(Response::new(t))
}

/// Which runtimes a handler lets run, or why it is unknown.
fn handler_allows(handler: &str, kind: RuntimeKind) -> Result<bool, Status> {
    match handler {
        "" | "wasmlet" => Ok(true),
        "wasm" => Ok(kind == RuntimeKind::Wasm),
        "runc" => Ok(kind == RuntimeKind::Linux),
        other => Err(Status::invalid_argument(format!(
            "runtime handler {other:?} is not known here; this runtime has \"\" (by image kind), {:?}",
            super::HANDLERS
        ))),
    }
}

fn mode(o: Option<&v1::NamespaceOption>, f: impl Fn(&v1::NamespaceOption) -> i32) -> v1::NamespaceMode {
    o.map(f).and_then(|m| v1::NamespaceMode::try_from(m).ok()).unwrap_or(v1::NamespaceMode::Pod)
}

impl Cri {
    /// The runtime's sandbox for a CRI sandbox config.
    fn sandbox_config(id: &str, c: &v1::PodSandboxConfig) -> SandboxConfig {
        let meta = c.metadata.clone().unwrap_or_default();
        let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
        let ns = sc.and_then(|s| s.namespace_options.as_ref());
        let user_ns = ns
            .and_then(|n| n.userns_options.as_ref())
            .filter(|u| u.mode == v1::NamespaceMode::Pod as i32)
            .and_then(|u| u.uids.first())
            .map(|m| wasmlet_runtime::IdMap { host_id: m.host_id, size: m.length });
        SandboxConfig {
            id: id.to_string(),
            namespace: meta.namespace,
            name: meta.name.clone(),
            hostname: if c.hostname.is_empty() { meta.name } else { c.hostname.clone() },
            ports: c
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .filter_map(|p| {
                    Some(wasmlet_runtime::PortMapping {
                        host_port: u16::try_from(p.host_port).ok()?,
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: if p.protocol == v1::Protocol::Udp as i32 { "udp" } else { "tcp" }.into(),
                        host_ip: Some(p.host_ip.clone()).filter(|h| !h.is_empty()),
                    })
                })
                .collect(),
            host_network: mode(ns, |n| n.network) == v1::NamespaceMode::Node,
            host_pid: mode(ns, |n| n.pid) == v1::NamespaceMode::Node,
            host_ipc: mode(ns, |n| n.ipc) == v1::NamespaceMode::Node,
            user_ns,
            sysctls: c.linux.as_ref().map(|l| l.sysctls.clone().into_iter().collect()).unwrap_or_default(),
        }
    }

    /// Finds a pulled image by what a CreateContainer names: a reference, an image id
    /// (the config digest, with or without `sha256:`) or `repo@digest`.
    pub(super) fn find_image(&self, name: &str) -> Option<Arc<crate::image::ImageRecord>> {
        if let Ok(r) = name.parse::<registry_client::Reference>()
            && let Ok(Some(found)) = self.mgr.images().get(&r)
        {
            return Some(found);
        }
        let bare = name.strip_prefix("sha256:").unwrap_or(name);
        let all = self.mgr.images().list().ok()?;
        let hit = all.into_iter().find(|r| {
            let id = r.image.manifest.config.digest.to_string();
            id == name
                || (bare.len() >= 12 && id.strip_prefix("sha256:").is_some_and(|h| h.starts_with(bare)))
                || r.digest.to_string() == name
                || r.image_id() == name
        })?;
        self.mgr.images().get(&hit.reference.parse().ok()?).ok().flatten()
    }

    /// The runtime's container for a CRI container config in sandbox `sb`.
    fn container_config(
        &self,
        id: &str,
        sb: &SandboxRecord,
        c: &v1::ContainerConfig,
        image: &crate::image::ImageRecord,
    ) -> Result<(RuntimeKind, wasmlet_runtime::ContainerConfig), Status> {
        let name = c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let (kind, artifact) = image.artifact().map_err(Status::failed_precondition)?;
        if !handler_allows(&sb.handler, kind)? {
            return Err(Status::invalid_argument(format!(
                "image {} ({}) is a {} image; the sandbox's runtime handler {:?} does not run it",
                image.reference,
                image.digest,
                image.kind_name(),
                sb.handler
            )));
        }
        if c.stdin || c.tty {
            return Err(Status::invalid_argument(format!(
                "container {name:?}: stdin and tty are not supported (a container's output goes to its log only)"
            )));
        }
        let cfg = image.image.config.config.clone().unwrap_or_default();
        // CRI's rule, as containerd's: a command replaces the ENTRYPOINT and, with no
        // args, drops the CMD; args replace the CMD
        let (entry, args) = if c.command.is_empty() {
            let args = if c.args.is_empty() { cfg.cmd.clone().unwrap_or_default() } else { c.args.clone() };
            (cfg.entrypoint.clone().unwrap_or_default(), args)
        } else {
            (c.command.clone(), c.args.clone())
        };
        let mut argv = match kind {
            // a Wasm artifact has no program path: argv[0] is the container's name
            RuntimeKind::Wasm if entry.is_empty() => vec![name.clone()],
            _ => entry,
        };
        argv.extend(args);
        if kind == RuntimeKind::Linux && argv.is_empty() {
            return Err(Status::invalid_argument(format!(
                "container {name:?}: no command specified: image {} has no ENTRYPOINT or CMD",
                image.reference
            )));
        }
        let mut env: Vec<(String, String)> =
            cfg.env.iter().flatten().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        for kv in &c.envs {
            env.retain(|(k, _)| *k != kv.key);
            env.push((kv.key.clone(), kv.value.clone()));
        }
        let mounts = c
            .mounts
            .iter()
            .map(|m| {
                if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
                    return Err(Status::invalid_argument(format!(
                        "container {name:?}: image volume at {}: not supported yet",
                        m.container_path
                    )));
                }
                Ok(Mount {
                    host_path: m.host_path.clone().into(),
                    container_path: m.container_path.clone(),
                    read_only: m.readonly,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = match kind {
            RuntimeKind::Wasm => self.file_mounts_as_dirs(id, mounts)?,
            RuntimeKind::Linux => mounts,
        };
        let linux = c.linux.clone().unwrap_or_default();
        let res = linux.resources.unwrap_or_default();
        let sc = linux.security_context.unwrap_or_default();
        let caps = sc.capabilities.clone().unwrap_or_default();
        if kind == RuntimeKind::Wasm && (sc.privileged || !caps.add_capabilities.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "container {name:?}: a Wasm guest cannot be privileged or hold capabilities; run it as a Linux image"
            )));
        }
        let profile = |p: &Option<v1::SecurityProfile>| {
            p.as_ref()
                .map(|p| (v1::security_profile::ProfileType::try_from(p.profile_type).ok(), p.localhost_ref.clone()))
        };
        use v1::security_profile::ProfileType;
        // kubelets before 1.22 name profiles in the string fields alone
        #[allow(deprecated)]
        let (seccomp_path, apparmor_name) = (sc.seccomp_profile_path.clone(), sc.apparmor_profile.clone());
        let seccomp = match (profile(&sc.seccomp), seccomp_path.as_str()) {
            (Some((Some(ProfileType::RuntimeDefault), _)), _) => Seccomp::RuntimeDefault,
            (Some((Some(ProfileType::Localhost), path)), _) => Seccomp::Localhost(path.into()),
            (None, "runtime/default" | "docker/default") => Seccomp::RuntimeDefault,
            (None, p) if p.starts_with("localhost/") => Seccomp::Localhost(p["localhost/".len()..].into()),
            _ => Seccomp::Unconfined,
        };
        let apparmor = match (profile(&sc.apparmor), apparmor_name.as_str()) {
            (Some((Some(ProfileType::Localhost), name)), _) => Some(name),
            (None, p) if p.starts_with("localhost/") => Some(p["localhost/".len()..].to_string()),
            _ => None,
        };
        let user = match (&sc.run_as_user, &sc.run_as_group, sc.run_as_username.as_str()) {
            (Some(u), Some(g), _) => Some(format!("{}:{}", u.value, g.value)),
            (Some(u), None, _) => Some(u.value.to_string()),
            (None, _, name) if !name.is_empty() => Some(name.to_string()),
            _ => cfg.user.clone().filter(|u| !u.is_empty()),
        };
        let log_dir = &sb.config.log_directory;
        let log_path = if log_dir.is_empty() || c.log_path.is_empty() {
            self.dir.join("logs").join(format!("{id}.log"))
        } else {
            std::path::Path::new(log_dir).join(&c.log_path)
        };
        let annotations: std::collections::BTreeMap<String, String> =
            sb.config.annotations.clone().into_iter().collect();
        let http = crate::spec::annotations::http_options(Some(&annotations))
            .map_err(|e| Status::invalid_argument(format!("sandbox annotations: {e}")))?;
        let positive = |n: i64| u64::try_from(n).ok().filter(|&n| n > 0);
        Ok((
            kind,
            wasmlet_runtime::ContainerConfig {
                id: id.to_string(),
                sandbox_id: sb.id.clone(),
                name: name.clone(),
                artifact,
                args: argv,
                env,
                mounts,
                memory_limit: positive(res.memory_limit_in_bytes),
                log_path,
                log: self.mgr.policy().log,
                working_dir: Some(c.working_dir.clone())
                    .filter(|w| !w.is_empty())
                    .or_else(|| cfg.working_dir.clone())
                    .filter(|w| !w.is_empty()),
                user,
                stop_signal: cfg.stop_signal.clone(),
                cpu_limit_millis: positive(res.cpu_quota)
                    .zip(positive(res.cpu_period))
                    .map(|(q, p)| (q * 1000).div_ceil(p)),
                cpu_request_millis: positive(res.cpu_shares).map(|s| s * 1000 / 1024),
                read_only_rootfs: sc.readonly_rootfs,
                allow_privilege_escalation: !sc.no_new_privs,
                run_as_non_root: false,
                seccomp,
                capabilities: Capabilities { add: caps.add_capabilities, drop: caps.drop_capabilities },
                privileged: sc.privileged,
                supplemental_groups: sc.supplemental_groups.iter().filter_map(|g| u32::try_from(*g).ok()).collect(),
                image_groups: sc.supplemental_groups_policy != v1::SupplementalGroupsPolicy::Strict as i32,
                proc_unmasked: false,
                apparmor_profile: apparmor,
                ports: serve_ports(&sb.config, c),
                http,
                netns: if kind == RuntimeKind::Wasm { sb.netns.clone() } else { None },
            },
        ))
    }

    /// A Wasm guest's mounts are WASI preopens, which are directories; the kubelet also
    /// mounts single files (`/etc/hosts`, `/dev/termination-log`, a ConfigMap key by
    /// `subPath`). Each directory that such files go into becomes a directory of this
    /// container's own (`STATE/cri/files/<id>/…`) holding a hard link to each file (so a
    /// guest's write to `/dev/termination-log` is the kubelet's file), or a copy where
    /// the file is on another filesystem, mounted read-only unless a file is writable.
    fn file_mounts_as_dirs(&self, id: &str, mounts: Vec<Mount>) -> Result<Vec<Mount>, Status> {
        let (files, mut out): (Vec<Mount>, Vec<Mount>) = mounts.into_iter().partition(|m| m.host_path.is_file());
        let mut dirs: std::collections::BTreeMap<String, (std::path::PathBuf, bool)> = Default::default();
        for f in files {
            let (parent, name) = match f.container_path.trim_end_matches('/').rsplit_once('/') {
                Some(("", name)) => ("/".to_string(), name.to_string()),
                Some((parent, name)) => (parent.to_string(), name.to_string()),
                None => {
                    return Err(Status::invalid_argument(format!("mount path {:?} is not absolute", f.container_path)));
                }
            };
            if out.iter().any(|m| m.container_path.trim_end_matches('/') == parent) {
                return Err(Status::invalid_argument(format!(
                    "file {} is mounted into {parent}, which is a mounted directory already: a Wasm guest's mounts are directories",
                    f.container_path
                )));
            }
            let n = dirs.len();
            let (dir, writable) = dirs
                .entry(parent.clone())
                .or_insert_with(|| (self.dir.join("files").join(id).join(n.to_string()), false));
            let made = std::fs::create_dir_all(&*dir).and_then(|()| {
                let target = dir.join(&name);
                std::fs::hard_link(&f.host_path, &target).or_else(|_| std::fs::copy(&f.host_path, &target).map(|_| ()))
            });
            made.map_err(|e| {
                Status::internal(format!("file {} for {}: {e}", f.host_path.display(), f.container_path))
            })?;
            *writable |= !f.read_only;
        }
        out.extend(dirs.into_iter().map(|(container_path, (host_path, writable))| Mount {
            host_path,
            container_path,
            read_only: !writable,
        }));
        Ok(out)
    }

    /// The container's state now: the runtime's, recorded if it changed.
    async fn refresh(&self, rec: &mut ContainerRecord) {
        if let Ok(s) = self.mgr.runtimes().container_status(rec.kind, &rec.id).await {
            let phase = Phase::from_runtime(&s);
            if phase != rec.state {
                self.settle(&rec.id, &s).await;
                rec.state = phase;
            }
        }
    }

    fn container_status(rec: &ContainerRecord) -> v1::ContainerStatus {
        let (started_at, finished_at, exit_code, reason, message) = match &rec.state {
            Phase::Running { started_at } => (*started_at, 0, 0, String::new(), String::new()),
            Phase::Exited { started_at, finished_at, exit_code, reason, message } => {
                (*started_at, *finished_at, *exit_code, reason.clone(), message.clone())
            }
            Phase::Created | Phase::Unknown => (0, 0, 0, String::new(), String::new()),
        };
        v1::ContainerStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: rec.state.cri() as i32,
            created_at: rec.created_at,
            started_at,
            finished_at,
            exit_code,
            image: rec.config.image.clone(),
            image_ref: rec.repo_digest.clone(),
            image_id: rec.image_id.clone(),
            reason,
            message,
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            mounts: rec.config.mounts.clone(),
            log_path: rec.runtime.log_path.display().to_string(),
            resources: rec.resources.clone().map(|l| v1::ContainerResources { linux: Some(l), windows: None }),
            user: None,
        }
    }

    fn sandbox_status(sb: &SandboxRecord) -> v1::PodSandboxStatus {
        let ns = sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        v1::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: if sb.ready { v1::PodSandboxState::SandboxReady } else { v1::PodSandboxState::SandboxNotready }
                as i32,
            created_at: sb.created_at,
            network: Some(v1::PodSandboxNetworkStatus {
                ip: sb.ip.clone().unwrap_or_default(),
                additional_ips: vec![],
            }),
            linux: Some(v1::LinuxPodSandboxStatus { namespaces: Some(v1::Namespace { options: ns }) }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.handler.clone(),
        }
    }

    /// Stops every container of a sandbox at once, within `grace`.
    async fn stop_containers_of(&self, sandbox: &str, grace: Duration) {
        let ids: Vec<(RuntimeKind, String)> = lock(&self.containers)
            .values()
            .filter(|c| c.sandbox_id == sandbox)
            .map(|c| (c.kind, c.id.clone()))
            .collect();
        let stops = ids.iter().map(|(kind, id)| async move {
            let _ = self.mgr.runtimes().stop_container(*kind, id, grace).await;
            if let Ok(s) = self.mgr.runtimes().container_status(*kind, id).await {
                self.settle(id, &s).await;
            }
        });
        futures_util::future::join_all(stops).await;
    }

    async fn remove_container_now(&self, rec: &ContainerRecord) -> Result<(), Status> {
        let rt = self.mgr.runtimes();
        if matches!(rec.state, Phase::Running { .. }) {
            let _ = rt.stop_container(rec.kind, &rec.id, Duration::ZERO).await;
        }
        match rt.remove_container(rec.kind, &rec.id).await {
            Ok(()) | Err(wasmlet_runtime::Error::NotFound(_)) | Err(wasmlet_runtime::Error::Unavailable { .. }) => {}
            Err(e) => return Err(status(e)),
        }
        self.mgr.store().remove(crate::store::Table::Cri, &format!("c/{}", rec.id)).map_err(store_status)?;
        if lock(&self.containers).remove(&rec.id).is_some() {
            self.mgr.release_image(&rec.image_ref);
        }
        lock(&self.cpu_samples).remove(&rec.id);
        let _ = std::fs::remove_dir_all(self.dir.join("files").join(&rec.id));
        Ok(())
    }

    fn stats_of(&self, rec: &ContainerRecord) -> v1::ContainerStats {
        let now = now_ns();
        let usage = match rec.state {
            Phase::Running { .. } => self.mgr.runtimes().container_stats(rec.kind, &rec.id),
            _ => None,
        };
        let attributes = Some(v1::ContainerAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        });
        let Some(u) = usage else {
            return v1::ContainerStats { attributes, ..Default::default() };
        };
        let nano_cores = {
            let mut samples = lock(&self.cpu_samples);
            let last = samples.insert(rec.id.clone(), (now, u.cpu_ns));
            last.and_then(|(t, cpu)| {
                let dt = u64::try_from(now - t).ok().filter(|&d| d > 0)?;
                Some(((u.cpu_ns.saturating_sub(cpu)) as u128 * 1_000_000_000 / dt as u128) as u64)
            })
        };
        let value = |v: u64| Some(v1::UInt64Value { value: v });
        v1::ContainerStats {
            attributes,
            cpu: Some(v1::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: value(u.cpu_ns),
                usage_nano_cores: nano_cores.and_then(value),
            }),
            memory: Some(v1::MemoryUsage {
                timestamp: now,
                working_set_bytes: value(u.memory_bytes),
                usage_bytes: value(u.memory_bytes),
                available_bytes: rec.runtime.memory_limit.map(|l| l.saturating_sub(u.memory_bytes)).and_then(value),
                rss_bytes: value(u.memory_bytes),
                page_faults: None,
                major_page_faults: None,
            }),
            writable_layer: None,
            swap: None,
        }
    }

    fn sandbox_stats(&self, sb: &SandboxRecord) -> v1::PodSandboxStats {
        let containers: Vec<ContainerRecord> =
            lock(&self.containers).values().filter(|c| c.sandbox_id == sb.id).cloned().collect();
        let stats: Vec<v1::ContainerStats> = containers.iter().map(|c| self.stats_of(c)).collect();
        let now = now_ns();
        let sum = |f: &dyn Fn(&v1::ContainerStats) -> Option<u64>| stats.iter().filter_map(f).sum::<u64>();
        let cpu = sum(&|s| s.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value));
        let cores = sum(&|s| s.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value));
        let mem = sum(&|s| s.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value));
        let value = |v: u64| Some(v1::UInt64Value { value: v });
        v1::PodSandboxStats {
            attributes: Some(v1::PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(v1::LinuxPodSandboxStats {
                cpu: Some(v1::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: value(cpu),
                    usage_nano_cores: value(cores),
                }),
                memory: Some(v1::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: value(mem),
                    usage_bytes: value(mem),
                    ..Default::default()
                }),
                network: None,
                process: None,
                containers: stats,
            }),
            windows: None,
        }
    }
}

/// The ports a Wasm HTTP component serves on. CRI gives a sandbox every container's
/// ports at once; the kubelet names each container's own in its
/// `io.kubernetes.container.ports` annotation (JSON), which is preferred, with the
/// sandbox's `hostPort` for each. Without it, every TCP port of the sandbox.
fn serve_ports(sb: &v1::PodSandboxConfig, c: &v1::ContainerConfig) -> Vec<ServePort> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Declared {
        container_port: i32,
        #[serde(default)]
        protocol: Option<String>,
    }
    let tcp: Vec<&v1::PortMapping> =
        sb.port_mappings.iter().filter(|p| p.protocol == v1::Protocol::Tcp as i32).collect();
    let host_port = |port: i32| {
        tcp.iter().find(|p| p.container_port == port).and_then(|p| u16::try_from(p.host_port).ok()).filter(|&h| h > 0)
    };
    let own: Option<Vec<Declared>> =
        c.annotations.get("io.kubernetes.container.ports").and_then(|j| serde_json::from_str(j).ok());
    match own {
        Some(declared) => declared
            .into_iter()
            .filter(|d| d.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|d| {
                Some(ServePort {
                    container_port: u16::try_from(d.container_port).ok()?,
                    host_port: host_port(d.container_port),
                })
            })
            .collect(),
        None => tcp
            .iter()
            .filter_map(|p| {
                Some(ServePort {
                    container_port: u16::try_from(p.container_port).ok()?,
                    host_port: host_port(p.container_port),
                })
            })
            .collect(),
    }
}

fn need<'a>(id: &'a str, what: &str) -> Result<&'a str, Status> {
    if id.is_empty() { Err(Status::invalid_argument(format!("{what} id is empty"))) } else { Ok(id) }
}

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(&self, _: Request<v1::VersionRequest>) -> Reply<v1::VersionResponse> {
        ok(v1::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "wasmlet".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, req: Request<v1::RunPodSandboxRequest>) -> Reply<v1::RunPodSandboxResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("sandbox config is missing"))?;
        let meta = config.metadata.clone().ok_or_else(|| Status::invalid_argument("sandbox metadata is missing"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() {
            return Err(Status::invalid_argument("sandbox metadata needs a name and a namespace"));
        }
        handler_allows(&req.runtime_handler, RuntimeKind::Wasm)?;
        // a sandbox of the same name and attempt is refused, as containerd does
        if let Some(same) = lock(&cri.sandboxes).values().find(|s| s.config.metadata.as_ref() == Some(&meta)) {
            return Err(Status::already_exists(format!(
                "sandbox {}/{} attempt {} exists already ({})",
                meta.namespace, meta.name, meta.attempt, same.id
            )));
        }
        let id = new_id();
        let runtime = Cri::sandbox_config(&id, &config);
        let linux = cri.mgr.runtimes().has(RuntimeKind::Linux) && req.runtime_handler != "wasm";
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            handler: req.runtime_handler,
            created_at: now_ns(),
            ready: true,
            network: linux,
            ip: None,
            netns: None,
        };
        // intent first: a crash between here and the network leaves a record that
        // RemovePodSandbox cleans up
        cri.save_sandbox(&rec).map_err(store_status)?;
        if linux {
            let rt = cri.mgr.runtimes();
            let made = rt.create_sandbox(RuntimeKind::Linux, &runtime).await;
            let made = match made {
                Ok(_) => rt.sandbox_status(RuntimeKind::Linux, &id).await,
                Err(e) => Err(e),
            };
            match made {
                Ok(s) => {
                    rec.ip = if runtime.host_network { Some(cri.mgr.node().ip.clone()) } else { s.ip };
                    rec.netns = s.netns;
                }
                Err(e) => {
                    let _ = rt.remove_sandbox(RuntimeKind::Linux, &id).await;
                    let _ = cri.mgr.store().remove(crate::store::Table::Cri, &format!("s/{id}"));
                    return Err(status(e));
                }
            }
        } else if runtime.host_network {
            rec.ip = Some(cri.mgr.node().ip.clone());
        }
        cri.save_sandbox(&rec).map_err(store_status)?;
        cri.mgr.store().flush().await.map_err(store_status)?;
        lock(&cri.sandboxes).insert(id.clone(), rec);
        ok(v1::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(&self, req: Request<v1::StopPodSandboxRequest>) -> Reply<v1::StopPodSandboxResponse> {
        let cri = &self.0;
        let id = need(&req.get_ref().pod_sandbox_id, "sandbox")?;
        let Some(mut sb) = cri.find_sandbox(id) else {
            return Err(Status::not_found(format!("sandbox {id} not found")));
        };
        cri.stop_containers_of(&sb.id, Duration::ZERO).await;
        if sb.network {
            cri.mgr.runtimes().remove_sandbox(RuntimeKind::Linux, &sb.id).await.map_err(status)?;
        }
        if sb.ready {
            sb.ready = false;
            cri.save_sandbox(&sb).map_err(store_status)?;
            cri.mgr.store().flush().await.map_err(store_status)?;
            lock(&cri.sandboxes).insert(sb.id.clone(), sb);
        }
        ok(v1::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<v1::RemovePodSandboxRequest>,
    ) -> Reply<v1::RemovePodSandboxResponse> {
        let cri = &self.0;
        let id = need(&req.get_ref().pod_sandbox_id, "sandbox")?;
        // removing what is gone already succeeds
        let Some(sb) = cri.find_sandbox(id) else { return ok(v1::RemovePodSandboxResponse {}) };
        let containers: Vec<ContainerRecord> =
            lock(&cri.containers).values().filter(|c| c.sandbox_id == sb.id).cloned().collect();
        for c in &containers {
            cri.remove_container_now(c).await?;
        }
        if sb.network {
            cri.mgr.runtimes().remove_sandbox(RuntimeKind::Linux, &sb.id).await.map_err(status)?;
        }
        cri.mgr.store().remove(crate::store::Table::Cri, &format!("s/{}", sb.id)).map_err(store_status)?;
        cri.mgr.store().flush().await.map_err(store_status)?;
        lock(&cri.sandboxes).remove(&sb.id);
        ok(v1::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<v1::PodSandboxStatusRequest>,
    ) -> Reply<v1::PodSandboxStatusResponse> {
        let cri = &self.0;
        let sb = cri.sandbox_named(&req.get_ref().pod_sandbox_id)?;
        let mut containers: Vec<ContainerRecord> =
            lock(&cri.containers).values().filter(|c| c.sandbox_id == sb.id).cloned().collect();
        for c in &mut containers {
            cri.refresh(c).await;
        }
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert("info".into(), serde_json::json!({"handler": sb.handler, "netns": sb.netns}).to_string());
        }
        ok(v1::PodSandboxStatusResponse {
            status: Some(Cri::sandbox_status(&sb)),
            info,
            containers_statuses: containers.iter().map(Cri::container_status).collect(),
            timestamp: now_ns(),
        })
    }

    async fn list_pod_sandbox(&self, req: Request<v1::ListPodSandboxRequest>) -> Reply<v1::ListPodSandboxResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let state = filter.state.map(|s| s.state);
        let items = self
            .0
            .sandboxes_where(&filter.id, state, &filter.label_selector)
            .iter()
            .map(|s| {
                let st = Cri::sandbox_status(s);
                v1::PodSandbox {
                    id: st.id,
                    metadata: st.metadata,
                    state: st.state,
                    created_at: st.created_at,
                    labels: st.labels,
                    annotations: st.annotations,
                    runtime_handler: st.runtime_handler,
                }
            })
            .collect();
        ok(v1::ListPodSandboxResponse { items })
    }

    async fn create_container(&self, req: Request<v1::CreateContainerRequest>) -> Reply<v1::CreateContainerResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let sb = cri.sandbox_named(&req.pod_sandbox_id)?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!("sandbox {} is not ready", sb.id)));
        }
        let config = req.config.ok_or_else(|| Status::invalid_argument("container config is missing"))?;
        let meta = config.metadata.clone().ok_or_else(|| Status::invalid_argument("container metadata is missing"))?;
        if meta.name.is_empty() {
            return Err(Status::invalid_argument("container metadata needs a name"));
        }
        if let Some(same) =
            lock(&cri.containers).values().find(|c| c.sandbox_id == sb.id && c.config.metadata.as_ref() == Some(&meta))
        {
            return Err(Status::already_exists(format!(
                "container {} attempt {} exists already in sandbox {} ({})",
                meta.name, meta.attempt, sb.id, same.id
            )));
        }
        let wanted = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let image = cri
            .find_image(&wanted)
            .ok_or_else(|| Status::not_found(format!("image {wanted:?} is not pulled (PullImage it first)")))?;
        let id = new_id();
        let (kind, runtime) = cri.container_config(&id, &sb, &config, &image).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(cri.dir.join("files").join(&id));
        })?;
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            kind,
            image_ref: image.reference.clone(),
            image_id: image.image.manifest.config.digest.to_string(),
            repo_digest: image.image_id(),
            created_at: now_ns(),
            state: Phase::Created,
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            runtime: runtime.clone(),
            config,
        };
        // intent first: a crash after runc's create leaves a container the record names
        cri.save_container(&rec);
        cri.mgr.hold_image(&rec.image_ref);
        lock(&cri.containers).insert(id.clone(), rec.clone());
        if let Err(e) = cri.mgr.runtimes().create_container(kind, runtime).await {
            let _ = cri.remove_container_now(&rec).await;
            return Err(status(e));
        }
        cri.mgr.store().flush().await.map_err(store_status)?;
        ok(v1::CreateContainerResponse { container_id: id })
    }

    async fn start_container(&self, req: Request<v1::StartContainerRequest>) -> Reply<v1::StartContainerResponse> {
        let cri = &self.0;
        let rec = cri.container_named(&req.get_ref().container_id)?;
        if rec.state != Phase::Created {
            return Err(Status::failed_precondition(format!(
                "container {} is {:?}, not created",
                rec.id,
                rec.state.cri().as_str_name()
            )));
        }
        let rt = cri.mgr.runtimes();
        if let Err(e) = rt.start_container(rec.kind, &rec.id).await {
            // a start that fails leaves the container exited with the reason, as containerd
            let now = now_ns();
            let failed = Phase::Exited {
                started_at: 0,
                finished_at: now,
                exit_code: 128,
                reason: "StartError".into(),
                message: e.to_string(),
            };
            if let Some(r) = lock(&cri.containers).get_mut(&rec.id) {
                r.state = failed;
                cri.save_container(r);
            }
            return Err(status(e));
        }
        if let Ok(s) = rt.container_status(rec.kind, &rec.id).await {
            cri.settle(&rec.id, &s).await;
        }
        cri.watch(rec.kind, rec.id.clone());
        ok(v1::StartContainerResponse {})
    }

    async fn stop_container(&self, req: Request<v1::StopContainerRequest>) -> Reply<v1::StopContainerResponse> {
        let cri = &self.0;
        let rec = cri.container_named(&req.get_ref().container_id)?;
        let grace = Duration::from_secs(u64::try_from(req.get_ref().timeout).unwrap_or(0));
        let rt = cri.mgr.runtimes();
        if matches!(rec.state, Phase::Running { .. }) {
            match rt.stop_container(rec.kind, &rec.id, grace).await {
                Ok(()) | Err(wasmlet_runtime::Error::NotRunning(_)) => {}
                Err(e) => return Err(status(e)),
            }
        }
        if let Ok(s) = rt.container_status(rec.kind, &rec.id).await {
            cri.settle(&rec.id, &s).await;
        }
        ok(v1::StopContainerResponse {})
    }

    async fn remove_container(&self, req: Request<v1::RemoveContainerRequest>) -> Reply<v1::RemoveContainerResponse> {
        let cri = &self.0;
        let id = need(&req.get_ref().container_id, "container")?;
        if let Some(rec) = cri.find_container(id) {
            cri.remove_container_now(&rec).await?;
            cri.mgr.store().flush().await.map_err(store_status)?;
        }
        ok(v1::RemoveContainerResponse {})
    }

    async fn list_containers(&self, req: Request<v1::ListContainersRequest>) -> Reply<v1::ListContainersResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let state = filter.state.map(|s| s.state);
        let containers = self
            .0
            .containers_where(&filter.id, &filter.pod_sandbox_id, state, &filter.label_selector)
            .into_iter()
            .map(|c| v1::Container {
                image_ref: c.repo_digest.clone(),
                image_id: c.image_id.clone(),
                state: c.state.cri() as i32,
                metadata: c.config.metadata,
                image: c.config.image,
                labels: c.config.labels,
                annotations: c.config.annotations,
                id: c.id,
                pod_sandbox_id: c.sandbox_id,
                created_at: c.created_at,
            })
            .collect();
        ok(v1::ListContainersResponse { containers })
    }

    async fn container_status(&self, req: Request<v1::ContainerStatusRequest>) -> Reply<v1::ContainerStatusResponse> {
        let cri = &self.0;
        let mut rec = cri.container_named(&req.get_ref().container_id)?;
        cri.refresh(&mut rec).await;
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert(
                "info".into(),
                serde_json::json!({"runtime": rec.kind, "sandboxID": rec.sandbox_id, "args": rec.runtime.args})
                    .to_string(),
            );
        }
        ok(v1::ContainerStatusResponse { status: Some(Cri::container_status(&rec)), info })
    }

    async fn update_container_resources(
        &self,
        req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Reply<v1::UpdateContainerResourcesResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let rec = cri.container_named(&req.container_id)?;
        // a container that exists in the runtime takes the new limits in place; an
        // exited one keeps them on record
        if let (Some(l), Phase::Created | Phase::Running { .. }) = (&req.linux, &rec.state) {
            let positive = |n: i64| u64::try_from(n).ok().filter(|&n| n > 0);
            let resources = wasmlet_runtime::Resources {
                memory_limit: positive(l.memory_limit_in_bytes),
                cpu_limit_millis: positive(l.cpu_quota)
                    .zip(positive(l.cpu_period))
                    .map(|(q, p)| (q * 1000).div_ceil(p)),
                cpu_request_millis: positive(l.cpu_shares).map(|s| s * 1000 / 1024),
            };
            cri.mgr.runtimes().update_resources(rec.kind, &rec.id, &resources).await.map_err(status)?;
        }
        if let Some(r) = lock(&cri.containers).get_mut(&rec.id) {
            r.resources = req.linux;
            cri.save_container(r);
        }
        ok(v1::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        req: Request<v1::ReopenContainerLogRequest>,
    ) -> Reply<v1::ReopenContainerLogResponse> {
        let cri = &self.0;
        let rec = cri.container_named(&req.get_ref().container_id)?;
        if !matches!(rec.state, Phase::Running { .. }) {
            return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
        }
        cri.mgr.runtimes().reopen_log(rec.kind, &rec.id).await.map_err(status)?;
        ok(v1::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, req: Request<v1::ExecSyncRequest>) -> Reply<v1::ExecSyncResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let rec = cri.container_named(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("the command is empty"));
        }
        if !matches!(rec.state, Phase::Running { .. }) {
            return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
        }
        let mut session = cri.mgr.runtimes().exec(rec.kind, &rec.id, &req.cmd, false).await.map_err(status)?;
        session.stdin = None;
        let read = |r: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>| async move {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                // CRI's cap on captured output, as the kubelet's (16 MiB)
                let _ = (&mut r).take(16 << 20).read_to_end(&mut out).await;
            }
            out
        };
        let (out, err) = (session.stdout.take(), session.stderr.take());
        let run = async {
            let (stdout, stderr) = tokio::join!(read(out), read(err));
            let code = session.wait().await;
            (stdout, stderr, code)
        };
        let done = match u64::try_from(req.timeout).ok().filter(|&t| t > 0) {
            Some(t) => tokio::time::timeout(Duration::from_secs(t), run)
                .await
                .map_err(|_| Status::deadline_exceeded(format!("command {:?} timed out after {t}s", req.cmd)))?,
            None => run.await,
        };
        let (stdout, stderr, code) = done;
        let exit_code = code.map_err(|e| Status::internal(format!("exec {:?}: {e}", req.cmd)))?;
        ok(v1::ExecSyncResponse { stdout, stderr, exit_code })
    }

    async fn exec(&self, req: Request<v1::ExecRequest>) -> Reply<v1::ExecResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let rec = cri.container_named(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("the command is empty"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument("one of stdin, stdout and stderr must be asked for"));
        }
        if !matches!(rec.state, Phase::Running { .. }) {
            return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
        }
        if rec.kind == RuntimeKind::Wasm {
            return Err(status(wasmlet_runtime::Error::Unsupported { what: "exec", runtime: RuntimeKind::Wasm }));
        }
        let url = cri.streams.offer(super::stream::Pending::Exec {
            kind: rec.kind,
            id: rec.id,
            cmd: req.cmd,
            want: crate::cluster::streaming::Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr && !req.tty,
                tty: req.tty,
            },
        });
        ok(v1::ExecResponse { url })
    }

    async fn attach(&self, req: Request<v1::AttachRequest>) -> Reply<v1::AttachResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let rec = cri.container_named(&req.container_id)?;
        if req.stdin || req.tty {
            return Err(Status::invalid_argument(format!(
                "container {} has no stdin or terminal to attach to (stdin is not supported)",
                rec.id
            )));
        }
        if !(req.stdout || req.stderr) {
            return Err(Status::invalid_argument("one of stdout and stderr must be asked for"));
        }
        if !matches!(rec.state, Phase::Running { .. }) {
            return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
        }
        let url = cri.streams.offer(super::stream::Pending::Attach {
            id: rec.id,
            want: crate::cluster::streaming::Wanted {
                stdin: false,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: false,
            },
        });
        ok(v1::AttachResponse { url })
    }

    async fn port_forward(&self, req: Request<v1::PortForwardRequest>) -> Reply<v1::PortForwardResponse> {
        let cri = &self.0;
        let sb = cri.sandbox_named(&req.get_ref().pod_sandbox_id)?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!("sandbox {} is not ready", sb.id)));
        }
        let host = if sb.netns.is_some() { sb.ip.clone() } else { None }.unwrap_or_else(|| "127.0.0.1".into());
        let url = cri.streams.offer(super::stream::Pending::PortForward { host });
        ok(v1::PortForwardResponse { url })
    }

    async fn container_stats(&self, req: Request<v1::ContainerStatsRequest>) -> Reply<v1::ContainerStatsResponse> {
        let cri = &self.0;
        let rec = cri.container_named(&req.get_ref().container_id)?;
        ok(v1::ContainerStatsResponse { stats: Some(cri.stats_of(&rec)) })
    }

    async fn list_container_stats(
        &self,
        req: Request<v1::ListContainerStatsRequest>,
    ) -> Reply<v1::ListContainerStatsResponse> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let recs = cri.containers_where(&filter.id, &filter.pod_sandbox_id, None, &filter.label_selector);
        ok(v1::ListContainerStatsResponse { stats: recs.iter().map(|c| cri.stats_of(c)).collect() })
    }

    async fn pod_sandbox_stats(&self, req: Request<v1::PodSandboxStatsRequest>) -> Reply<v1::PodSandboxStatsResponse> {
        let cri = &self.0;
        let sb = cri.sandbox_named(&req.get_ref().pod_sandbox_id)?;
        ok(v1::PodSandboxStatsResponse { stats: Some(cri.sandbox_stats(&sb)) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Reply<v1::ListPodSandboxStatsResponse> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let sbs = cri.sandboxes_where(&filter.id, None, &filter.label_selector);
        ok(v1::ListPodSandboxStatsResponse { stats: sbs.iter().map(|s| cri.sandbox_stats(s)).collect() })
    }

    async fn update_runtime_config(
        &self,
        _: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Reply<v1::UpdateRuntimeConfigResponse> {
        // the pod CIDR is wasmlet's own (--pod-cidr); the kubelet's is only advice here
        ok(v1::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Reply<v1::StatusResponse> {
        let cri = &self.0;
        let rt = cri.mgr.runtimes();
        let network = match rt.get(RuntimeKind::Linux) {
            Ok(_) => v1::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
            Err(e) => v1::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("pod networks are made with runc's runtime and CNI: {e}"),
            },
        };
        let ready = v1::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() };
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert(
                "config".into(),
                serde_json::json!({"handlers": super::HANDLERS, "streaming": cri.streams.base()}).to_string(),
            );
        }
        let handler = |name: &str| v1::RuntimeHandler {
            name: name.into(),
            features: Some(v1::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: name != "wasm",
            }),
        };
        ok(v1::StatusResponse {
            status: Some(v1::RuntimeStatus { conditions: vec![ready, network] }),
            info,
            runtime_handlers: std::iter::once("").chain(super::HANDLERS.iter().copied()).map(handler).collect(),
            features: Some(v1::RuntimeFeatures { supplemental_groups_policy: true }),
        })
    }

    async fn checkpoint_container(
        &self,
        _: Request<v1::CheckpointContainerRequest>,
    ) -> Reply<v1::CheckpointContainerResponse> {
        Err(Status::unimplemented("checkpointing containers is not supported"))
    }

    type GetContainerEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(&self, _: Request<v1::GetEventsRequest>) -> Reply<Self::GetContainerEventsStream> {
        // the kubelet's evented PLEG (a feature gate, off by default) falls back to relisting
        Err(Status::unimplemented("container events are not streamed; relist"))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Reply<v1::ListMetricDescriptorsResponse> {
        ok(v1::ListMetricDescriptorsResponse { descriptors: vec![] })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Reply<v1::ListPodSandboxMetricsResponse> {
        ok(v1::ListPodSandboxMetricsResponse { pod_metrics: vec![] })
    }

    async fn runtime_config(&self, _: Request<v1::RuntimeConfigRequest>) -> Reply<v1::RuntimeConfigResponse> {
        // runc is driven with cgroupfs paths (see wasmlet-runtime's linux module)
        ok(v1::RuntimeConfigResponse {
            linux: Some(v1::LinuxRuntimeConfiguration { cgroup_driver: v1::CgroupDriver::Cgroupfs as i32 }),
        })
    }
}
