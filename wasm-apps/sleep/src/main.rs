//! Prints a line, sleeps for the number of seconds given (default: a day), prints again.
fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(86_400);
    println!("sleeping {secs}s");
    std::thread::sleep(std::time::Duration::from_secs(secs));
    println!("woke up");
}
