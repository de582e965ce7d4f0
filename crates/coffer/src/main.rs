//! `coffer`: install the crypto provider, parse the command line, run.

use clap::Parser as _;

/// mimalloc: the request path allocates a lot of small, short-lived objects
/// across threads, where glibc's allocator showed up as ~13% of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coffer_platform::install_crypto_provider();
    coffer::cli::run(coffer::cli::Cli::parse()).await
}
