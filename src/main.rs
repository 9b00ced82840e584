#[tokio::main]
async fn main() -> anyhow::Result<()> {
    granda::tls::install_provider();
    // A busy ingress holds a descriptor per connection: the soft limit (often 1024) goes up to the
    // hard one. Where it can't, the bounds on connections still hold.
    let _ = granda::producer::serve::raise_fd_limit();
    granda::cli::main().await
}
