//! Allocates memory 1 MiB at a time, touching every page, until it is stopped (or the
//! allocation fails, which aborts).
fn main() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        blocks.push(block);
        if blocks.len() % 16 == 0 {
            println!("allocated {} MiB", blocks.len());
        }
    }
}
