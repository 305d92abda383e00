//! One connection, whatever the flavour: session statistics (offset books).

pub mod stats;
