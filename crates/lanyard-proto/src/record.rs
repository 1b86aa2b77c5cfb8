//! The checksummed record: how Lanyard writes anything to disk that must
//! survive a crash, and how it reads it back.
//!
//! ```text
//! +--------------+-----------------+-------------------+
//! | len (u32 LE) | crc32c (u32 LE) | body (len bytes)  |
//! +--------------+-----------------+-------------------+
//! ```
//!
//! The CRC-32C (Castagnoli) covers the body. One format, three users: the
//! relay's spool segments (the body is a typed spool record), the server's
//! utterance audio files (the body is one codec frame), and the fault
//! campaign, which counts what the server really holds on disk.
//!
//! A file of records is read from the start until the first record that is
//! torn (shorter than its header says), fails its checksum, or has a length
//! outside what the reader allows. Everything before it is intact; nothing
//! after it is trusted. That is what a crash mid-append leaves, and readers
//! truncate there. The length bound is checked before anything is read, so
//! a damaged length never makes a reader take gigabytes for one record.

use std::ops::RangeInclusive;

/// Bytes before the body: the length and the checksum.
pub const HEADER: usize = 8;

/// Appends one record holding `body` to `out`.
pub fn push(out: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("a record body fits in u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Writes the header of a record built in place: `record` is [`HEADER`]
/// bytes of any value followed by the body. For writers that build the body
/// in a reused buffer.
pub fn seal(record: &mut [u8]) {
    let body = &record[HEADER..];
    let len = u32::try_from(body.len()).expect("a record body fits in u32");
    let crc = crc32c::crc32c(body);
    record[0..4].copy_from_slice(&len.to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The record at the start of `bytes`, if it is whole, its body length is in
/// `lengths`, and its checksum matches: its body and its total length.
pub fn next<'a>(bytes: &'a [u8], lengths: &RangeInclusive<usize>) -> Option<(&'a [u8], usize)> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !lengths.contains(&len) {
        return None;
    }
    let body = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    (crc32c::crc32c(body) == crc).then_some((body, HEADER + len))
}

/// The intact records at the start of `bytes`, in order (see the module
/// doc); [`Records::intact_len`] is where they end.
pub fn read(bytes: &[u8], lengths: RangeInclusive<usize>) -> Records<'_> {
    Records { bytes, pos: 0, lengths }
}

/// Iterator of [`read`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    pos: usize,
    lengths: RangeInclusive<usize>,
}

impl Records<'_> {
    /// Bytes of intact records read so far: after the iterator is done, the
    /// length to truncate a damaged file to.
    pub fn intact_len(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (body, len) = next(&self.bytes[self.pos..], &self.lengths)?;
        self.pos += len;
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_length_checksum_body() {
        let mut out = Vec::new();
        push(&mut out, b"123456789");
        // CRC-32C of "123456789" is the standard check value 0xE3069283.
        assert_eq!(out[..8], [9, 0, 0, 0, 0x83, 0x92, 0x06, 0xe3]);
        assert_eq!(&out[8..], b"123456789");
        let mut sealed = vec![0xAA; 8];
        sealed.extend_from_slice(b"123456789");
        seal(&mut sealed);
        assert_eq!(sealed, out);
    }

    #[test]
    fn a_length_out_of_bounds_ends_the_records() {
        let mut out = Vec::new();
        push(&mut out, &[1; 10]);
        push(&mut out, &[2; 100]);
        let mut r = read(&out, 0..=50);
        assert_eq!(r.next(), Some(&[1u8; 10][..]));
        assert_eq!(r.next(), None, "100 bytes is over the bound");
        assert_eq!(r.intact_len(), 18);
        // A huge length is refused before any read.
        assert_eq!(next(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], &(0..=usize::MAX)), None);
    }

    proptest! {
        /// Records read back as written; a file cut anywhere, or with any
        /// byte changed, reads back as a prefix of them, never a wrong one.
        #[test]
        fn damage_leaves_an_intact_prefix(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut file = Vec::new();
            for b in &bodies {
                push(&mut file, b);
            }
            let all: Vec<&[u8]> = read(&file, 0..=40).collect();
            prop_assert_eq!(all.len(), bodies.len());
            let cut_at = if file.is_empty() { 0 } else { cut.index(file.len() + 1) };
            let mut damaged = file[..cut_at].to_vec();
            if !damaged.is_empty() {
                let i = flip.index(damaged.len());
                damaged[i] ^= 1 << bit;
            }
            let mut r = read(&damaged, 0..=40);
            let got: Vec<&[u8]> = r.by_ref().collect();
            prop_assert!(got.len() <= bodies.len());
            for (g, b) in got.iter().zip(&bodies) {
                prop_assert_eq!(*g, b.as_slice());
            }
            prop_assert!(r.intact_len() <= damaged.len());
        }
    }
}
