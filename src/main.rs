/// The allocator: mimalloc, not the system's. Granda allocates and frees many small, short-lived
/// buffers per call on several threads (HTTP, AMQP frames, rows), where glibc's malloc spent 12 %
/// of Granda's CPU on the hot path (`docs/benchmarks.md`, "CPU per recorded call").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    granda::tls::install_provider();
    // A busy ingress holds a descriptor per connection: the soft limit (often 1024) goes up to the
    // hard one. Where it can't, the bounds on connections still hold.
    let _ = granda::producer::serve::raise_fd_limit();
    granda::cli::main().await
}
