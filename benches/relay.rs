//! Throughput of the relay's per-byte work: the downstream watcher (RDB framing, then the
//! command-stream scanner) over realistic streams, and the Kvrocks WAL-batch scanner over a
//! stream of batches, read in 64 KiB chunks as the relay reads them, next to a plain copy of the
//! same bytes as the floor.
//!
//! `cargo bench --bench relay`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replguard::kvrocks::wire::WalScanner;
use replguard::redis::stream::Downstream;
use replguard::wire::resp::encode_command;

const CHUNK: usize = 64 * 1024;
const STREAM_BYTES: usize = 8 << 20;

/// A stream of SETs with values of `value_len` bytes, about `STREAM_BYTES` long.
fn stream(value_len: usize) -> Vec<u8> {
    let value = vec![b'v'; value_len];
    let mut out = Vec::with_capacity(STREAM_BYTES + 1024);
    let mut i = 0u64;
    while out.len() < STREAM_BYTES {
        let key = format!("key:{i:012}");
        out.extend(encode_command(&[b"SET".as_slice(), key.as_bytes(), &value]));
        i += 1;
    }
    out
}

/// A Kvrocks stream of one-record batches (`set` of `value_len` bytes, cluster key encoding,
/// trailing `r` record), as bulks, about `STREAM_BYTES` long.
fn kvrocks_stream(value_len: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(STREAM_BYTES + 1024);
    let mut seq = 1u64;
    while out.len() < STREAM_BYTES {
        let key = format!("key:{seq:012}");
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0x03, 0x01, b'1', 0x05, 0x01]);
        b.push((1 + 11 + 2 + key.len()) as u8);
        b.push(11);
        b.extend_from_slice(b"__namespace");
        b.extend_from_slice(&[0x12, 0x34]);
        b.extend_from_slice(key.as_bytes());
        let vlen = 5 + value_len;
        let mut v = vlen;
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
        b.extend_from_slice(&[0x01, 0, 0, 0, 0]);
        b.extend(std::iter::repeat_n(b'v', value_len));
        b.extend_from_slice(&[0x03, 18]);
        b.extend_from_slice(b"r C3EORR3YM0FAK7BG");
        out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(b"\r\n");
        seq += 1;
    }
    (out, seq)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    for value_len in [8usize, 100, 4096] {
        let wire = stream(value_len);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("scan", value_len), &wire, |b, wire| {
            b.iter(|| {
                let mut d = Downstream::partial();
                let mut ev = Vec::new();
                for chunk in wire.chunks(CHUNK) {
                    d.feed(black_box(chunk), &mut ev).unwrap();
                }
                assert_eq!(d.stream.boundary, wire.len() as u64);
            })
        });
        g.bench_with_input(BenchmarkId::new("copy", value_len), &wire, |b, wire| {
            let mut out = vec![0u8; CHUNK];
            b.iter(|| {
                for chunk in wire.chunks(CHUNK) {
                    out[..chunk.len()].copy_from_slice(black_box(chunk));
                }
                black_box(&out);
            })
        });
    }
    for value_len in [8usize, 100, 4096] {
        let (wire, next) = kvrocks_stream(value_len);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("kvrocks_scan", value_len),
            &wire,
            |b, wire| {
                b.iter(|| {
                    let mut s = WalScanner::new(1);
                    let mut ev = Vec::new();
                    for chunk in wire.chunks(CHUNK) {
                        ev.clear();
                        s.feed(black_box(chunk), &mut ev).unwrap();
                    }
                    assert_eq!(s.next_seq, next);
                })
            },
        );
    }
    // An RDB payload: only a length countdown, or a search for the diskless mark.
    let rdb = vec![0x5au8; STREAM_BYTES];
    let mark = [b'f'; 40];
    g.throughput(Throughput::Bytes(rdb.len() as u64));
    g.bench_function("rdb_diskless_mark_search", |b| {
        let mut head = b"$EOF:".to_vec();
        head.extend_from_slice(&mark);
        head.extend_from_slice(b"\r\n");
        b.iter(|| {
            let mut d = Downstream::full_sync();
            let mut ev = Vec::new();
            d.feed(&head, &mut ev).unwrap();
            for chunk in rdb.chunks(CHUNK) {
                d.feed(black_box(chunk), &mut ev).unwrap();
            }
            d.feed(&mark, &mut ev).unwrap();
            assert!(d.in_stream());
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
