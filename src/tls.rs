//! The process's TLS crypto provider. reqwest is built with `rustls-no-provider` (rustls on `ring`,
//! so the build needs no aws-lc-sys or cmake), and then *every* reqwest client, even one that only
//! speaks plain http, panics at build time unless a rustls provider is installed first. Call
//! [`install_provider`] before building one: the binaries do it at start, the library where it
//! builds clients (callbacks, the CLI's client), the tests in their setup.

/// Installs rustls' `ring` provider as the process default; harmless when one is installed.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
