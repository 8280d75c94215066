//! A command running in a container, as the runtimes hand it out: its streams, a way to
//! resize its terminal, and its exit code. Nothing of the process that carries it (runc,
//! a guest task) shows through.

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A terminal's size in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// Resizes the session's terminal.
pub type Resize = Box<dyn Fn(TerminalSize) + Send + Sync>;

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;
type Exit = Pin<Box<dyn Future<Output = io::Result<i32>> + Send>>;

/// An exec (or attach) session. With a terminal, its output is all on `stdout` and
/// `stderr` is `None`. Dropping the session ends the command.
pub struct ExecSession {
    /// The command's input; dropping it closes the input (the command reads end-of-file).
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    resize: Option<Resize>,
    exit: Exit,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").field("tty", &self.resize.is_some()).finish_non_exhaustive()
    }
}

impl ExecSession {
    /// A session over the given streams; `exit` resolves to the command's exit code.
    pub fn new(
        stdin: Option<Writer>,
        stdout: Option<Reader>,
        stderr: Option<Reader>,
        exit: impl Future<Output = io::Result<i32>> + Send + 'static,
    ) -> Self {
        ExecSession { stdin, stdout, stderr, resize: None, exit: Box::pin(exit) }
    }

    /// The session has a terminal, resized through `resize`.
    pub fn with_terminal(mut self, resize: Resize) -> Self {
        self.resize = Some(resize);
        self
    }

    /// Whether the command runs on a terminal.
    pub fn tty(&self) -> bool {
        self.resize.is_some()
    }

    /// Takes the terminal's resizer (a task of its own may own it).
    pub fn take_resize(&mut self) -> Option<Resize> {
        self.resize.take()
    }

    /// Waits for the command's end: its exit code (128 + the signal, if one ended it).
    pub async fn wait(self) -> io::Result<i32> {
        self.exit.await
    }
}
