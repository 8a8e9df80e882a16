//! The units under a real systemd, not a fake notify socket: a minimal Debian booted with
//! systemd as PID 1 in `systemd-nspawn` (sharing the host's network), the built binaries, both
//! units and both configs installed into it as `systemd/README.md` says, started with
//! `systemctl`. Checked, in order:
//!
//! 1. both units are `active` once `systemctl enable --now` returns (Type=notify: after READY=1),
//!    with the daemons' STATUS= lines;
//! 2. the agent joins the coordinator (the node is `ready` in the admin API);
//! 3. `systemctl restart tandem-coordinator` with a job running: the copy rides through the
//!    planned restart with its pid and token, and the node is never declared down; then
//!    `systemctl restart tandem-agent` with a job running: KillMode=process leaves the job and
//!    its shim running (systemd says so in the journal), the job runs in a cgroup of its own
//!    under the agent's unit (`Delegate=yes`: the subtree is the agent's), its shim in the
//!    sibling leaf; the stopping agent hands its lease over, the new agent re-adopts the shim,
//!    and the job keeps its pid and token, past the hand-over lease, never declared down;
//! 4. `kill -STOP` of the agent's main process: the shim fences the job at the lease, long
//!    before systemd's watchdog kills the frozen agent and restarts it; the node comes back and
//!    the job runs again;
//! 5. `systemctl stop` of both units is clean (`inactive`, result `success`, exit status 0), and
//!    the last job copy is fenced by its shim at the end of the stop's hand-over lease, not
//!    killed by systemd.
//!
//! The root file system (`debootstrap --variant=minbase`, about a minute) is cached in
//! `target/nspawn-rootfs/` and booted with `--volatile=overlay`, so every run starts from the
//! clean cache and writes only to a tmpfs; after the first run the test costs tens of seconds,
//! most of them the watchdog's 10 s. The machine is killed at the end, pass or fail.
//!
//! Skipped, with the reason printed: when not root, when `debootstrap`/`systemd-nspawn` are
//! missing and `apt-get install` cannot install them, when the root file system cannot be built
//! (no Debian mirror), when the machine does not boot here, or with `TANDEM_SKIP_NSPAWN=1`.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tandem_tests::*;

/// The coordinator's restart hold in the machine (short: the steps after it need ordinary
/// leases).
const RESTART_HOLD: Duration = Duration::from_millis(3000);
/// The agent's hand-over in the machine (short: the stop at the end waits it out).
const HANDOVER: Duration = Duration::from_millis(3000);
/// The Debian release in the machine.
const SUITE: &str = "bookworm";
/// Packages added to minbase.
const INCLUDE: &str = "systemd,systemd-sysv,dbus";
/// Written into the cached root once it is complete; a cache with another text is rebuilt.
const ROOTFS_VERSION: &str = "tandem nspawn rootfs 1: bookworm minbase +systemd,systemd-sysv,dbus";
const MARKER: &str = ".tandem-rootfs";
/// The default mirror (`TANDEM_DEBIAN_MIRROR` overrides it).
const MIRROR: &str = "http://deb.debian.org/debian";
/// PATH inside the machine.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The file the test job appends `<fencing token> <pid> <unix ns>` to, every 100 ms.
const WRITER_OUT: &str = "/var/lib/tandem-agent/nspawn-writer.out";
/// Bound on anything that should take a second or two.
const LONG: Duration = Duration::from_secs(30);
/// Scheduling slack added to the fence bound (lease + kill timeout).
const SLACK: Duration = Duration::from_millis(1000);

fn skip(reason: &str) {
    println!("SKIPPED: {reason}");
}

fn step(t0: Instant, what: &str) {
    println!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// What a finished command left.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` (stdin closed, output to files) for at most `limit`; killed after that.
fn run_for(cmd: &mut Command, limit: Duration) -> Result<Out> {
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let status = wait_for(limit, "a command to finish", || {
        child.try_wait().ok().flatten()
    });
    let status = match status {
        Ok(s) => Some(s),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let mut stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {limit:?})"));
    }
    Ok(Out {
        ok: status.is_some_and(|s| s.success()),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr,
    })
}

/// Polls `f` every `every` until it returns `Some`, or fails after `limit` with `what`.
fn poll<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// The last lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `name` on PATH, or in /usr/sbin or /sbin (where root's tools live).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Finds (or installs, with apt-get, bounded) debootstrap, systemd-nspawn and nsenter; `Err`
/// says why they cannot be had.
fn tools() -> std::result::Result<(), String> {
    let missing = || {
        ["debootstrap", "systemd-nspawn", "nsenter"]
            .into_iter()
            .filter(|t| which(t).is_none())
            .collect::<Vec<_>>()
    };
    if missing().is_empty() {
        return Ok(());
    }
    println!(
        "{:?} missing: apt-get install -y debootstrap systemd-container",
        missing()
    );
    let Some(apt) = which("apt-get") else {
        return Err(format!("{:?} missing and there is no apt-get", missing()));
    };
    let apt_run = |args: &[&str]| {
        run_for(
            Command::new("timeout")
                .args(["--kill-after=10s", "300s"])
                .arg(&apt)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(320),
        )
    };
    let install = ["install", "-y", "debootstrap", "systemd-container"];
    let mut out = apt_run(&install);
    if !out.as_ref().is_ok_and(|o| o.ok) {
        // A stale package list is the usual reason: update once and try again.
        let _ = apt_run(&["update"]);
        out = apt_run(&install);
    }
    if missing().is_empty() {
        return Ok(());
    }
    Err(format!(
        "{:?} missing and `apt-get install -y debootstrap systemd-container` did not install \
         them: {}",
        missing(),
        out.map(|o| tail(&o.text(), 5))
            .unwrap_or_else(|e| e.to_string())
    ))
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v
}

/// Removes a root file system tree, after detaching anything mounted in it (a debootstrap that
/// was killed can leave its /proc and /sys mounted): never deletes through a mount.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_below(dir) {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes())?;
        // SAFETY: umount2 on a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let left = mounts_below(dir);
    ensure!(
        left.is_empty(),
        "not removing {}: still mounted below it: {left:?}",
        dir.display()
    );
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// The cached root file system, built once (under a lock, into a temporary directory renamed
/// into place when complete); `Ok(Err)` says why it cannot be built here.
fn rootfs(t0: Instant) -> Result<std::result::Result<PathBuf, String>> {
    let base = bin_dir()
        .parent()
        .context("the target directory")?
        .join("nspawn-rootfs");
    std::fs::create_dir_all(&base)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join(".lock"))?;
    poll(
        Duration::from_secs(900),
        Duration::from_millis(200),
        "the lock on the cached root (another test building it?)",
        || {
            // SAFETY: flock on a file descriptor we own; released when `lock` drops.
            (unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0)
                .then_some(())
        },
    )?;
    let dir = base.join(SUITE);
    if std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|v| v.trim() == ROOTFS_VERSION) {
        step(t0, &format!("cached root file system: {}", dir.display()));
        return Ok(Ok(dir));
    }
    // Holding the lock: anything else here is stale (an older version, a killed build).
    remove_tree(&dir)?;
    for e in std::fs::read_dir(&base)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{SUITE}.tmp-"))
        {
            remove_tree(&e.path())?;
        }
    }
    let tmp = base.join(format!("{SUITE}.tmp-{}", std::process::id()));
    let mirror = std::env::var("TANDEM_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.to_string());
    step(
        t0,
        &format!(
            "building the root file system (once): debootstrap --variant=minbase \
             --include={INCLUDE} {SUITE} {} {mirror}",
            tmp.display()
        ),
    );
    let out = run_for(
        Command::new("timeout")
            .args([
                "--kill-after=10s",
                "600s",
                "debootstrap",
                "--variant=minbase",
            ])
            .arg(format!("--include={INCLUDE}"))
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror),
        Duration::from_secs(620),
    )?;
    if !out.ok {
        let _ = std::fs::write(base.join("debootstrap.log"), out.text());
        remove_tree(&tmp)?;
        return Ok(Err(format!(
            "debootstrap of {SUITE} from {mirror} failed (full log in {}):\n{}",
            base.join("debootstrap.log").display(),
            tail(&out.text(), 8)
        )));
    }
    std::fs::write(tmp.join(MARKER), ROOTFS_VERSION)?;
    std::fs::rename(&tmp, &dir)?;
    step(t0, &format!("root file system built: {}", dir.display()));
    Ok(Ok(dir))
}

/// A cgroup of its own in each hierarchy that holds this process (hybrid: `name=systemd` and
/// the unified one; or the one cgroup2 tree), so that two machines started from the same cgroup
/// do not share nspawn's `payload` cgroup. Best effort: none where they cannot be made.
fn own_cgroups(name: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path_of = |prefix: &str| {
        own.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, p)| p.to_string()))
    };
    let mut trees = Vec::new();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        trees.push(("/sys/fs/cgroup", path_of("0::")));
    } else {
        if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            trees.push(("/sys/fs/cgroup/unified", path_of("0::")));
        }
        if Path::new("/sys/fs/cgroup/systemd/cgroup.procs").exists() {
            trees.push(("/sys/fs/cgroup/systemd", path_of(":name=systemd:")));
        }
    }
    trees
        .into_iter()
        .filter_map(|(mnt, p)| {
            let p = p?;
            let dir = Path::new(mnt)
                .join(p.trim_start_matches('/'))
                .join(format!("tandem-nspawn-{name}"));
            std::fs::create_dir(&dir).ok().map(|_| dir)
        })
        .collect()
}

/// A booted machine: its `systemd-nspawn` process and the pid (on the host) of its systemd.
/// Dropping it kills the machine (SIGKILL to its PID 1 ends every process in it), reaps nspawn
/// and removes the cgroups made for it.
struct Machine {
    name: String,
    nspawn: Child,
    leader: i32,
    log: PathBuf,
    cgroups: Vec<PathBuf>,
}

/// The pid of a child of `parent` that is PID 1 of its own pid namespace.
fn pid1_child_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let ppid: i32 = field("PPid:")?.parse().ok()?;
        let nspid = field("NSpid:")?;
        (ppid == parent && nspid.split_whitespace().last() == Some("1")).then_some(pid)
    })
}

impl Machine {
    /// Boots `root` as machine `name` (a tmpfs overlay over it: the root stays clean) and waits
    /// until its systemd has finished booting; `Ok(Err)` says why it does not boot here.
    fn boot(root: &Path, name: &str, dir: &Path) -> Result<std::result::Result<Machine, String>> {
        let cgroups = own_cgroups(name);
        let log = dir.join("nspawn.log");
        let mut script = String::new();
        for cg in &cgroups {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", cg.display()));
        }
        script.push_str("exec \"$@\"");
        let logf = File::create(&log)?;
        // --register=no --keep-unit: no machined or system bus needed on the host.
        let nspawn = Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(which("systemd-nspawn").context("systemd-nspawn")?)
            .arg("--quiet")
            .arg("--directory")
            .arg(root)
            .args([
                "--boot",
                &format!("--machine={name}"),
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                "--console=read-only",
            ])
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()?;
        let mut m = Machine {
            name: name.to_string(),
            nspawn,
            leader: 0,
            log,
            cgroups,
        };
        let nspawn_pid = m.nspawn.id() as i32;
        let leader = poll(
            LONG,
            Duration::from_millis(20),
            "the machine's PID 1",
            || {
                if m.nspawn.try_wait().ok().flatten().is_some() {
                    return Some(None);
                }
                pid1_child_of(nspawn_pid).map(Some)
            },
        );
        match leader {
            Ok(Some(pid)) => m.leader = pid,
            Ok(None) | Err(_) => {
                return Ok(Err(format!(
                    "systemd-nspawn --boot did not start a machine here:\n{}",
                    tail(&m.log_text(), 15)
                )))
            }
        }
        // PID 1 is there before it has exec'd systemd ("offline" until then): ask again.
        let mut last = String::new();
        let booted = poll(
            Duration::from_secs(90),
            Duration::from_millis(100),
            "the machine to boot",
            || {
                let o = m
                    .cmd(
                        &["systemctl", "is-system-running", "--wait"],
                        Duration::from_secs(60),
                    )
                    .ok()?;
                last = o.text().trim().to_string();
                let state = o.stdout.trim();
                (state == "running" || state == "degraded").then(|| state.to_string())
            },
        );
        let state = match booted {
            Ok(s) => s,
            Err(_) => {
                return Ok(Err(format!(
                    "the machine did not finish booting (`systemctl is-system-running`: \
                     {last:?}):\n{}",
                    tail(&m.log_text(), 15)
                )))
            }
        };
        if state == "degraded" {
            println!(
                "the machine booted degraded:\n{}",
                m.cmd(&["systemctl", "--failed", "--no-legend"], LONG)?
                    .text()
            );
        }
        Ok(Ok(m))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `args` run inside the machine (all its namespaces), for at most `limit`.
    fn cmd(&self, args: &[&str], limit: Duration) -> Result<Out> {
        run_for(
            Command::new("nsenter")
                .arg("--target")
                .arg(self.leader.to_string())
                .args(["--all", "--wd=/"])
                .args(args)
                .env_clear()
                .env("PATH", PATH)
                .env("LANG", "C")
                .env("SYSTEMD_COLORS", "0")
                .env("SYSTEMD_PAGER", ""),
            limit,
        )
    }

    /// A shell script run inside the machine (`sh -e`) that must succeed; its stdout.
    fn sh(&self, script: &str) -> Result<String> {
        let o = self.cmd(&["/bin/sh", "-ec", script], Duration::from_secs(60))?;
        ensure!(
            o.ok,
            "in the machine, failed: {script}\n{}",
            tail(&o.text(), 30)
        );
        Ok(o.stdout)
    }

    /// One property of a unit (`systemctl show -p`).
    fn prop(&self, unit: &str, prop: &str) -> Result<String> {
        Ok(self
            .sh(&format!("systemctl show --property={prop} --value {unit}"))?
            .trim()
            .to_string())
    }

    /// The journal of `unit`, messages only.
    fn journal(&self, unit: &str) -> String {
        self.cmd(&["journalctl", "--no-pager", "-o", "cat", "-u", unit], LONG)
            .map(|o| o.text())
            .unwrap_or_else(|e| e.to_string())
    }

    /// A path inside the machine, seen from the host.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.leader))
    }

    /// Writes a file inside the machine.
    fn write(&self, p: &str, data: &[u8], mode: u32) -> Result<()> {
        let dst = self.path(p);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&dst, data).with_context(|| format!("writing {p} in the machine"))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Prints what helps after a failure.
    fn diagnostics(&self) {
        let o = self.cmd(
            &[
                "sh",
                "-c",
                "systemctl status --no-pager --lines=0 tandem-coordinator tandem-agent; \
                 journalctl --no-pager -o short-monotonic -u tandem-coordinator -u tandem-agent \
                 | tail -n 150; tail -n 40 /var/lib/tandem-agent/jobs/*/shim.log",
            ],
            LONG,
        );
        println!(
            "--- machine {} ---\n{}",
            self.name,
            o.map(|o| o.text()).unwrap_or_else(|e| e.to_string())
        );
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.leader > 0 && self.nspawn.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2). PID 1 of the machine's pid namespace: the kernel kills every
            // process in it, and nspawn then exits.
            unsafe { libc::kill(self.leader, libc::SIGKILL) };
        }
        let gone = wait_for(Duration::from_secs(15), "systemd-nspawn to exit", || {
            self.nspawn.try_wait().ok().flatten()
        });
        if gone.is_err() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for cg in &self.cgroups {
            // Deepest first; a cgroup that still holds a process stays (and is reported).
            let mut dirs = vec![];
            let mut stack = vec![cg.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    stack.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                dirs.push(d);
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            if cg.exists() {
                println!("could not remove the cgroup {}", cg.display());
            }
        }
    }
}

/// A free port on 127.0.0.1 (TCP or UDP), to write into a config.
fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// `text` with `from` replaced by `to`; fails if `from` is not there (the shipped file changed).
fn replace(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(text.contains(from), "no {from:?} in:\n{text}");
    Ok(text.replace(from, to))
}

/// `key = <number>` in a TOML text.
fn toml_u64(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("no `{key} = N` in the config"))
}

/// Unix nanoseconds now.
fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A CLOCK_MONOTONIC time in µs (systemd's `*TimestampMonotonic`; the machine shares the
/// host's clocks) as Unix nanoseconds.
fn mono_us_to_unix_ns(us: u64) -> u128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime into a timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    (real - mono + us as i128 * 1000) as u128
}

/// One line of the writer job: its fencing token, its pid (in the machine), Unix ns.
#[derive(Clone, Copy, Debug)]
struct Line {
    token: u64,
    pid: u32,
    ns: u128,
}

fn lines(m: &Machine) -> Vec<Line> {
    std::fs::read_to_string(m.path(WRITER_OUT))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Line {
                token: it.next()?.parse().ok()?,
                pid: it.next()?.parse().ok()?,
                ns: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The lines of the copy with `token`: one pid, its first and last line.
fn copy_of(all: &[Line], token: u64) -> Result<(u32, u128, u128)> {
    let mine: Vec<&Line> = all.iter().filter(|l| l.token == token).collect();
    let first = mine
        .first()
        .with_context(|| format!("no line of copy {token}"))?;
    ensure!(
        mine.iter().all(|l| l.pid == first.pid),
        "copy {token} wrote from two pids"
    );
    let last = mine.iter().map(|l| l.ns).max().unwrap_or(first.ns);
    let start = mine.iter().map(|l| l.ns).min().unwrap_or(first.ns);
    Ok((first.pid, start, last))
}

/// No two copies ever wrote at the same time: each token's lines end before the next begin.
fn no_overlap(all: &[Line]) -> Result<()> {
    let mut tokens: Vec<u64> = all.iter().map(|l| l.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    for w in tokens.windows(2) {
        let (_, _, last) = copy_of(all, w[0])?;
        let (_, first, _) = copy_of(all, w[1])?;
        ensure!(
            last < first,
            "two copies ran at once: {} wrote until {last}, {} from {first}",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// How the shim recorded the end of the copy with `token`, from the job's `shim.log`.
fn shim_end(m: &Machine, job: &str, token: u64) -> Option<String> {
    let log =
        std::fs::read_to_string(m.path(&format!("/var/lib/tandem-agent/jobs/{job}/shim.log")))
            .ok()?;
    let mut it = log
        .lines()
        .skip_while(|l| !(l.contains("job started") && l.contains(&format!("token={token} "))));
    it.next()?;
    it.find(|l| l.contains("job ended")).map(str::to_string)
}

/// The job's current copy: token, once running and written at least 5 lines.
fn wait_copy_above(m: &Machine, api: &Api, job: &str, above: u64) -> Result<(u64, u32)> {
    poll(
        LONG,
        Duration::from_millis(50),
        &format!("a copy of the job with a token above {above} running and writing"),
        || {
            let j = api.get(&format!("/v1/jobs/{job}")).ok()?;
            let tok = j["fencing_token"].as_u64()?;
            let all = lines(m);
            let n = all.iter().filter(|l| l.token == tok).count();
            (j["state"] == "running" && tok > above && n >= 5)
                .then(|| copy_of(&all, tok).ok().map(|c| (tok, c.0)))?
        },
    )
}

fn wait_ready(api: &Api, node: &str) -> Result<()> {
    wait_for(LONG, &format!("node {node} ready"), || {
        (api.state(node).as_deref() == Some("ready")).then_some(())
    })
}

#[test]
fn units_under_real_systemd_in_nspawn() -> Result<()> {
    let t0 = Instant::now();
    if std::env::var_os("TANDEM_SKIP_NSPAWN").is_some_and(|v| v == "1") {
        skip("TANDEM_SKIP_NSPAWN=1");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root (booting a machine with systemd-nspawn needs root)");
        return Ok(());
    }
    if let Err(why) = tools() {
        skip(&why);
        return Ok(());
    }
    let root = match rootfs(t0)? {
        Ok(r) => r,
        Err(why) => {
            skip(&why);
            return Ok(());
        }
    };
    let tmp = tempfile::tempdir()?;
    let name = format!("tandem-e2e-{}-{:04x}", std::process::id(), unix_ns() as u16);
    step(t0, &format!("booting machine {name}"));
    let m = match Machine::boot(&root, &name, tmp.path())? {
        Ok(m) => m,
        Err(why) => {
            skip(&why);
            return Ok(());
        }
    };
    step(
        t0,
        &format!("machine up (systemd is PID 1, host pid {})", m.leader),
    );
    let r = scenario(&m, t0);
    if r.is_err() {
        m.diagnostics();
    }
    drop(m);
    step(t0, "machine terminated");
    r
}

fn scenario(m: &Machine, t0: Instant) -> Result<()> {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let read = |f: &str| std::fs::read_to_string(units.join(f));

    // --- Install, as systemd/README.md says (runuser where it says sudo: not in minbase).
    step(t0, "installing the binaries, units and configs");
    for b in ["tandem-coordinator", "tandem-agent", "tandemctl"] {
        let dst = m.path(&format!("/usr/local/bin/{b}"));
        std::fs::copy(bin(b), &dst).with_context(|| format!("copying {b}"))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    }
    let (admin_port, quic_port) = (free_port(false)?, free_port(true)?);
    let coord_toml = read("coordinator.toml")?;
    let lease = Duration::from_millis(toml_u64(&coord_toml, "lease_ms")?);
    let kill = Duration::from_millis(toml_u64(&coord_toml, "fence_kill_timeout_ms")?);
    let fence_bound = lease + kill + SLACK;
    // A short hold, so that the steps after the coordinator's restart run on ordinary leases.
    let coord_toml = replace(
        &coord_toml,
        "# restart_hold_ms = 15000",
        &format!("restart_hold_ms = {}", RESTART_HOLD.as_millis()),
    )?;
    let coord_toml = replace(
        &coord_toml,
        "admin_addr = \"127.0.0.1:7070\"",
        &format!("admin_addr = \"127.0.0.1:{admin_port}\""),
    )?;
    // The machine shares the host's network: only loopback.
    let coord_toml = replace(
        &coord_toml,
        "quic_addr = \"0.0.0.0:7443\"",
        &format!("quic_addr = \"127.0.0.1:{quic_port}\""),
    )?;
    let node = m.name.clone();
    let agent_toml = replace(
        &read("agent.toml")?,
        "coordinator = \"coordinator.example:7443\"",
        &format!("coordinator = \"127.0.0.1:{quic_port}\""),
    )?;
    let agent_toml = replace(
        &agent_toml,
        "# name = \"edge-01\"",
        &format!("name = \"{node}\""),
    )?;
    // The writer job appends to a file in the agent's state dir, which only root can reach
    // (jobs run as `nobody` by default).
    let agent_toml = replace(
        &agent_toml,
        "# job_user = \"nobody\"",
        "job_user = \"root\"",
    )?;
    let agent_toml = replace(
        &agent_toml,
        "# agent_handover_ms = 10000",
        &format!("agent_handover_ms = {}", HANDOVER.as_millis()),
    )?;
    let stage = "/root/tandem-install";
    m.write(
        &format!("{stage}/coordinator.toml"),
        coord_toml.as_bytes(),
        0o644,
    )?;
    m.write(&format!("{stage}/agent.toml"), agent_toml.as_bytes(), 0o644)?;
    for u in ["tandem-coordinator.service", "tandem-agent.service"] {
        m.write(&format!("{stage}/{u}"), read(u)?.as_bytes(), 0o644)?;
    }

    // --- 1. The coordinator: READY=1 before `enable --now` returns.
    m.sh(&format!(
        "install -d -m 0755 /etc/tandem
         useradd --system --home /var/lib/tandem-coordinator --shell /usr/sbin/nologin tandem
         install -m 0644 {stage}/coordinator.toml /etc/tandem/coordinator.toml
         install -d -o tandem -g tandem -m 0700 /var/lib/tandem-coordinator
         runuser -u tandem -- tandem-coordinator init --data-dir /var/lib/tandem-coordinator/init
         mv /var/lib/tandem-coordinator/init/* /var/lib/tandem-coordinator/
         rmdir /var/lib/tandem-coordinator/init
         install -m 0644 {stage}/tandem-coordinator.service /etc/systemd/system/
         systemctl daemon-reload
         systemctl enable --now tandem-coordinator"
    ))?;
    let active = m.sh("systemctl is-active tandem-coordinator")?;
    ensure!(active.trim() == "active", "coordinator: {active}");
    let status = m.prop("tandem-coordinator", "StatusText")?;
    ensure!(
        status.starts_with("serving"),
        "coordinator STATUS=: {status}"
    );
    step(
        t0,
        &format!("tandem-coordinator active after READY; STATUS={status}"),
    );
    let token = std::fs::read_to_string(m.path("/var/lib/tandem-coordinator/admin.token"))?;
    let api = Api::new(
        format!("http://127.0.0.1:{admin_port}"),
        token.trim().to_string(),
    );
    api.post("/v1/clusters", &json!({"name": "nspawn", "mode": "pool"}))?;

    // --- 2. The agent, with a join token made by tandemctl in the machine.
    let made = m.sh(&format!(
        "tandemctl --endpoint http://127.0.0.1:{admin_port} \
         --token-file /var/lib/tandem-coordinator/admin.token -o json \
         tokens create --uses 1 --cluster nspawn"
    ))?;
    let join: Value = serde_json::from_str(&made).with_context(|| made.clone())?;
    let join = join["token"].as_str().context("token")?;
    m.sh(&format!(
        "install -m 0644 {stage}/agent.toml /etc/tandem/agent.toml
         printf '%s\\n' '{join}' | install -m 0600 /dev/stdin /etc/tandem/join.token
         install -m 0644 {stage}/tandem-agent.service /etc/systemd/system/
         systemctl daemon-reload
         systemctl enable --now tandem-agent"
    ))?;
    let active = m.sh("systemctl is-active tandem-agent")?;
    ensure!(active.trim() == "active", "agent: {active}");
    step(t0, "tandem-agent active after READY");
    wait_ready(&api, &node)?;
    let status = poll(
        LONG,
        Duration::from_millis(100),
        "the agent's STATUS= to say connected",
        || {
            let s = m.prop("tandem-agent", "StatusText").ok()?;
            s.starts_with("connected to").then_some(s)
        },
    )?;
    ensure!(status.contains(&node), "{status}");
    step(
        t0,
        &format!("node {node} joined and is ready; agent STATUS={status}"),
    );

    // --- 3. A job across `systemctl restart tandem-agent`.
    let script = format!(
        "while true; do echo \"$TANDEM_FENCING_TOKEN $$ $(date +%s%N)\" >> {WRITER_OUT}; \
         sleep 0.1; done"
    );
    let j = api.post(
        "/v1/jobs",
        &json!({"name": "nspawn-writer", "cluster": "nspawn",
                "command": ["/bin/sh", "-c", script],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0},
                "restart": "always", "max_restarts": 20}),
    )?;
    let job = j["job"]["id"].as_str().context("job id")?.to_string();
    let (t1, p1) = wait_copy_above(m, &api, &job, 0)?;
    let st: Value = serde_json::from_str(&std::fs::read_to_string(
        m.path(&format!("/var/lib/tandem-agent/jobs/{job}/status.json")),
    )?)?;
    ensure!(
        st["pid"].as_u64() == Some(p1 as u64) && st["fencing_token"].as_u64() == Some(t1),
        "status.json: {st}"
    );
    let shim1 = st["shim_pid"].as_u64().context("shim_pid")?;
    step(
        t0,
        &format!("job {job} copy {t1} running: pid {p1} under shim {shim1}"),
    );
    // The job is in a cgroup of its own, in the subtree systemd delegated to the agent's unit
    // (Delegate=yes), and the shim in its sibling leaf.
    let mode = st["containment"].as_str().unwrap_or("?").to_string();
    let job_cg = m.sh(&format!("cat /proc/{p1}/cgroup"))?;
    let shim_cg = m.sh(&format!("cat /proc/{shim1}/cgroup"))?;
    let unified = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (job_cg, shim_cg) = (unified(&job_cg), unified(&shim_cg));
    step(
        t0,
        &format!("containment {mode}: job in {job_cg}, shim in {shim_cg}"),
    );
    ensure!(
        mode != "process-group"
            && job_cg.starts_with("/system.slice/tandem-agent.service/")
            && job_cg.ends_with(&format!("/jobs/{job}/job"))
            && shim_cg.ends_with(&format!("/jobs/{job}/shim")),
        "the job is not in its cgroup under the agent's unit: {mode}, {job_cg}, {shim_cg}"
    );

    // --- 3a. `systemctl restart tandem-coordinator` with the job running: the copy rides
    // through the planned restart (its hold) with its pid and token; the node is never down.
    let before = lines(m).len();
    m.sh("systemctl restart tandem-coordinator")?;
    wait_for(LONG, "the node connected to the new coordinator", || {
        api.node(&node).filter(|n| n["connected"] == true)
    })?;
    poll(
        LONG,
        Duration::from_millis(100),
        "the writer going on",
        || (lines(m).len() > before + 10).then_some(()),
    )?;
    let all = lines(m);
    ensure!(
        all.iter().all(|l| l.token == t1 && l.pid == p1),
        "the job restarted with the coordinator: {:?}",
        all.iter()
            .map(|l| (l.token, l.pid))
            .collect::<std::collections::BTreeSet<_>>()
    );
    let gap = all
        .windows(2)
        .map(|w| w[1].ns.saturating_sub(w[0].ns))
        .max()
        .unwrap_or_default();
    let downs: Vec<Value> = api
        .events()?
        .into_iter()
        .filter(|e| {
            e["kind"] == "node_state"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(" is down"))
        })
        .collect();
    ensure!(downs.is_empty(), "declared down: {downs:?}");
    // The steps below kill the agent: on ordinary leases again, after the hold.
    wait_for(LONG, "the restart hold to end", || {
        let h = api.get("/healthz").ok()?;
        (h["restart_hold_remaining_ms"] == 0).then_some(())
    })?;
    step(
        t0,
        &format!(
            "systemctl restart tandem-coordinator: copy {t1} (pid {p1}) rode through, longest \
             gap {} ms, nobody down",
            gap / 1_000_000
        ),
    );

    let main_before = m.prop("tandem-agent", "MainPID")?;
    m.sh("systemctl restart tandem-agent")?;
    let main_after = m.prop("tandem-agent", "MainPID")?;
    ensure!(
        main_after != main_before && main_after != "0",
        "MainPID {main_before} -> {main_after}"
    );
    let exited_us: u64 = m
        .prop("tandem-agent", "InactiveEnterTimestampMonotonic")?
        .parse()?;
    ensure!(exited_us > 0, "no InactiveEnterTimestamp after the restart");
    let exited = mono_us_to_unix_ns(exited_us);
    step(
        t0,
        &format!("systemctl restart tandem-agent: main pid {main_before} -> {main_after}"),
    );
    // systemd itself says it left the shim and the job running (KillMode=process) ...
    let journal = m.journal("tandem-agent");
    for (pid, what) in [(p1 as u64, "sh"), (shim1, "tandem-agent")] {
        let said = format!("Unit process {pid} ({what}) remains running after unit stopped");
        ensure!(
            journal.contains(&said),
            "no {said:?} in:\n{}",
            tail(&journal, 30)
        );
    }
    // ... and the new agent re-adopted the shim: the copy runs on with its pid and token, past
    // the end of the hand-over lease (under the new agent's leases), and nobody is down.
    let before = lines(m).len();
    poll(
        LONG,
        Duration::from_millis(100),
        "the writer going on",
        || (lines(m).len() > before + 10).then_some(()),
    )?;
    std::thread::sleep(HANDOVER + Duration::from_secs(1));
    let after = lines(m).len();
    poll(
        LONG,
        Duration::from_millis(100),
        "the writer going on after the hand-over lease",
        || (lines(m).len() > after + 5).then_some(()),
    )?;
    let all = lines(m);
    no_overlap(&all)?;
    ensure!(
        all.iter().all(|l| l.token == t1 && l.pid == p1),
        "the job restarted with the agent: {:?}\n{}",
        all.iter()
            .map(|l| (l.token, l.pid))
            .collect::<std::collections::BTreeSet<_>>(),
        tail(&m.journal("tandem-agent"), 30)
    );
    let gap = all
        .windows(2)
        .map(|w| w[1].ns.saturating_sub(w[0].ns))
        .max()
        .unwrap_or_default();
    let journal = m.journal("tandem-agent");
    for said in [
        "hand-over granted",
        "re-adopted 1 running jobs after an agent restart",
    ] {
        ensure!(
            journal.contains(said),
            "no {said:?} in:\n{}",
            tail(&journal, 30)
        );
    }
    let downs: Vec<Value> = api
        .events()?
        .into_iter()
        .filter(|e| {
            e["kind"] == "node_state"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(" is down"))
        })
        .collect();
    ensure!(downs.is_empty(), "declared down: {downs:?}");
    let ms = |a: u128, b: u128| (a as i128 - b as i128) / 1_000_000;
    step(
        t0,
        &format!(
            "systemctl restart tandem-agent: copy {t1} (pid {p1}) re-adopted, rode through the \
             hand-over and on past it (agent gone at {} ms before now), longest gap {} ms",
            ms(unix_ns(), exited),
            gap / 1_000_000
        ),
    );
    let (t2, _p2) = (t1, p1);

    // --- 4. A frozen agent: the shim fences at the lease, the watchdog restarts the agent.
    ensure!(
        m.prop("tandem-agent", "WatchdogUSec")? == "10s",
        "WatchdogUSec"
    );
    let restarts: u64 = m.prop("tandem-agent", "NRestarts")?.parse()?;
    let frozen = m.prop("tandem-agent", "MainPID")?;
    m.sh(&format!("kill -STOP {frozen}"))?;
    let stopped_at = unix_ns();
    let t_stop = Instant::now();
    step(
        t0,
        &format!("kill -STOP {frozen} (the agent's main process)"),
    );
    let new_main = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "systemd's watchdog to restart the frozen agent",
        || {
            let pid = m.prop("tandem-agent", "MainPID").ok()?;
            let state = m.prop("tandem-agent", "ActiveState").ok()?;
            (pid != frozen && pid != "0" && state == "active").then_some(pid)
        },
    )?;
    let took = t_stop.elapsed();
    let n: u64 = m.prop("tandem-agent", "NRestarts")?.parse()?;
    ensure!(n == restarts + 1, "NRestarts {restarts} -> {n}");
    let journal = m.journal("tandem-agent");
    for said in [
        "Watchdog timeout (limit 10s)!",
        "Failed with result 'watchdog'",
    ] {
        ensure!(
            journal.contains(said),
            "no {said:?} in:\n{}",
            tail(&journal, 30)
        );
    }
    step(
        t0,
        &format!(
            "watchdog: agent restarted {} ms after SIGSTOP (main pid {frozen} -> {new_main})",
            took.as_millis()
        ),
    );
    let (t3, p3) = wait_copy_above(m, &api, &job, t2)?;
    wait_ready(&api, &node)?;
    let all = lines(m);
    no_overlap(&all)?;
    let (_, _, last2) = copy_of(&all, t2)?;
    ensure!(
        last2 <= stopped_at + fence_bound.as_nanos(),
        "copy {t2} wrote {} ms after the agent froze (bound {fence_bound:?})",
        ms(last2, stopped_at)
    );
    let end2 = shim_end(m, &job, t2).context("the shim's record of copy 2's end")?;
    ensure!(end2.contains("reason=Some(Fenced)"), "{end2}");
    step(
        t0,
        &format!(
            "frozen agent: copy {t2} fenced by its shim {} ms after SIGSTOP; node back ready, \
             copy {t3} (pid {p3}) running",
            ms(last2, stopped_at)
        ),
    );

    let history = api.get(&format!("/v1/jobs/{job}"))?["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let history: Vec<String> = history
        .iter()
        .map(|h| format!("{} {}", h["fencing_token"], h["end_reason"]))
        .collect();
    step(
        t0,
        &format!("job copies ended so far: {}", history.join(", ")),
    );

    // --- 5. `systemctl stop` is clean; the last copy is fenced by its shim.
    m.sh("systemctl stop tandem-agent")?;
    let stopped_at = unix_ns();
    for (prop, want) in [
        ("ActiveState", "inactive"),
        ("Result", "success"),
        ("ExecMainStatus", "0"),
    ] {
        let v = m.prop("tandem-agent", prop)?;
        ensure!(v == want, "tandem-agent after stop: {prop}={v}, not {want}");
    }
    // The stop hands its lease over: the copy is fenced at the end of that lease.
    let handover_bound = HANDOVER + SLACK;
    let end3 = poll(
        handover_bound + Duration::from_secs(5),
        Duration::from_millis(50),
        "the last copy's end",
        || shim_end(m, &job, t3),
    )?;
    ensure!(end3.contains("reason=Some(Fenced)"), "{end3}");
    let (_, _, last3) = copy_of(&lines(m), t3)?;
    ensure!(
        last3 <= stopped_at + handover_bound.as_nanos(),
        "copy {t3} wrote {} ms after systemctl stop (bound {handover_bound:?})",
        ms(last3, stopped_at)
    );
    let alive = m.sh(&format!(
        "kill -0 {p3} 2>/dev/null && echo alive || echo gone"
    ))?;
    ensure!(alive.trim() == "gone", "job pid {p3} still {alive}");
    m.sh("systemctl stop tandem-coordinator")?;
    for (prop, want) in [
        ("ActiveState", "inactive"),
        ("Result", "success"),
        ("ExecMainStatus", "0"),
    ] {
        let v = m.prop("tandem-coordinator", prop)?;
        ensure!(
            v == want,
            "tandem-coordinator after stop: {prop}={v}, not {want}"
        );
    }
    let failed = m.sh("systemctl is-failed tandem-agent tandem-coordinator || true")?;
    ensure!(
        failed.lines().all(|l| l.trim() == "inactive"),
        "is-failed: {failed}"
    );
    step(
        t0,
        &format!(
            "systemctl stop: both units inactive (result success, exit 0); copy {t3} fenced by \
             its shim at the hand-over lease, {} ms after the agent stopped",
            ms(last3, stopped_at)
        ),
    );
    Ok(())
}
