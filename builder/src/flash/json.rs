//! `nodeforge flash --json`: progress and the result as JSON lines on
//! stdout, for programs driving a flash (a provisioning station, CI).
//!
//! `{"event":"progress","phase":"writing","done":N,"total":M}` when a
//! phase has moved (looked at four times a second), and once at its end;
//! then one `{"event":"result",…}` line. A failed flash prints no result:
//! the error goes to stderr and the exit status is 1.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::{FlashOptions, FlashReport};

/// Prints one JSON line on stdout.
pub fn line(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Reports the bars' positions until [`Reporter::finish`].
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    bars: Vec<ProgressBar>,
}

fn progress(bar: &ProgressBar) -> Value {
    json!({
        "event": "progress",
        "phase": bar.message(),
        "done": bar.position(),
        "total": bar.length().unwrap_or(0),
    })
}

impl Reporter {
    pub fn start(bars: Vec<ProgressBar>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, watched) = (stop.clone(), bars.clone());
        let thread = std::thread::spawn(move || {
            let mut last: Vec<Option<u64>> = vec![None; watched.len()];
            while !flag.load(Ordering::Relaxed) {
                for (bar, seen) in watched.iter().zip(last.iter_mut()) {
                    let pos = bar.position();
                    if pos > 0 && *seen != Some(pos) {
                        *seen = Some(pos);
                        line(&progress(bar));
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Reporter {
            stop,
            thread: Some(thread),
            bars,
        }
    }

    /// Stops the reports and gives each bar's final position.
    pub fn finish(mut self) {
        self.stop_thread();
        for bar in &self.bars {
            line(&progress(bar));
        }
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A flash that fails part-way stops the reports too.
impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The `result` line: what was written and checked, how fast.
pub fn result(args: &FlashOptions, report: &FlashReport, stamped: Option<&str>) -> Value {
    let verify = |v: &Option<super::VerifyReport>| {
        v.as_ref().map(|v| {
            json!({
                "bytes": v.bytes,
                "secs": v.elapsed.as_secs_f64(),
                "unchecked_ranges": v.unchecked_ranges,
            })
        })
    };
    json!({
        "event": "result",
        "image": args.image,
        "device": args.device,
        "written": {
            "bytes": report.write.bytes,
            "secs": report.write.elapsed.as_secs_f64(),
        },
        "verified": verify(&report.verify),
        "stamped": stamped,
        "reverified": verify(&report.reverify),
    })
}
