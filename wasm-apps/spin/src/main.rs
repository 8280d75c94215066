//! Spins forever without a host call: only epoch interruption can stop it.
fn main() {
    println!("spinning");
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if x == 42 {
            println!("unreachable in practice");
        }
    }
}
