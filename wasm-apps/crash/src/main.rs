//! Prints a line, then panics (a trap in Wasm).
fn main() {
    println!("about to crash");
    let v: Vec<u32> = Vec::new();
    let i = std::env::args().count() + 5;
    println!("{}", v[i]);
}
