//! Postgres: connect (creating the database if it is missing) and apply `migrations/`.
//!
//! TLS: the URL's own `sslmode=` (`disable`, `prefer` (the default), `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert=`, through rustls; the system's CAs are trusted, and the CA file
//! `GRANDA_CA_FILE` is added as `sslrootcert` to a URL that names none.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connects to `url`, creating the database first if it does not exist, and migrates it.
#[tracing::instrument(skip_all)]
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    let ca = std::env::var_os("GRANDA_CA_FILE").map(std::path::PathBuf::from);
    connect_and_migrate_with_ca(url, ca.as_deref()).await
}

/// [`connect_and_migrate`], trusting the CA certificates in `ca_file` (`GRANDA_CA_FILE`) when the
/// URL has no `sslrootcert=` of its own.
pub async fn connect_and_migrate_with_ca(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<PgPool> {
    let url = &with_ca_file(&plain_on_loopback(&with_default_user(url)), ca_file);
    if !sqlx::Postgres::database_exists(url)
        .await
        .context("reaching Postgres")?
    {
        tracing::info!("creating database");
        if let Err(e) = sqlx::Postgres::create_database(url).await {
            // Another process may have created it between the check and now.
            if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before each use: it doubles the round trips of every call. A connection that
        // died with a restarted server fails its one query and is dropped; callers retry or 503.
        .test_before_acquire(false)
        .connect(url)
        .await
        .context("connecting to Postgres")?;
    migrate(&pool).await?;
    Ok(pool)
}

/// A pool on `pool`'s database whose commits don't wait for the WAL to reach the disk, for
/// writes that may be lost in a Postgres crash without harm: a claim is a lease. If it is lost,
/// the record is `queued` again (a sync call's is gone: its claim created it), the run's final
/// record (a durable commit, which flushes the WAL before it, claim included) still applies or
/// writes the record whole, and a redelivered message is claimed again.
pub(crate) fn lease_pool(pool: &PgPool) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

pub(crate) async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")
}

/// `url` with `sslrootcert=<ca_file>` added when it names no root certificate of its own.
pub(crate) fn with_ca_file(url: &str, ca_file: Option<&std::path::Path>) -> String {
    let Some(ca) = ca_file else {
        return url.to_string();
    };
    if url.contains("sslrootcert=") {
        return url.to_string();
    }
    let path: String = ca
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '/' | '-' | '_' | '.' | '~' => c.to_string(),
            c => {
                let mut buf = [0; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslrootcert={path}")
}

/// `url` with `sslmode=disable` when it names no `sslmode` (nor does `PGSSLMODE`) and its host is
/// this machine (`localhost`, `127.0.0.0/8`, `::1`, or none: the default).
///
/// TLS on loopback protects nothing, and costs: sqlx sets no `TCP_NODELAY`, so a statement whose
/// TLS records split (bodies from about 16 KiB) waits for the server's delayed ACK, about 40 ms
/// per statement (a 16 KiB sync call went from 3 ms to 92 ms). A URL that asks for TLS keeps it;
/// a managed database (any other host) keeps sqlx's default, `prefer`.
pub(crate) fn plain_on_loopback(url: &str) -> String {
    plain_on_loopback_unless(url, std::env::var_os("PGSSLMODE").is_some())
}

fn plain_on_loopback_unless(url: &str, sslmode_in_env: bool) -> String {
    if sslmode_in_env {
        return url.to_string();
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.query_pairs().any(|(k, _)| k == "sslmode") {
        return url.to_string();
    }
    // (A `postgres:` URL's host is opaque to the URL parser: an IP address comes as a name.)
    let loopback = match parsed.host() {
        None => true,
        Some(url::Host::Domain(d)) => {
            d.is_empty()
                || d.eq_ignore_ascii_case("localhost")
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if !loopback {
        return url.to_string();
    }
    let sep = if parsed.query().is_some() { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

/// Postgres URLs without a user mean "the OS user", as with psql; spell it out, since the
/// driver's own guess fails where `$USER` is unset.
pub fn with_default_user(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') || std::env::var_os("PGUSER").is_some() {
        return url.to_string();
    }
    match os_user() {
        Some(user) => format!("{scheme}://{user}@{rest}"),
        None => url.to_string(),
    }
}

fn os_user() -> Option<String> {
    if let Ok(user) = std::env::var("USER")
        && !user.is_empty()
    {
        return Some(user);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut fields = l.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::with_default_user;

    #[test]
    fn the_ca_file_is_added_unless_the_url_names_one() {
        use super::with_ca_file;
        use std::path::Path;
        let ca = Some(Path::new("/etc/granda/ca 1.pem"));
        assert_eq!(
            with_ca_file("postgres://db/g?sslmode=verify-full", ca),
            "postgres://db/g?sslmode=verify-full&sslrootcert=/etc/granda/ca%201.pem"
        );
        assert_eq!(
            with_ca_file("postgres://db/g", ca),
            "postgres://db/g?sslrootcert=/etc/granda/ca%201.pem"
        );
        let own = "postgres://db/g?sslrootcert=/x.pem";
        assert_eq!(with_ca_file(own, ca), own);
        assert_eq!(with_ca_file("postgres://db/g", None), "postgres://db/g");
    }

    #[test]
    fn loopback_urls_without_an_sslmode_go_plain() {
        let plain_on_loopback = |url| super::plain_on_loopback_unless(url, false);
        assert_eq!(
            super::plain_on_loopback_unless("postgres://127.0.0.1/g", true),
            "postgres://127.0.0.1/g",
            "PGSSLMODE decides"
        );
        assert_eq!(
            plain_on_loopback("postgres://root@127.0.0.1:5432/g"),
            "postgres://root@127.0.0.1:5432/g?sslmode=disable"
        );
        assert_eq!(
            plain_on_loopback("postgres://localhost/g?application_name=x"),
            "postgres://localhost/g?application_name=x&sslmode=disable"
        );
        assert_eq!(
            plain_on_loopback("postgres://[::1]/g"),
            "postgres://[::1]/g?sslmode=disable"
        );
        for kept in [
            "postgres://127.0.0.1/g?sslmode=require",
            "postgres://db.example.com/g",
            "postgres://10.0.0.5/g",
        ] {
            assert_eq!(plain_on_loopback(kept), kept);
        }
    }

    #[test]
    fn a_url_with_a_user_is_left_alone() {
        let url = "postgres://bob:pw@db:5432/granda";
        assert_eq!(with_default_user(url), url);
    }

    #[test]
    fn a_url_without_a_user_gets_the_os_user() {
        let url = with_default_user("postgres://localhost/granda");
        assert!(url.ends_with("@localhost/granda"), "{url}");
    }
}
