//! Exact Hamming-radius search over 256-bit PDQ hashes that stays fast at millions of hashes:
//! multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with
//! multi-index hashing").
//!
//! # Why it is exact
//!
//! Each hash is cut into `M` = 16 disjoint substrings of 16 bits. The Hamming distance is the
//! sum of the 16 substring distances, so if `d(h, q) <= r` with `r = a·M + b` (`0 <= b < M`),
//! then either one of the first `b + 1` substrings is within `a` of the query's, or one of
//! the other `M - b - 1` substrings is within `a - 1` (otherwise the sum would be at least
//! `(b+1)(a+1) + (M-b-1)a = r + 1`). This refined pigeonhole bound probes fewer keys than the
//! plain "some substring within `floor(r/M)`": at r = 10 only 11 tables are probed, each for
//! one exact key; at r = 40, 9 tables at radius 2 and 7 at radius 1. Every candidate is then
//! verified against the full 256 bits, so the answer is exactly the brute-force set.
//!
//! # Layout
//!
//! Per substring table: the entries sorted by their 16-bit key (a counting sort: linear, so
//! 10M hashes build in seconds), a bucket offset array of 65 537 `u32`, and per entry the id
//! (`u32`) plus 128 more bits of the hash inline (the two limbs after the key's limb). A
//! bucket is thus two contiguous runs read front to back; the inline 128 bits plus the key's
//! own distance give a lower bound of the full distance that rejects a random entry at r = 31
//! with probability ≈ 1 − 2·10⁻⁹, so the full hash (one random access into the base array) is
//! only fetched for near-matches. Inlining all 256 bits would cost 576 instead of 352 bytes
//! per hash for no fewer random accesses in practice.
//!
//! Why 16-bit substrings: at r = 31 a 16-bit table is probed at radius 1 (17 keys), a 32-bit
//! table would need radius 3 (5 489 keys, each a cache miss). With 16 bits a bucket holds
//! N/65 536 entries (≈ 150 at 10M), scanned sequentially.
//!
//! # Falling back to a scan
//!
//! The number of probed keys grows as Σ C(16, i), and above r ≈ 50 the inline bound stops
//! filtering (an unrelated entry passes it with probability 0.27 at r = 60), so each pass
//! costs a random fetch. Each query estimates the index's work (probes, entries scanned,
//! expected fetches) and scans the base array linearly when that is cheaper: with the
//! weights below, at 1M–10M hashes the index serves r <= 58 and the scan r >= 59 (measured
//! break-even at 1M: r ≈ 60). Both paths are exact.
//!
//! Duplicates across tables: an entry reached through table `t` is reported only if no earlier
//! probed table `t' < t` would have reached it (its substring `t'` is not within that table's
//! radius of the query's), so no hash set is needed and each id is reported once.

/// Number of substrings (tables).
const M: usize = 16;
/// Bits per substring.
const SUB_BITS: u32 = 16;
const KEYS: usize = 1 << SUB_BITS;
/// Work units charged per probed key (offset lookup, likely cache miss) against one entry
/// scanned in a bucket; one entry of a linear scan costs about one unit too.
const PROBE_COST: f64 = 8.0;
/// Work units charged when an entry passes the inline bound and its full hash is fetched
/// (a random access into the base array).
const FETCH_COST: f64 = 32.0;

/// Full Hamming distance between two 256-bit hashes.
#[inline(always)]
pub fn distance(a: &[u64; 4], b: &[u64; 4]) -> u32 {
    (a[0] ^ b[0]).count_ones()
        + (a[1] ^ b[1]).count_ones()
        + (a[2] ^ b[2]).count_ones()
        + (a[3] ^ b[3]).count_ones()
}

/// Substring `t` (0..16) of a hash: bits `16·(t%4)..` of limb `t/4`.
#[inline(always)]
fn key(h: &[u64; 4], t: usize) -> usize {
    ((h[t / 4] >> ((t % 4) as u32 * SUB_BITS)) & (KEYS as u64 - 1)) as usize
}

/// The two limbs stored inline in table `t`: those after the key's limb, so they never
/// contain the key's bits and their distance adds to the key's distance as a lower bound.
#[inline(always)]
fn inline_limbs(t: usize) -> (usize, usize) {
    let l = t / 4;
    ((l + 1) % 4, (l + 2) % 4)
}

struct Table {
    /// `offsets[k]..offsets[k+1]` is bucket `k` in `frags` and `ids`.
    offsets: Vec<u32>,
    /// The two inline limbs (see [`inline_limbs`]) of each entry, in bucket order.
    frags: Vec<[u64; 2]>,
    ids: Vec<u32>,
}

/// Exact index for "all stored hashes within Hamming distance r of a query".
pub struct HammingIndex {
    /// Hashes by id, for final verification and the linear fallback.
    hashes: Vec<[u64; 4]>,
    tables: Vec<Table>,
    /// All 16-bit masks ordered by popcount; `cum[i]` = number of masks with popcount <= i.
    /// Probing a key at radius ρ enumerates `key ^ masks[..cum[ρ]]`.
    masks: Vec<u16>,
    cum: [usize; SUB_BITS as usize + 1],
    /// `pass[r]` = P(Binomial(128, 1/2) <= r): the chance that an unrelated entry passes the
    /// inline 128-bit bound at radius r (and costs a fetch). Small at r = 31 (≈ 2·10⁻⁹), ≈ 0.17
    /// at r = 58: there the fetches, not the probes, make the scan the cheaper path.
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
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl HammingIndex {
    /// Builds the index; ids are positions in `hashes`. Tables are built on scoped threads
    /// (each builds a run of tables), each table by a counting sort on its 16-bit key.
    pub fn new(hashes: &[[u64; 4]]) -> Self {
        assert!(
            hashes.len() < u32::MAX as usize,
            "ids are u32: at most 2^32 - 1 hashes"
        );
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, M);
        let mut tables: Vec<Option<Table>> = (0..M).map(|_| None).collect();
        std::thread::scope(|s| {
            let chunks: Vec<_> = tables
                .chunks_mut(M.div_ceil(threads))
                .enumerate()
                .map(|(c, chunk)| {
                    let first = c * M.div_ceil(threads);
                    s.spawn(move || {
                        for (i, slot) in chunk.iter_mut().enumerate() {
                            *slot = Some(build_table(hashes, first + i));
                        }
                    })
                })
                .collect();
            for c in chunks {
                c.join().expect("table build thread");
            }
        });
        let mut masks: Vec<u16> = (0..KEYS as u32).map(|m| m as u16).collect();
        masks.sort_by_key(|m| (m.count_ones(), *m));
        let mut cum = [0usize; SUB_BITS as usize + 1];
        for m in &masks {
            for c in cum.iter_mut().skip(m.count_ones() as usize) {
                *c += 1;
            }
        }
        // binomial(128, 1/2) CDF by Pascal's rule in f64 (exact enough for a cost estimate)
        let mut row = vec![1.0f64];
        for _ in 0..128 {
            let mut next = vec![0.5 * row[0]];
            next.extend(row.windows(2).map(|w| 0.5 * (w[0] + w[1])));
            next.push(0.5 * row[row.len() - 1]);
            row = next;
        }
        let mut pass = Vec::with_capacity(row.len());
        let mut acc = 0.0;
        for p in &row {
            acc += p;
            pass.push(f64::min(acc, 1.0));
        }
        pass[128] = 1.0; // rounding aside, every entry passes at r >= 128
        HammingIndex {
            hashes: hashes.to_vec(),
            tables: tables.into_iter().map(|t| t.expect("built")).collect(),
            masks,
            cum,
            pass,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Heap bytes held (hashes, tables, mask list); divide by [`len`](Self::len) for bytes
    /// per hash (352 plus a fixed ≈ 4.3 MB).
    pub fn bytes(&self) -> usize {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| {
                t.offsets.capacity() * 4 + t.frags.capacity() * 16 + t.ids.capacity() * 4
            })
            .sum();
        self.hashes.capacity() * 32
            + tables
            + self.masks.capacity() * 2
            + self.pass.capacity() * 8
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
    fn radii(r: u32) -> [i32; M] {
        let (a, b) = ((r / M as u32) as i32, (r % M as u32) as usize);
        let mut radii = [a - 1; M];
        for x in radii.iter_mut().take(b + 1) {
            *x = a;
        }
        // beyond 16 every key of a 16-bit table is within reach anyway
        radii.map(|x| x.min(SUB_BITS as i32))
    }

    /// Whether probing the tables at radius `r` is expected to cost less than a scan: the
    /// entries scanned are probes · n / 65 536, a share `pass[r]` of them fetched in full.
    fn index_cheaper(&self, r: u32) -> bool {
        let n = self.hashes.len() as f64;
        let probes: usize = Self::radii(r)
            .iter()
            .filter(|&&x| x >= 0)
            .map(|&x| self.cum[x as usize])
            .sum();
        let bucket = n / KEYS as f64;
        let pass = self.pass[(r as usize).min(128)];
        let cost = probes as f64 * (PROBE_COST + bucket * (1.0 + FETCH_COST * pass));
        cost < n
    }

    fn query_with(&self, q: &[u64; 4], max_distance: u32, strategy: Strategy) -> Vec<(u32, u32)> {
        let r = max_distance.min(256);
        if self.hashes.is_empty() {
            return Vec::new();
        }
        let radii = Self::radii(r);
        let use_index = match strategy {
            Strategy::Index => true,
            Strategy::Scan => false,
            Strategy::Auto => self.index_cheaper(r),
        };
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
    fn probe_popcnt(&self, q: &[u64; 4], r: u32, radii: &[i32; M]) -> Vec<(u32, u32)> {
        self.probe(q, r, radii)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn scan_popcnt(&self, q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
        self.scan(q, r)
    }

    /// Probes the tables at `radii`, verifies candidates, reports each match once.
    #[inline(always)]
    fn probe(&self, q: &[u64; 4], r: u32, radii: &[i32; M]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (t, table) in self.tables.iter().enumerate() {
            let rho = radii[t];
            if rho < 0 {
                continue;
            }
            let qk = key(q, t);
            let (la, lb) = inline_limbs(t);
            let (qa, qb) = (q[la], q[lb]);
            for &mask in &self.masks[..self.cum[rho as usize]] {
                let k = qk ^ mask as usize;
                let key_d = mask.count_ones();
                let (lo, hi) = (
                    table.offsets[k] as usize,
                    table.offsets[k + 1] as usize,
                );
                let frags = &table.frags[lo..hi];
                let ids = &table.ids[lo..hi];
                for (f, &id) in frags.iter().zip(ids) {
                    // lower bound: key bits + the two inline limbs (disjoint bit sets)
                    let bound = key_d + (f[0] ^ qa).count_ones() + (f[1] ^ qb).count_ones();
                    if bound > r {
                        continue;
                    }
                    let h = &self.hashes[id as usize];
                    let d = distance(h, q);
                    if d > r {
                        continue;
                    }
                    // reported already through an earlier table that reaches it?
                    let seen = (0..t).any(|u| {
                        radii[u] >= 0 && ((key(h, u) ^ key(q, u)).count_ones() as i32) <= radii[u]
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
fn build_table(hashes: &[[u64; 4]], t: usize) -> Table {
    let mut offsets = vec![0u32; KEYS + 1];
    for h in hashes {
        offsets[key(h, t) + 1] += 1;
    }
    for k in 0..KEYS {
        offsets[k + 1] += offsets[k];
    }
    let mut cursor: Vec<u32> = offsets[..KEYS].to_vec();
    let n = hashes.len();
    let mut frags = vec![[0u64; 2]; n];
    let mut ids = vec![0u32; n];
    let (la, lb) = inline_limbs(t);
    // ids are visited in ascending order, so each bucket lists its ids ascending
    for (id, h) in hashes.iter().enumerate() {
        let c = &mut cursor[key(h, t)];
        frags[*c as usize] = [h[la], h[lb]];
        ids[*c as usize] = id as u32;
        *c += 1;
    }
    Table {
        offsets,
        frags,
        ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic and dependency-free.
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
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Flips exactly `k` distinct random bits.
    fn flip(rng: &mut Rng, h: &[u64; 4], k: u32) -> [u64; 4] {
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

    fn brute(hashes: &[[u64; 4]], q: &[u64; 4], r: u32) -> Vec<(u32, u32)> {
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

    /// Every strategy agrees with brute force for every threshold.
    fn check(index: &HammingIndex, hashes: &[[u64; 4]], q: &[u64; 4]) {
        for r in THRESHOLDS {
            let want = brute(hashes, q, r);
            for s in [Strategy::Auto, Strategy::Index, Strategy::Scan] {
                assert_eq!(index.query_with(q, r, s), want, "r = {r}, {s:?}");
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
        let index = HammingIndex::new(&hashes);
        assert_eq!(index.len(), hashes.len());
        for _ in 0..40 {
            check(&index, &hashes, &rng.hash());
        }
    }

    #[test]
    fn planted_near_duplicates_match_brute_force() {
        let mut rng = Rng(42);
        let hashes = corpus(&mut rng, 3000);
        let index = HammingIndex::new(&hashes);
        for k in 0..=40u32 {
            for _ in 0..3 {
                let src = hashes[rng.below(hashes.len() as u64) as usize];
                check(&index, &hashes, &flip(&mut rng, &src, k));
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
        let index = HammingIndex::new(&hashes);
        for r in THRESHOLDS {
            let radii = HammingIndex::radii(r);
            for catch in 0..M {
                let src = hashes[rng.below(hashes.len() as u64) as usize];
                let mut q = src;
                let mut total = 0u32;
                for (t, &rho) in radii.iter().enumerate() {
                    // substring t gets rho + 1 flips (missed by its table), except `catch`
                    let want = if t == catch { rho.max(0) } else { rho + 1 } as u32;
                    for bit in 0..want.min(SUB_BITS) {
                        if total >= r {
                            break;
                        }
                        let b = t as u32 * SUB_BITS + bit;
                        q[b as usize / 64] ^= 1 << (b % 64);
                        total += 1;
                    }
                }
                check(&index, &hashes, &q);
            }
        }
    }

    #[test]
    fn cost_model_picks_sensible_paths() {
        let index = HammingIndex::new(&[[0; 4]; 1]);
        assert_eq!(index.pass.len(), 129);
        assert!(index.pass[31] < 1e-8 && index.pass[31] > 0.0);
        assert!((index.pass[63] - 0.5).abs() < 0.05);
        assert_eq!(index.pass[128], 1.0);
        // one hash: a probe costs more than scanning it
        assert!(!index.index_cheaper(0));
        assert!(!index.index_cheaper(31));
        // 1M hashes: only the length matters to the cost model, so no tables are built
        let big = HammingIndex {
            hashes: vec![[0; 4]; 1 << 20],
            ..HammingIndex::new(&[])
        };
        for r in [0, 10, 31, 40, 50] {
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
        for r in 0..=200u32 {
            let radii = HammingIndex::radii(r);
            let s: i32 = radii.iter().map(|&x| x + 1).sum();
            if radii.iter().all(|&x| x < SUB_BITS as i32) {
                assert_eq!(s, r as i32 + 1, "r = {r}");
            }
        }
        assert_eq!(HammingIndex::radii(0)[..2], [0, -1]);
        assert_eq!(HammingIndex::radii(31), [1; M]);
    }

    #[test]
    fn bytes_per_hash() {
        let mut rng = Rng(1);
        let hashes: Vec<[u64; 4]> = (0..10_000).map(|_| rng.hash()).collect();
        let index = HammingIndex::new(&hashes);
        let fixed = M * (KEYS + 1) * 4 + KEYS * 2 + 129 * 8;
        assert_eq!(index.bytes(), 10_000 * (32 + M * 20) + fixed);
    }
}
