//! Bulk copies into and out of a ring, dodging a slow case of the CPU's string copy.
//!
//! glibc's `memcpy` copies 2 KiB and more with `rep movsb` on CPUs that advertise fast string
//! moves. On AMD Zen (measured on this project's AMD EPYC machines with glibc 2.36; glibc bug
//! 30994) `rep movsb` crawls when the destination lies 1 to 63 bytes past the source modulo
//! 4096 (a store "aliases" a later load of the same page offset): a 64 KiB copy runs at
//! 1.4-2 GB/s instead of 30-40. A ring's messages lie at offsets fixed by the frame layout (at
//! 64 KiB: 15 frames a lap, payloads at 16, 32 ... 240 modulo 4096) and the program's buffer
//! wherever its allocator put it, so one process pair in a few lost one message a lap to the
//! slow case, and its whole throughput fell from 27 to 8 GB/s: the "bimodal pairs" of
//! BENCHMARKS.md. A copy whose distance falls in that band goes through a plain vector loop
//! here instead (30-60 GB/s at that distance, measured); every other copy stays glibc's.
//!
//! Every copy of message bytes in or out of shared memory goes through [`copy_raw`] or
//! [`copy_slice`], so the rule lives in one place.

/// Copies shorter than this never take `rep movsb` in glibc (its lowest threshold, with fast
/// short string moves, is 2112 bytes): they stay `memcpy`'s.
const REP_MOVSB_MIN: usize = 2048;

/// Copies this long and longer stay `memcpy`'s too: glibc stops using `rep movsb` above the
/// L2 cache size (`rep_movsb_stop_threshold`; 512 KiB on the AMD EPYC VM, where a 512 KiB
/// copy at the aliasing distance ran at 32 GB/s, as fast as an aligned one) and copies larger
/// blocks with non-temporal stores past its own threshold, which we keep.
const REP_MOVSB_MAX: usize = 1 << 20;

/// Destination-minus-source distances (modulo the page) at which `rep movsb` is slow.
const ALIASING_BAND: std::ops::RangeInclusive<usize> = 1..=63;

/// Whether a `len`-byte copy from `src` to `dst` would hit the aliasing slow case.
#[inline(always)]
fn aliases(src: *const u8, dst: *const u8, len: usize) -> bool {
    let distance = (dst as usize).wrapping_sub(src as usize) & 4095;
    (REP_MOVSB_MIN..REP_MOVSB_MAX).contains(&len) && ALIASING_BAND.contains(&distance)
}

/// Copies `len` bytes from `src` to `dst`, as [`std::ptr::copy_nonoverlapping`] does.
///
/// # Safety
///
/// As [`std::ptr::copy_nonoverlapping`]: `src` readable and `dst` writable for `len` bytes,
/// the two ranges not overlapping. Either may be shared memory another process writes
/// meanwhile: the copy forms no reference to it and touches no byte outside the two ranges,
/// so a racing writer only changes the bytes copied (each may hold either value).
#[inline(always)]
pub unsafe fn copy_raw(src: *const u8, dst: *mut u8, len: usize) {
    if aliases(src, dst, len) {
        // SAFETY: the caller's contract, passed on.
        unsafe { vector::copy(src, dst, len) }
    } else {
        // SAFETY: the caller's contract, passed on.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }
}

/// Copies `src` into `dst`, as [`slice::copy_from_slice`] does.
///
/// # Panics
///
/// If the two slices differ in length (a caller's mistake, as for `copy_from_slice`; no
/// length a peer controls reaches here unchecked).
#[inline(always)]
pub fn copy_slice(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy_slice between slices of different lengths"
    );
    // SAFETY: both slices hold `len` bytes, and a `&mut [u8]` never overlaps a `&[u8]`.
    unsafe { copy_raw(src.as_ptr(), dst.as_mut_ptr(), dst.len()) }
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm_loadu_si128,
        _mm_storeu_si128,
    };

    /// A copy in 16- or 32-byte vector moves (AVX where the CPU has it, SSE2 always), the
    /// tail by `copy_nonoverlapping` (under 128 bytes: never `rep movsb`).
    ///
    /// # Safety
    ///
    /// As [`super::copy_raw`].
    #[inline(never)]
    pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (just checked); the rest is the caller's contract.
            unsafe { copy_avx(src, dst, len) }
        } else {
            // SAFETY: SSE2 is part of x86_64; the rest is the caller's contract.
            unsafe { copy_sse2(src, dst, len) }
        }
    }

    const AVX_STEP: usize = 128;

    #[target_feature(enable = "avx")]
    unsafe fn copy_avx(src: *const u8, dst: *mut u8, len: usize) {
        let mut at = 0;
        while len - at >= AVX_STEP {
            // SAFETY: [at, at + 128) lies inside both ranges (len - at >= 128); unaligned
            // loads and stores, through raw pointers only.
            unsafe {
                let s = src.add(at).cast::<__m256i>();
                let d = dst.add(at).cast::<__m256i>();
                let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
                let (c, e) = (_mm256_loadu_si256(s.add(2)), _mm256_loadu_si256(s.add(3)));
                _mm256_storeu_si256(d, a);
                _mm256_storeu_si256(d.add(1), b);
                _mm256_storeu_si256(d.add(2), c);
                _mm256_storeu_si256(d.add(3), e);
            }
            at += AVX_STEP;
        }
        // SAFETY: the last len - at bytes of both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) }
    }

    const SSE_STEP: usize = 64;

    unsafe fn copy_sse2(src: *const u8, dst: *mut u8, len: usize) {
        let mut at = 0;
        while len - at >= SSE_STEP {
            // SAFETY: [at, at + 64) lies inside both ranges (len - at >= 64); unaligned loads
            // and stores, through raw pointers only.
            unsafe {
                let s = src.add(at).cast::<__m128i>();
                let d = dst.add(at).cast::<__m128i>();
                let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
                let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
                _mm_storeu_si128(d, a);
                _mm_storeu_si128(d.add(1), b);
                _mm_storeu_si128(d.add(2), c);
                _mm_storeu_si128(d.add(3), e);
            }
            at += SSE_STEP;
        }
        // SAFETY: the last len - at bytes of both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vector {
    /// Elsewhere the slow case is not known: the plain copy.
    ///
    /// # Safety
    ///
    /// As [`super::copy_raw`].
    #[inline(always)]
    pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: the caller's contract, passed on.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every distance modulo the page, lengths around each threshold and step: the bytes
    /// arrive whole, nothing outside the destination range is touched.
    #[test]
    fn copies_are_exact_at_every_distance_and_length() {
        let src: Vec<u8> = (0..80_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dst = vec![0u8; 80_000];
        for len in [
            0,
            1,
            63,
            64,
            127,
            128,
            129,
            2047,
            2048,
            2049,
            4096,
            65_536 + 7,
        ] {
            for distance in (0..4096).step_by(if len > 4096 { 61 } else { 7 }) {
                let from = 100;
                let to = distance;
                dst.fill(0xA5);
                // SAFETY: both ranges inside their vectors (to + len < 80_000), two vectors.
                unsafe { copy_raw(src.as_ptr().add(from), dst.as_mut_ptr().add(to), len) };
                assert_eq!(
                    &dst[to..to + len],
                    &src[from..from + len],
                    "len {len} at {to}"
                );
                assert!(
                    dst[..to].iter().all(|&b| b == 0xA5),
                    "wrote before, len {len}"
                );
                assert!(
                    dst[to + len..].iter().all(|&b| b == 0xA5),
                    "wrote after, len {len}"
                );
            }
        }
    }

    #[test]
    fn the_band_is_the_short_forward_distances_of_long_copies() {
        let base = 0x10_0000usize as *const u8;
        let at = |d: usize| base.wrapping_add(d);
        assert!(aliases(base, at(16), 65_536));
        assert!(aliases(base, at(4096 * 3 + 63), 4096));
        assert!(!aliases(base, at(0), 65_536));
        assert!(!aliases(base, at(64), 65_536));
        assert!(
            !aliases(at(16), base, 65_536),
            "destination below the source"
        );
        assert!(!aliases(base, at(16), 2047), "short copies stay memcpy's");
        assert!(!aliases(base, at(16), 1 << 20), "so do long ones");
    }

    #[test]
    fn copy_slice_copies_whole_slices() {
        let mut dst = [0u8; 4];
        copy_slice(&mut dst, &[1, 2, 3, 4]);
        assert_eq!(dst, [1, 2, 3, 4]);
    }
}
