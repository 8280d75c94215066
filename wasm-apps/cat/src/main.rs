//! Prints the files named as arguments (e.g. from a mounted volume), then tries a path
//! outside its mounts and reports that it cannot reach it. `cat --write PATH TEXT`
//! writes TEXT to PATH instead.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
