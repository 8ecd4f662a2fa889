//! The `tessera` binary: parses the command line and hands over. Exit codes: 0 success, 1 when
//! the answer is "no" (a refused token, a failed check), 2 on a usage or operational error.

mod admin_client;
mod agent;
mod cli;
mod commands;
mod db;
mod dev;
mod exec;
mod policy;
mod proxy;
mod render;
mod secret;

use clap::Parser;

// The token path allocates a little per request; mimalloc serves that faster than glibc's
// allocator under concurrency (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("tessera: {}", one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// An error chain on one line: `context: cause: root cause`.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
