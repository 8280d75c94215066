//! Images through the daemon: push (client side), pull with progress, list; and
//! credential helpers.

use std::process::Command;

use crate::common::{self, wasm_app};
use crate::harness::{Agent, WASMLET};

#[test]
fn push_pull_and_list_a_wasm_app() {
    let reg = common::Registry::start();
    let agent = Agent::start();
    let wasm = wasm_app("hello", "wasm32-wasip2");
    let r = format!("{}/apps/hello:v1", reg.host);
    let pushed = agent.ok(&["push", wasm.to_str().unwrap(), &r]);
    assert!(pushed.starts_with(&format!("pushed {r}@sha256:")), "{pushed}");
    let pulled = agent.ok(&["pull", "-q", &r]);
    assert!(pulled.contains("(wasm,"), "{pulled}");
    let images: serde_json::Value = serde_json::from_str(&agent.ok(&["images", "-o", "json"])).unwrap();
    assert_eq!(images[0]["reference"], r);
    assert_eq!(images[0]["kind"], "wasm");
    let table = agent.ok(&["images"]);
    assert!(table.lines().nth(1).unwrap().contains("wasm"), "{table}");
}

#[test]
fn errors_name_the_reference_and_fail_the_command() {
    let reg = common::Registry::start();
    let agent = Agent::start();
    let missing = format!("{}/apps/missing:v9", reg.host);
    let out = agent.cli(&["pull", "-q", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");
    let out = agent.cli(&["pull", "-q", "Bad/Name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference \"Bad/Name\""));
    drop(agent);
    let state = tempfile::tempdir().unwrap();
    let out =
        Command::new(WASMLET).args(["--state-dir", state.path().to_str().unwrap(), "get", "pods"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `wasmlet serve` running?"));
}

#[test]
fn credentials_come_from_a_docker_credential_helper() {
    let reg = common::Registry::start_with_auth();
    let state = tempfile::tempdir().unwrap();
    let bin = state.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // the docker-credential-helpers protocol: server URL on stdin, JSON on stdout
    let helper = bin.join("docker-credential-wasmlettest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = {} ] || exit 1\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"{}\",\"Secret\":\"{}\"}}'\n",
            reg.host,
            common::USER,
            common::PASSWORD
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let authfile = state.path().join("auth.json");
    std::fs::write(&authfile, serde_json::json!({"credHelpers": {reg.host.clone(): "wasmlettest"}}).to_string())
        .unwrap();
    let wasm = wasm_app("hello", "wasm32-wasip1");
    let r = format!("{}/private/hello:v1", reg.host);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let push = |with_helper: bool| {
        let mut cmd = Command::new(WASMLET);
        cmd.args(["--state-dir", state.path().to_str().unwrap(), "push", wasm.to_str().unwrap(), &r]);
        if with_helper {
            cmd.args(["--authfile", authfile.to_str().unwrap()]).env("PATH", &path);
        } else {
            cmd.env("DOCKER_CONFIG", state.path().join("none")).env_remove("REGISTRY_AUTH_FILE");
        }
        cmd.output().unwrap()
    };
    let denied = push(false);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("refused the credentials"), "{denied:?}");
    let ok = push(true);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
