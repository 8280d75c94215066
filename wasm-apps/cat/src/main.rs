//! Prints the files named as arguments (e.g. from a mounted volume), then tries a path
//! outside its mounts and reports that it cannot reach it. `cat --write PATH TEXT`
//! writes TEXT to PATH instead; `cat --fds` says which of the descriptors 3 to 7 are
//! open (a WASI program given no volumes must find fd 3 free).
use std::os::fd::FromRawFd;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--fds") {
        for fd in 3..8 {
            // borrowed, never closed: ManuallyDrop keeps the descriptor as it was
            let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
            match f.metadata() {
                Ok(m) => println!("fd {fd}: open {}", if m.is_dir() { "dir" } else { "file" }),
                Err(_) => println!("fd {fd}: closed"),
            }
        }
        return;
    }
    if let [flag, path, text] = args.as_slice()
        && flag == "--write"
    {
        if let Err(e) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("cat: {path}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut status = 0;
    for path in args {
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
