//! Prints numbered lines: `chatty COUNT BYTES PAUSE_MS` prints COUNT lines (0: without
//! end) of BYTES bytes each, `line N ` and padding, pausing PAUSE_MS between them, then
//! sleeps. Output for tests of log rotation and of logs on a full disk.
use std::io::Write;

fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (count, bytes, pause) = (arg(1, 1000), arg(2, 100) as usize, arg(3, 0));
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    while count == 0 || n < count {
        let head = format!("line {n} ");
        let pad = bytes.saturating_sub(head.len());
        // a failed write would end the program: logs must never fail a container
        writeln!(out, "{head}{}", "x".repeat(pad)).expect("writing stdout");
        out.flush().expect("flushing stdout");
        n += 1;
        if pause > 0 {
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(86_400));
}
