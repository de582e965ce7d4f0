//! `coffer`: install the crypto provider, parse the command line, run.

use clap::Parser as _;

/// mimalloc: the request path allocates a lot of small, short-lived objects
/// across threads, where glibc's allocator showed up as ~13% of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    coffer_platform::install_crypto_provider();
    let cli = coffer::cli::Cli::parse();
    // One worker per core, except that `coffer bench` drives its load from
    // `--loadgen-threads` workers (its in-process target has a runtime of
    // its own).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let coffer::cli::Command::Bench(args) = &cli.command {
        runtime.worker_threads(usize::from(args.loadgen_threads));
    }
    runtime
        .enable_all()
        .build()?
        .block_on(coffer::cli::run(cli))
}
