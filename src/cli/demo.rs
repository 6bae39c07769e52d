//! `canaryd demo`: the whole story on 127.0.0.1 in a temp dir, narrated on stdout.

use anyhow::Result;

pub fn run() -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match canaryd::demo::run(&mut out, &std::env::temp_dir()) {
        Ok(_) => Ok(0),
        // `canaryd demo | head` is fine.
        Err(canaryd::demo::DemoError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}
