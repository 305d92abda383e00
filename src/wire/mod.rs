//! Pure codecs for what peers send, bounded and resumable: no I/O, no flavour.

pub mod resp;
