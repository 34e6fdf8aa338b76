//! The `callrelay-load` binary: the load generator against a running callrelay
//! (`cargo run --release -p callrelay-load -- --help`).

use std::process::ExitCode;

use clap::Parser;

use callrelay_load::LoadArgs;

fn main() -> ExitCode {
    let args = LoadArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("callrelay-load: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(callrelay_load::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("callrelay-load: {err}");
            ExitCode::FAILURE
        }
    }
}
