//! Fault tests: Granda against services that stop, restart or crash. They run against private
//! copies of the services ([`infra`]), never the shared ones other tests use at the same time.

pub mod infra;
mod infra_check;
pub(crate) mod ledger;
mod services;
mod worker;
