//! `shoal`: a WebAssembly-pod orchestrator. See `shoal --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shoal::commands::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(cli.execute()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", shoal::commands::describe_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
