//! kill -9 at random points during pod churn of Wasm and Linux pods. After every
//! restart: each pod whose apply was acknowledged is there (once), each acknowledged
//! delete stays deleted, no restartCount goes down, a running Linux container is adopted
//! (never restarted, the same container), and every pod comes back to Running; at the
//! end, runc runs exactly the containers of the live Linux pods (no orphans).
//!
//! `CRASH_CYCLES` sets the number of cycles (default 100, as in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use crate::common::Registry;
use crate::harness::{Agent, Apps, WASMLET, pod_yaml, push_busybox, restarts, state};

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
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "amd64", "latest");
    // the container each Linux pod ran when last seen Running
    let mut linux_ids: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for cycle in 0..cycles {
        // churn: an apply (a Wasm sleeper, a crasher every fourth cycle, a Linux sleeper
        // every fifth) and maybe a delete, racing a SIGKILL after a random delay
        let name = format!("p{cycle}");
        let manifest = if is_crasher(&name) {
            pod_yaml(&name, &crasher, "Always", "    args: [\"1\"]\n")
        } else if is_linux(&name) {
            pod_yaml(&name, &busybox, "Always", "    command: [\"sleep\", \"3600\"]\n")
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
            // a Linux container seen running is never replaced: the restarted agent adopts
            // it (a start cut short before runc started it may be made again, as with
            // the kubelet)
            if is_linux(&n) {
                let id = p["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or("").to_string();
                if let Some((was, count)) = linux_ids.get(&n) {
                    assert_eq!((was, *count), (&id, r), "cycle {cycle}: Linux pod {n} was restarted: {}", p["status"]);
                } else if state(p).0 == "running" {
                    linux_ids.insert(n.clone(), (id, r));
                }
            }
        }
        // pods the apply did not acknowledge may exist (it may have been stored just before
        // the kill); they then count as acknowledged from here on
        for n in &names {
            acked.insert(n.clone());
        }
    }
    // every surviving sleeper comes back to Running after the last restart
    let mut running_linux = BTreeSet::new();
    for name in acked.iter().filter(|n| !is_crasher(n)) {
        let p = agent.wait_pod(name, "Running again", |p| state(p).0 == "running");
        if is_linux(name) {
            let id = p["status"]["containerStatuses"][0]["containerID"].as_str().unwrap();
            if let Some((was, count)) = linux_ids.get(name) {
                assert_eq!((was.as_str(), *count), (id, restarts(&p)), "Linux pod {name} was restarted");
            }
            running_linux.insert(id.rsplit("://").next().unwrap().to_string());
        }
    }
    // no orphans: runc runs the containers of the live Linux pods, and nothing else
    let out = Command::new("runc")
        .arg("--root")
        .arg(agent.state_dir().join("linux/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc list: {}", String::from_utf8_lossy(&out.stderr));
    let listed: BTreeSet<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(listed, running_linux, "runc's containers against the live Linux pods'");
    eprintln!(
        "{cycles} kill -9 cycles: {} pods alive ({} Linux), {} deleted, 0 lost, 0 duplicated, 0 orphaned, \
         0 Linux restarts",
        acked.len(),
        running_linux.len(),
        deleted.len()
    );
}

/// Every fourth pod exits at once (and is restarted, with back-off).
fn is_crasher(name: &str) -> bool {
    name[1..].parse::<usize>().unwrap() % 4 == 3
}

/// Every fifth pod (not a crasher) is a busybox `sleep 3600` run by runc.
fn is_linux(name: &str) -> bool {
    !is_crasher(name) && name[1..].parse::<usize>().unwrap() % 5 == 4
}
