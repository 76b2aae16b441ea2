//! Unit-length face embeddings and the in-memory 1:N gallery they are searched in.
//! Neither type exposes its numbers: the matcher is the only place they exist.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of an SFace embedding.
pub(crate) const DIM: usize = 128;

/// An L2-normalised face embedding; wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Embedding(pub(crate) [f32; DIM]);

impl Embedding {
    /// Normalises a raw recogniser output; `None` for an all-zero or non-finite vector.
    pub fn normalised(raw: &[f32]) -> Option<Embedding> {
        if raw.len() != DIM || raw.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm < 1e-6 {
            return None;
        }
        let mut e = [0.0; DIM];
        for (o, v) in e.iter_mut().zip(raw) {
            *o = v / norm;
        }
        Some(Embedding(e))
    }

    /// Cosine similarity of two unit vectors.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        dot(&self.0, &other.0)
    }

    /// The normalised mean of several embeddings (the enrolled template).
    pub fn mean(samples: &[Embedding]) -> Option<Embedding> {
        let mut sum = [0.0f32; DIM];
        for s in samples {
            for (o, v) in sum.iter_mut().zip(&s.0) {
                *o += v;
            }
        }
        let out = Embedding::normalised(&sum);
        sum.zeroize();
        out
    }

    pub(crate) fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        // Sized up front: a growing Vec would leave unwiped copies behind when it reallocates.
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(DIM * 4));
        for v in &self.0 {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Embedding> {
        if bytes.len() != DIM * 4 {
            return None;
        }
        let mut raw = [0.0f32; DIM];
        for (o, c) in raw.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let e = Embedding::normalised(&raw);
        raw.zeroize();
        e
    }
}

/// Dot product written so the compiler vectorises it (eight independent lanes).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum()
}

/// int8 dot product (i16 products summed in i32), vectorised by the compiler.
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for k in 0..16 {
            acc[k] += x[k] as i16 as i32 * y[k] as i16 as i32;
        }
    }
    acc.iter().sum()
}

/// Quantises a unit vector to int8 (components of unit vectors lie in -1..=1).
fn quantise(v: &[f32], out: &mut Vec<i8>) {
    out.extend(v.iter().map(|x| (x * 127.0).round().clamp(-127.0, 127.0) as i8));
}

/// Candidates re-scored exactly after the int8 scan.
const RERANK: usize = 8;

/// The decrypted templates of every enrolled subject, held only in memory and wiped on drop.
/// Search scans an int8 copy (a quarter of the memory traffic) and re-scores the best
/// few candidates with the exact f32 vectors, so reported scores are exact.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub struct Gallery {
    #[zeroize(skip)]
    subjects: Vec<String>,
    /// The site's secret rotation the templates are stored under; probes are rotated by it
    /// before the search (None: plain vectors, as in benchmarks).
    #[zeroize(skip)]
    rotation: Option<std::sync::Arc<crate::transform::Rotation>>,
    vectors: Vec<f32>,
    coarse: Vec<i8>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gallery({} templates)", self.subjects.len())
    }
}

impl Gallery {
    /// An empty gallery.
    pub fn new() -> Gallery {
        Gallery::default()
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// True when nobody is enrolled.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Bytes of memory one template takes in the gallery (vector plus id, typical).
    pub fn bytes_per_template(&self) -> usize {
        let ids: usize = self.subjects.iter().map(|s| s.capacity() + std::mem::size_of::<String>()).sum();
        DIM * 4 + DIM + ids.checked_div(self.subjects.len()).unwrap_or(std::mem::size_of::<String>())
    }

    /// An empty gallery with room for `n` templates, so loading never reallocates (a
    /// reallocation would leave an unwiped copy of the templates in freed memory).
    pub(crate) fn with_capacity(n: usize) -> Gallery {
        Gallery { subjects: Vec::with_capacity(n), vectors: Vec::with_capacity(n * DIM), coarse: Vec::with_capacity(n * DIM), rotation: None }
    }

    /// Sets the rotation the templates were stored under (see `transform`).
    pub(crate) fn set_rotation(&mut self, r: std::sync::Arc<crate::transform::Rotation>) {
        self.rotation = Some(r);
    }

    pub(crate) fn push(&mut self, subject: String, e: &Embedding) {
        self.subjects.push(subject);
        self.vectors.extend_from_slice(&e.0);
        quantise(&e.0, &mut self.coarse);
    }

    /// Drops a subject's template from memory at once (after a withdrawal), wiping the
    /// freed slot. Returns false if the subject was not in the gallery.
    pub fn remove(&mut self, subject: &str) -> bool {
        let Some(i) = self.subjects.iter().position(|s| s == subject) else {
            return false;
        };
        let last = self.subjects.len() - 1;
        self.subjects.swap_remove(i);
        if i != last {
            self.vectors.copy_within(last * DIM..(last + 1) * DIM, i * DIM);
            self.coarse.copy_within(last * DIM..(last + 1) * DIM, i * DIM);
        }
        self.vectors[last * DIM..].zeroize();
        self.coarse[last * DIM..].zeroize();
        self.vectors.truncate(last * DIM);
        self.coarse.truncate(last * DIM);
        true
    }

    /// Best match: (subject, cosine). Scans every template; splits across two threads
    /// for large galleries.
    pub(crate) fn best(&self, probe: &Embedding) -> Option<(&str, f32)> {
        let n = self.subjects.len();
        if n == 0 {
            return None;
        }
        let rotated = self.rotation.as_ref().map(|r| r.apply(probe));
        let probe = rotated.as_ref().unwrap_or(probe);
        let mut q = Vec::with_capacity(DIM);
        quantise(&probe.0, &mut q);
        // Keep the RERANK best int8 scores of a range, as (score, index), best first.
        let scan = |from: usize, to: usize| -> Vec<(i32, usize)> {
            let mut top: Vec<(i32, usize)> = Vec::with_capacity(RERANK + 1);
            let mut floor = i32::MIN;
            for (i, row) in self.coarse[from * DIM..to * DIM].chunks_exact(DIM).enumerate() {
                let s = dot_i8(row, &q);
                if s > floor || top.len() < RERANK {
                    let pos = top.iter().position(|&(t, _)| s > t).unwrap_or(top.len());
                    top.insert(pos, (s, from + i));
                    top.truncate(RERANK);
                    if top.len() == RERANK {
                        floor = top[RERANK - 1].0;
                    }
                }
            }
            top
        };
        let candidates = if n >= PARALLEL_FROM {
            let mid = n / 2;
            std::thread::scope(|sc| {
                let h = sc.spawn(|| scan(mid, n));
                let mut a = scan(0, mid);
                a.extend(h.join().unwrap_or_else(|_| scan(mid, n)));
                a
            })
        } else {
            scan(0, n)
        };
        let (mut i, mut s) = (0, f32::NEG_INFINITY);
        for (_, c) in candidates {
            let exact = dot(&self.vectors[c * DIM..(c + 1) * DIM], &probe.0);
            if exact > s {
                (i, s) = (c, exact);
            }
        }
        Some((self.subjects[i].as_str(), s))
    }

    /// A gallery of `n` random unit vectors under ids `s0..s{n-1}`, for benchmarks of search
    /// speed and memory (not faces; nothing biometric).
    #[doc(hidden)]
    pub fn synthetic(n: usize, seed: u64) -> Gallery {
        let mut g = Gallery::with_capacity(n);
        let mut state = seed | 1;
        let mut raw = [0.0f32; DIM];
        for i in 0..n {
            for v in raw.iter_mut() {
                // xorshift64*: cheap, deterministic, good enough for timing.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                *v = ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            }
            if let Some(e) = Embedding::normalised(&raw) {
                g.push(format!("s{i}"), &e);
            }
        }
        g
    }

    /// Searches the gallery with a random probe and returns the best score; for benchmarks.
    #[doc(hidden)]
    pub fn search_random(&self, seed: u64) -> Option<f32> {
        let probe = Gallery::synthetic(1, seed);
        let e = Embedding::normalised(&probe.vectors)?;
        self.best(&e).map(|(_, s)| s)
    }
}

/// Galleries at least this large are scanned by two threads.
const PARALLEL_FROM: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(k: usize) -> Embedding {
        let mut v = [0.0; DIM];
        v[k] = 1.0;
        Embedding(v)
    }

    #[test]
    fn normalisation_gives_unit_length_and_refuses_zero() {
        let e = Embedding::normalised(&[3.0; DIM]).unwrap();
        assert!((e.cosine(&e) - 1.0).abs() < 1e-5);
        assert!(Embedding::normalised(&[0.0; DIM]).is_none());
        assert!(Embedding::normalised(&[1.0; 5]).is_none());
        assert!(Embedding::normalised(&[f32::NAN; DIM]).is_none());
    }

    #[test]
    fn search_returns_the_closest_subject() {
        let mut g = Gallery::new();
        g.push("a".into(), &unit(0));
        g.push("b".into(), &unit(1));
        let mut probe = [0.0; DIM];
        probe[1] = 0.9;
        probe[0] = 0.1;
        let (who, score) = g.best(&Embedding::normalised(&probe).unwrap()).unwrap();
        assert_eq!(who, "b");
        assert!(score > 0.99);
        assert!(Gallery::new().best(&unit(0)).is_none());
    }

    #[test]
    fn the_two_thread_scan_finds_the_same_best_as_a_plain_scan() {
        let mut g = Gallery::synthetic(PARALLEL_FROM + 10, 7);
        let target = g.len() - 3;
        let probe = Embedding::normalised(&g.vectors[target * DIM..(target + 1) * DIM]).unwrap();
        g.subjects[target] = "needle".into();
        assert_eq!(g.best(&probe).unwrap().0, "needle");
    }

    #[test]
    fn the_reported_score_is_the_exact_cosine_not_the_int8_estimate() {
        let g = Gallery::synthetic(5_000, 11);
        let probe = Embedding::normalised(&Gallery::synthetic(1, 99).vectors).unwrap();
        let exact_best = g.vectors.chunks_exact(DIM).map(|r| dot(r, &probe.0)).fold(f32::MIN, f32::max);
        let (_, s) = g.best(&probe).unwrap();
        assert_eq!(s, exact_best);
    }

    #[test]
    fn a_removed_subject_is_never_matched_again_and_the_rest_still_are() {
        let mut g = Gallery::new();
        for k in 0..3 {
            g.push(format!("s{k}"), &unit(k));
        }
        assert!(g.remove("s0"));
        assert!(!g.remove("s0"));
        assert_eq!(g.len(), 2);
        assert_ne!(g.best(&unit(0)).unwrap().0, "s0");
        assert_eq!(g.best(&unit(2)).unwrap(), ("s2", 1.0));
        assert_eq!(g.best(&unit(1)).unwrap(), ("s1", 1.0));
        assert!(g.remove("s2") && g.remove("s1") && g.is_empty());
    }

    #[test]
    fn bytes_round_trip_and_mean_is_unit() {
        let e = Embedding::normalised(&[1.0; DIM]).unwrap();
        let back = Embedding::from_bytes(&e.to_bytes()).unwrap();
        assert!((back.cosine(&e) - 1.0).abs() < 1e-6);
        let m = Embedding::mean(&[unit(0), unit(1)]).unwrap();
        assert!((m.cosine(&unit(0)) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
        assert_eq!(format!("{:?}", Gallery::synthetic(3, 1)), "Gallery(3 templates)");
    }
}
