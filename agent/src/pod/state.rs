//! The pod state machine: pure, no IO. Events change a [`PodStatus`]; [`plan`] says
//! what to do next at a given time. Every number follows the kubelet
//! (`shared/reference/kubelet-semantics.md` §1): crash back-off 10 s doubling to 300 s
//! with the first restart immediate, reset after 10 minutes; image pull back-off 10 s
//! doubling to 300 s; phases as `getPhase` computes them; terminal phases are sticky.
//!
//! Init containers come first in the plan, in order: each must exit 0 before the next
//! starts. Sidecars (init containers with `restartPolicy: Always`) gate the next one
//! on `started`, restart whatever the pod's policy, and are stopped once every app
//! container is done. Readiness and startup follow probe results when there are probes.

use serde::{Deserialize, Serialize};

pub const INITIAL_BACKOFF_MS: u64 = 10_000;
pub const MAX_BACKOFF_MS: u64 = 300_000;
/// A container that ran this long since its back-off last advanced starts a fresh curve.
pub const BACKOFF_RESET_MS: u64 = 600_000;
/// The reason given to an instance that was running when the agent died (the kubelet's).
pub const LOST: &str = "ContainerStatusUnknown";
/// How soon a container whose configuration could not be built is tried again (the
/// kubelet's pod-worker back-off); a change to a ConfigMap or Secret retries at once.
pub const CONFIG_RETRY_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The parts of a pod spec the state machine needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub pod: String,
    pub restart_policy: RestartPolicy,
    pub containers: Vec<ContainerPlan>,
}

/// Where a container sits in the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Init,
    Sidecar,
    #[default]
    App,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub pull_policy: PullPolicy,
    #[serde(default)]
    pub role: Role,
    /// With a readiness probe a container is not ready until it passes.
    #[serde(default)]
    pub readiness_probe: bool,
    /// With a startup probe a container is not `started` until it passes.
    #[serde(default)]
    pub startup_probe: bool,
}

/// An exponential back-off entry: the current delay and when it last advanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub delay_ms: u64,
    pub updated_at: u64,
}

impl Backoff {
    /// The entry after one more step: created at 10 s, then doubled, capped at 300 s.
    pub fn advance(prev: Option<Backoff>, now: u64) -> Backoff {
        let delay_ms = prev.map_or(INITIAL_BACKOFF_MS, |b| (b.delay_ms * 2).min(MAX_BACKOFF_MS));
        Backoff { delay_ms, updated_at: now }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub started_at: u64,
    pub finished_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Waiting { reason: String, message: String },
    Running { started_at: u64 },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    /// Digest reference of the image in use, once pulled.
    pub image_id: Option<String>,
    pub state: State,
    pub last_state: Option<Terminated>,
    pub restart_count: u32,
    /// Instances started so far (restart_count + 1 once running).
    pub instances: u32,
    pub ready: bool,
    pub started: bool,
    pub crash_backoff: Option<Backoff>,
    pub pull_backoff: Option<Backoff>,
    pub pull_failed_at: Option<u64>,
    /// The configuration could not be built; try again at this time.
    #[serde(default)]
    pub config_retry_at: Option<u64>,
    /// `imagePullPolicy: Always` and the last instance ended: resolve the image again
    /// before the next start. `image_id` keeps naming the image that ran, as the
    /// kubelet's `imageID` does.
    #[serde(default)]
    pub repull: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub phase: Phase,
    pub containers: Vec<ContainerStatus>,
    pub start_time: Option<u64>,
    /// Set once an app container has started: init containers never run again.
    #[serde(default)]
    pub initialized: bool,
    /// Pod-level reason and message (`DeadlineExceeded`, `OutOfmemory`).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Something that happened to container `container` (an index into the plan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Pulled {
        container: usize,
        image_id: String,
    },
    PullFailed {
        container: usize,
        message: String,
        at: u64,
    },
    /// The image may not be pulled (`Never`) and is absent.
    NeverPull {
        container: usize,
    },
    /// About to start an instance: written down before the runtime is asked.
    Starting {
        container: usize,
        at: u64,
    },
    Started {
        container: usize,
        at: u64,
    },
    Exited {
        container: usize,
        term: Terminated,
    },
    /// The agent restarted while this instance ran; it is gone.
    Lost {
        container: usize,
        at: u64,
    },
    /// The container's configuration could not be built (a missing ConfigMap key, a
    /// volume that cannot be set up): it waits with `reason` and is retried.
    ConfigError {
        container: usize,
        reason: String,
        message: String,
        at: u64,
    },
    /// Something the container refers to changed: a waiting configuration is retried now.
    ConfigChanged,
    /// The running instance's readiness or startup probe result changed.
    Ready {
        container: usize,
        ready: bool,
    },
    StartupPassed {
        container: usize,
    },
    /// The pod is finished from outside (activeDeadlineSeconds, admission): Failed.
    Fail {
        reason: String,
        message: String,
    },
}

/// What the pod needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Pull(usize),
    Start(usize),
    /// Nothing to do before this time (Unix ms).
    WakeAt(u64),
}

impl PodStatus {
    pub fn new(plan: &Plan) -> Self {
        let has_init = plan.containers.iter().any(|c| c.role != Role::App);
        let containers = plan
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: None,
                state: waiting(if has_init { "PodInitializing" } else { "ContainerCreating" }, ""),
                last_state: None,
                restart_count: 0,
                instances: 0,
                ready: false,
                started: false,
                crash_backoff: None,
                pull_backoff: None,
                pull_failed_at: None,
                config_retry_at: None,
                repull: false,
            })
            .collect();
        PodStatus {
            phase: Phase::Pending,
            containers,
            start_time: None,
            initialized: !has_init,
            reason: None,
            message: None,
        }
    }

    /// Applies one event. A pod in a terminal phase only records its containers'
    /// exits (sidecars and deadline kills end after the phase is decided).
    pub fn apply(&mut self, plan: &Plan, event: Event) {
        if self.phase.is_terminal() {
            match event {
                Event::Exited { container, term } => self.exited(container, term),
                Event::Lost { container, at } => self.lost(container, at),
                _ => {}
            }
            return;
        }
        match event {
            Event::Pulled { container, image_id } => {
                let c = &mut self.containers[container];
                c.image_id = Some(image_id);
                c.repull = false;
                c.pull_backoff = None;
                c.pull_failed_at = None;
            }
            Event::PullFailed { container, message, at } => {
                let c = &mut self.containers[container];
                c.pull_backoff = Some(Backoff::advance(c.pull_backoff, at));
                c.pull_failed_at = Some(at);
                c.state = waiting("ErrImagePull", &message);
            }
            Event::NeverPull { container } => {
                let c = &mut self.containers[container];
                let msg = format!("Container image \"{}\" is not present with pull policy of Never", c.image);
                c.state = waiting("ErrImageNeverPull", &msg);
            }
            Event::Starting { container, at } => {
                let c = &mut self.containers[container];
                c.config_retry_at = None;
                if let State::Terminated(t) = &c.state {
                    c.last_state = Some(t.clone());
                }
                if c.instances > 0 {
                    c.restart_count += 1;
                    // the agent's death is not the container's crash: no back-off step
                    let lost = c.last_state.as_ref().is_some_and(|t| t.reason == LOST);
                    if !lost {
                        c.crash_backoff = Some(Backoff::advance(c.crash_backoff, at));
                    }
                }
                c.instances += 1;
            }
            Event::Started { container, at } => {
                let spec = &plan.containers[container];
                let c = &mut self.containers[container];
                c.state = State::Running { started_at: at };
                c.started = !spec.startup_probe;
                c.ready = !spec.readiness_probe && c.started;
                self.start_time.get_or_insert(at);
                if spec.role == Role::App {
                    self.initialized = true;
                }
            }
            Event::ConfigError { container, reason, message, at } => {
                let c = &mut self.containers[container];
                c.state = waiting(&reason, &message);
                c.config_retry_at = Some(at + CONFIG_RETRY_MS);
            }
            Event::ConfigChanged => {
                for c in &mut self.containers {
                    if c.config_retry_at.is_some() {
                        c.config_retry_at = Some(0);
                    }
                }
            }
            Event::Ready { container, ready } => {
                let c = &mut self.containers[container];
                if matches!(c.state, State::Running { .. }) {
                    c.ready = ready && c.started;
                }
            }
            Event::StartupPassed { container } => {
                let readiness = plan.containers[container].readiness_probe;
                let c = &mut self.containers[container];
                if matches!(c.state, State::Running { .. }) {
                    c.started = true;
                    c.ready = !readiness;
                }
            }
            Event::Fail { reason, message } => {
                self.phase = Phase::Failed;
                self.reason = Some(reason);
                self.message = Some(message);
                return;
            }
            Event::Exited { container, term } => {
                self.exited(container, term);
                // `Always` resolves the image again before every start, as the kubelet does
                if plan.containers[container].pull_policy == PullPolicy::Always {
                    self.containers[container].repull = true;
                }
            }
            Event::Lost { container, at } => self.lost(container, at),
        }
        self.phase = phase(plan, self);
    }

    fn lost(&mut self, container: usize, at: u64) {
        let started_at = match &self.containers[container].state {
            State::Running { started_at } => *started_at,
            _ => at,
        };
        let term = Terminated {
            exit_code: 137,
            reason: LOST.into(),
            message: "The container could not be located when the agent restarted".into(),
            started_at,
            finished_at: at,
        };
        self.exited(container, term);
    }

    fn exited(&mut self, container: usize, term: Terminated) {
        let c = &mut self.containers[container];
        if c.crash_backoff.is_some_and(|b| term.finished_at.saturating_sub(b.updated_at) > BACKOFF_RESET_MS) {
            c.crash_backoff = None;
        }
        c.state = State::Terminated(term);
        c.ready = false;
        c.started = false;
    }
}

fn waiting(reason: &str, message: &str) -> State {
    State::Waiting { reason: reason.into(), message: message.into() }
}

/// The last termination of a container, current or previous.
fn last_exit(c: &ContainerStatus) -> Option<&Terminated> {
    match &c.state {
        State::Terminated(t) => Some(t),
        _ => c.last_state.as_ref().filter(|_| c.instances > 0 && !matches!(c.state, State::Running { .. })),
    }
}

/// Decides the next actions at `now` and sets the waiting reasons that explain why a
/// container is not running. `present(i)` says whether container i's image is stored.
pub fn plan(plan: &Plan, status: &mut PodStatus, now: u64, present: impl Fn(usize) -> bool) -> Vec<Action> {
    let mut actions = Vec::new();
    if status.phase.is_terminal() || apps_done(plan, status) {
        return actions; // nothing starts again, sidecars included
    }
    // false once an init container or sidecar is not done (or not started) yet
    let mut gate = true;
    for (i, spec) in plan.containers.iter().enumerate() {
        let c = &mut status.containers[i];
        let running = matches!(c.state, State::Running { .. });
        match spec.role {
            Role::Init if status.initialized => continue,
            Role::Init | Role::Sidecar | Role::App if !gate => {
                if !running && c.instances == 0 {
                    c.state = waiting("PodInitializing", "");
                }
                continue;
            }
            Role::Init if last_exit(c).is_some_and(|t| t.exit_code == 0) && !running => continue,
            Role::Sidecar if running => {
                gate &= c.started;
                continue;
            }
            _ if running => {
                gate &= spec.role == Role::App;
                continue;
            }
            _ => {}
        }
        if spec.role != Role::App {
            gate = false;
        }
        let previous = last_exit(c).cloned();
        let restarts = |code| spec.role == Role::Sidecar || plan.restart_policy.restarts(code);
        if let Some(t) = &previous
            && !restarts(t.exit_code)
        {
            continue;
        }
        if let (Some(t), Some(b)) = (&previous, c.crash_backoff)
            && now < t.finished_at + b.delay_ms
            && t.reason != LOST
        {
            let msg =
                format!("back-off {}s restarting failed container={} pod={}", b.delay_ms / 1000, spec.name, plan.pod);
            if let State::Terminated(t) = &c.state {
                c.last_state = Some(t.clone());
            }
            c.state = waiting("CrashLoopBackOff", &msg);
            actions.push(Action::WakeAt(t.finished_at + b.delay_ms));
            continue;
        }
        if let Some(at) = c.config_retry_at
            && now < at
        {
            actions.push(Action::WakeAt(at));
            continue;
        }
        if c.image_id.is_none() || c.repull {
            if spec.pull_policy == PullPolicy::Never && !present(i) {
                continue; // reported by NeverPull; nothing will change it
            }
            match (c.pull_failed_at, c.pull_backoff) {
                (Some(at), Some(b)) if now < at + b.delay_ms => {
                    // with the error that caused it, as the kubelet says it since 1.32
                    let msg = match &c.state {
                        State::Waiting { reason, message } if reason == "ImagePullBackOff" => message.clone(),
                        State::Waiting { reason, message } if reason == "ErrImagePull" => {
                            format!("Back-off pulling image {:?}: ErrImagePull: {message}", spec.image)
                        }
                        _ => format!("Back-off pulling image {:?}", spec.image),
                    };
                    c.state = waiting("ImagePullBackOff", &msg);
                    actions.push(Action::WakeAt(at + b.delay_ms));
                }
                _ => actions.push(Action::Pull(i)),
            }
            continue;
        }
        actions.push(Action::Start(i));
    }
    actions
}

/// Every app container has ended for good under the pod's restart policy (never with
/// `Always`): what still runs, the sidecars, is to be stopped, and the phase follows
/// once they have.
pub fn apps_done(plan: &Plan, status: &PodStatus) -> bool {
    if plan.restart_policy == RestartPolicy::Always {
        return false;
    }
    let mut apps = plan.containers.iter().zip(&status.containers).filter(|(s, _)| s.role == Role::App).peekable();
    apps.peek().is_some()
        && apps.all(|(_, c)| {
            !matches!(c.state, State::Running { .. })
                && last_exit(c).is_some_and(|t| !plan.restart_policy.restarts(t.exit_code))
        })
}

/// The pod phase from its container states (kubelet `getPhase`).
pub fn phase(plan: &Plan, status: &PodStatus) -> Phase {
    let (mut running, mut waiting_fresh, mut stopped, mut succeeded) = (0, 0, 0, 0);
    let mut init_pending = false;
    for (spec, c) in plan.containers.iter().zip(&status.containers) {
        match spec.role {
            Role::Init => {
                let failed = last_exit(c).is_some_and(|t| t.exit_code != 0);
                if failed && plan.restart_policy == RestartPolicy::Never && !status.initialized {
                    return Phase::Failed;
                }
                init_pending |= last_exit(c).is_none_or(|t| t.exit_code != 0);
            }
            // a running sidecar holds the pod Running, as the kubelet counts it; one
            // that has ended no longer counts
            Role::Sidecar => {
                init_pending |= !c.started;
                if matches!(c.state, State::Running { .. }) {
                    running += 1;
                }
            }
            Role::App => match (&c.state, last_exit(c)) {
                (State::Running { .. }, _) => running += 1,
                (_, Some(t)) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                (_, None) => waiting_fresh += 1,
            },
        }
    }
    if (init_pending && !status.initialized) || waiting_fresh > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 {
        return match plan.restart_policy {
            RestartPolicy::Always => Phase::Running,
            _ if succeeded == stopped => Phase::Succeeded,
            RestartPolicy::Never => Phase::Failed,
            RestartPolicy::OnFailure => Phase::Running,
        };
    }
    Phase::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(policy: RestartPolicy) -> Plan {
        Plan { pod: "web_default(uid)".into(), restart_policy: policy, containers: vec![container("app", Role::App)] }
    }

    fn container(name: &str, role: Role) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            image: format!("reg/{name}:v1"),
            pull_policy: PullPolicy::IfNotPresent,
            role,
            readiness_probe: false,
            startup_probe: false,
        }
    }

    /// A pod of init `i0`, sidecar `side`, init `i1` and app `app`, all images present.
    fn with_init(policy: RestartPolicy) -> (Plan, PodStatus) {
        let p = Plan {
            pod: "web_default(uid)".into(),
            restart_policy: policy,
            containers: vec![
                container("i0", Role::Init),
                container("side", Role::Sidecar),
                container("i1", Role::Init),
                container("app", Role::App),
            ],
        };
        let mut s = PodStatus::new(&p);
        for i in 0..4 {
            s.apply(&p, Event::Pulled { container: i, image_id: "x".into() });
        }
        (p, s)
    }

    fn start_n(p: &Plan, s: &mut PodStatus, i: usize, at: u64) {
        s.apply(p, Event::Starting { container: i, at });
        s.apply(p, Event::Started { container: i, at });
    }

    fn exit_n(i: usize, code: i32, at: u64) -> Event {
        let reason = if code == 0 { "Completed" } else { "Error" };
        let term = Terminated {
            exit_code: code,
            reason: reason.into(),
            message: String::new(),
            started_at: 0,
            finished_at: at,
        };
        Event::Exited { container: i, term }
    }

    #[test]
    fn init_containers_run_in_order_and_sidecars_gate_on_started() {
        let (mut p, mut s) = with_init(RestartPolicy::Always);
        p.containers[1].startup_probe = true;
        assert_eq!(plan(&p, &mut s, 0, |_| true), [Action::Start(0)]);
        assert_eq!(s.phase, Phase::Pending);
        let waiting = |s: &PodStatus, i: usize| match &s.containers[i].state {
            State::Waiting { reason, .. } => reason.clone(),
            _ => "-".into(),
        };
        assert_eq!(waiting(&s, 3), "PodInitializing");
        start_n(&p, &mut s, 0, 1);
        assert!(plan(&p, &mut s, 1, |_| true).is_empty(), "i0 runs alone");
        s.apply(&p, exit_n(0, 1, 2)); // fails: retried (Always), not Failed
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(plan(&p, &mut s, 2, |_| true), [Action::Start(0)]);
        start_n(&p, &mut s, 0, 3);
        s.apply(&p, exit_n(0, 0, 4));
        assert_eq!(plan(&p, &mut s, 4, |_| true), [Action::Start(1)], "then the sidecar");
        start_n(&p, &mut s, 1, 5);
        assert!(plan(&p, &mut s, 5, |_| true).is_empty(), "i1 waits for the sidecar's startup probe");
        s.apply(&p, Event::StartupPassed { container: 1 });
        assert_eq!(plan(&p, &mut s, 6, |_| true), [Action::Start(2)]);
        start_n(&p, &mut s, 2, 6);
        s.apply(&p, exit_n(2, 0, 7));
        assert_eq!(plan(&p, &mut s, 7, |_| true), [Action::Start(3)]);
        start_n(&p, &mut s, 3, 8);
        assert_eq!(s.phase, Phase::Running);
        assert!(s.initialized);
        // a sidecar that exits is restarted; finished init containers never run again
        s.apply(&p, exit_n(1, 0, 9));
        assert_eq!(plan(&p, &mut s, 9, |_| true), [Action::Start(1)]);
        start_n(&p, &mut s, 1, 9);
        s.apply(&p, exit_n(1, 0, 10));
        assert_eq!(plan(&p, &mut s, 10, |_| true), [Action::WakeAt(10 + INITIAL_BACKOFF_MS)]);
    }

    #[test]
    fn a_failed_init_container_fails_a_never_pod() {
        let (p, mut s) = with_init(RestartPolicy::Never);
        plan(&p, &mut s, 0, |_| true);
        start_n(&p, &mut s, 0, 1);
        s.apply(&p, exit_n(0, 2, 2));
        assert_eq!(s.phase, Phase::Failed);
        assert!(plan(&p, &mut s, 2, |_| true).is_empty());
    }

    #[test]
    fn sidecars_stop_in_reverse_once_the_apps_are_done() {
        let mut p = Plan {
            pod: "job_default(uid)".into(),
            restart_policy: RestartPolicy::Never,
            containers: vec![
                container("s0", Role::Sidecar),
                container("s1", Role::Sidecar),
                container("app", Role::App),
            ],
        };
        p.containers[2].readiness_probe = true;
        let mut s = PodStatus::new(&p);
        for i in 0..3 {
            s.apply(&p, Event::Pulled { container: i, image_id: "x".into() });
        }
        assert_eq!(plan(&p, &mut s, 0, |_| true), [Action::Start(0)]);
        start_n(&p, &mut s, 0, 0);
        assert_eq!(plan(&p, &mut s, 0, |_| true), [Action::Start(1)]);
        start_n(&p, &mut s, 1, 0);
        assert_eq!(plan(&p, &mut s, 0, |_| true), [Action::Start(2)]);
        start_n(&p, &mut s, 2, 1);
        assert!(!s.containers[2].ready, "not ready before its readiness probe passes");
        s.apply(&p, Event::Ready { container: 2, ready: true });
        assert!(s.containers[2].ready);
        s.apply(&p, exit_n(2, 0, 5));
        // as the kubelet: the pod stays Running while its sidecars run, and nothing starts
        assert_eq!(s.phase, Phase::Running, "running sidecars hold the pod Running");
        assert!(apps_done(&p, &s), "the worker is to stop the sidecars");
        assert!(plan(&p, &mut s, 6, |_| true).is_empty(), "no sidecar restarts once the apps are done");
        s.apply(&p, exit_n(1, 137, 6));
        assert!(matches!(s.containers[1].state, State::Terminated(_)));
        assert_eq!(s.phase, Phase::Running, "s0 still runs");
        assert!(plan(&p, &mut s, 6, |_| true).is_empty());
        s.apply(&p, exit_n(0, 143, 7));
        assert_eq!(s.phase, Phase::Succeeded, "ended sidecars do not count: the app succeeded");
    }

    #[test]
    fn config_errors_wait_and_retry_sooner_on_change() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        let e = Event::ConfigError {
            container: 0,
            reason: "CreateContainerConfigError".into(),
            message: "configmap \"cfg\" not found".into(),
            at: 100,
        };
        s.apply(&p, e);
        assert_eq!(reason(&s), "CreateContainerConfigError");
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(plan(&p, &mut s, 200, |_| true), [Action::WakeAt(100 + CONFIG_RETRY_MS)]);
        s.apply(&p, Event::ConfigChanged);
        assert_eq!(plan(&p, &mut s, 200, |_| true), [Action::Start(0)]);
    }

    #[test]
    fn a_failed_pod_keeps_its_reason() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, Event::Fail { reason: "DeadlineExceeded".into(), message: "too long".into() });
        assert_eq!((s.phase, s.reason.as_deref()), (Phase::Failed, Some("DeadlineExceeded")));
        assert!(plan(&p, &mut s, 1, |_| true).is_empty());
        s.apply(&p, exit(137, 0, 2));
        assert_eq!(reason(&s), "Error");
        assert_eq!(s.phase, Phase::Failed);
    }

    fn exit(code: i32, started: u64, finished: u64) -> Event {
        let reason = if code == 0 { "Completed" } else { "Error" };
        Event::Exited {
            container: 0,
            term: Terminated {
                exit_code: code,
                reason: reason.into(),
                message: String::new(),
                started_at: started,
                finished_at: finished,
            },
        }
    }

    fn run(p: &Plan, s: &mut PodStatus, at: u64) {
        s.apply(p, Event::Starting { container: 0, at });
        s.apply(p, Event::Started { container: 0, at });
    }

    fn reason(s: &PodStatus) -> String {
        match &s.containers[0].state {
            State::Waiting { reason, .. } => reason.clone(),
            State::Running { .. } => "Running".into(),
            State::Terminated(t) => t.reason.clone(),
        }
    }

    #[test]
    fn a_new_pod_pulls_then_starts() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        assert_eq!(reason(&s), "ContainerCreating");
        assert_eq!(plan(&p, &mut s, 0, |_| false), [Action::Pull(0)]);
        s.apply(&p, Event::Pulled { container: 0, image_id: "reg/app@sha256:x".into() });
        assert_eq!(plan(&p, &mut s, 0, |_| true), [Action::Start(0)]);
        run(&p, &mut s, 5);
        assert_eq!((s.phase, reason(&s), s.start_time), (Phase::Running, "Running".into(), Some(5)));
        assert!(plan(&p, &mut s, 6, |_| true).is_empty());
    }

    #[test]
    fn crash_backoff_is_immediate_then_10_20_40_capped_at_300() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        let mut t = 0;
        run(&p, &mut s, t);
        let mut waits = Vec::new();
        for _ in 0..8 {
            t += 1000;
            s.apply(&p, exit(1, t - 1000, t));
            let actions = plan(&p, &mut s, t, |_| true);
            match actions.as_slice() {
                [Action::Start(0)] => waits.push(0),
                [Action::WakeAt(when)] => {
                    assert_eq!(reason(&s), "CrashLoopBackOff");
                    assert_eq!(s.phase, Phase::Running, "Always keeps the pod Running");
                    assert_eq!(s.containers[0].last_state.as_ref().unwrap().exit_code, 1);
                    waits.push((when - t) / 1000);
                    assert_eq!(plan(&p, &mut s, when - 1, |_| true), [Action::WakeAt(*when)]);
                    assert_eq!(plan(&p, &mut s, *when, |_| true), [Action::Start(0)]);
                    t = *when;
                }
                other => panic!("{other:?}"),
            }
            run(&p, &mut s, t);
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.containers[0].restart_count, 8);
    }

    #[test]
    fn ten_minutes_of_running_resets_the_backoff() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, exit(1, 0, 1_000));
        assert_eq!(plan(&p, &mut s, 1_000, |_| true), [Action::Start(0)]);
        run(&p, &mut s, 1_000); // back-off now 10 s, advanced at t=1 s
        s.apply(&p, exit(1, 1_000, 1_000 + BACKOFF_RESET_MS + 1));
        let t = 1_000 + BACKOFF_RESET_MS + 1;
        assert_eq!(plan(&p, &mut s, t, |_| true), [Action::Start(0)], "fresh curve: immediate restart");
        run(&p, &mut s, t);
        assert_eq!(s.containers[0].crash_backoff.unwrap().delay_ms, INITIAL_BACKOFF_MS);
    }

    #[test]
    fn restart_policies_decide_phase_and_restarts() {
        for (policy, code, phase, restarts) in [
            (RestartPolicy::Never, 0, Phase::Succeeded, false),
            (RestartPolicy::Never, 3, Phase::Failed, false),
            (RestartPolicy::OnFailure, 0, Phase::Succeeded, false),
            (RestartPolicy::OnFailure, 3, Phase::Running, true),
            (RestartPolicy::Always, 0, Phase::Running, true),
        ] {
            let p = plan_of(policy);
            let mut s = PodStatus::new(&p);
            s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
            run(&p, &mut s, 0);
            s.apply(&p, exit(code, 0, 10));
            assert_eq!(s.phase, phase, "{policy:?} exit {code}");
            let actions = plan(&p, &mut s, 10, |_| true);
            assert_eq!(!actions.is_empty(), restarts, "{policy:?} exit {code}: {actions:?}");
            let expected = if code == 0 { "Completed" } else { "Error" };
            if !restarts {
                assert_eq!(reason(&s), expected);
            }
        }
    }

    #[test]
    fn terminal_phases_are_sticky() {
        let p = plan_of(RestartPolicy::Never);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, exit(0, 0, 1));
        assert_eq!(s.phase, Phase::Succeeded);
        s.apply(&p, Event::Started { container: 0, at: 2 });
        assert_eq!(s.phase, Phase::Succeeded);
        assert!(plan(&p, &mut s, 3, |_| true).is_empty());
    }

    #[test]
    fn pull_failures_back_off_err_then_backoff() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        let mut t = 0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            assert_eq!(plan(&p, &mut s, t, |_| false), [Action::Pull(0)]);
            s.apply(&p, Event::PullFailed { container: 0, message: "manifest not found".into(), at: t });
            assert_eq!(reason(&s), "ErrImagePull");
            let [Action::WakeAt(when)] = plan(&p, &mut s, t + 1, |_| false)[..] else { panic!() };
            assert_eq!(reason(&s), "ImagePullBackOff");
            let State::Waiting { message, .. } = s.containers[0].state.clone() else { panic!() };
            assert!(message.ends_with(": ErrImagePull: manifest not found"), "the cause stays in view: {message}");
            plan(&p, &mut s, t + 2, |_| false);
            let State::Waiting { message: again, .. } = &s.containers[0].state else { panic!() };
            assert_eq!(again, &message);
            waits.push((when - t) / 1000);
            t = when;
        }
        assert_eq!(waits, [10, 20, 40, 80]);
        assert_eq!(s.phase, Phase::Pending);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        assert_eq!(plan(&p, &mut s, t, |_| true), [Action::Start(0)]);
    }

    #[test]
    fn pull_policy_always_pulls_again_before_each_restart() {
        let mut p = plan_of(RestartPolicy::Always);
        p.containers[0].pull_policy = PullPolicy::Always;
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, exit(1, 0, 5));
        assert_eq!(s.containers[0].image_id.as_deref(), Some("x"), "imageID still names the image that ran");
        assert_eq!(plan(&p, &mut s, 5, |_| true), [Action::Pull(0)]);
        s.apply(&p, Event::Pulled { container: 0, image_id: "y".into() });
        assert_eq!(plan(&p, &mut s, 5, |_| true), [Action::Start(0)]);
        run(&p, &mut s, 5);
        s.apply(&p, exit(1, 5, 6));
        assert_eq!(
            plan(&p, &mut s, 6, |_| true),
            [Action::WakeAt(6 + INITIAL_BACKOFF_MS)],
            "no pull inside the back-off"
        );
        assert_eq!(plan(&p, &mut s, 6 + INITIAL_BACKOFF_MS, |_| true), [Action::Pull(0)]);
        // IfNotPresent keeps what it has
        let p2 = plan_of(RestartPolicy::Always);
        let mut s2 = PodStatus::new(&p2);
        s2.apply(&p2, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p2, &mut s2, 0);
        s2.apply(&p2, exit(1, 0, 5));
        assert_eq!(plan(&p2, &mut s2, 5, |_| true), [Action::Start(0)]);
    }

    #[test]
    fn never_pull_without_the_image_waits_for_good() {
        let mut p = plan_of(RestartPolicy::Always);
        p.containers[0].pull_policy = PullPolicy::Never;
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::NeverPull { container: 0 });
        assert_eq!(reason(&s), "ErrImageNeverPull");
        assert!(plan(&p, &mut s, 0, |_| false).is_empty());
    }

    #[test]
    fn agent_restarts_never_push_a_pod_into_backoff() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, exit(1, 0, 10)); // one real crash: immediate restart, back-off now 10 s
        assert_eq!(plan(&p, &mut s, 10, |_| true), [Action::Start(0)]);
        run(&p, &mut s, 10);
        for k in 1..=5u64 {
            s.apply(&p, Event::Lost { container: 0, at: 10 + k });
            assert_eq!(plan(&p, &mut s, 10 + k, |_| true), [Action::Start(0)], "lost #{k}: restart at once");
            run(&p, &mut s, 10 + k);
        }
        assert_eq!(s.containers[0].restart_count, 6);
        assert_eq!(
            s.containers[0].crash_backoff.unwrap().delay_ms,
            INITIAL_BACKOFF_MS,
            "agent deaths did not advance it"
        );
        s.apply(&p, exit(1, 15, 20)); // the next real crash waits the current step
        assert_eq!(plan(&p, &mut s, 20, |_| true), [Action::WakeAt(20 + INITIAL_BACKOFF_MS)]);
    }

    #[test]
    fn a_lost_instance_counts_as_an_unknown_exit_and_restarts() {
        let p = plan_of(RestartPolicy::Always);
        let mut s = PodStatus::new(&p);
        s.apply(&p, Event::Pulled { container: 0, image_id: "x".into() });
        run(&p, &mut s, 0);
        s.apply(&p, Event::Lost { container: 0, at: 50 });
        assert_eq!(reason(&s), "ContainerStatusUnknown");
        assert_eq!(plan(&p, &mut s, 50, |_| true), [Action::Start(0)]);
        run(&p, &mut s, 50);
        assert_eq!(s.containers[0].restart_count, 1);
        assert_eq!(s.containers[0].last_state.as_ref().unwrap().exit_code, 137);
    }
}
