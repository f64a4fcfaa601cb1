//! livewatch's multi-index Hamming search against faiss-cpu's `IndexBinaryFlat`, in one run,
//! on the same data: N random 256-bit hashes with 1% planted near-duplicates, Q = 2000
//! queries at threshold 31 (half near-duplicates of stored hashes with 0..=40 flipped bits,
//! half random).
//!
//! Per size it prints bytes per hash, build time, livewatch lookups/s on one thread and
//! batched (`query_batch`, all cores), faiss `IndexBinaryFlat.range_search` lookups/s on the
//! same queries (all cores; on the first 2·10⁹/N queries, 200 at 10M, as it scans), the
//! ratio (batched livewatch / faiss), whether the results are equal (livewatch against a
//! brute-force scan, and faiss's per-query counts against livewatch's), and the time from
//! "hash added" to "matchable": `Bank::with_added` with one hash on a bank of N entries,
//! then `best_match` finding it.
//!
//! faiss runs in `benches/support/faiss_bench.py` on files this bench writes under
//! `target/index-bench/`; it installs faiss-cpu into `.venv` on first use (a benchmark
//! dependency only). Without Python or faiss the faiss columns read "n/a".
//!
//! Sizes: 1M, then 10M when the machine reports 8 GiB available (peak ≈ 4 GB at 10M,
//! the bank's copy included). Override with `INDEX_BENCH_SIZES=1000000,10000000`;
//! `INDEX_BENCH_TABLES=11..16` forces the number of tables and `INDEX_BENCH_QUICK=1` skips
//! faiss and the bank (layout measurements).
//!
//! Run with `cargo bench --bench index`.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use livewatch::bank::{Bank, BankEntry};
use livewatch::hash::Hash256;
use livewatch::index::{distance, HammingIndex};

const Q: usize = 2000;
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

/// The reference: a straightforward scan with popcount over the same array, with the POPCNT
/// instruction where the CPU has it.
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
/// at large radii the index itself decides to scan. Printed before the summary table.
fn sweep(index: &HammingIndex, hashes: &[[u64; 4]], queries: &[[u64; 4]]) {
    let n = hashes.len();
    for r in [0, 10, 20, 31, 40, 50, 60, 64] {
        let t = Instant::now();
        let got: Vec<_> = queries.iter().map(|q| index.query(q, r)).collect();
        let index_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let want: Vec<_> = queries
            .iter()
            .map(|q| brute(black_box(hashes), q, r))
            .collect();
        let brute_s = t.elapsed().as_secs_f64();
        assert_eq!(
            got, want,
            "index and brute force disagree at N = {n}, r = {r}"
        );
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

fn write_hashes(path: &Path, hashes: &[[u64; 4]]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create bench file"));
    for h in hashes {
        for limb in h {
            f.write_all(&limb.to_le_bytes()).expect("write bench file");
        }
    }
    f.flush().expect("write bench file");
}

struct Faiss {
    qps: f64,
    queries: usize,
    equal: bool,
}

/// Runs the faiss baseline on the files in `dir`; `None` (with the reason on stderr) when
/// Python or faiss is missing or fails.
fn faiss(dir: &Path, limit: usize) -> Option<Faiss> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let out = std::process::Command::new(python)
        .arg(root.join("benches/support/faiss_bench.py"))
        .arg("--dir")
        .arg(dir)
        .args([
            "--threshold",
            &THRESHOLD.to_string(),
            "--limit",
            &limit.to_string(),
        ])
        .output()
        .map_err(|e| eprintln!("faiss baseline not run: {e}"))
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "faiss baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last()?;
    println!("  faiss: {line}");
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Faiss {
        qps: v["queries_per_s"].as_f64()?,
        queries: v["queries"].as_u64()? as usize,
        equal: v["counts_equal"].as_bool()?,
    })
}

fn hash256(limbs: &[u64; 4]) -> Hash256 {
    let mut words = [0u16; 16];
    for (i, w) in words.iter_mut().enumerate() {
        *w = (limbs[i / 4] >> (16 * (i % 4))) as u16;
    }
    Hash256 { words }
}

/// Time from "hash added" to "matchable" on a bank of `hashes`: `with_added` with one new
/// hash, then `best_match` finding it. Returns (bank build s, median add→match s).
fn add_to_match(hashes: &[[u64; 4]], rng: &mut Rng) -> (f64, f64) {
    let item: Arc<str> = "stored".into();
    let entries: Vec<BankEntry> = hashes
        .iter()
        .map(|h| BankEntry {
            hash: hash256(h),
            item: item.clone(),
            label: None,
        })
        .collect();
    let t = Instant::now();
    let bank = Bank::from_entries("bench", PathBuf::from("bench.csv"), THRESHOLD, entries, "x");
    let build_s = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for i in 0..7 {
        let h = hash256(&rng.hash());
        let added = BankEntry {
            hash: h,
            item: format!("added-{i}").into(),
            label: None,
        };
        let t = Instant::now();
        let next = bank.with_added(vec![added], &format!("add:{i}"));
        let m = next.best_match(&h).expect("the added hash matches");
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(&*m.entry.item, format!("added-{i}"));
        drop(next);
    }
    times.sort_by(f64::total_cmp);
    (build_s, times[times.len() / 2])
}

struct Row {
    n: usize,
    tables: String,
    bytes_per_hash: f64,
    build_s: f64,
    single_qps: f64,
    batch_qps: f64,
    faiss: Option<Faiss>,
    equal: bool,
    bank_build_s: f64,
    add_match_s: f64,
    gpu: Option<GpuRow>,
}

struct GpuRow {
    adapter: String,
    software: bool,
    upload_s: f64,
    queries: usize,
    qps: f64,
    equal: bool,
}

fn run(n: usize, tables: Option<usize>) -> Row {
    let mut rng = Rng(0x5EED_0000 + n as u64);
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

    let t = Instant::now();
    let index = match tables {
        Some(m) => HammingIndex::with_tables(&hashes, m),
        None => HammingIndex::new(&hashes),
    };
    let build_s = t.elapsed().as_secs_f64();
    let bytes = index.bytes();
    let tables = format!("{index:?}")
        .split("tables: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
        .to_string();

    // warm-up (first touches, caches), then single-threaded and batched over all queries
    for q in &queries[..200] {
        black_box(index.query(q, THRESHOLD));
    }
    // best of 3 runs each: the 2 cores are shared with other work
    let (mut single_s, mut batch_s) = (f64::INFINITY, f64::INFINITY);
    let (mut got, mut batch) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        got = queries.iter().map(|q| index.query(q, THRESHOLD)).collect();
        single_s = single_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        batch = index.query_batch(&queries, THRESHOLD);
        batch_s = batch_s.min(t.elapsed().as_secs_f64());
    }

    // exactness: the batch equals the single queries, and brute force agrees on as many
    // queries as 2·10⁹ hash comparisons allow (all at 1M, 200 at 10M)
    let checked = Q.min(2_000_000_000 / n).max(1);
    let mut equal = batch == got;
    for (q, g) in queries.iter().zip(&got).take(checked) {
        equal &= brute(black_box(&hashes), q, THRESHOLD) == *g;
    }
    if n <= 1_000_000 {
        sweep(&index, &hashes, &queries[..200]);
    }
    drop(index);
    let gpu = gpu_scan(&hashes, &queries, &got);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/index-bench");
    std::fs::create_dir_all(&dir).expect("create target/index-bench");
    write_hashes(&dir.join("hashes.bin"), &hashes);
    write_hashes(&dir.join("queries.bin"), &queries);
    let counts: Vec<u8> = got
        .iter()
        .flat_map(|v| (v.len() as u32).to_le_bytes())
        .collect();
    std::fs::write(dir.join("counts.bin"), counts).expect("write counts");
    let quick = std::env::var_os("INDEX_BENCH_QUICK").is_some() || !full_run();
    let faiss = if quick { None } else { faiss(&dir, checked) };
    for f in ["hashes.bin", "queries.bin", "counts.bin"] {
        let _ = std::fs::remove_file(dir.join(f));
    }

    let (bank_build_s, add_match_s) = if quick {
        (f64::NAN, f64::NAN)
    } else {
        add_to_match(&hashes, &mut rng)
    };
    Row {
        n,
        tables,
        bytes_per_hash: bytes as f64 / n as f64,
        build_s,
        single_qps: Q as f64 / single_s,
        batch_qps: Q as f64 / batch_s,
        faiss,
        equal,
        bank_build_s,
        add_match_s,
        gpu,
    }
}

/// The GPU scan (`[match] backend = "gpu"`) on the same bank and queries, when wgpu finds an
/// adapter: upload time, lookups/s (best of 3, the queries as one batch) and whether it
/// returns what the index returned. On a software adapter it takes fewer queries
/// (2·10⁸ comparisons) and its speed only says what the CPU emulating a GPU does.
fn gpu_scan(hashes: &[[u64; 4]], queries: &[[u64; 4]], want: &[Vec<(u32, u32)>]) -> Option<GpuRow> {
    use livewatch::index::gpu::GpuScanner;
    if livewatch::hash::gpu::list_adapters().is_empty() {
        return None;
    }
    let scanner = match GpuScanner::new(livewatch::hash::gpu::AdapterChoice::Auto, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("GPU scan: no usable adapter: {e:#}");
            return None;
        }
    };
    let software = scanner.is_software();
    let q = if software {
        queries.len().min((200_000_000 / hashes.len()).max(1))
    } else {
        queries.len()
    };
    let t = Instant::now();
    let bank = scanner
        .upload(hashes)
        .expect("copy the bank onto the adapter");
    // the copy is done once the first (tiny) batch has run
    bank.query_batch(&queries[..1], THRESHOLD)
        .expect("GPU scan");
    let upload_s = t.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    let mut equal = true;
    for _ in 0..3 {
        let t = Instant::now();
        let got = bank
            .query_batch(&queries[..q], THRESHOLD)
            .expect("GPU scan");
        best = best.min(t.elapsed().as_secs_f64());
        equal &= got == want[..q];
    }
    let info = scanner.adapter_info();
    Some(GpuRow {
        adapter: format!("{} ({:?})", info.name, info.device_type),
        software,
        upload_s,
        queries: q,
        qps: q as f64 / best,
        equal,
    })
}

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn main() {
    let tables: Option<usize> = std::env::var("INDEX_BENCH_TABLES")
        .ok()
        .map(|s| s.trim().parse().expect("INDEX_BENCH_TABLES: 11..=16"));
    if !full_run() {
        // `cargo bench` passes --bench; under `cargo test` this runs once, small, as a check
        println!("index: test build, 20 000 hashes, no faiss: checks the results, timings not meaningful");
    }
    let sizes: Vec<usize> = match std::env::var("INDEX_BENCH_SIZES") {
        _ if !full_run() => vec![20_000],
        Ok(s) => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("INDEX_BENCH_SIZES: comma-separated counts")
            })
            .collect(),
        Err(_) => {
            // 10M: hashes 0.3 GB, index 2.4 GB; then (index dropped) the bank: entries and index ≈ 3.4 GB
            let big_ok = available_bytes().is_some_and(|b| b > 8 << 30);
            if big_ok {
                vec![1_000_000, 10_000_000]
            } else {
                eprintln!("skipping N = 10M: less than 8 GiB available");
                vec![1_000_000]
            }
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "threshold {THRESHOLD}, Q = {Q} queries (half near-duplicates with 0..=40 flipped bits), {cores} cores"
    );
    let rows: Vec<Row> = sizes.into_iter().map(|n| run(n, tables)).collect();
    println!();
    println!(
        "{:>10} {:>6} {:>7} {:>7} {:>10} {:>10} {:>15} {:>8} {:>6} {:>8} {:>12}",
        "N",
        "tables",
        "B/hash",
        "build s",
        "lw 1T q/s",
        format!("lw {cores}T q/s"),
        "faiss q/s (Q)",
        "ratio",
        "equal",
        "bank s",
        "add→match ms"
    );
    for r in &rows {
        let (fq, ratio, feq) = match &r.faiss {
            Some(f) => (
                format!("{:.1} ({})", f.qps, f.queries),
                format!("{:.0}x", r.batch_qps / f.qps),
                f.equal,
            ),
            None => ("n/a".into(), "n/a".into(), true),
        };
        println!(
            "{:>10} {:>6} {:>7.1} {:>7.2} {:>10.0} {:>10.0} {:>15} {:>8} {:>6} {:>8.2} {:>12.3}",
            r.n,
            r.tables,
            r.bytes_per_hash,
            r.build_s,
            r.single_qps,
            r.batch_qps,
            fq,
            ratio,
            if r.equal && feq { "yes" } else { "NO" },
            r.bank_build_s,
            r.add_match_s * 1e3,
        );
    }
    for r in &rows {
        if let Some(g) = &r.gpu {
            println!(
                "GPU scan, N = {}: {}{}: upload {:.2} s ({} MB), {:.0} lookups/s over {} queries in one batch, equal to the index: {}",
                r.n,
                g.adapter,
                if g.software {
                    " [software rasteriser: informational, the CPU emulates the GPU]"
                } else {
                    ""
                },
                g.upload_s,
                (r.n * 32) >> 20,
                g.qps,
                g.queries,
                if g.equal { "yes" } else { "NO" },
            );
            assert!(g.equal, "the GPU scan disagrees with the index");
        }
    }
}
