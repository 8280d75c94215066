//! Prints a greeting, its arguments and its environment, one per line.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from wasm ({} args)", args.len());
    for (i, a) in args.iter().enumerate() {
        println!("arg[{i}]={a}");
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env {k}={v}");
    }
}
