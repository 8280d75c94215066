//! kill -9 at random points during pod churn. After every restart: each pod whose apply
//! was acknowledged is there (once), each acknowledged delete stays deleted, no
//! restartCount goes down, and every pod comes back to Running.
//!
//! `CRASH_CYCLES` sets the number of cycles (default 100, as in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Agent, Apps, WASMLET, pod_yaml, restarts, state};

#[test]
fn kill_9_during_churn_loses_and_duplicates_nothing() {
    let cycles: usize = std::env::var("CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let apps = Apps::push(&["sleep", "exit"]);
    // room for every pod the churn leaves alive (the test pool of 200 would refuse them
    // with OutOfpods past that)
    let pool = (cycles + 100).max(200).to_string();
    let mut agent = Agent::start_with(&["--max-wasm-instances", &pool]);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut seen_restarts: BTreeMap<String, u64> = BTreeMap::new();
    let (sleep, crasher) = (apps.image("sleep", "v1"), apps.image("exit", "v1"));
    for cycle in 0..cycles {
        // churn: an apply (a sleeper, or a crasher every fourth cycle) and maybe a delete,
        // racing a SIGKILL after a random delay
        let name = format!("p{cycle}");
        let manifest = if cycle % 4 == 3 {
            pod_yaml(&name, &crasher, "Always", "    args: [\"1\"]\n")
        } else {
            pod_yaml(&name, &sleep, "Always", "")
        };
        let path = agent.state_dir().join(format!("{name}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        let victim = acked.iter().nth(fastrand::usize(..acked.len().max(1))).cloned().filter(|_| cycle % 3 == 2);
        let apply = Command::new(WASMLET)
            .arg("--state-dir")
            .arg(agent.state_dir())
            .args(["apply", "-f", path.to_str().unwrap()])
            .spawn()
            .unwrap();
        let delete = victim.as_ref().map(|v| {
            Command::new(WASMLET).arg("--state-dir").arg(agent.state_dir()).args(["delete", "pod", v]).spawn().unwrap()
        });
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..120)));
        agent.kill9();
        if apply.wait_with_output().unwrap().status.success() {
            acked.insert(name.clone());
        }
        if let (Some(v), Some(d)) = (victim, delete) {
            // an acknowledged delete is final; an interrupted one may or may not have been
            // recorded (once recorded, it completes after the restart): either is right
            acked.remove(&v);
            if d.wait_with_output().unwrap().status.success() {
                deleted.insert(v);
            }
        }
        agent.restart();
        let pods = agent.pods();
        let names: Vec<String> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "cycle {cycle}: duplicate pods {names:?}");
        for a in &acked {
            assert!(names.contains(a), "cycle {cycle}: acknowledged pod {a} was lost; have {names:?}");
        }
        for d in &deleted {
            assert!(!names.contains(d), "cycle {cycle}: deleted pod {d} came back");
        }
        for p in &pods {
            let n = p["metadata"]["name"].as_str().unwrap().to_string();
            let r = restarts(p);
            let before = seen_restarts.insert(n.clone(), r).unwrap_or(0);
            assert!(r >= before, "cycle {cycle}: {n} restartCount went from {before} to {r}");
        }
        // pods the apply did not acknowledge may exist (it may have been stored just before
        // the kill); they then count as acknowledged from here on
        for n in &names {
            acked.insert(n.clone());
        }
    }
    // every surviving sleeper comes back to Running after the last restart
    for name in acked.iter().filter(|n| n[1..].parse::<usize>().unwrap() % 4 != 3) {
        agent.wait_pod(name, "Running again", |p| state(p).0 == "running");
    }
    eprintln!("{cycles} kill -9 cycles: {} pods alive, {} deleted, 0 lost, 0 duplicated", acked.len(), deleted.len());
}
