//! The input rules for a job spec (`POST /v1/jobs`).
//!
//! [`validate_spec`] fails with the [`ValidationError`] of the cluster rules: its text starts
//! with the field (`command`, `env`, `resources.cpu_millis`, `constraints.labels`, ...) and says
//! what is allowed and what was given, so the API hands it back as `invalid_argument` unchanged.
//!
//! # Why these limits
//! - **Name**: the cluster name rules (1–63 letters, digits, CJK ideographs and `-`), and not
//!   the shape of a job id, because the API looks a job up "by id or name".
//! - **Command and environment** end up in `execve(2)`: no NUL bytes anywhere, environment
//!   keys are POSIX portable names (`[A-Za-z_][A-Za-z0-9_]*`, so no `=`). Their total size is
//!   capped ([`COMMAND_MAX_BYTES`], [`ENV_MAX_BYTES`]) well below the kernel's `ARG_MAX`, and
//!   because the spec travels in every job listing and in one control frame.
//! - **Reserved variables**: `TANDEM_*` and `CUDA_VISIBLE_DEVICES` are set by the agent (the
//!   fencing token, the GPUs given). A spec that set them could claim GPUs it was not given or
//!   show a stale writer the wrong token, so they are refused rather than overwritten.
//! - **Resources** must be above zero: a job that asks for nothing would fit everywhere
//!   forever and make the free capacity lie. The upper bounds only keep sums far from
//!   overflowing; placement says when nothing is that big.
//! - **workdir** is absolute: relative to what would depend on the agent's own directory.

use super::model::{JobSpec, Toleration};
use crate::cluster::validate::{check_labels, is_cjk, ValidationError, LABELS_MAX};
use std::collections::BTreeMap;

/// The most characters in a job name.
pub const NAME_MAX_CHARS: usize = 63;
/// The most arguments in `command` (the program included).
pub const COMMAND_MAX_ARGS: usize = 1024;
/// The most bytes in `command`, all arguments together.
pub const COMMAND_MAX_BYTES: usize = 64 * 1024;
/// The most variables in `env`.
pub const ENV_MAX_VARS: usize = 256;
/// The most bytes in `env`, counted as `KEY=value` plus a NUL for each variable.
pub const ENV_MAX_BYTES: usize = 64 * 1024;
/// The most bytes in `workdir` (`PATH_MAX`).
pub const WORKDIR_MAX_BYTES: usize = 4096;
/// The most CPU a job may ask for, in thousandths of a core (1000 cores).
pub const CPU_MILLIS_MAX: u64 = 1_000_000;
/// The least memory a job may ask for (1 MiB).
pub const MEMORY_MIN_BYTES: u64 = 1 << 20;
/// The most memory a job may ask for (1 PiB).
pub const MEMORY_MAX_BYTES: u64 = 1 << 50;
/// The most GPUs a job may ask for.
pub const GPUS_MAX: u32 = 64;
/// The most restarts a job may allow.
pub const MAX_RESTARTS_MAX: u32 = 10_000;
/// Variables the agent sets; a spec may not.
pub const RESERVED_ENV: [&str; 1] = ["CUDA_VISIBLE_DEVICES"];
/// A prefix of variables the agent sets; a spec may not use it.
pub const RESERVED_ENV_PREFIX: &str = "TANDEM_";

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `s` quoted for a message, cut to 40 characters.
fn shown(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

/// A job name: the cluster name rules, and not shaped like a job id.
pub fn check_job_name(name: &str) -> Result<(), ValidationError> {
    const RULE: &str = "must be 1-63 characters of letters, digits, CJK characters and '-'";
    let n = name.chars().count();
    if n == 0 || n > NAME_MAX_CHARS {
        return Err(err("name", format!("{RULE}, got {n}")));
    }
    if let Some((pos, c)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || is_cjk(c)))
    {
        return Err(err(
            "name",
            format!("{RULE}, got {c:?} at position {}", pos + 1),
        ));
    }
    if super::model::looks_like_job_id(name) {
        return Err(err(
            "name",
            format!(
                "must not have the shape of a job id ('j-' and 12 hex digits), got {}",
                shown(name)
            ),
        ));
    }
    Ok(())
}

fn check_command(command: &[String]) -> Result<(), ValidationError> {
    const F: &str = "command";
    if command.is_empty() {
        return Err(err(
            F,
            "must name a program to run, e.g. [\"/bin/sh\", \"-c\", \"...\"], got []",
        ));
    }
    if command[0].is_empty() {
        return Err(err(F, "the program (the first element) must not be empty"));
    }
    if command.len() > COMMAND_MAX_ARGS {
        return Err(err(
            F,
            format!(
                "at most {COMMAND_MAX_ARGS} arguments are allowed, got {}",
                command.len()
            ),
        ));
    }
    let bytes: usize = command.iter().map(|a| a.len() + 1).sum();
    if bytes > COMMAND_MAX_BYTES {
        return Err(err(
            F,
            format!("must be at most {COMMAND_MAX_BYTES} bytes in all, got {bytes}"),
        ));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(err(
            F,
            format!("argument {i} contains a NUL byte, which no program can receive"),
        ));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    const F: &str = "env";
    if env.len() > ENV_MAX_VARS {
        return Err(err(
            F,
            format!(
                "at most {ENV_MAX_VARS} variables are allowed, got {}",
                env.len()
            ),
        ));
    }
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if bytes > ENV_MAX_BYTES {
        return Err(err(
            F,
            format!("must be at most {ENV_MAX_BYTES} bytes in all (as KEY=value), got {bytes}"),
        ));
    }
    for (key, value) in env {
        let portable = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !portable {
            return Err(err(
                F,
                format!(
                    "key {} must be a letter or '_' followed by letters, digits and '_'",
                    shown(key)
                ),
            ));
        }
        if key.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV.contains(&key.as_str()) {
            return Err(err(
                F,
                format!(
                    "key {key} is set by the agent (TANDEM_* and CUDA_VISIBLE_DEVICES are \
                     reserved): the GPUs and the fencing token come from the placement"
                ),
            ));
        }
        if value.contains('\0') {
            return Err(err(F, format!("the value of {key} contains a NUL byte")));
        }
    }
    Ok(())
}

/// A user name as `useradd` takes it: 1-32 of lower-case letters, digits, `_`, `-` and `.`,
/// starting with a letter or `_`.
fn check_user(user: Option<&str>) -> Result<(), ValidationError> {
    check_account("user", user)
}

/// A group name, by the same rule as a user name.
fn check_group(group: Option<&str>) -> Result<(), ValidationError> {
    check_account("group", group)
}

fn check_account(field: &'static str, name: Option<&str>) -> Result<(), ValidationError> {
    let Some(u) = name else { return Ok(()) };
    let ok_first = u
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let ok_rest = u
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if u.is_empty() || u.len() > 32 || !ok_first || !ok_rest {
        return Err(err(
            field,
            format!(
                "must be a {field} name (1-32 of a-z, 0-9, _, - and ., starting with a letter or _), got {}",
                shown(u)
            ),
        ));
    }
    Ok(())
}

fn check_workdir(workdir: Option<&str>) -> Result<(), ValidationError> {
    const F: &str = "workdir";
    let Some(w) = workdir else { return Ok(()) };
    if !w.starts_with('/') {
        return Err(err(
            F,
            format!("must be an absolute path, got {}", shown(w)),
        ));
    }
    if w.len() > WORKDIR_MAX_BYTES {
        return Err(err(
            F,
            format!("must be at most {WORKDIR_MAX_BYTES} bytes, got {}", w.len()),
        ));
    }
    if w.contains('\0') {
        return Err(err(F, "contains a NUL byte"));
    }
    Ok(())
}

fn check_resources(spec: &JobSpec) -> Result<(), ValidationError> {
    let r = spec.resources;
    if !(1..=CPU_MILLIS_MAX).contains(&r.cpu_millis) {
        return Err(err(
            "resources.cpu_millis",
            format!(
                "must be 1-{CPU_MILLIS_MAX} (thousandths of a core; 500 is half a core), got {}",
                r.cpu_millis
            ),
        ));
    }
    if !(MEMORY_MIN_BYTES..=MEMORY_MAX_BYTES).contains(&r.memory_bytes) {
        return Err(err(
            "resources.memory_bytes",
            format!(
                "must be {MEMORY_MIN_BYTES}-{MEMORY_MAX_BYTES} bytes (1 MiB to 1 PiB), got {}",
                r.memory_bytes
            ),
        ));
    }
    if r.gpus > GPUS_MAX {
        return Err(err(
            "resources.gpus",
            format!("must be 0-{GPUS_MAX} whole GPUs, got {}", r.gpus),
        ));
    }
    if spec.max_restarts > MAX_RESTARTS_MAX {
        return Err(err(
            "max_restarts",
            format!("must be 0-{MAX_RESTARTS_MAX}, got {}", spec.max_restarts),
        ));
    }
    Ok(())
}

fn check_tolerations(tolerations: &[Toleration]) -> Result<(), ValidationError> {
    const F: &str = "tolerations";
    if tolerations.len() > LABELS_MAX {
        return Err(err(
            F,
            format!(
                "at most {LABELS_MAX} tolerations are allowed, got {}",
                tolerations.len()
            ),
        ));
    }
    for t in tolerations {
        // A toleration names a taint, so its key and value follow the label (taint) rules.
        let one = BTreeMap::from([(t.key.clone(), t.value.clone().unwrap_or_default())]);
        check_labels(&one).map_err(|e| err(F, e.message))?;
    }
    Ok(())
}

/// Checks every field of `spec`, in the order of the request, and fails on the first one that
/// breaks a rule (see the module docs).
pub fn validate_spec(spec: &JobSpec) -> Result<(), ValidationError> {
    check_job_name(&spec.name)?;
    let n = spec.cluster.chars().count();
    if n == 0 || n > NAME_MAX_CHARS {
        return Err(err(
            "cluster",
            format!("must name a cluster by id or name (1-63 characters), got {n} characters"),
        ));
    }
    check_command(&spec.command)?;
    check_env(&spec.env)?;
    check_workdir(spec.workdir.as_deref())?;
    check_resources(spec)?;
    check_user(spec.user.as_deref())?;
    check_group(spec.group.as_deref())?;
    check_labels(&spec.constraints.labels).map_err(|e| err("constraints.labels", e.message))?;
    check_tolerations(&spec.tolerations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{Constraints, Resources, RestartPolicy};

    fn spec() -> JobSpec {
        JobSpec {
            name: "web-1".into(),
            cluster: "c-000000000001".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()],
            env: BTreeMap::from([("PORT".into(), "80".into())]),
            workdir: None,
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                gpus: 1,
            },
            restart: RestartPolicy::OnFailure,
            max_restarts: 5,
            constraints: Constraints::default(),
            tolerations: vec![],
            user: None,
            group: None,
        }
    }

    fn refused(f: impl FnOnce(&mut JobSpec)) -> ValidationError {
        let mut s = spec();
        f(&mut s);
        validate_spec(&s).unwrap_err()
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate_spec(&spec()), Ok(()));
        let mut s = spec();
        s.name = "推理-服务".into();
        s.workdir = Some("/srv/app".into());
        s.env.insert("_x1".into(), String::new());
        assert_eq!(validate_spec(&s), Ok(()));
    }

    #[test]
    fn names_follow_the_cluster_rules_and_are_not_job_ids() {
        assert_eq!(refused(|s| s.name = String::new()).field, "name");
        assert!(refused(|s| s.name = "a".repeat(64))
            .to_string()
            .ends_with("got 64"));
        assert_eq!(
            refused(|s| s.name = "a_b".into()).to_string(),
            "name: must be 1-63 characters of letters, digits, CJK characters and '-', \
             got '_' at position 2"
        );
        assert!(refused(|s| s.name = "j-0123456789ab".into())
            .message
            .contains("job id"));
        assert_eq!(refused(|s| s.cluster = String::new()).field, "cluster");
    }

    #[test]
    fn an_empty_command_or_program_is_refused() {
        let e = refused(|s| s.command.clear());
        assert_eq!(e.field, "command");
        assert!(e.message.ends_with("got []"), "{e}");
        assert!(refused(|s| s.command = vec![String::new()])
            .message
            .contains("first element"));
        assert!(refused(|s| s.command.push("a\0b".into()))
            .message
            .contains("argument 3 contains a NUL"));
        assert!(
            refused(|s| s.command = vec!["x".into(); COMMAND_MAX_ARGS + 1])
                .message
                .contains("at most 1024 arguments")
        );
        assert!(refused(|s| s.command = vec!["x".repeat(COMMAND_MAX_BYTES)])
            .message
            .contains("bytes in all"));
    }

    #[test]
    fn env_keys_are_portable_names_and_not_reserved() {
        for bad in ["", "1A", "A-B", "A=B", "Ä"] {
            let e = refused(|s| {
                s.env.insert(bad.into(), "v".into());
            });
            assert_eq!(e.field, "env", "{bad}");
            assert!(e.message.contains("must be a letter"), "{bad}: {e}");
        }
        for reserved in [
            "TANDEM_FENCING_TOKEN",
            "TANDEM_JOB_ID",
            "CUDA_VISIBLE_DEVICES",
        ] {
            let e = refused(|s| {
                s.env.insert(reserved.into(), "0".into());
            });
            assert!(e.message.contains("set by the agent"), "{reserved}: {e}");
        }
        assert!(refused(|s| {
            s.env.insert("A".into(), "a\0".into());
        })
        .message
        .contains("NUL"));
        assert!(refused(|s| {
            s.env = (0..=ENV_MAX_VARS)
                .map(|i| (format!("V{i}"), "".into()))
                .collect();
        })
        .message
        .contains("at most 256 variables"));
        assert!(refused(|s| {
            s.env.insert("BIG".into(), "x".repeat(ENV_MAX_BYTES));
        })
        .message
        .contains("bytes in all"));
    }

    #[test]
    fn user_is_a_user_name() {
        assert!(validate_spec(&JobSpec {
            user: Some("svc-web_1".into()),
            ..spec()
        })
        .is_ok());
        for bad in ["", "Root", "1abc", "a b", "x/y", &"a".repeat(33)] {
            let e = refused(|s| s.user = Some(bad.into()));
            assert_eq!(e.field, "user", "{bad:?}: {e}");
            let e = refused(|s| s.group = Some(bad.into()));
            assert_eq!(e.field, "group", "{bad:?}: {e}");
            assert!(e.message.contains("must be a group name"), "{e}");
        }
        assert!(validate_spec(&JobSpec {
            group: Some("video".into()),
            ..spec()
        })
        .is_ok());
    }

    #[test]
    fn workdir_is_absolute() {
        assert_eq!(
            refused(|s| s.workdir = Some("srv".into())).to_string(),
            "workdir: must be an absolute path, got \"srv\""
        );
        assert!(
            refused(|s| s.workdir = Some(format!("/{}", "a".repeat(4096))))
                .message
                .contains("at most 4096")
        );
    }

    #[test]
    fn resources_must_be_above_zero_and_sane() {
        assert_eq!(
            refused(|s| s.resources.cpu_millis = 0).to_string(),
            "resources.cpu_millis: must be 1-1000000 (thousandths of a core; 500 is half a \
             core), got 0"
        );
        assert_eq!(
            refused(|s| s.resources.memory_bytes = 0).field,
            "resources.memory_bytes"
        );
        assert_eq!(
            refused(|s| s.resources.memory_bytes = MEMORY_MAX_BYTES + 1).field,
            "resources.memory_bytes"
        );
        assert_eq!(refused(|s| s.resources.gpus = 65).field, "resources.gpus");
        assert_eq!(refused(|s| s.max_restarts = 10_001).field, "max_restarts");
    }

    #[test]
    fn constraints_and_tolerations_follow_the_label_rules() {
        let e = refused(|s| {
            s.constraints
                .labels
                .insert("tandem.io/x".into(), "1".into());
        });
        assert_eq!(e.field, "constraints.labels");
        assert!(e.message.contains("reserved prefix"), "{e}");
        let e = refused(|s| {
            s.tolerations.push(Toleration {
                key: "a=b".into(),
                value: None,
                effect: None,
            })
        });
        assert_eq!(e.field, "tolerations");
        let e = refused(|s| {
            s.tolerations = (0..21)
                .map(|i| Toleration {
                    key: format!("k{i}"),
                    value: None,
                    effect: None,
                })
                .collect()
        });
        assert!(e.message.contains("at most 20 tolerations"), "{e}");
    }
}
