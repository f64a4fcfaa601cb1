//! Multi-index Hamming search against a linear popcount scan, in one run, on the same hashes:
//! N random 256-bit hashes with planted near-duplicates, Q = 1000 queries at threshold 31
//! (half near-duplicates of stored hashes with 0..=40 flipped bits, half random). Prints
//! build time, bytes per hash, ms per query for both and their ratio; the result sets must
//! be identical (the bench panics otherwise).
//!
//! Sizes: 1M, then 10M when the machine reports enough available memory (the index needs
//! ≈ 3.5 GB at 10M). Override with `INDEX_BENCH_SIZES=1000000,10000000`.
//!
//! Run with `cargo bench --bench index`.

use std::hint::black_box;
use std::time::Instant;

use livewatch::index::{distance, HammingIndex};

const Q: usize = 1000;
const THRESHOLD: u32 = 31;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn hash(&mut self) -> [u64; 4] {
        [self.next(), self.next(), self.next(), self.next()]
    }
    fn flip(&mut self, h: &[u64; 4], k: u32) -> [u64; 4] {
        let mut out = *h;
        let mut n = 0;
        while n < k {
            let b = (self.next() % 256) as usize;
            let bit = 1u64 << (b % 64);
            // flip only bits not flipped yet, so exactly k differ
            if (out[b / 64] ^ h[b / 64]) & bit == 0 {
                out[b / 64] ^= bit;
                n += 1;
            }
        }
        out
    }
}

/// The baseline: a straightforward scan with popcount over the same array, with the POPCNT
/// instruction where the CPU has it (as the index uses it), so the ratio is not inflated by
/// the default target's software popcount.
fn brute(hashes: &[[u64; 4]], q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT.
        return unsafe { brute_popcnt(hashes, q, r) };
    }
    brute_body(hashes, q, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn brute_popcnt(hashes: &[[u64; 4]], q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
    brute_body(hashes, q, r)
}

#[inline(always)]
fn brute_body(hashes: &[[u64; 4]], q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let d = distance(h, q);
        if d <= r {
            out.push((i as u32, d));
        }
    }
    out
}

/// Other thresholds on the same index (200 queries each), checked against brute force too;
/// at large radii the index itself decides to scan. Printed before the size's summary row.
fn sweep(index: &HammingIndex, hashes: &[[u64; 4]], queries: &[[u64; 4]]) {
    let n = hashes.len();
    for r in [0, 10, 20, 31, 40, 50, 60, 64] {
        let t = Instant::now();
        let got: Vec<_> = queries.iter().map(|q| index.query(q, r)).collect();
        let index_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let want: Vec<_> = queries.iter().map(|q| brute(black_box(hashes), q, r)).collect();
        let brute_s = t.elapsed().as_secs_f64();
        assert_eq!(got, want, "index and brute force disagree at N = {n}, r = {r}");
        let per = |s: f64| s * 1e3 / queries.len() as f64;
        println!(
            "  sweep N = {n}, r = {r:>2}: index {:>8.4} ms/q, brute {:>7.3} ms/q, speedup {:>6.1}x",
            per(index_s),
            per(brute_s),
            brute_s / index_s
        );
    }
}

fn available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn run(n: usize) {
    let mut rng = Rng(0x5EED_0000 + n as u64);
    let t = Instant::now();
    let mut hashes: Vec<[u64; 4]> = Vec::with_capacity(n);
    hashes.extend((0..n - n / 100).map(|_| rng.hash()));
    // 1% planted near-duplicates of stored hashes (0..=40 bits flipped)
    while hashes.len() < n {
        let src = hashes[(rng.next() % hashes.len() as u64) as usize];
        let k = (rng.next() % 41) as u32;
        let near = rng.flip(&src, k);
        hashes.push(near);
    }
    let queries: Vec<[u64; 4]> = (0..Q)
        .map(|i| {
            if i % 2 == 0 {
                rng.hash()
            } else {
                let src = hashes[(rng.next() % n as u64) as usize];
                let k = (rng.next() % 41) as u32;
                rng.flip(&src, k)
            }
        })
        .collect();
    let gen_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let index = HammingIndex::new(&hashes);
    let build_s = t.elapsed().as_secs_f64();
    let bytes = index.bytes();

    // single-threaded both ways, so the ratio compares algorithms, not core counts
    let t = Instant::now();
    let got: Vec<_> = queries.iter().map(|q| index.query(q, THRESHOLD)).collect();
    let index_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let batch = index.query_batch(&queries, THRESHOLD);
    let batch_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let want: Vec<_> = queries
        .iter()
        .map(|q| brute(black_box(&hashes), q, THRESHOLD))
        .collect();
    let brute_s = t.elapsed().as_secs_f64();

    assert_eq!(got, want, "index and brute force disagree at N = {n}");
    assert_eq!(batch, want, "query_batch and brute force disagree at N = {n}");
    let matches: usize = want.iter().map(Vec::len).sum();
    let with_match = want.iter().filter(|v| !v.is_empty()).count();

    if n <= 1_000_000 {
        sweep(&index, &hashes, &queries[..200]);
    }

    let ms = |s: f64| s * 1e3 / Q as f64;
    println!(
        "{:>10} {:>7.1} {:>7.2} {:>9.1} {:>11.4} {:>11.4} {:>11.3} {:>8.0}x {:>8} {:>7}",
        n,
        gen_s,
        build_s,
        bytes as f64 / n as f64,
        ms(index_s),
        ms(batch_s),
        ms(brute_s),
        brute_s / index_s,
        matches,
        with_match,
    );
}

fn main() {
    let sizes: Vec<usize> = match std::env::var("INDEX_BENCH_SIZES") {
        Ok(s) => s
            .split(',')
            .map(|x| x.trim().parse().expect("INDEX_BENCH_SIZES: comma-separated counts"))
            .collect(),
        Err(_) => {
            // the 10M run holds ≈ 3.5 GB of index plus 0.3 GB of hashes: only with headroom
            let big_ok = available_bytes().is_some_and(|b| b > 8 << 30);
            if big_ok {
                vec![1_000_000, 10_000_000]
            } else {
                eprintln!("skipping N = 10M: less than 8 GiB available");
                vec![1_000_000]
            }
        }
    };
    println!(
        "threshold {THRESHOLD}, Q = {Q} queries (half near-duplicates with 0..=40 flipped bits), {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:>10} {:>7} {:>7} {:>9} {:>11} {:>11} {:>11} {:>9} {:>8} {:>7}",
        "N", "gen s", "build s", "B/hash", "index ms/q", "batch ms/q", "brute ms/q", "speedup", "matches", "q hit"
    );
    for n in sizes {
        run(n);
    }
}
