//! Local disks, from `/proc/self/mounts` and `statvfs`.
//!
//! Why not `sysinfo::Disks`: sysinfo 0.40 filters only a few network file systems (`nfs`,
//! `nfs4`, `cifs`, `autofs`) and then calls `metadata()` and `statvfs()` on every other mount
//! point, including `fuse.sshfs`, `smb3`, `ceph`, `glusterfs`, `9p`, `lustre`… whose `statvfs`
//! can hang for minutes on a hard mount with a dead server. So this module reads the mount table
//! itself and keeps only an **allow-list** of local block-device file systems
//! ([`LOCAL_FILE_SYSTEMS`]), decided from the table's text alone, *before* anything touches a
//! mount point. Pseudo (`proc`, `tmpfs`, `cgroup`…), overlay and every network or FUSE file
//! system are thereby never stat'ed.
//!
//! Then: mount points under `/proc`, `/sys`, `/dev`, `/run` (except `/run/media`) and `/snap`
//! are skipped; each device is listed once (the first mount wins: bind mounts and btrfs
//! subvolumes repeat the same device and size); file bind mounts (a mount point that is not a
//! directory, as containers have for `/etc/hosts`) are skipped.

use super::ProbeError;
use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tandem_common::hardware::{DiskInfo, DiskKind};

/// The mount table read.
pub const MOUNTS: &str = "/proc/self/mounts";

/// File systems that live on a local block device and are safe to `statvfs`.
pub const LOCAL_FILE_SYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "exfat", "ntfs", "ntfs3", "jfs",
    "reiserfs", "bcachefs", "hfsplus", "nilfs2", "ufs",
];

/// Mount point prefixes never listed.
const SKIPPED_MOUNT_PREFIXES: &[&str] = &["/proc", "/sys", "/dev", "/snap"];

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Device (`fs_spec`).
    pub device: String,
    /// Mount point, octal escapes decoded.
    pub mount_point: String,
    /// File system type.
    pub fs_type: String,
    /// Mounted read-only (`ro` among the options).
    pub read_only: bool,
}

/// Decodes the `\040`-style octal escapes of the mount table (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a mount table (`/proc/self/mounts` format).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let device = unescape(f.next()?);
            let mount_point = unescape(f.next()?);
            let fs_type = f.next()?.to_string();
            let read_only = f
                .next()
                .is_some_and(|opts| opts.split(',').any(|o| o == "ro"));
            Some(MountEntry {
                device,
                mount_point,
                fs_type,
                read_only,
            })
        })
        .collect()
}

/// Whether a mount point is one to skip, from its path alone.
fn skipped_mount_point(mount_point: &str) -> bool {
    let under = |prefix: &str| {
        mount_point == prefix
            || mount_point
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    SKIPPED_MOUNT_PREFIXES.iter().any(|p| under(p)) || (under("/run") && !under("/run/media"))
}

/// The entries worth a `statvfs`, decided from the table's text only (nothing is touched).
pub fn select_local(entries: &[MountEntry]) -> Vec<MountEntry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter(|e| LOCAL_FILE_SYSTEMS.contains(&e.fs_type.as_str()))
        .filter(|e| !skipped_mount_point(&e.mount_point))
        .filter(|e| seen.insert(e.device.clone()))
        .cloned()
        .collect()
}

/// `statvfs(2)`: (total bytes, available bytes, read-only flag). Only ever called on the
/// allow-listed local file systems.
fn statvfs(path: &Path) -> Option<(u64, u64, bool)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0, so the structure was written.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between targets
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    let (blocks, avail) = (st.f_blocks as u64, st.f_bavail as u64);
    Some((
        blocks * frsize,
        avail * frsize,
        st.f_flag & libc::ST_RDONLY != 0,
    ))
}

/// SSD or HDD from `/sys/class/block/<dev>/queue/rotational` (a partition's own directory has no
/// `queue`: its parent disk's is used).
fn disk_kind(device: &str) -> DiskKind {
    if !device.starts_with("/dev/") {
        return DiskKind::Unknown; // zfs datasets and the like
    }
    // /dev/mapper/x and /dev/disk/by-*/x are links to /dev/dm-N, /dev/sdX…
    let real = std::fs::canonicalize(device).unwrap_or_else(|_| PathBuf::from(device));
    let Some(name) = real.file_name() else {
        return DiskKind::Unknown;
    };
    let sys = Path::new("/sys/class/block").join(name);
    let sys = std::fs::canonicalize(&sys).unwrap_or(sys);
    for dir in [
        sys.clone(),
        sys.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        if let Ok(v) = std::fs::read_to_string(dir.join("queue/rotational")) {
            return match v.trim() {
                "0" => DiskKind::Ssd,
                "1" => DiskKind::Hdd,
                _ => DiskKind::Unknown,
            };
        }
    }
    DiskKind::Unknown
}

/// The local disks of this machine.
pub fn local_disks() -> Result<Vec<DiskInfo>, ProbeError> {
    let text = std::fs::read_to_string(MOUNTS).map_err(|source| ProbeError::Mounts {
        path: MOUNTS,
        source,
    })?;
    Ok(select_local(&parse_mounts(&text))
        .into_iter()
        .filter_map(|e| {
            let path = Path::new(&e.mount_point);
            // Safe to touch: an allow-listed local file system.
            if !path.is_dir() {
                return None;
            }
            let (total, available, ro_flag) = statvfs(path)?;
            Some(DiskInfo {
                kind: disk_kind(&e.device),
                name: e.device,
                mount_point: e.mount_point,
                file_system: e.fs_type,
                total_bytes: total,
                available_bytes: available,
                read_only: e.read_only || ro_flag,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
/dev/nvme0n1p2 / ext4 rw,relatime 0 0
/dev/nvme0n1p1 /boot/efi vfat rw,relatime 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw,lowerdir=/x 0 0
tmpfs /run tmpfs rw,nosuid 0 0
/dev/sdb1 /run/media/usb\\040stick exfat ro,relatime 0 0
/dev/sdc1 /run/user/1000/thing ext4 rw 0 0
server:/export /mnt/nfs nfs4 rw,hard 0 0
//nas/share /mnt/smb cifs rw 0 0
user@host:/ /mnt/ssh fuse.sshfs rw 0 0
10.0.0.1:6789:/ /mnt/ceph ceph rw 0 0
gluster:/vol /mnt/gluster glusterfs rw 0 0
tank/data /tank/data zfs rw,xattr 0 0
/dev/nvme0n1p2 /home ext4 rw,relatime 0 0
/dev/nvme0n1p2 /etc/hosts ext4 rw,relatime 0 0
/dev/loop3 /snap/core/1 squashfs ro 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
";

    #[test]
    fn only_local_block_file_systems_are_selected() {
        let entries = parse_mounts(TABLE);
        assert_eq!(entries.len(), 18);
        let picked: Vec<_> = select_local(&entries)
            .into_iter()
            .map(|e| e.mount_point)
            .collect();
        assert_eq!(
            picked,
            ["/", "/boot/efi", "/run/media/usb stick", "/tank/data"]
        );
        let usb = &entries[6];
        assert!(usb.read_only);
        assert_eq!(usb.mount_point, "/run/media/usb stick");
    }

    #[test]
    fn network_and_fuse_never_selected() {
        for fs in [
            "nfs",
            "nfs4",
            "cifs",
            "smb3",
            "fuse.sshfs",
            "ceph",
            "glusterfs",
            "9p",
            "lustre",
        ] {
            let line = format!("srv:/x /mnt/x {fs} rw 0 0\n");
            assert!(select_local(&parse_mounts(&line)).is_empty(), "{fs}");
        }
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape("\\"), "\\");
    }

    #[test]
    fn local_disks_are_sane() {
        let disks = local_disks().unwrap();
        for d in &disks {
            assert!(LOCAL_FILE_SYSTEMS.contains(&d.file_system.as_str()));
            assert!(d.total_bytes >= d.available_bytes);
        }
    }
}
