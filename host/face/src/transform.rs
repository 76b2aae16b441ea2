//! The per-site secret transform of templates (ISO/IEC 24745: renewable, unlinkable
//! references): a random orthogonal 128 x 128 rotation derived from the device key.
//!
//! Templates are stored and matched rotated; probes are rotated before the search. A
//! rotation keeps every cosine, so matching on one site is exactly as accurate as before,
//! while the same face enrolled at two sites (two keys, two rotations) gives stored vectors
//! whose cosine is near 0: one site's vectors, even decrypted, cannot be linked to another's
//! without both keys. A new device key (`gate face rekey`) brings a new rotation, so the
//! references are renewed without re-enrolment.

use crate::gallery::{Embedding, DIM};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Name of the transform recorded in the store's `meta` table.
pub(crate) const NAME: &str = "orthogonal-rotation-v1";

/// A secret orthogonal matrix (row-major); wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Rotation(Vec<f32>);

impl Rotation {
    /// The rotation of a device key: Gaussian rows from a SHA-256 counter stream seeded by
    /// the key (domain-separated from encryption), made orthonormal by Gram-Schmidt.
    pub(crate) fn from_key(key: &[u8; 32]) -> Rotation {
        let mut seed = Sha256::new();
        seed.update(b"gate-face template rotation v1\0");
        seed.update(key);
        let mut seed: [u8; 32] = seed.finalize().into();
        let mut counter = 0u64;
        let mut pool: Vec<u32> = Vec::new();
        let mut uniform = || -> f64 {
            if pool.is_empty() {
                let mut h = Sha256::new();
                h.update(seed);
                h.update(counter.to_le_bytes());
                counter += 1;
                let mut block: [u8; 32] = h.finalize().into();
                pool.extend(block.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                block.zeroize();
            }
            // (0, 1]: never 0, so the logarithm below is finite.
            (f64::from(pool.pop().unwrap_or(1)) + 1.0) / 4_294_967_296.0
        };
        let mut m = vec![0.0f64; DIM * DIM];
        for pair in m.chunks_exact_mut(2) {
            // Box-Muller: two standard normals from two uniforms.
            let (u1, u2) = (uniform(), uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            pair[0] = r * t.cos();
            pair[1] = r * t.sin();
        }
        seed.zeroize();
        // Modified Gram-Schmidt on the rows, twice for accuracy in f64.
        for _ in 0..2 {
            for i in 0..DIM {
                for j in 0..i {
                    let d: f64 = (0..DIM).map(|k| m[i * DIM + k] * m[j * DIM + k]).sum();
                    for k in 0..DIM {
                        m[i * DIM + k] -= d * m[j * DIM + k];
                    }
                }
                let n = (0..DIM).map(|k| m[i * DIM + k] * m[i * DIM + k]).sum::<f64>().sqrt();
                for k in 0..DIM {
                    m[i * DIM + k] /= n;
                }
            }
        }
        let out = Rotation(m.iter().map(|v| *v as f32).collect());
        m.zeroize();
        out
    }

    /// The rotated embedding (matrix times vector).
    pub(crate) fn apply(&self, e: &Embedding) -> Embedding {
        let mut out = [0.0f32; DIM];
        for (o, row) in out.iter_mut().zip(self.0.chunks_exact(DIM)) {
            *o = row.iter().zip(&e.0).map(|(a, b)| a * b).sum();
        }
        Self::unit(out)
    }

    /// The embedding before rotation (transpose times vector), for re-keying.
    pub(crate) fn invert(&self, e: &Embedding) -> Embedding {
        let mut out = [0.0f32; DIM];
        for (row, v) in self.0.chunks_exact(DIM).zip(&e.0) {
            for (o, a) in out.iter_mut().zip(row) {
                *o += a * v;
            }
        }
        Self::unit(out)
    }

    /// Renormalises away float rounding (a rotation keeps length 1 up to ~1e-7).
    fn unit(mut raw: [f32; DIM]) -> Embedding {
        let e = Embedding::normalised(&raw).unwrap_or(Embedding(raw));
        raw.zeroize();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(seed: usize) -> Embedding {
        let raw: Vec<f32> = (0..DIM).map(|i| ((i * 31 + seed * 17) % 23) as f32 - 11.0).collect();
        Embedding::normalised(&raw).unwrap()
    }

    #[test]
    fn a_rotation_keeps_cosines_and_inverts() {
        let r = Rotation::from_key(&[7; 32]);
        for (a, b) in [(1, 2), (3, 4), (5, 5)] {
            let (x, y) = (vector(a), vector(b));
            assert!((r.apply(&x).cosine(&r.apply(&y)) - x.cosine(&y)).abs() < 1e-5);
        }
        let x = vector(9);
        assert!((r.invert(&r.apply(&x)).cosine(&x) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn two_keys_give_unrelated_rotations_and_one_key_always_the_same() {
        let (a, b) = (Rotation::from_key(&[1; 32]), Rotation::from_key(&[2; 32]));
        assert_eq!(a.0, Rotation::from_key(&[1; 32]).0, "deterministic per key");
        // The same vector under two sites' rotations: near-orthogonal (|cos| ~ 1/sqrt(128)).
        let worst = (0..20).map(|s| a.apply(&vector(s)).cosine(&b.apply(&vector(s))).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.35, "cross-site cosine {worst}");
        assert!(a.apply(&vector(3)).cosine(&vector(3)).abs() < 0.35, "the rotation hides the raw vector too");
    }
}
