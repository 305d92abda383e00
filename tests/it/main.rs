//! The integration tests, one binary over one `tests/common`: real Redis 7.0, Valkey 8.1 and
//! Kvrocks 2.7.0 processes on free loopback ports with temporary directories, the replguard
//! binary and in-process proxies, and the Kvrocks test double.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod behaviour;
mod chaos;
mod cli;
mod cluster;
mod fuzz_corpus;
mod group;
mod guard;
mod kvrocks;
mod kvrocks_cluster;
mod kvrocks_real;
mod load;
mod master_addr;
mod reload;
mod replication;
mod security;
mod sentinel;
mod tls;
