//! A plain TCP echo server over `wasi:sockets` (wasip2): `tcp-echo PORT [--try-bind P]
//! [--try-connect HOST:PORT]...`. It first makes the attempts it is told to and prints
//! how each went, then listens on 127.0.0.1:PORT and echoes every connection back.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("usage: tcp-echo PORT [--try-bind P] [--try-connect ADDR]");
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().expect("a value after each flag");
        match flag.as_str() {
            "--try-bind" => match TcpListener::bind(("127.0.0.1", value.parse::<u16>().unwrap())) {
                Ok(_) => println!("bind {value}: ok"),
                Err(e) => println!("bind {value}: {e}"),
            },
            "--try-connect" => match TcpStream::connect(value.as_str()) {
                Ok(_) => println!("connect {value}: ok"),
                Err(e) => println!("connect {value}: {e}"),
            },
            other => panic!("unknown flag {other}"),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the echo port");
    println!("echoing on {port}");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
}
