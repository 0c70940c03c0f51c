//! The single writer: a dedicated thread that owns the output file (and stdout), fed by a
//! bounded channel so that slow disks push back on the clients instead of growing memory.
//! Past a size cap it rotates the file ([`Rotation`]), so no client can fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::codec::Line;
use crate::error::Error;
pub(crate) use crate::rotation::Rotation;

/// Records reach the disk at least this often, however quiet the clients are: the writer
/// flushes when it writes this long after its last flush, and the server's ticker asks it to
/// when no record comes.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Records in flight between readers and the writer. Small: each may be up to `max_line` bytes.
pub(crate) const CHANNEL_CAPACITY: usize = 1024;

/// One line as the server received it.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) time: SystemTime,
    pub(crate) source: SocketAddr,
    pub(crate) line: Line,
}

#[derive(Debug)]
pub(crate) enum Msg {
    Record(Record),
    /// Sent by a ticker so that records reach the disk within a second even when quiet.
    Flush,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    time: &'a str,
    source: String,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<usize>,
}

/// Opens `path` for appending, creating it if needed, readable by its owner only (the log
/// holds what tasks print, failed items' starts included).
pub(crate) fn open(path: &Path) -> Result<File, Error> {
    open_file(path).map_err(|source| Error::OpenOutfile {
        path: path.to_owned(),
        source,
    })
}

/// [`open`] with the bare I/O error, for the writer's new files after a rotation.
fn open_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Starts the writer thread; the returned receiver reports once the channel has been drained
/// and everything flushed, i.e. after every sender is gone.
pub(crate) fn spawn(
    file: File,
    rotation: Rotation,
    json: bool,
    echo_stdout: bool,
    rx: mpsc::Receiver<Msg>,
) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
    let (done_tx, done_rx) = oneshot::channel();
    let size = file.metadata()?.len();
    std::thread::Builder::new()
        .name("pcluster-log-writer".into())
        .spawn(move || {
            let path: PathBuf = rotation.path.clone();
            let mut writer = Writer {
                file: Some(BufWriter::with_capacity(FILE_BUFFER, file)),
                size,
                rotation,
                stdout: echo_stdout.then(|| BufWriter::with_capacity(64 * 1024, io::stdout())),
                json,
                buf: Vec::with_capacity(1024),
                first_error: None,
                failing: false,
                last_flush: Instant::now(),
            };
            let result = writer
                .run(rx)
                .map_err(|source| Error::WriteOutfile { path, source });
            // Nobody listening only means `run` was dropped; there is nobody to tell.
            let _ = done_tx.send(result);
        })?;
    Ok(done_rx)
}

/// The output file's write buffer.
const FILE_BUFFER: usize = 64 * 1024;

struct Writer {
    /// The output file; `None` after it could not be (re)opened, tried again on each record.
    file: Option<BufWriter<File>>,
    /// Bytes in the output file, those still in its buffer included.
    size: u64,
    rotation: Rotation,
    stdout: Option<BufWriter<io::Stdout>>,
    json: bool,
    buf: Vec<u8>,
    first_error: Option<io::Error>,
    /// Whether the last file operation failed: errors are logged when they start and stop,
    /// not once per record.
    failing: bool,
    last_flush: Instant,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(), io::Error> {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Record(record) => {
                    self.write(&record);
                    // The ticker's request may wait behind a full channel; do not wait for it.
                    if self.last_flush.elapsed() >= FLUSH_INTERVAL {
                        self.flush();
                    }
                }
                Msg::Flush => self.flush(),
            }
        }
        self.flush();
        match self.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn write(&mut self, record: &Record) {
        self.buf.clear();
        format_record(&mut self.buf, record, self.json);
        let len = self.buf.len() as u64;
        let buf = std::mem::take(&mut self.buf);
        let result = self
            .file_with_room(len)
            .and_then(|file| file.write_all(&buf));
        self.buf = buf;
        if result.is_ok() {
            self.size += len;
        }
        self.note(result);
        if let Some(stdout) = &mut self.stdout
            && let Err(e) = stdout.write_all(&self.buf)
        {
            // A closed stdout (e.g. piped into `head`) must not stop the file log.
            tracing::warn!(error = %e, "cannot echo to stdout; echo turned off");
            self.stdout = None;
        }
    }

    /// The output file, rotated first when `len` more bytes would take it past the cap.
    fn file_with_room(&mut self, len: u64) -> io::Result<&mut BufWriter<File>> {
        if self.rotation.due(self.size, len) {
            // What the old file's buffer holds goes into it before it is renamed.
            if let Some(mut old) = self.file.take() {
                old.flush()?;
            }
            self.rotation.shift()?;
            self.size = 0;
        }
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let file = open_file(&self.rotation.path)?;
                self.size = file.metadata()?.len();
                BufWriter::with_capacity(FILE_BUFFER, file)
            }
        };
        Ok(self.file.insert(file))
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if let Some(file) = &mut self.file {
            let result = file.flush();
            self.note(result);
        }
        if let Some(stdout) = &mut self.stdout
            && let Err(e) = stdout.flush()
        {
            tracing::warn!(error = %e, "cannot echo to stdout; echo turned off");
            self.stdout = None;
        }
    }

    fn note(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) if self.failing => {
                tracing::info!("writing the log file works again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "cannot write the log file; records are being lost");
                    self.failing = true;
                }
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Appends `line` with its control characters (but tabs) written as `\u{..}` escapes, so a
/// line cannot move the terminal's cursor or fake another record when the file is shown.
fn escape_controls(line: &str, out: &mut String) {
    use std::fmt::Write as _;
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
}

/// Appends one record, newline included, as text or as a JSON line.
pub(crate) fn format_record(out: &mut Vec<u8>, record: &Record, json: bool) {
    let time = humantime::format_rfc3339_micros(record.time).to_string();
    let line = &record.line;
    if json {
        let value = JsonRecord {
            time: &time,
            source: record.source.to_string(),
            message: &line.text,
            truncated: (line.truncated > 0).then_some(line.truncated),
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *out, &value).is_err() {
            out.extend_from_slice(b"{}");
        }
    } else {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(time.len() + line.text.len() + 32);
        let _ = write!(text, "{time} {} ", record.source);
        escape_controls(&line.text, &mut text);
        if line.truncated > 0 {
            let _ = write!(text, " [truncated {} bytes]", line.truncated);
        }
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(text: &str, truncated: usize) -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            source: "127.0.0.1:4000".parse().expect("addr"),
            line: Line {
                text: text.into(),
                truncated,
            },
        }
    }

    #[test]
    fn text_records_have_time_source_and_line() {
        let mut out = Vec::new();
        format_record(&mut out, &record("hello world", 0), false);
        format_record(&mut out, &record("long", 7), false);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "2023-11-14T22:13:20.123456Z 127.0.0.1:4000 hello world\n\
             2023-11-14T22:13:20.123456Z 127.0.0.1:4000 long [truncated 7 bytes]\n"
        );
    }

    #[test]
    fn control_characters_are_escaped_in_text_records() {
        let mut out = Vec::new();
        format_record(&mut out, &record("a\x1b[2Jb\rc\td\u{85}", 0), false);
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.ends_with(" a\\u{1b}[2Jb\\u{d}c\td\\u{85}\n"),
            "{text:?}"
        );
    }

    #[test]
    fn the_log_file_is_its_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("pcluster-log-mode-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(open(&path).expect("open"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn json_records_escape_the_message() {
        let mut out = Vec::new();
        format_record(&mut out, &record("say \"hi\"\t", 0), true);
        format_record(&mut out, &record("cut", 3), true);
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0]["time"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(lines[0]["source"], "127.0.0.1:4000");
        assert_eq!(lines[0]["message"], "say \"hi\"\t");
        assert!(lines[0].get("truncated").is_none());
        assert_eq!(lines[1]["truncated"], 3);
    }
}
