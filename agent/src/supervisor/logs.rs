//! Job logs with a size cap: `stdout.log` is rotated to `stdout.log.1` (replacing it) when it
//! would grow past the cap, so a job keeps between one and two caps of its most recent output
//! per stream, and a chatty job can never fill the disk. The cap is on bytes, not lines: a line
//! that straddles a rotation is split between the two files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Smallest cap accepted; smaller values are raised to it.
pub const MIN_LOG_BYTES: u64 = 1024;

/// An append-only log file rotated at a size cap.
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl RotatingLog {
    /// Opens (appending to) `path`, rotating at `max` bytes.
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max: max.max(MIN_LOG_BYTES),
        })
    }

    /// Appends `data`, rotating as often as needed so no file passes the cap.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.max {
                self.rotate()?;
            }
            let room = usize::try_from(self.max - self.size).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The name a log is rotated to.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The last `n` lines of a rotated log (`path.1` then `path`), oldest first, decoded lossily.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = last_lines(path, n)?;
    if lines.len() < n {
        let mut older = last_lines(&rotated(path), n - lines.len())?;
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The last `n` lines of one file, reading backwards in blocks (a missing file has none).
fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pos = f.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    let mut newlines = 0usize;
    // n lines need n + 1 newlines before them (the last one ends the file) to be whole.
    while pos > 0 && newlines <= n {
        let step = BLOCK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0u8; step as usize];
        f.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|b| **b == b'\n').count();
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    if pos > 0 && !lines.is_empty() {
        // The first piece starts mid-line.
        lines.remove(0);
    }
    let start = lines.len().saturating_sub(n);
    Ok(lines[start..].iter().map(|s| s.to_string()).collect())
}

/// What each line costs in a reply beyond its bytes (bincode's length prefix, at most 9).
const LINE_OVERHEAD: usize = 10;

/// The first line of a tail that was cut to fit in a reply (see [`cap`]).
pub fn cut_marker(kept: usize) -> String {
    format!("[tandem: log tail cut to its last {kept} bytes to fit in one reply]")
}

/// Keeps the newest bytes of `lines` that fit in `budget` bytes (each line counted with its
/// length prefix): whole lines, newest first, then the last bytes of the line that did not fit
/// (cut on a char boundary). A cut tail starts with [`cut_marker`], so whoever reads it knows. The budget
/// keeps every log reply below the link's frame limit: a reply over it would be refused by the
/// codec and tear the connection down (issue 13: one 5 MB line did).
pub fn cap(lines: Vec<String>, budget: usize) -> Vec<String> {
    let cost = |l: &String| l.len() + LINE_OVERHEAD;
    if lines.iter().map(cost).sum::<usize>() <= budget {
        return lines;
    }
    // Room for the marker itself first.
    let budget = budget.saturating_sub(cut_marker(usize::MAX).len() + LINE_OVERHEAD);
    let mut kept: Vec<String> = Vec::new();
    let mut used = 0usize;
    for line in lines.into_iter().rev() {
        if used + cost(&line) <= budget {
            used += cost(&line);
            kept.push(line);
            continue;
        }
        // The rest of the room goes to the newest bytes of the line that does not fit.
        let room = budget.saturating_sub(used + LINE_OVERHEAD);
        if room > 0 {
            let mut start = line.len().saturating_sub(room);
            while !line.is_char_boundary(start) {
                start += 1;
            }
            used += line.len() - start + LINE_OVERHEAD;
            kept.push(line[start..].to_string());
        }
        break;
    }
    kept.push(cut_marker(used));
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_over_the_budget_keeps_its_newest_lines_and_says_so() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        assert_eq!(cap(lines.clone(), 10_000), lines);
        let cut = cap(lines, 400);
        assert!(cut[0].starts_with("[tandem: log tail cut"), "{cut:?}");
        assert_eq!(cut.last().unwrap(), "line 099");
        assert!(cut[1].len() < "line 000".len() || cut[1].starts_with("line"));
        let size: usize = cut.iter().map(|l| l.len() + LINE_OVERHEAD).sum();
        assert!(size <= 400, "{size}");
        // One line longer than the budget: its last bytes, on a char boundary.
        let huge = format!("{}é-end", "x".repeat(5_000_000));
        let cut = cap(vec!["old".into(), huge.clone()], 1000);
        assert_eq!(cut.len(), 2);
        assert!(
            cut[1].ends_with("é-end") && cut[1].len() < 1000,
            "{}",
            cut[1].len()
        );
        // A newer short line is kept whole, and the room left goes to the long one's end.
        let cut = cap(vec![huge, "after".into()], 1000);
        assert_eq!(cut.len(), 3);
        assert_eq!(cut[2], "after");
        assert!(
            cut[1].ends_with("é-end") && cut[1].len() > 800,
            "{}",
            cut[1].len()
        );
        let cut = cap(vec!["ééééé".repeat(100)], 200);
        assert!(
            cut[1].len() <= 200 && cut[1].chars().all(|c| c == 'é'),
            "{cut:?}"
        );
    }

    #[test]
    fn rotates_at_the_cap_and_keeps_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::open(&path, 1024).unwrap();
        for i in 0..1000 {
            log.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        let cur = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(rotated(&path)).unwrap().len();
        assert!(cur <= 1024 && old == 1024, "{cur} {old}");
        let t = tail(&path, 3).unwrap();
        assert_eq!(t, ["line 997", "line 998", "line 999"]);
        // More lines than the current file holds come from the rotated one.
        let t = tail(&path, 150).unwrap();
        assert_eq!(t.len(), 150);
        assert_eq!(t.last().unwrap(), "line 999");
        // A write bigger than the cap is split, and nothing is ever over the cap.
        log.write(&vec![b'x'; 5000]).unwrap();
        assert!(fs::metadata(&path).unwrap().len() <= 1024);
        assert!(fs::metadata(rotated(&path)).unwrap().len() <= 1024);
    }

    #[test]
    fn reopening_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        fs::write(&path, vec![b'a'; 1000]).unwrap();
        let mut log = RotatingLog::open(&path, 1024).unwrap();
        log.write(&[b'b'; 100]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 76);
        assert_eq!(fs::metadata(rotated(&path)).unwrap().len(), 1024);
    }

    #[test]
    fn tail_of_missing_short_and_unterminated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.log");
        assert!(tail(&path, 5).unwrap().is_empty());
        fs::write(&path, "a\nb\nc").unwrap();
        assert_eq!(tail(&path, 2).unwrap(), ["b", "c"]);
        assert_eq!(tail(&path, 10).unwrap(), ["a", "b", "c"]);
        assert!(tail(&path, 0).unwrap().is_empty());
        // Long files are read backwards across block boundaries.
        let big: String = (0..50_000).map(|i| format!("{i}\n")).collect();
        fs::write(&path, big).unwrap();
        assert_eq!(tail(&path, 2).unwrap(), ["49998", "49999"]);
        assert_eq!(tail(&path, 20_000).unwrap()[0], "30000");
    }
}
