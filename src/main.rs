#[tokio::main]
async fn main() -> anyhow::Result<()> {
    granda::tls::install_provider();
    granda::cli::main().await
}
