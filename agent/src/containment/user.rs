//! The user jobs run as (`job_user` in the agent's config): its uid, primary gid and
//! supplementary groups, looked up once when the config is checked, and switched to in the
//! job's child between fork and exec (`setgroups`, `setgid`, `setuid`: async-signal-safe), after
//! it has joined its cgroups (which needs root) and before `PR_SET_PDEATHSIG` (which a change
//! of credentials clears).
//!
//! By default an agent that runs as root runs its jobs as `nobody` (its primary group, or
//! `job_group`); root only where the config says so (`job_user = "root"`, or `root` in
//! `allowed_job_users` for a job that names it). An agent that is not root cannot switch users,
//! and runs jobs as itself. With a job user, a job cannot read what the agent keeps in its
//! state dir: the dir is then `0711` (enter, not list), and everything in it is the agent's,
//! `0700` or `0600`; the job's own working dir is made its own.

use serde::{Deserialize, Serialize};
use std::ffi::CString;

/// A user to run jobs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUser {
    /// The name, as configured.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its supplementary groups (the primary one among them).
    pub groups: Vec<u32>,
}

impl JobUser {
    /// Looks `name` up in the user database (`getpwnam_r`, `getgrouplist`).
    pub fn lookup(name: &str) -> Result<Self, String> {
        let c = CString::new(name).map_err(|_| format!("{name:?} holds a NUL byte"))?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: zeroed passwd is a valid out-buffer; `buf` outlives the call and `pw`'s use.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 || out.is_null() {
            return Err(format!("no user {name:?} on this host"));
        }
        let (uid, gid) = (pw.pw_uid, pw.pw_gid);
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        groups.truncate(if rc < 0 { 0 } else { n.max(0) as usize });
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Ok(Self {
            name: name.to_string(),
            uid,
            gid,
            groups,
        })
    }

    /// This user under `group` instead of its primary group (its supplementary groups kept,
    /// `group` added to them).
    pub fn with_group(mut self, group: &JobGroup) -> Self {
        self.gid = group.gid;
        if !self.groups.contains(&group.gid) {
            self.groups.push(group.gid);
        }
        self
    }

    /// Whether the user database makes this user a member of `gid` (its primary group
    /// included), as `getgrouplist` says.
    pub fn member_of(&self, gid: u32) -> bool {
        self.groups.contains(&gid)
    }

    /// In the child between fork and exec: becomes this user for good. Only async-signal-safe
    /// calls.
    pub fn become_in_child(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: `groups` is a valid array of `len` gids; the rest take plain integers.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(err());
            }
            if libc::setgid(self.gid) != 0 {
                return Err(err());
            }
            if libc::setuid(self.uid) != 0 {
                return Err(err());
            }
        }
        Ok(())
    }
}

/// A group to run jobs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGroup {
    /// The name, as configured or named.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl JobGroup {
    /// Looks `name` up in the group database (`getgrnam_r`).
    pub fn lookup(name: &str) -> Result<Self, String> {
        let c = CString::new(name).map_err(|_| format!("{name:?} holds a NUL byte"))?;
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: zeroed group is a valid out-buffer; `buf` outlives the call and `gr`'s use.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 || out.is_null() {
            return Err(format!("no group {name:?} on this host"));
        }
        Ok(Self {
            name: name.to_string(),
            gid: gr.gr_gid,
        })
    }
}

/// The user an agent runs jobs as when its config names none: `nobody` if the agent is root
/// (it must not hand root to every job), else `None` (the agent's own: it cannot switch).
pub fn default_job_user() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0).then_some(DEFAULT_JOB_USER)
}

/// The default job user of an agent that runs as root.
pub const DEFAULT_JOB_USER: &str = "nobody";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_and_a_missing_user_is_named() {
        let root = JobUser::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let e = JobUser::lookup("no-such-user-tandem").unwrap_err();
        assert!(e.contains("no-such-user-tandem"), "{e}");
        let g = JobGroup::lookup("root").unwrap();
        assert_eq!(g.gid, 0);
        assert!(root.member_of(0));
        let e = JobGroup::lookup("no-such-group-tandem").unwrap_err();
        assert!(e.contains("no group"), "{e}");
        let mut other = root.clone();
        other.groups = vec![5];
        let as_root_group = other.with_group(&g);
        assert_eq!((as_root_group.gid, as_root_group.groups), (0, vec![5, 0]));
    }
}
