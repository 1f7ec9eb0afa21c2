//! Segment files: a header, then frames.
//!
//! Segment header (60 bytes, little-endian):
//! `magic "TGSEG001" | segment number u64 | first sequence u64 |
//!  chain hash before the first frame [32] | CRC32C of the preceding 56 bytes u32`.
//!
//! Frame (56 bytes + payload):
//! `payload length u32 | CRC32C u32 | sequence u64 | unix nanos i64 |
//!  payload | chain hash [32]`,
//! where the CRC covers every other byte of the frame (length, sequence,
//! time, payload and chain hash), and
//! `chain = SHA-256(previous chain || leaf)`, `leaf = SHA-256(0x00 || payload)`.
//! The chain runs across segments: a segment header carries the chain value
//! it continues from.

use sha2::{Digest, Sha256};

use super::merkle::leaf_hash;
use super::Hash;

pub const MAGIC: &[u8; 8] = b"TGSEG001";
pub const SEGMENT_HEADER_LEN: usize = 60;
pub const FRAME_HEADER_LEN: usize = 24;
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 32;
/// A length field larger than this is corruption, not a record.
pub const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u64,
    pub first_seq: u64,
    pub prev_chain: Hash,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..56].copy_from_slice(&self.prev_chain);
        let crc = crc32c::crc32c(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        let Some(b) = b.get(..SEGMENT_HEADER_LEN) else {
            return Err("segment header is cut short".into());
        };
        if &b[..8] != MAGIC {
            return Err("not a tracegate segment (bad magic)".into());
        }
        if crc32c::crc32c(&b[..56]).to_le_bytes() != b[56..60] {
            return Err("segment header CRC mismatch".into());
        }
        Ok(SegmentHeader {
            segment: u64_at(b, 8),
            first_seq: u64_at(b, 16),
            prev_chain: hash_at(b, 24),
        })
    }
}

/// `SHA-256(previous chain || leaf)`.
pub fn chain_from_leaf(prev: &Hash, leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(leaf);
    h.finalize().into()
}

/// Encodes one frame; returns it with its chain hash (tests build segments
/// with it; the writer encodes into its batch buffer).
#[cfg(test)]
pub fn encode_frame(
    seq: u64,
    unix_nanos: i64,
    payload: &[u8],
    prev_chain: &Hash,
) -> (Vec<u8>, Hash) {
    let mut f = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    let chain = encode_frame_into(
        &mut f,
        seq,
        unix_nanos,
        payload,
        &leaf_hash(payload),
        prev_chain,
    );
    (f, chain)
}

/// Appends one frame to `out` (the writer's batch buffer), given the
/// payload's leaf hash the caller already has; returns the chain hash.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    seq: u64,
    unix_nanos: i64,
    payload: &[u8],
    leaf: &Hash,
    prev_chain: &Hash,
) -> Hash {
    let chain = chain_from_leaf(prev_chain, leaf);
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_nanos.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&chain);
    let crc = frame_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    chain
}

fn frame_crc(frame: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&frame[..4]), &frame[8..])
}

/// One frame found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef {
    pub offset: usize,
    pub len: usize,
    pub seq: u64,
    pub unix_nanos: i64,
    pub payload: std::ops::Range<usize>,
    pub chain: Hash,
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every byte belongs to a valid frame.
    Clean,
    /// Bytes from `offset` to the end form no valid frame and none follows:
    /// an interrupted write, never acknowledged, safe to cut.
    TornTail { offset: usize },
}

/// Invalid bytes at `offset` with a valid frame after them at `resumes_at`:
/// corruption or tampering inside the log. Never cut silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub offset: usize,
    pub resumes_at: usize,
    pub why: String,
}

/// A problem with frames that are each intact (their CRCs hold): a broken
/// chain link or sequence gap means records were edited, removed, inserted
/// or reordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProblem {
    pub offset: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub header: SegmentHeader,
    /// Every intact frame, also those after a corruption.
    pub frames: Vec<FrameRef>,
    /// The RFC 6962 leaf hash of each frame's payload.
    pub leaves: Vec<Hash>,
    pub ending: Ending,
    pub corrupt: Vec<Corruption>,
    pub links: Vec<LinkProblem>,
}

impl Scan {
    /// No corruption, no broken link, no torn tail.
    #[cfg(test)]
    pub fn is_intact(&self) -> bool {
        self.ending == Ending::Clean && self.corrupt.is_empty() && self.links.is_empty()
    }

    /// Sequence number and chain hash after the last intact frame.
    pub fn tip(&self) -> (u64, Hash) {
        match self.frames.last() {
            Some(f) => (f.seq + 1, f.chain),
            None => (self.header.first_seq, self.header.prev_chain),
        }
    }
}

/// Reads a segment: the header, every intact frame, how the bytes end, every
/// stretch of corruption (the scan resynchronises on the next valid frame),
/// and every broken chain link or sequence gap.
pub fn scan(bytes: &[u8]) -> Result<Scan, String> {
    let header = SegmentHeader::decode(bytes)?;
    let mut frames = Vec::new();
    let mut links = Vec::new();
    let mut corrupt = Vec::new();
    let mut leaves = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    // `None` right after a corruption: the frames lost there are reported
    // once, not as a broken link at the next frame.
    let mut expect: Option<(u64, Hash)> = Some((header.first_seq, header.prev_chain));
    let ending = loop {
        if offset == bytes.len() {
            break Ending::Clean;
        }
        match parse_frame(bytes, offset) {
            Ok(f) => {
                let leaf = leaf_hash(&bytes[f.payload.clone()]);
                if let Some((next_seq, chain)) = expect {
                    if f.seq != next_seq {
                        links.push(LinkProblem {
                            offset,
                            what: format!("sequence {} where {next_seq} was expected", f.seq),
                        });
                    }
                    if chain_from_leaf(&chain, &leaf) != f.chain {
                        links.push(LinkProblem {
                            offset,
                            what: format!(
                                "chain link of sequence {} does not follow from the previous record",
                                f.seq
                            ),
                        });
                    }
                }
                expect = Some((f.seq.wrapping_add(1), f.chain));
                offset += f.len;
                frames.push(f);
                leaves.push(leaf);
            }
            Err(why) => {
                let after = expect.map_or(0, |(seq, _)| seq);
                match resync(bytes, offset + 1, after) {
                    Some(resumes_at) => {
                        corrupt.push(Corruption {
                            offset,
                            resumes_at,
                            why,
                        });
                        expect = None;
                        offset = resumes_at;
                    }
                    None => break Ending::TornTail { offset },
                }
            }
        }
    };
    Ok(Scan {
        header,
        frames,
        leaves,
        ending,
        corrupt,
        links,
    })
}

/// The next offset from `from` where a valid frame starts. Frames whose
/// sequence number is implausible are not even checksummed, which keeps the
/// search linear over garbage.
fn resync(bytes: &[u8], from: usize, min_seq: u64) -> Option<usize> {
    (from..bytes.len()).find(|&p| {
        let Some(seq) = bytes.get(p + 8..p + 16) else {
            return false;
        };
        let mut s = [0u8; 8];
        s.copy_from_slice(seq);
        let seq = u64::from_le_bytes(s);
        seq >= min_seq && seq - min_seq < (1 << 32) && parse_frame(bytes, p).is_ok()
    })
}

/// Parses the frame at the start of `bytes` (a frame read on its own, e.g.
/// through an index offset).
pub fn parse_one(bytes: &[u8]) -> Result<FrameRef, String> {
    parse_frame(bytes, 0)
}

/// The payload length a frame header announces, from its first 4 bytes.
pub fn announced_len(header: &[u8; 4]) -> usize {
    u32::from_le_bytes(*header) as usize
}

fn parse_frame(bytes: &[u8], offset: usize) -> Result<FrameRef, String> {
    let rest = &bytes[offset..];
    if rest.len() < FRAME_OVERHEAD {
        return Err(format!("{} bytes cannot hold a frame", rest.len()));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len > MAX_PAYLOAD || len + FRAME_OVERHEAD > rest.len() {
        return Err(format!("length {len} runs past the end"));
    }
    let frame = &rest[..FRAME_OVERHEAD + len];
    if frame_crc(frame).to_le_bytes() != frame[4..8] {
        return Err("CRC mismatch".into());
    }
    let start = offset + FRAME_HEADER_LEN;
    Ok(FrameRef {
        offset,
        len: frame.len(),
        seq: u64_at(frame, 8),
        unix_nanos: u64_at(frame, 16) as i64,
        payload: start..start + len,
        chain: hash_at(frame, FRAME_HEADER_LEN + len),
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn hash_at(b: &[u8], at: usize) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&b[at..at + 32]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A segment of `n` records with payloads of varied sizes.
    fn segment(n: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
        let header = SegmentHeader {
            segment: 3,
            first_seq: 100,
            prev_chain: [7; 32],
        };
        let mut bytes = header.encode().to_vec();
        let mut chain = header.prev_chain;
        let mut payloads = Vec::new();
        for i in 0..n {
            let payload =
                format!("record {i} {}", "x".repeat((i as usize * 37) % 300)).into_bytes();
            let (f, c) = encode_frame(
                100 + i,
                1_700_000_000_000_000_000 + i as i64,
                &payload,
                &chain,
            );
            chain = c;
            bytes.extend(f);
            payloads.push(payload);
        }
        (bytes, payloads)
    }

    #[test]
    fn round_trip() {
        let (bytes, payloads) = segment(20);
        let s = scan(&bytes).unwrap();
        assert!(s.is_intact());
        assert_eq!(s.header.segment, 3);
        assert_eq!(s.frames.len(), 20);
        for (f, p) in s.frames.iter().zip(&payloads) {
            assert_eq!(&bytes[f.payload.clone()], &p[..]);
        }
        assert_eq!(s.frames[19].seq, 119);
    }

    #[test]
    fn deleted_inserted_and_reordered_records_break_links() {
        let (bytes, _) = segment(6);
        let s = scan(&bytes).unwrap();
        let f = &s.frames;
        let cut = |a: &FrameRef| a.offset..a.offset + a.len;
        // Delete record 2.
        let mut del = bytes[..f[2].offset].to_vec();
        del.extend_from_slice(&bytes[f[3].offset..]);
        assert!(!scan(&del).unwrap().links.is_empty());
        // Swap records 3 and 4.
        let mut swapped = bytes[..f[3].offset].to_vec();
        swapped.extend_from_slice(&bytes[cut(&f[4])]);
        swapped.extend_from_slice(&bytes[cut(&f[3])]);
        swapped.extend_from_slice(&bytes[f[5].offset..]);
        assert!(!scan(&swapped).unwrap().links.is_empty());
        // Insert a well-formed frame with a forged link.
        let (forged, _) = encode_frame(103, 0, b"forged", &[0; 32]);
        let mut ins = bytes[..f[3].offset].to_vec();
        ins.extend(forged);
        ins.extend_from_slice(&bytes[f[3].offset..]);
        assert!(!scan(&ins).unwrap().links.is_empty());
    }

    #[test]
    fn corruption_is_reported_and_later_frames_still_read() {
        let (mut bytes, _) = segment(6);
        let s = scan(&bytes).unwrap();
        let hit = s.frames[2].payload.start + 3;
        bytes[hit] ^= 0x10;
        let d = scan(&bytes).unwrap();
        assert_eq!(d.ending, Ending::Clean);
        assert_eq!(d.corrupt.len(), 1);
        assert_eq!(d.corrupt[0].offset, s.frames[2].offset);
        assert_eq!(d.corrupt[0].resumes_at, s.frames[3].offset);
        let seqs: Vec<_> = d.frames.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [100, 101, 103, 104, 105]);
        assert!(
            d.links.is_empty(),
            "the loss is reported once: {:?}",
            d.links
        );
        assert_eq!(d.tip(), s.tip());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Cut anywhere: every record wholly before the cut survives, the
        /// rest is a torn tail (never corruption), and no link breaks.
        #[test]
        fn truncation_is_a_torn_tail(at in any::<prop::sample::Index>()) {
            let (bytes, _) = segment(12);
            let full = scan(&bytes).unwrap();
            let cut = SEGMENT_HEADER_LEN + at.index(bytes.len() - SEGMENT_HEADER_LEN + 1);
            let s = scan(&bytes[..cut]).unwrap();
            let whole: Vec<_> = full.frames.iter().filter(|f| f.offset + f.len <= cut).cloned().collect();
            prop_assert_eq!(&s.frames, &whole);
            prop_assert!(s.links.is_empty() && s.corrupt.is_empty());
            if whole.last().map_or(SEGMENT_HEADER_LEN, |f| f.offset + f.len) == cut {
                prop_assert_eq!(s.ending, Ending::Clean);
            } else {
                prop_assert!(matches!(s.ending, Ending::TornTail { .. }), "{:?}", s.ending);
            }
        }

        /// Flip any bit: the scan never reports the segment as intact.
        #[test]
        fn a_flipped_bit_is_always_detected(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (mut bytes, _) = segment(8);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            match scan(&bytes) {
                Err(_) => {} // the segment header
                Ok(s) => prop_assert!(
                    !s.is_intact() || s.frames.len() < 8,
                    "flip at {} went unnoticed", i
                ),
            }
        }
    }
}
