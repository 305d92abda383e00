//! What operators see and do: the admin listener (`/status`, `/metrics`, the mutating routes)
//! and the `replguard status` report.

pub mod admin;
pub mod report;
