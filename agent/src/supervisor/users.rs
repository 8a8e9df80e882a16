//! Which user a job runs as: the agent's `job_user` by default, or one its spec names that the
//! agent's `allowed_job_users` lists (`root` only if listed); any other is refused. Either way
//! the state dir is opened just enough for the job to enter its own working dir and nothing
//! else of the agent's (see `crate::containment::user`).

use super::api::io_err;
use super::api::Supervisor;
use super::SupervisorError;
use crate::containment::user::JobUser;
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
        mut self,
        user: Option<JobUser>,
        allowed: Vec<String>,
    ) -> Result<Self, SupervisorError> {
        use std::os::unix::fs::PermissionsExt;
        if user.is_some() || !allowed.is_empty() {
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
        Ok(self)
    }

    /// The user a job runs as: the default, or the one it names if that is allowed here.
    pub(super) fn user_for(&self, named: Option<&str>) -> Result<Option<JobUser>, SupervisorError> {
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
