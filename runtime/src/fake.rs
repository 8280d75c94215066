//! A runtime that runs nothing: it records every call and plays a script per container
//! name, so that the agent's pod lifecycle can be tested in milliseconds, without a
//! registry, runc or a Wasm build.
//!
//! A script says, per start of a container (the first start plays the first step, the
//! second start the second, the last step repeats): what it prints, which file it
//! writes into a mount, whether and when it exits (and with what code), whether it is
//! OOM-killed, whether its create or start fails, and whether it ignores the stop
//! signal (then a stop takes the whole grace period). Containers without a script run
//! until stopped. Exec commands are answered from a table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::log::{CriLog, Stream};
use crate::{
    ContainerConfig, ContainerState, Error, EventSink, ExecSession, ExitReason, Metrics, Result, Runtime, RuntimeKind,
    SandboxConfig, SandboxStatus, Usage, now_ms,
};

/// What one start of a container does.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Lines printed to stdout at start.
    pub stdout: Vec<String>,
    /// A file written at start: (path inside the container, under one of its mounts; contents).
    pub write: Option<(String, String)>,
    /// Exits with this code after this long; `None` runs until stopped.
    pub exit: Option<(Duration, i32)>,
    /// Is OOM-killed after this long.
    pub oom_after: Option<Duration>,
    /// `create_container` fails with this message.
    pub fail_create: Option<String>,
    /// `start_container` fails with this message.
    pub fail_start: Option<String>,
    /// Ignores the stop signal: a stop takes the whole grace period, then kills.
    pub ignore_stop: bool,
}

impl Step {
    /// Runs until stopped.
    pub fn run() -> Self {
        Step::default()
    }
    /// Exits with `code` after `after`.
    pub fn exit(code: i32, after: Duration) -> Self {
        Step { exit: Some((after, code)), ..Step::default() }
    }
    /// Is OOM-killed after `after`.
    pub fn oom(after: Duration) -> Self {
        Step { oom_after: Some(after), ..Step::default() }
    }
}

/// A call the runtime received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    CreateSandbox(String),
    RemoveSandbox(String),
    Create { id: String, name: String, args: Vec<String> },
    Start(String),
    Stop { id: String, grace: Duration },
    Remove(String),
    Exec { id: String, command: Vec<String> },
}

/// The scripted runtime; clones share their state.
#[derive(Clone, Debug, Default)]
pub struct FakeRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    scripts: Mutex<HashMap<String, Vec<Step>>>,
    /// Starts so far, per container name.
    starts: Mutex<HashMap<String, usize>>,
    exec_codes: Mutex<HashMap<String, i32>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    sandboxes: Mutex<HashMap<String, SandboxStatus>>,
}

#[derive(Debug)]
struct Container {
    config: ContainerConfig,
    step: Step,
    state: watch::Sender<ContainerState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

const KILLED: i32 = 137;
const TERMINATED: i32 = 143;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime::default()
    }

    /// Sets what the container `name` does at each start.
    pub fn script(&self, name: &str, steps: Vec<Step>) {
        lock(&self.inner.scripts).insert(name.into(), steps);
    }

    /// The exit code of an exec whose command's first word is `program` (default 0).
    pub fn exec_exit(&self, program: &str, code: i32) {
        lock(&self.inner.exec_codes).insert(program.into(), code);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// How many times the container `name` was started.
    pub fn starts(&self, name: &str) -> usize {
        lock(&self.inner.starts).get(name).copied().unwrap_or(0)
    }

    /// The ids of containers that exist now and are running.
    pub fn running(&self) -> Vec<String> {
        let all = lock(&self.inner.containers);
        let mut ids: Vec<String> = all
            .iter()
            .filter(|(_, c)| matches!(*c.state.borrow(), ContainerState::Running { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Makes container `id` exit now with `code` (as if it crashed), if it runs.
    pub fn crash(&self, id: &str, code: i32) {
        if let Ok(c) = self.container(id) {
            finish(&c, code, if code == 0 { ExitReason::Completed } else { ExitReason::Error }, "");
        }
    }

    fn record(&self, call: Call) {
        lock(&self.inner.calls).push(call);
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.inner.containers).get(id).cloned().ok_or_else(|| Error::NotFound(id.into()))
    }

    /// The step the next start of `name` plays (without counting it).
    fn next_step(&self, name: &str) -> Step {
        let n = lock(&self.inner.starts).get(name).copied().unwrap_or(0);
        let scripts = lock(&self.inner.scripts);
        match scripts.get(name) {
            Some(steps) if !steps.is_empty() => steps[n.min(steps.len() - 1)].clone(),
            _ => Step::run(),
        }
    }
}

/// Ends a running container with `code`, once.
fn finish(c: &Container, code: i32, reason: ExitReason, message: &str) {
    c.state.send_if_modified(|s| match s {
        ContainerState::Running { started_at } => {
            let started_at = *started_at;
            *s = ContainerState::Exited {
                exit_code: code,
                reason,
                message: message.into(),
                started_at,
                finished_at: now_ms(),
            };
            true
        }
        _ => false,
    });
}

/// Where a path inside the container is on the host, through its mounts.
fn host_path(config: &ContainerConfig, path: &str) -> Option<PathBuf> {
    config.mounts.iter().find_map(|m| {
        let rest = path.strip_prefix(m.container_path.trim_end_matches('/'))?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        (!m.read_only).then(|| m.host_path.join(rest))
    })
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Wasm
    }

    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        self.record(Call::CreateSandbox(config.id.clone()));
        let mut sandboxes = lock(&self.inner.sandboxes);
        let n = sandboxes.len() as u8;
        let status = sandboxes
            .entry(config.id.clone())
            .or_insert_with(|| SandboxStatus { ip: Some(format!("10.99.0.{}", n.wrapping_add(2))), netns: None });
        Ok(status.clone())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        lock(&self.inner.sandboxes).get(id).cloned().ok_or_else(|| Error::NotFound(id.into()))
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.record(Call::RemoveSandbox(id.into()));
        lock(&self.inner.sandboxes).remove(id);
        Ok(())
    }

    async fn create_container(&self, config: ContainerConfig) -> Result<()> {
        self.record(Call::Create { id: config.id.clone(), name: config.name.clone(), args: config.args.clone() });
        let step = self.next_step(&config.name);
        if let Some(message) = &step.fail_create {
            return Err(Error::Tool { id: config.id.clone(), tool: "fake", message: message.clone() });
        }
        let (state, _) = watch::channel(ContainerState::Created);
        let id = config.id.clone();
        let c = Arc::new(Container { config, step, state, task: Mutex::new(None) });
        lock(&self.inner.containers).insert(id, c);
        Ok(())
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.record(Call::Start(id.into()));
        let c = self.container(id)?;
        *lock(&self.inner.starts).entry(c.config.name.clone()).or_default() += 1;
        if let Some(message) = &c.step.fail_start {
            return Err(Error::Tool { id: id.into(), tool: "fake", message: message.clone() });
        }
        let log = CriLog::open(&c.config.log_path, c.config.log).map_err(|source| Error::Io {
            context: "open container log".into(),
            path: c.config.log_path.clone(),
            source,
        })?;
        for line in &c.step.stdout {
            let _ = log.write(Stream::Stdout, format!("{line}\n").as_bytes());
        }
        if let Some((path, contents)) = &c.step.write {
            let host =
                host_path(&c.config, path).ok_or_else(|| Error::NotFound(format!("{id}: no mount for {path}")))?;
            std::fs::write(&host, contents).map_err(|source| Error::Io {
                context: "write".into(),
                path: host,
                source,
            })?;
        }
        c.state.send_replace(ContainerState::Running { started_at: now_ms() });
        let ends = match (c.step.exit, c.step.oom_after) {
            (_, Some(after)) => Some((after, KILLED, ExitReason::OOMKilled, "memory limit reached")),
            (Some((after, code)), None) => {
                let reason = if code == 0 { ExitReason::Completed } else { ExitReason::Error };
                Some((after, code, reason, ""))
            }
            (None, None) => None,
        };
        if let Some((after, code, reason, message)) = ends {
            let weak = Arc::downgrade(&c);
            let task = tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(c) = weak.upgrade() {
                    finish(&c, code, reason, message);
                }
            });
            *lock(&c.task) = Some(task);
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        self.record(Call::Stop { id: id.into(), grace });
        let c = self.container(id)?;
        if !matches!(*c.state.borrow(), ContainerState::Running { .. }) {
            return Ok(());
        }
        if c.step.ignore_stop && !grace.is_zero() {
            let mut rx = c.state.subscribe();
            let exited = rx.wait_for(|s| matches!(s, ContainerState::Exited { .. }));
            if tokio::time::timeout(grace, exited).await.is_ok() {
                return Ok(());
            }
            finish(&c, KILLED, ExitReason::Error, "");
        } else {
            finish(&c, if grace.is_zero() { KILLED } else { TERMINATED }, ExitReason::Error, "");
        }
        if let Some(task) = lock(&c.task).take() {
            task.abort();
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.record(Call::Remove(id.into()));
        if let Some(c) = lock(&self.inner.containers).remove(id) {
            finish(&c, KILLED, ExitReason::Error, "");
            if let Some(task) = lock(&c.task).take() {
                task.abort();
            }
        }
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerState> {
        Ok(self.container(id)?.state.borrow().clone())
    }

    async fn wait_container(&self, id: &str) -> Result<ContainerState> {
        let mut rx = self.container(id)?.state.subscribe();
        let state = rx.wait_for(|s| matches!(s, ContainerState::Exited { .. })).await;
        state.map(|s| s.clone()).map_err(|_| Error::NotFound(id.into()))
    }

    fn list_containers(&self) -> Vec<String> {
        lock(&self.inner.containers).keys().cloned().collect()
    }

    fn container_stats(&self, id: &str) -> Option<Usage> {
        let c = self.container(id).ok()?;
        matches!(*c.state.borrow(), ContainerState::Running { .. })
            .then_some(Usage { cpu_ns: 1_000_000, memory_bytes: 1 << 20 })
    }

    async fn exec_sync(&self, id: &str, command: &[String]) -> Result<i32> {
        self.record(Call::Exec { id: id.into(), command: command.to_vec() });
        let c = self.container(id)?;
        if !matches!(*c.state.borrow(), ContainerState::Running { .. }) {
            return Err(Error::NotRunning(id.into()));
        }
        let program = command.first().map(String::as_str).unwrap_or_default();
        Ok(lock(&self.inner.exec_codes).get(program).copied().unwrap_or(0))
    }

    /// A session whose output is the command line, echoed; it ends with the exec code.
    async fn exec(&self, id: &str, command: &[String], _tty: bool) -> Result<ExecSession> {
        let code = self.exec_sync(id, command).await?;
        let echo = format!("{}\n", command.join(" ")).into_bytes();
        Ok(ExecSession::new(None, Some(Box::pin(std::io::Cursor::new(echo))), None, async move { Ok(code) }))
    }

    async fn update_resources(&self, id: &str, _resources: &crate::Resources) -> Result<()> {
        self.container(id).map(|_| ())
    }

    async fn reopen_log(&self, id: &str) -> Result<()> {
        self.container(id).map(|_| ())
    }

    fn set_event_sink(&self, _sink: EventSink) {}

    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}
