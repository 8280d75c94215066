//! What a container uses: CPU time and memory, and the meters a Wasm guest is charged to.

/// What a running container uses: CPU time so far and memory now (the working set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

/// A container's meters, updated as it runs.
#[derive(Debug, Default)]
pub struct Meter {
    pub cpu_ns: std::sync::atomic::AtomicU64,
    pub memory_bytes: std::sync::atomic::AtomicU64,
}

impl Meter {
    pub fn usage(&self) -> Usage {
        use std::sync::atomic::Ordering::Relaxed;
        Usage { cpu_ns: self.cpu_ns.load(Relaxed), memory_bytes: self.memory_bytes.load(Relaxed) }
    }
}

/// A future whose polls are charged (thread CPU time) to a meter: what a Wasm guest
/// burns on the agent's threads.
pub struct Metered<F> {
    inner: std::pin::Pin<Box<F>>,
    meter: std::sync::Arc<Meter>,
}

impl<F> Metered<F> {
    pub fn new(inner: F, meter: std::sync::Arc<Meter>) -> Self {
        Metered { inner: Box::pin(inner), meter }
    }
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

impl<F: std::future::Future> std::future::Future for Metered<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let start = thread_cpu_ns();
        let r = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(start);
        self.meter.cpu_ns.fetch_add(spent, std::sync::atomic::Ordering::Relaxed);
        r
    }
}
