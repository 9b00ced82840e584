#[tokio::main]
async fn main() -> anyhow::Result<()> {
    granda::cli::main().await
}
