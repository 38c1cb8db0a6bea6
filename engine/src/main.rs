//! `qwen3-engine`: serve Qwen3 over an OpenAI-compatible API. See `--help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = qwen3_engine::server::Args::parse();
    if let Err(e) = qwen3_engine::server::serve(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
