//! `coffer`: install the crypto provider, parse the command line, run.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coffer_platform::install_crypto_provider();
    coffer::cli::run(coffer::cli::Cli::parse()).await
}
