//! What operators see and do: the admin listener (`/status`, `/metrics`, the mutating routes),
//! the `/status` document, and the `replguard status` report.

pub mod admin;
pub mod report;
pub mod status;
