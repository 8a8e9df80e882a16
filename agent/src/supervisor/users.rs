//! Which user a job runs as: the agent's `job_user` by default (`nobody` for an agent that runs
//! as root), or one its spec names that the agent's `allowed_job_users` lists (`root` only if
//! listed); any other is refused. Its group: its user's primary one (the default user's:
//! `job_group` if set), or one its spec names that its user is a member of or that
//! `allowed_job_groups` lists; any other is refused. Either way
//! the state dir is opened just enough for the job to enter its own working dir and nothing
//! else of the agent's (see `crate::containment::user`).

use super::api::io_err;
use super::api::Supervisor;
use super::SupervisorError;
use crate::containment::user::{JobGroup, JobUser};
use std::path::Path;

impl Supervisor {
    /// Runs jobs as `user` (`None`: as the agent's own user). With a user, the state dir
    /// becomes `0711` and `jobs/` `0700`: the job can enter its own working dir, and read
    /// nothing else of the agent's (its key, other jobs' specs and environments).
    pub fn with_job_user(self, user: Option<JobUser>) -> Result<Self, SupervisorError> {
        self.with_job_users(user, Vec::new())
    }

    /// Runs jobs as `user` by default, and as one of `allowed` when a job names it (`root`
    /// only if listed). With either, the dirs are opened as [`Supervisor::with_job_user`] says.
    pub fn with_job_users(
        self,
        user: Option<JobUser>,
        allowed: Vec<String>,
    ) -> Result<Self, SupervisorError> {
        self.with_job_accounts(user, allowed, Vec::new())
    }

    /// As [`Supervisor::with_job_users`], and a job may name one of `allowed_groups` as its
    /// group (besides its user's own groups).
    pub fn with_job_accounts(
        mut self,
        user: Option<JobUser>,
        allowed: Vec<String>,
        allowed_groups: Vec<String>,
    ) -> Result<Self, SupervisorError> {
        use std::os::unix::fs::PermissionsExt;
        // Only for jobs that may run as someone else than root: root needs no way in.
        let other_than_root =
            user.as_ref().is_some_and(|u| u.uid != 0) || allowed.iter().any(|a| a != "root");
        if other_than_root {
            let state = self
                .jobs_dir
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            for (dir, mode) in [
                (&state, 0o711),
                (&self.jobs_dir, 0o700),
                (&self.work_dir, 0o711),
            ] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("making {} {mode:o}", dir.display())))?;
            }
        }
        self.job_user = user;
        self.allowed_users = allowed;
        self.allowed_groups = allowed_groups;
        Ok(self)
    }

    /// The user (and group) a job runs as: the default, or the user it names if that is
    /// allowed here; under its user's primary group (the default user: the configured
    /// `job_group`), or the group it names if its user is a member or the group is allowed.
    pub(super) fn user_for(
        &self,
        named: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<JobUser>, SupervisorError> {
        let user = self.named_user(named)?;
        let Some(g) = group else {
            return Ok(user);
        };
        let Some(user) = user else {
            return Err(SupervisorError::InvalidJob(format!(
                "the job asks to run under group {g:?}, but this node runs jobs as its agent's own user, which cannot switch groups"
            )));
        };
        let group = JobGroup::lookup(g).map_err(|e| {
            SupervisorError::InvalidJob(format!("the job asks to run under group {g:?}: {e}"))
        })?;
        if user.gid == group.gid
            || user.member_of(group.gid)
            || self.allowed_groups.iter().any(|a| a == g)
        {
            return Ok(Some(user.with_group(&group)));
        }
        Err(SupervisorError::InvalidJob(format!(
            "the job asks to run under group {g:?}, which this node does not allow: user {:?} is not a member, and its agent's allowed_job_groups is {:?}",
            user.name, self.allowed_groups
        )))
    }

    fn named_user(&self, named: Option<&str>) -> Result<Option<JobUser>, SupervisorError> {
        let Some(name) = named else {
            return Ok(self.job_user.clone());
        };
        if self.job_user.as_ref().is_some_and(|u| u.name == name) {
            return Ok(self.job_user.clone());
        }
        if !self.allowed_users.iter().any(|a| a == name) {
            return Err(SupervisorError::InvalidJob(format!(
                "the job asks to run as user {name:?}, which this node does not allow (its agent's allowed_job_users: {:?})",
                self.allowed_users
            )));
        }
        JobUser::lookup(name)
            .map(Some)
            .map_err(SupervisorError::InvalidJob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::ids::NodeId;

    #[test]
    fn a_named_group_needs_membership_or_the_config_and_an_unknown_one_is_named() {
        let (Ok(nobody), Ok(adm)) = (JobUser::lookup("nobody"), JobGroup::lookup("adm")) else {
            println!("skipped: no user nobody or group adm here");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(d.path(), NodeId::random(), "n", std::time::Duration::ZERO)
            .unwrap()
            .with_job_accounts(Some(nobody.clone()), vec![], vec!["adm".into()])
            .unwrap();
        let u = sup.user_for(None, None).unwrap().unwrap();
        assert_eq!((u.uid, u.gid), (nobody.uid, nobody.gid));
        let u = sup.user_for(None, Some("adm")).unwrap().unwrap();
        assert_eq!(u.gid, adm.gid, "allowed by the config");
        let e = sup.user_for(None, Some("root")).unwrap_err().to_string();
        assert!(
            e.contains("does not allow") && e.contains("not a member"),
            "{e}"
        );
        let e = sup
            .user_for(None, Some("no-such-group-tandem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no group"), "{e}");
        let e = sup.user_for(Some("root"), None).unwrap_err().to_string();
        assert!(
            e.contains("does not allow"),
            "root is not allowed unless listed: {e}"
        );
        // An agent that runs jobs as itself cannot switch groups.
        let own =
            Supervisor::new(d.path(), NodeId::random(), "n", std::time::Duration::ZERO).unwrap();
        let e = own.user_for(None, Some("adm")).unwrap_err().to_string();
        assert!(e.contains("cannot switch groups"), "{e}");
    }
}
