//! The wasmlet agent: the pod manager and what surrounds it (image service, state
//! store, local API, cluster mode, command line). The runtimes live in the
//! `wasmlet-runtime` crate; this crate decides what they run.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod cri;
pub mod http;
pub mod image;
pub mod node;
pub mod objects;
pub mod pod;
pub mod spec;
pub mod store;
pub mod time;
pub mod workload;

/// The agent's modules import one way: each only from those after it in [`LAYERS`].
#[cfg(test)]
mod layering {
    const LAYERS: &[&str] = &[
        "cli", "cri", "api", "cluster", "http", "workload", "pod", "image", "objects", "store", "spec", "node", "time",
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn imports_go_one_way() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
        let mut upward = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&root).unwrap();
            let top = rel.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs").to_string();
            let Some(own) = rank(&top) else { continue }; // lib.rs, main.rs
            let text = std::fs::read_to_string(&f).unwrap();
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if rank(&name).is_some_and(|r| r < own) {
                    upward.push(format!("{}: crate::{name}", rel.display()));
                }
            }
        }
        assert!(upward.is_empty(), "imports against the layering: {upward:#?}");
    }
}
