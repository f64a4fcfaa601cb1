//! Exact Hamming-radius search over 256-bit PDQ hashes that stays fast at millions of hashes:
//! multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with
//! multi-index hashing").
//!
//! # Why it is exact
//!
//! Each hash is cut into `m` disjoint substrings (tables). The Hamming distance is the sum of
//! the `m` substring distances, so if `d(h, q) <= r` with `r = a·m + b` (`0 <= b < m`), then
//! either one of the first `b + 1` substrings is within `a` of the query's, or one of the
//! other `m - b - 1` substrings is within `a - 1` (otherwise the sum would be at least
//! `(b+1)(a+1) + (m-b-1)a = r + 1`). Every candidate is then verified against the full 256
//! bits, so the answer is exactly the brute-force set.
//!
//! # Layout: long substrings, nearly empty buckets
//!
//! The substring width follows the bank size, so that a bucket holds one to a few entries:
//! `m = ceil(256 / log2 N)` tables, clamped to 11..=16 (16 tables of 16 bits up to ≈ 65k
//! hashes, 13 tables of 19–20 bits at 1M, 12 tables of 21–22 bits at 10M). At r = 31 and
//! 10M that is 8 tables probed at radius 2 and 4 at radius 1: ≈ 1 950 bucket probes reaching
//! ≈ 7 500 entries, instead of 272 probes reaching ≈ 41 000 entries with 16-bit substrings.
//! Measured at 10M, r = 31 on the 2-core bench machine (lookups/s, one thread / two; the
//! machine is shared, so ±20%): 16 tables of 16 bits ≈ 2 500 on one thread; 11 tables of 23–24
//! bits 7 000–9 000 / 14 000–14 700; 12 tables 6 600–7 250 / 13 300–15 650. 11 and 12 are
//! equal within the noise; 12 needs less memory (237 against 255 bytes/hash) and builds in
//! 6 s instead of 10. Buckets in fixed 32-byte slots (one memory access per probe instead of
//! two) measured no faster (7 500 / 15 300 at 11 tables) for 442 bytes/hash, so not used.
//!
//! Per table: a flat bucket-offset array of `2^w + 1` `u32` (at most 64 MiB), and the
//! entries sorted by key (a counting sort: linear), each 16 bytes inline: the id and the 96
//! hash bits that follow the key. The key's distance plus those 96 bits' distance is a lower
//! bound of the full distance that rejects an unrelated entry at r = 31 with probability
//! ≈ 1 − 2·10⁻⁴, so the full hash (a random access into the base array) is fetched only for
//! near-matches. A probe is two dependent cache misses (offset, then bucket), so the probes
//! of a query are listed first and walked as a software pipeline: offsets prefetched
//! [`AHEAD_OFFSETS`] probes ahead, buckets [`AHEAD_BUCKETS`] ahead.
//!
//! # Falling back to a scan
//!
//! The number of probed keys grows as Σ C(w, i), and at large r the inline bound stops
//! filtering, so each pass costs a random fetch. Each query estimates the index's work
//! (probes, entries reached, expected fetches) and scans the base array linearly when that
//! is cheaper. Both paths are exact.
//!
//! Duplicates across tables: an entry reached through table `t` is reported only if no earlier
//! probed table `t' < t` would have reached it (its substring `t'` is not within that table's
//! radius of the query's), so no hash set is needed and each id is reported once.

/// Fewest / most substrings (tables): widths stay within 16..=24 bits (offset arrays of at
/// most 64 MiB), and the key plus the inline bits never overlap.
const MIN_TABLES: usize = 11;
const MAX_TABLES: usize = 16;
/// Hash bits stored inline with each entry (after the key's bits).
const INLINE_BITS: u32 = 96;
/// Work units charged per probed key (two cache misses, overlapped by the pipeline) against
/// one entry of a linear scan.
const PROBE_COST: f64 = 24.0;
/// Work units per entry reached in a bucket (a popcount bound, the line already fetched).
const ENTRY_COST: f64 = 2.0;
/// Work units charged when an entry passes the inline bound and its full hash is fetched
/// (a random access into the base array).
const FETCH_COST: f64 = 32.0;
/// Software pipeline distances, in probes (see the module docs).
const AHEAD_OFFSETS: usize = 24;
const AHEAD_BUCKETS: usize = 12;

pub mod gpu;

/// Full Hamming distance between two 256-bit hashes.
#[inline(always)]
pub fn distance(a: &[u64; 4], b: &[u64; 4]) -> u32 {
    (a[0] ^ b[0]).count_ones()
        + (a[1] ^ b[1]).count_ones()
        + (a[2] ^ b[2]).count_ones()
        + (a[3] ^ b[3]).count_ones()
}

/// The 64 bits of `h` starting at bit `off` (bit `i` is bit `i % 64` of limb `i / 64`),
/// wrapping around the 256 bits.
#[inline(always)]
fn bits64(h: &[u64; 4], off: u32) -> u64 {
    let off = off % 256;
    let (l, s) = ((off / 64) as usize, off % 64);
    if s == 0 {
        h[l]
    } else {
        (h[l] >> s) | (h[(l + 1) % 4] << (64 - s))
    }
}

#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Substring widths for `m` tables: the narrower ones first (they get the larger radius from
/// the pigeonhole bound, which costs fewer keys on a narrow table).
fn widths(m: usize) -> Vec<u32> {
    let (base, extra) = (256 / m as u32, 256 % m as u32);
    (0..m as u32)
        .map(|t| if t < m as u32 - extra { base } else { base + 1 })
        .collect()
}

/// Number of tables for `n` hashes: `ceil(256 / log2 n)`, buckets of one to a few entries
/// (`2^w` just below `n`).
fn tables_for(n: usize) -> usize {
    let lg = (n.max(2) as f64).log2();
    ((256.0 / lg).ceil() as usize).clamp(MIN_TABLES, MAX_TABLES)
}

/// Σ_{i <= k} C(w, i), in f64 (a cost estimate).
fn ball(w: u32, k: i32) -> f64 {
    let (mut c, mut s) = (1.0f64, 0.0f64);
    for i in 0..=k.min(w as i32) {
        if i > 0 {
            c = c * (w as i32 - i + 1) as f64 / i as f64;
        }
        s += c;
    }
    s
}

/// A vector of `n` copies of `fill` whose pages the kernel is asked to back with huge pages
/// (`madvise(MADV_HUGEPAGE)`, for hosts where transparent huge pages are "madvise" only):
/// every probe is a random access into gigabytes, and with 4 KiB pages each one also
/// misses the TLB (measured at 10M: ≈ 1.5x more lookups/s with huge pages).
fn huge_vec<T: Clone>(n: usize, fill: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_ptr() as usize, n * std::mem::size_of::<T>());
    v.resize(n, fill);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, len: usize) {
    extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    const HUGE: usize = 2 << 20;
    if len < 2 * HUGE {
        return;
    }
    // only the whole 2 MiB pages inside the allocation
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: advice on pages of an allocation this process owns; it changes no contents
        // and a failure (e.g. an old kernel) is harmless, so the result is ignored.
        unsafe {
            madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_addr: usize, _len: usize) {}

struct Table {
    /// First bit of the key, and its width.
    off: u32,
    width: u32,
    /// `offsets[k]..offsets[k+1]` is bucket `k` in `entries`.
    offsets: Vec<u32>,
    /// `[id, inline bits 0..32, 32..64, 64..96]` in bucket order, ids ascending per bucket.
    entries: Vec<[u32; 4]>,
}

impl Table {
    #[inline(always)]
    fn key(&self, h: &[u64; 4]) -> usize {
        (bits64(h, self.off) & ((1u64 << self.width) - 1)) as usize
    }

    /// The 96 bits after the key: disjoint from the key's, so their distances add up to a
    /// lower bound.
    #[inline(always)]
    fn inline(&self, h: &[u64; 4]) -> (u64, u32) {
        let o = self.off + self.width;
        (bits64(h, o), bits64(h, o + 64) as u32)
    }
}

/// Exact index for "all stored hashes within Hamming distance r of a query".
pub struct HammingIndex {
    /// Hashes by id, for final verification and the linear fallback.
    hashes: Vec<[u64; 4]>,
    tables: Vec<Table>,
    /// `pass[r]` = P(Binomial(96, 1/2) <= r): about the chance that an unrelated entry passes
    /// the inline bound at radius r (and costs a fetch). ≈ 2·10⁻⁴ at r = 31, 0.5 at r = 48.
    pass: Vec<f64>,
}

/// Which path a query takes; tests force each one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
enum Strategy {
    Auto,
    Index,
    Scan,
}

impl std::fmt::Debug for HammingIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HammingIndex")
            .field("hashes", &self.len())
            .field("tables", &self.tables.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl HammingIndex {
    /// Builds the index; ids are positions in `hashes`. The number of tables follows
    /// `hashes.len()` (module docs).
    pub fn new(hashes: &[[u64; 4]]) -> Self {
        Self::with_tables(hashes, tables_for(hashes.len()))
    }

    /// [`new`](Self::new) with an explicit number of tables (11..=16), for measurements.
    #[doc(hidden)]
    pub fn with_tables(hashes: &[[u64; 4]], m: usize) -> Self {
        assert!(
            hashes.len() < u32::MAX as usize,
            "ids are u32: at most 2^32 - 1 hashes"
        );
        assert!((MIN_TABLES..=MAX_TABLES).contains(&m), "tables: 11..=16");
        let ws = widths(m);
        let offs: Vec<u32> = ws
            .iter()
            .scan(0, |o, &w| {
                let off = *o;
                *o += w;
                Some(off)
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, m);
        let mut tables: Vec<Option<Table>> = (0..m).map(|_| None).collect();
        let per = m.div_ceil(threads);
        std::thread::scope(|s| {
            let chunks: Vec<_> = tables
                .chunks_mut(per)
                .enumerate()
                .map(|(c, chunk)| {
                    let (ws, offs) = (&ws, &offs);
                    s.spawn(move || {
                        for (i, slot) in chunk.iter_mut().enumerate() {
                            let t = c * per + i;
                            *slot = Some(build_table(hashes, offs[t], ws[t]));
                        }
                    })
                })
                .collect();
            for c in chunks {
                c.join().expect("table build thread");
            }
        });
        // binomial(96, 1/2) CDF by Pascal's rule in f64 (exact enough for a cost estimate)
        let mut row = vec![1.0f64];
        for _ in 0..INLINE_BITS {
            let mut next = vec![0.5 * row[0]];
            next.extend(row.windows(2).map(|w| 0.5 * (w[0] + w[1])));
            next.push(0.5 * row[row.len() - 1]);
            row = next;
        }
        let mut pass = Vec::with_capacity(257);
        let mut acc = 0.0;
        for p in &row {
            acc += p;
            pass.push(f64::min(acc, 1.0));
        }
        pass.resize(257, 1.0); // every entry passes at r >= 96
        HammingIndex {
            hashes: {
                let mut v = huge_vec(0, [0u64; 4]);
                v.reserve_exact(hashes.len());
                advise_huge(v.as_ptr() as usize, hashes.len() * 32);
                v.extend_from_slice(hashes);
                v
            },
            tables: tables.into_iter().map(|t| t.expect("built")).collect(),
            pass,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Heap bytes held (hashes, tables); divide by [`len`](Self::len) for bytes per hash
    /// (32 + 16 per table, plus the offset arrays: 4·2^w per table).
    pub fn bytes(&self) -> usize {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| t.offsets.capacity() * 4 + t.entries.capacity() * 16)
            .sum();
        self.hashes.capacity() * 32 + tables + self.pass.capacity() * 8
    }

    /// All `(id, distance)` with `distance <= max_distance`, in ascending id order.
    pub fn query(&self, q: &[u64; 4], max_distance: u32) -> Vec<(u32, u32)> {
        self.query_with(q, max_distance, Strategy::Auto)
    }

    /// The closest stored hash within `max_distance`; ties go to the lowest id.
    pub fn nearest_within(&self, q: &[u64; 4], max_distance: u32) -> Option<(u32, u32)> {
        // query() returns ids ascending, so min_by_key's first-minimum rule picks the lowest id
        self.query(q, max_distance)
            .into_iter()
            .min_by_key(|&(id, d)| (d, id))
    }

    /// [`query`](Self::query) for many queries, spread over the available cores.
    pub fn query_batch(&self, qs: &[[u64; 4]], max_distance: u32) -> Vec<Vec<(u32, u32)>> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        // below a few dozen queries the thread start-up costs more than it saves
        if threads == 1 || qs.len() < 64 {
            return qs.iter().map(|q| self.query(q, max_distance)).collect();
        }
        let mut out: Vec<Vec<(u32, u32)>> = vec![Vec::new(); qs.len()];
        let per = qs.len().div_ceil(threads);
        std::thread::scope(|s| {
            for (qc, oc) in qs.chunks(per).zip(out.chunks_mut(per)) {
                s.spawn(move || {
                    for (q, o) in qc.iter().zip(oc.iter_mut()) {
                        *o = self.query(q, max_distance);
                    }
                });
            }
        });
        out
    }

    /// Per-table probe radius from the refined pigeonhole bound (module docs); `-1` = skip.
    /// Capped at each table's width (beyond it every key is within reach anyway).
    fn radii(&self, r: u32) -> [i32; MAX_TABLES] {
        let m = self.tables.len().max(1);
        let (a, b) = ((r / m as u32) as i32, (r % m as u32) as usize);
        let mut radii = [-1; MAX_TABLES];
        for (t, table) in self.tables.iter().enumerate() {
            radii[t] = if t <= b { a } else { a - 1 }.min(table.width as i32);
        }
        radii
    }

    /// Whether probing the tables at radius `r` is expected to cost less than a scan.
    fn index_cheaper(&self, r: u32) -> bool {
        let n = self.hashes.len() as f64;
        let radii = self.radii(r);
        let pass = self.pass[(r as usize).min(256)];
        let cost: f64 = self
            .tables
            .iter()
            .zip(radii)
            .filter(|(_, rho)| *rho >= 0)
            .map(|(t, rho)| {
                let bucket = n / (1u64 << t.width) as f64;
                ball(t.width, rho) * (PROBE_COST + bucket * (ENTRY_COST + FETCH_COST * pass))
            })
            .sum();
        cost < n
    }

    fn query_with(&self, q: &[u64; 4], max_distance: u32, strategy: Strategy) -> Vec<(u32, u32)> {
        let r = max_distance.min(256);
        if self.hashes.is_empty() {
            return Vec::new();
        }
        let use_index = match strategy {
            Strategy::Index => true,
            Strategy::Scan => false,
            Strategy::Auto => self.index_cheaper(r),
        };
        let radii = self.radii(r);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, the only feature these functions enable.
            return unsafe {
                if use_index {
                    self.probe_popcnt(q, r, &radii)
                } else {
                    self.scan_popcnt(q, r)
                }
            };
        }
        if use_index {
            self.probe(q, r, &radii)
        } else {
            self.scan(q, r)
        }
    }

    // The default x86-64 target has no POPCNT instruction, and `count_ones` then compiles to
    // a dozen bit-twiddling operations: these copies of the hot loops, compiled with the
    // feature and chosen at run time, make verification ~3x cheaper on any CPU since 2008.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn probe_popcnt(&self, q: &[u64; 4], r: u32, radii: &[i32; MAX_TABLES]) -> Vec<(u32, u32)> {
        self.probe(q, r, radii)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn scan_popcnt(&self, q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
        self.scan(q, r)
    }

    /// Probes the tables at `radii`, verifies candidates, reports each match once.
    #[inline(always)]
    fn probe(&self, q: &[u64; 4], r: u32, radii: &[i32; MAX_TABLES]) -> Vec<(u32, u32)> {
        // 1. every probe as (table << 40 | key distance << 32 | key)
        let total: f64 = (0..self.tables.len())
            .filter(|&t| radii[t] >= 0)
            .map(|t| ball(self.tables[t].width, radii[t]))
            .sum();
        let mut probes: Vec<u64> = Vec::with_capacity(total.min(1e7) as usize);
        let mut qkeys = [0usize; MAX_TABLES];
        let mut qin = [(0u64, 0u32); MAX_TABLES];
        for (t, table) in self.tables.iter().enumerate() {
            let (rho, w) = (radii[t], table.width);
            qkeys[t] = table.key(q);
            qin[t] = table.inline(q);
            if rho < 0 {
                continue;
            }
            let qk = qkeys[t] as u64;
            let tag = (t as u64) << 40;
            for k in 0..=rho as u32 {
                // all w-bit masks of popcount k, in increasing order (Gosper's hack)
                let mut mask: u64 = (1u64 << k) - 1;
                while mask < (1u64 << w) {
                    probes.push(tag | (k as u64) << 32 | (qk ^ mask));
                    if mask == 0 {
                        break;
                    }
                    // Gosper's hack; the division by the lowest set bit is a shift
                    let tz = mask.trailing_zeros();
                    let s = mask + (1u64 << tz);
                    mask = (((s ^ mask) >> 2) >> tz) | s;
                }
            }
        }
        // 2. the pipeline: offsets AHEAD_OFFSETS ahead, buckets AHEAD_BUCKETS ahead
        let n = probes.len();
        let mut ranges: Vec<(u32, u32)> = vec![(0, 0); n];
        let split = |p: u64| {
            (
                (p >> 40) as usize,
                ((p >> 32) & 0xff) as u32,
                (p & 0xffff_ffff) as usize,
            )
        };
        let mut out = Vec::new();
        let lag = AHEAD_OFFSETS - AHEAD_BUCKETS;
        for i in 0..n + AHEAD_OFFSETS {
            if i < n {
                let (t, _, k) = split(probes[i]);
                prefetch(self.tables[t].offsets.as_ptr().wrapping_add(k));
            }
            if i >= lag && i - lag < n {
                let j = i - lag;
                let (t, _, k) = split(probes[j]);
                let table = &self.tables[t];
                let (lo, hi) = (table.offsets[k], table.offsets[k + 1]);
                ranges[j] = (lo, hi);
                if lo < hi {
                    prefetch(table.entries.as_ptr().wrapping_add(lo as usize));
                    prefetch(table.entries.as_ptr().wrapping_add(hi as usize - 1));
                }
            }
            if i >= AHEAD_OFFSETS {
                let j = i - AHEAD_OFFSETS;
                let (t, kd, _) = split(probes[j]);
                let (lo, hi) = ranges[j];
                if lo == hi {
                    continue;
                }
                let table = &self.tables[t];
                let (qa, qb) = qin[t];
                for e in &table.entries[lo as usize..hi as usize] {
                    let a = u64::from(e[1]) | u64::from(e[2]) << 32;
                    // lower bound: key bits + the 96 inline bits (disjoint bit sets)
                    let bound = kd + (a ^ qa).count_ones() + (e[3] ^ qb).count_ones();
                    if bound > r {
                        continue;
                    }
                    let id = e[0];
                    let h = &self.hashes[id as usize];
                    let d = distance(h, q);
                    if d > r {
                        continue;
                    }
                    // reported already through an earlier table that reaches it?
                    let seen = (0..t).any(|u| {
                        radii[u] >= 0
                            && ((self.tables[u].key(h) ^ qkeys[u]).count_ones() as i32) <= radii[u]
                    });
                    if !seen {
                        out.push((id, d));
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Exact linear scan (the fallback for large radii).
    #[inline(always)]
    fn scan(&self, q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
        // a plain loop (no closure) so the body inlines into `scan_popcnt`
        let mut out = Vec::new();
        for (i, h) in self.hashes.iter().enumerate() {
            let d = distance(h, q);
            if d <= r {
                out.push((i as u32, d));
            }
        }
        out
    }
}

/// One substring table by counting sort on its key.
fn build_table(hashes: &[[u64; 4]], off: u32, width: u32) -> Table {
    let keys = 1usize << width;
    let mut table = Table {
        off,
        width,
        offsets: huge_vec(keys + 1, 0u32),
        entries: Vec::new(),
    };
    for h in hashes {
        let k = table.key(h);
        table.offsets[k + 1] += 1;
    }
    for k in 0..keys {
        table.offsets[k + 1] += table.offsets[k];
    }
    let mut cursor = huge_vec(keys, 0u32);
    cursor.copy_from_slice(&table.offsets[..keys]);
    let mut entries = huge_vec(hashes.len(), [0u32; 4]);
    // ids are visited in ascending order, so each bucket lists its ids ascending
    for (id, h) in hashes.iter().enumerate() {
        let c = &mut cursor[table.key(h)];
        let (a, b) = table.inline(h);
        entries[*c as usize] = [id as u32, a as u32, (a >> 32) as u32, b];
        *c += 1;
    }
    table.entries = entries;
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// xorshift64*: deterministic and dependency-free.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn hash(&mut self) -> [u64; 4] {
            [self.next(), self.next(), self.next(), self.next()]
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Flips exactly `k` distinct random bits.
    pub(crate) fn flip(rng: &mut Rng, h: &[u64; 4], k: u32) -> [u64; 4] {
        let mut out = *h;
        let mut flipped = [false; 256];
        let mut done = 0;
        while done < k {
            let b = rng.below(256) as usize;
            if !flipped[b] {
                flipped[b] = true;
                out[b / 64] ^= 1 << (b % 64);
                done += 1;
            }
        }
        out
    }

    pub(crate) fn brute(hashes: &[[u64; 4]], q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
        hashes
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let d = distance(h, q);
                (d <= r).then_some((i as u32, d))
            })
            .collect()
    }

    const THRESHOLDS: [u32; 8] = [0, 1, 10, 15, 16, 31, 40, 60];

    /// The layouts under test: the default for the corpus size (16 tables of 16 bits at a
    /// few thousand hashes) and the long-substring one large banks get (12 tables of 21–22
    /// bits; 11 tables would allocate 448 MB of offsets in every test).
    fn layouts(hashes: &[[u64; 4]]) -> Vec<HammingIndex> {
        vec![
            HammingIndex::new(hashes),
            HammingIndex::with_tables(hashes, 12),
        ]
    }

    /// Every strategy agrees with brute force for every threshold.
    fn check(index: &HammingIndex, hashes: &[[u64; 4]], q: &[u64; 4]) {
        for r in THRESHOLDS {
            let want = brute(hashes, q, r);
            for s in [Strategy::Auto, Strategy::Index, Strategy::Scan] {
                assert_eq!(
                    index.query_with(q, r, s),
                    want,
                    "r = {r}, {s:?}, {} tables",
                    index.tables.len()
                );
            }
            let nearest = want.iter().copied().min_by_key(|&(id, d)| (d, id));
            assert_eq!(index.nearest_within(q, r), nearest, "nearest r = {r}");
        }
    }

    /// Stored hashes: random ones, near-duplicates of some (k flipped bits, k in 0..=40), and
    /// exact duplicates.
    fn corpus(rng: &mut Rng, n: usize) -> Vec<[u64; 4]> {
        let mut hashes: Vec<[u64; 4]> = (0..n).map(|_| rng.hash()).collect();
        for k in 0..=40u32 {
            let src = hashes[rng.below(n as u64) as usize];
            let near = flip(rng, &src, k);
            hashes.push(near);
        }
        for _ in 0..20 {
            let src = hashes[rng.below(hashes.len() as u64) as usize];
            hashes.push(src);
        }
        hashes
    }

    #[test]
    fn random_queries_match_brute_force() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let hashes = corpus(&mut rng, 3000);
        for index in layouts(&hashes) {
            assert_eq!(index.len(), hashes.len());
            for _ in 0..40 {
                check(&index, &hashes, &rng.hash());
            }
        }
    }

    #[test]
    fn planted_near_duplicates_match_brute_force() {
        let mut rng = Rng(42);
        let hashes = corpus(&mut rng, 3000);
        for index in layouts(&hashes) {
            for k in 0..=40u32 {
                for _ in 0..3 {
                    let src = hashes[rng.below(hashes.len() as u64) as usize];
                    check(&index, &hashes, &flip(&mut rng, &src, k));
                }
            }
        }
    }

    /// Bit flips concentrated in a few substrings stress the pigeonhole bound at its edge:
    /// exactly r flips spread so that every substring sits at its table's radius + 1 except
    /// the one that must still be caught.
    #[test]
    fn adversarial_flip_patterns() {
        let mut rng = Rng(7);
        let hashes: Vec<[u64; 4]> = (0..500).map(|_| rng.hash()).collect();
        for index in layouts(&hashes) {
            for r in THRESHOLDS {
                let radii = index.radii(r);
                for catch in 0..index.tables.len() {
                    let src = hashes[rng.below(hashes.len() as u64) as usize];
                    let mut q = src;
                    let mut total = 0u32;
                    for (t, table) in index.tables.iter().enumerate() {
                        let rho = radii[t];
                        // substring t gets rho + 1 flips (missed by its table), except `catch`
                        let want = if t == catch { rho.max(0) } else { rho + 1 } as u32;
                        for bit in 0..want.min(table.width) {
                            if total >= r {
                                break;
                            }
                            let b = table.off + bit;
                            q[b as usize / 64] ^= 1 << (b % 64);
                            total += 1;
                        }
                    }
                    check(&index, &hashes, &q);
                }
            }
        }
    }

    #[test]
    fn layout_follows_the_bank_size() {
        assert_eq!(tables_for(0), 16);
        assert_eq!(tables_for(4096), 16);
        assert_eq!(tables_for(1_000_000), 13);
        assert_eq!(tables_for(10_000_000), 12);
        assert_eq!(tables_for(usize::MAX >> 1), MIN_TABLES);
        for m in MIN_TABLES..=MAX_TABLES {
            let w = widths(m);
            assert_eq!(w.iter().sum::<u32>(), 256);
            assert!(w.windows(2).all(|p| p[0] <= p[1]));
            assert!(w[m - 1] + INLINE_BITS <= 256 && w[m - 1] <= 24);
        }
        assert_eq!(widths(11), [23, 23, 23, 23, 23, 23, 23, 23, 24, 24, 24]);
    }

    #[test]
    fn bits_wrap_around() {
        let h = [
            0x0123_4567_89AB_CDEF,
            0xFEDC_BA98_7654_3210,
            0x1111_2222_3333_4444,
            0x5555_6666_7777_8888,
        ];
        assert_eq!(bits64(&h, 0), h[0]);
        assert_eq!(bits64(&h, 64), h[1]);
        assert_eq!(bits64(&h, 4) & 0xFFFF, 0xBCDE);
        assert_eq!(bits64(&h, 240) & 0xFFFF_FFFF, 0xCDEF_5555);
        assert_eq!(bits64(&h, 256 + 8), bits64(&h, 8));
    }

    #[test]
    fn cost_model_picks_sensible_paths() {
        let index = HammingIndex::new(&[[0; 4]; 1]);
        assert_eq!(index.pass.len(), 257);
        assert!(index.pass[31] < 1e-3 && index.pass[31] > 0.0);
        assert!((index.pass[48] - 0.5).abs() < 0.05);
        assert_eq!(index.pass[96], 1.0);
        // one hash: a probe costs more than scanning it
        assert!(!index.index_cheaper(0));
        assert!(!index.index_cheaper(31));
        // 1M hashes: only the length and the widths matter to the cost model
        let big = HammingIndex {
            hashes: vec![[0; 4]; 1 << 20],
            ..HammingIndex::with_tables(&[], tables_for(1 << 20))
        };
        for r in [0, 10, 31, 40] {
            assert!(big.index_cheaper(r), "1M, r = {r}: index expected");
        }
        for r in [60, 64, 100, 256] {
            assert!(!big.index_cheaper(r), "1M, r = {r}: scan expected");
        }
    }

    #[test]
    fn empty_index() {
        let index = HammingIndex::new(&[]);
        assert!(index.is_empty());
        let q = [1, 2, 3, 4];
        for r in THRESHOLDS {
            assert!(index.query(&q, r).is_empty());
            assert_eq!(index.nearest_within(&q, r), None);
        }
        assert!(index.query_batch(&[q; 100], 31).iter().all(Vec::is_empty));
    }

    #[test]
    fn nearest_within_ties_go_to_lowest_id() {
        let mut rng = Rng(99);
        let base = rng.hash();
        let mut hashes: Vec<[u64; 4]> = (0..200).map(|_| rng.hash()).collect();
        let a = flip(&mut rng, &base, 5);
        hashes[150] = a;
        hashes[20] = a; // same distance as 150, lower id
        hashes[170] = flip(&mut rng, &base, 7);
        let index = HammingIndex::new(&hashes);
        assert_eq!(index.nearest_within(&base, 31), Some((20, 5)));
        assert_eq!(index.nearest_within(&base, 4), None);
        // exact duplicates of the query itself
        hashes[199] = base;
        hashes[198] = base;
        let index = HammingIndex::new(&hashes);
        assert_eq!(index.nearest_within(&base, 0), Some((198, 0)));
        assert_eq!(index.query(&base, 0), vec![(198, 0), (199, 0)]);
    }

    #[test]
    fn batch_equals_single_queries() {
        let mut rng = Rng(5);
        let hashes = corpus(&mut rng, 2000);
        let index = HammingIndex::new(&hashes);
        let qs: Vec<[u64; 4]> = (0..150)
            .map(|i| {
                if i % 2 == 0 {
                    rng.hash()
                } else {
                    let src = hashes[rng.below(hashes.len() as u64) as usize];
                    flip(&mut rng, &src, (i % 41) as u32)
                }
            })
            .collect();
        for r in [0, 31, 50] {
            let batch = index.query_batch(&qs, r);
            assert_eq!(batch.len(), qs.len());
            for (q, got) in qs.iter().zip(&batch) {
                assert_eq!(got, &brute(&hashes, q, r));
            }
        }
    }

    #[test]
    fn radii_follow_the_refined_pigeonhole_bound() {
        // Σ (radius + 1) over tables must be r + 1: the sum of substring distances of a miss
        // is then at least r + 1.
        for m in [11, 13, 16] {
            let index = HammingIndex::with_tables(&[], m);
            for r in 0..=200u32 {
                let radii = index.radii(r);
                assert!(radii[m..].iter().all(|&x| x == -1));
                let s: i32 = radii[..m].iter().map(|&x| x + 1).sum();
                if radii[..m]
                    .iter()
                    .zip(&index.tables)
                    .all(|(&x, t)| x < t.width as i32)
                {
                    assert_eq!(s, r as i32 + 1, "m = {m}, r = {r}");
                }
            }
            assert_eq!(index.radii(0)[..2], [0, -1]);
        }
        assert_eq!(HammingIndex::with_tables(&[], 16).radii(31), [1; 16]);
        let r11 = HammingIndex::with_tables(&[], 11).radii(31);
        assert_eq!(r11[..11], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn bytes_per_hash() {
        let mut rng = Rng(1);
        let hashes: Vec<[u64; 4]> = (0..10_000).map(|_| rng.hash()).collect();
        let index = HammingIndex::new(&hashes);
        let fixed = 16 * ((1 << 16) + 1) * 4 + 257 * 8;
        assert_eq!(index.bytes(), 10_000 * (32 + 16 * 16) + fixed);
    }
}
