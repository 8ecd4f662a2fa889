//! The `tessera` binary: parses the command line and hands each command to its file in `cmd/`.
//! Exit codes: 0 success, 1 when the answer is "no" (a refused token, a failed check), 2 on a
//! usage or operational error.
//!
//! Floors: `main.rs` -> `cmd/*` (never each other) -> `render.rs`, `admin_client.rs`,
//! `workload_client.rs`, `support.rs` -> `cli.rs` (the clap types).

mod admin_client;
mod cli;
mod cmd;
mod render;
mod support;
mod workload_client;

use clap::Parser;

use crate::cli::{Command, SecretCommand, SvidCommand};

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
    match runtime.block_on(dispatch(args.command)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("tessera: {}", one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// One line per command.
async fn dispatch(command: Command) -> anyhow::Result<u8> {
    use cmd::{agent, audit, authority, console, db, dev, doctor, exec, policy, proxy, secret};
    match command {
        Command::Server(a) => authority::server(a).await,
        Command::Dev(a) => dev::run(a).await,
        Command::Apply(a) => authority::apply(a).await,
        Command::Get { kind, target } => authority::get(kind, target).await,
        Command::Describe { kind, id, target } if kind == "secret" => {
            secret::run(SecretCommand::Describe { name: id, target }).await
        }
        Command::Describe { kind, id, target } => authority::describe(kind, id, target).await,
        Command::Federation { command } => authority::federation(command).await,
        Command::Client { command } => authority::client(command).await,
        Command::Revoke { kind, id, target } => authority::revoke(kind, id, target).await,
        Command::Audit { command } => audit::audit(command).await,
        Command::Keys { command } => authority::keys(command).await,
        Command::Verify(a) => authority::verify(a).await,
        Command::Explain(a) => policy::explain(a).await,
        Command::Doctor(a) => doctor::run(a).await,
        Command::Advise(a) => console::advise(a).await,
        Command::Console { command } => console::run(command).await,
        Command::Policy { command } => policy::run(command).await,
        Command::Proxy { command } => proxy::run(command).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Ca { command } => agent::ca(command).await,
        Command::Secret { command } => secret::run(command).await,
        Command::Exec(a) => exec::run(a).await,
        Command::Db { command } => db::run(command).await,
        Command::Svid {
            command:
                SvidCommand::Fetch {
                    socket,
                    audience,
                    write,
                    id,
                    output,
                },
        } => agent::fetch(&socket, &audience, write.as_deref(), id.as_deref(), output).await,
    }
}

/// An error chain on one line: `context: cause: root cause`.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
