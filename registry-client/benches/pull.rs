//! Cold pull + unpack of a ~250 MB, 7-layer image from a local `docker-registry`,
//! against the peer pipeline `skopeo copy docker://… oci:…` + `umoci unpack`, measured
//! in the same run, interleaved. Prints wall and CPU seconds (medians) and the ratios.
//!
//! `BIG_MB` (default 200) sizes the big layer; `RUNS` (default 5) sets the repetitions.

#[path = "../tests/all/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/all/layout.rs"]
#[allow(dead_code)]
mod layout;

use std::process::Command;
use std::time::Instant;

use registry_client::{PullOptions, UnpackOptions};

use common::{Registry, TestClient, require, rt, run};

/// (user+system CPU seconds of this process, of its waited-for children).
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<f64> =
        stat.rsplit(')').next().unwrap().split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    // after the ")": state is [0], utime [11], stime [12], cutime [13], cstime [14]; USER_HZ = 100
    ((fields[11] + fields[12]) / 100.0, (fields[13] + fields[14]) / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Sample {
    wall: f64,
    cpu: f64,
}

fn main() {
    let skopeo = require("skopeo", "skopeo");
    let umoci = require("umoci", "umoci");
    let big_mb: usize = std::env::var("BIG_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let work = tempfile::tempdir().unwrap();
    eprintln!("building the {big_mb} MiB test image with umoci…");
    let layout = layout::big_layout(work.path(), big_mb);
    let reg = Registry::start();
    let r = reg.reference("bench/big:latest");
    let t = TestClient::new();
    let rt = rt();
    let started = Instant::now();
    let pushed = rt.block_on(t.client.push_layout(&layout, Some("latest"), &r, None)).unwrap();
    let push_secs = started.elapsed().as_secs_f64();
    let image = rt.block_on(t.client.pull(&r, &PullOptions::default())).unwrap();
    let size: u64 = image.size();
    println!(
        "image: {} layers, {:.1} MB compressed; pushed with push_layout in {push_secs:.2}s",
        image.layers.len(),
        size as f64 / 1e6
    );

    let (mut ours, mut ours_flat, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // ours: pull into an empty store, unpacking each layer (overlay form) as it lands
        let dir = work.path().join(format!("ours-{i}"));
        let client = registry_client::Client::new(
            registry_client::Config::default(),
            registry_client::Keychain::new(),
            std::sync::Arc::new(registry_client::Store::open(dir.join("store")).unwrap()),
        );
        let opts = PullOptions { unpack_to: Some(dir.join("layers")), ..Default::default() };
        let (c0, _) = cpu();
        let t0 = Instant::now();
        let image = rt.block_on(client.pull(&r, &opts)).unwrap();
        ours.push(Sample { wall: t0.elapsed().as_secs_f64(), cpu: cpu().0 - c0 });
        drop(image);
        std::fs::remove_dir_all(&dir).unwrap();
        // ours, pulled without unpacking, then flattened into one rootfs like umoci's bundle
        let client = registry_client::Client::new(
            registry_client::Config::default(),
            registry_client::Keychain::new(),
            std::sync::Arc::new(registry_client::Store::open(dir.join("store")).unwrap()),
        );
        let flat = dir.join("rootfs");
        std::fs::create_dir_all(&flat).unwrap();
        let (c1, _) = cpu();
        let t1 = Instant::now();
        let image = rt.block_on(client.pull(&r, &PullOptions::default())).unwrap();
        image.flatten(&flat, &UnpackOptions::default()).unwrap();
        ours_flat.push(Sample { wall: t1.elapsed().as_secs_f64(), cpu: cpu().0 - c1 });
        std::fs::remove_dir_all(&dir).unwrap();

        // peer: skopeo copy + umoci unpack
        let oci = work.path().join(format!("peer-{i}"));
        let (_, k0) = cpu();
        let t0 = Instant::now();
        run(Command::new(&skopeo).args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{r}"),
            &format!("oci:{}:latest", oci.display()),
        ]));
        run(Command::new(&umoci)
            .args(["unpack", "--image", &format!("{}:latest", oci.display())])
            .arg(oci.with_extension("bundle")));
        peer.push(Sample { wall: t0.elapsed().as_secs_f64(), cpu: cpu().1 - k0 });
        std::fs::remove_dir_all(&oci).unwrap();
        std::fs::remove_dir_all(oci.with_extension("bundle")).unwrap();
        eprintln!(
            "run {i}: ours {:.2}s wall {:.2}s cpu | ours+flatten {:.2}s {:.2}s | skopeo+umoci {:.2}s {:.2}s",
            ours[i].wall, ours[i].cpu, ours_flat[i].wall, ours_flat[i].cpu, peer[i].wall, peer[i].cpu
        );
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let (pw, pc) = (m(&peer, |s| s.wall), m(&peer, |s| s.cpu));
    println!(
        "cold pull + unpack, {} MB image, median of {runs} runs (peer measured in the same run):",
        size / 1_000_000
    );
    println!("{:<44} {:>8} {:>8} {:>12} {:>12}", "", "wall s", "cpu s", "wall ratio", "cpu ratio");
    for (name, v) in
        [("registry-client pull, layers unpacked", &ours), ("registry-client pull, then flatten to rootfs", &ours_flat)]
    {
        let (w, c) = (m(v, |s| s.wall), m(v, |s| s.cpu));
        println!("{name:<44} {w:>8.2} {c:>8.2} {:>11.2}x {:>11.2}x", pw / w, pc / c);
    }
    println!("{:<44} {pw:>8.2} {pc:>8.2} {:>12} {:>12}", "skopeo copy + umoci unpack (peer)", "1.00x", "1.00x");
    println!("(ratio = peer time / our time; > 1 means faster than the peer)");
    let _ = pushed;
}
