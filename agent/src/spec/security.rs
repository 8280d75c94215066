//! `securityContext` beyond the field table: the API server's checks of seccomp and
//! AppArmor profiles, capabilities, groups, sysctls and `procMount`, so a pod that no
//! node could run is refused at `apply` with the field's path. What depends on the
//! node (privileged allowed, unsafe sysctls, AppArmor present) is its admission, in
//! `pod::apply`.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::{FieldError, one_of};

fn forbid(field: String, why: &str) -> FieldError {
    FieldError::new(field, format!("Forbidden: {why}"))
}

/// `type` and `localhostProfile` of a seccomp or AppArmor profile.
fn profile(path: &str, typ: &str, localhost: Option<&str>) -> Result<(), FieldError> {
    one_of(&format!("{path}.type"), typ, &["RuntimeDefault", "Unconfined", "Localhost"])?;
    match (typ, localhost) {
        ("Localhost", None | Some("")) => Err(FieldError::new(format!("{path}.localhostProfile"), "Required value")),
        ("Localhost", Some(p)) => super::pod::relative_path(p)
            .map_err(|m| FieldError::new(format!("{path}.localhostProfile"), format!("Invalid value: {p:?}: {m}"))),
        (_, Some(_)) => Err(forbid(format!("{path}.localhostProfile"), "can only be set if the type is Localhost")),
        _ => Ok(()),
    }
}

/// A sysctl name as the API server allows it: dot- or slash-separated segments of
/// lower-case letters, digits, `-` and `_`.
fn sysctl_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split(['.', '/']).all(|seg| {
            !seg.is_empty()
                && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                && seg.as_bytes()[0].is_ascii_alphanumeric()
                && seg.as_bytes()[seg.len() - 1].is_ascii_alphanumeric()
        })
}

pub(super) fn validate_pod(spec: &PodSpec) -> Result<(), FieldError> {
    let at = |f: &str| format!("spec.securityContext.{f}");
    let userns = spec.host_users == Some(false);
    if userns {
        // the API server's rule: a user namespace excludes the host's namespaces
        for (field, set) in [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)]
        {
            if set == Some(true) {
                return Err(forbid("spec.hostUsers".into(), &format!("when `{field}` is set")));
            }
        }
    }
    if let Some(sc) = &spec.security_context {
        if let Some(p) = &sc.seccomp_profile {
            profile(&at("seccompProfile"), &p.type_, p.localhost_profile.as_deref())?;
        }
        if let Some(p) = &sc.app_armor_profile {
            profile(&at("appArmorProfile"), &p.type_, p.localhost_profile.as_deref())?;
        }
        if let Some(p) = &sc.fs_group_change_policy {
            one_of(&at("fsGroupChangePolicy"), p, &["OnRootMismatch", "Always"])?;
        }
        if let Some(p) = &sc.supplemental_groups_policy {
            one_of(&at("supplementalGroupsPolicy"), p, &["Merge", "Strict"])?;
        }
        for (f, id) in [("runAsUser", sc.run_as_user), ("runAsGroup", sc.run_as_group), ("fsGroup", sc.fs_group)] {
            if let Some(id) = id.filter(|id| !(0..=i64::from(u32::MAX - 1)).contains(id)) {
                return Err(FieldError::new(at(f), format!("Invalid value: {id}: must be between 0 and 4294967294")));
            }
        }
        for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
            if !(0..=i64::from(u32::MAX - 1)).contains(g) {
                return Err(FieldError::new(
                    at(&format!("supplementalGroups[{i}]")),
                    format!("Invalid value: {g}: must be between 0 and 4294967294"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in sc.sysctls.iter().flatten().enumerate() {
            let field = at(&format!("sysctls[{i}].name"));
            if !sysctl_name(&s.name) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "Invalid value: {:?}: must have at most 253 characters and match the sysctl name format",
                        s.name
                    ),
                ));
            }
            if !seen.insert(crate::node::normalize_sysctl(&s.name)) {
                return Err(FieldError::new(field, format!("Duplicate value: {:?}", s.name)));
            }
        }
    }
    if spec.host_network == Some(true) {
        for (path, c) in containers(spec) {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                if let Some(h) = p.host_port.filter(|h| *h != p.container_port) {
                    return Err(FieldError::new(
                        format!("{path}.ports[{j}].hostPort"),
                        format!("Invalid value: {h}: must match `containerPort` when `hostNetwork` is true"),
                    ));
                }
            }
        }
    }
    for (path, c) in containers(spec) {
        validate_container(c, &path, userns)?;
    }
    Ok(())
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
    let init = spec.init_containers.iter().flatten().enumerate().map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    init.chain(spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c)))
}

fn validate_container(c: &Container, path: &str, userns: bool) -> Result<(), FieldError> {
    let Some(sc) = &c.security_context else { return Ok(()) };
    let at = |f: &str| format!("{path}.securityContext.{f}");
    if let Some(p) = &sc.seccomp_profile {
        profile(&at("seccompProfile"), &p.type_, p.localhost_profile.as_deref())?;
    }
    if let Some(p) = &sc.app_armor_profile {
        profile(&at("appArmorProfile"), &p.type_, p.localhost_profile.as_deref())?;
    }
    if let Some(p) = &sc.proc_mount {
        one_of(&at("procMount"), p, &["Default", "Unmasked"])?;
        if p == "Unmasked" && !userns {
            return Err(forbid(at("procMount"), "`hostUsers` must be false to use `Unmasked`"));
        }
    }
    for (f, id) in [("runAsUser", sc.run_as_user), ("runAsGroup", sc.run_as_group)] {
        if let Some(id) = id.filter(|id| !(0..=i64::from(u32::MAX - 1)).contains(id)) {
            return Err(FieldError::new(at(f), format!("Invalid value: {id}: must be between 0 and 4294967294")));
        }
    }
    let caps = sc.capabilities.as_ref();
    for (list, names) in [("add", caps.and_then(|c| c.add.as_ref())), ("drop", caps.and_then(|c| c.drop.as_ref()))] {
        for (i, name) in names.into_iter().flatten().enumerate() {
            if !wasmlet_runtime::linux::known_capability(name) {
                return Err(FieldError::new(
                    at(&format!("capabilities.{list}[{i}]")),
                    format!("Invalid value: {name:?}: not a Linux capability (NET_BIND_SERVICE, CAP_SYS_TIME, ALL, …)"),
                ));
            }
        }
    }
    if userns && sc.privileged == Some(true) {
        return Err(forbid(at("privileged"), "not allowed with `hostUsers: false`"));
    }
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            return Err(FieldError::new(
                at("allowPrivilegeEscalation"),
                "Invalid value: false: cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let adds_admin = caps.and_then(|c| c.add.as_ref()).into_iter().flatten().any(|n| {
            let n = n.to_ascii_uppercase();
            n == "SYS_ADMIN" || n == "CAP_SYS_ADMIN"
        });
        if adds_admin {
            return Err(FieldError::new(
                at("allowPrivilegeEscalation"),
                "Invalid value: false: cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
    Ok(())
}
