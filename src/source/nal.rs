//! Just enough Annex B parsing to tell random-access points: IDR pictures, H.265 IRAP pictures
//! (IDR, CRA, BLA) and H.264 access units carrying a recovery-point SEI (intra refresh).
//!
//! RTSP clients only mark IDR frames as random access; streams from encoders using periodic
//! intra refresh or open GOPs would otherwise never be sampled in keyframes mode.

/// Which codec's NAL header layout to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalCodec {
    H264,
    H265,
}

/// Iterates over the NAL unit payloads (header included) of an Annex B buffer.
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = find_start_code(data, 0);
    std::iter::from_fn(move || {
        let (_, body_start) = pos?;
        let next = find_start_code(data, body_start);
        let end = next.map(|(sc, _)| sc).unwrap_or(data.len());
        pos = next;
        // trailing zero bytes belong to the next start code (zero_byte) or are padding
        let mut nal = &data[body_start..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        Some(nal)
    })
    .filter(|n| !n.is_empty())
}

/// Finds the next `00 00 01` at or after `from`; returns (start of the code, start of the NAL).
fn find_start_code(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= data.len() {
        if data[i + 2] > 1 {
            i += 3;
        } else if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            return Some((i, i + 3));
        } else {
            i += 1;
        }
    }
    None
}

/// True when decoding can start at this access unit.
pub fn is_random_access(codec: NalCodec, access_unit: &[u8]) -> bool {
    nal_units(access_unit).any(|nal| match codec {
        NalCodec::H264 => match nal[0] & 0x1f {
            5 => true,
            6 => sei_has_recovery_point(&nal[1..]),
            _ => false,
        },
        // IRAP range: BLA_W_LP (16) ..= CRA_NUT (21)
        NalCodec::H265 => (16..=21).contains(&((nal[0] >> 1) & 0x3f)),
    })
}

/// Walks the SEI messages of an H.264 SEI NAL (header stripped) looking for payload type 6.
fn sei_has_recovery_point(mut rbsp: &[u8]) -> bool {
    // Emulation-prevention bytes cannot occur inside the ff-coded type/size fields' meaning
    // enough to matter here, and payloads are skipped by size; a malformed SEI just ends the walk.
    loop {
        let Some(payload_type) = read_ff_coded(&mut rbsp) else {
            return false;
        };
        let Some(size) = read_ff_coded(&mut rbsp) else {
            return false;
        };
        if payload_type == 6 {
            return true;
        }
        if size > rbsp.len() {
            return false;
        }
        rbsp = &rbsp[size..];
        // rbsp_trailing_bits: a lone 0x80 ends the message list
        if rbsp.is_empty() || rbsp == [0x80] {
            return false;
        }
    }
}

fn read_ff_coded(buf: &mut &[u8]) -> Option<usize> {
    let mut v = 0usize;
    loop {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v = v.checked_add(b as usize)?;
        if b != 0xff {
            return Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9,
        ];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 9][..]]
        );
    }

    #[test]
    fn h264_idr_is_random_access_and_non_idr_is_not() {
        assert!(is_random_access(
            NalCodec::H264,
            &[0, 0, 1, 0x67, 0, 0, 1, 0x68, 0, 0, 1, 0x65, 0x88]
        ));
        assert!(!is_random_access(NalCodec::H264, &[0, 0, 1, 0x41, 0x9a]));
    }

    /// Intra-refresh encoders never send IDR after the first picture; the recovery-point SEI
    /// (payload type 6) marks where a decoder can join.
    #[test]
    fn h264_recovery_point_sei_is_random_access() {
        // SEI NAL (6): one message, type 6, size 1, payload, trailing bits
        let au = [0, 0, 1, 0x06, 0x06, 0x01, 0x84, 0x80, 0, 0, 1, 0x41, 0x9a];
        assert!(is_random_access(NalCodec::H264, &au));
        // a user-data SEI (type 5) is not
        let au = [
            0, 0, 1, 0x06, 0x05, 0x02, 0xaa, 0xbb, 0x80, 0, 0, 1, 0x41, 0x9a,
        ];
        assert!(!is_random_access(NalCodec::H264, &au));
    }

    #[test]
    fn h265_cra_and_idr_are_random_access() {
        let cra = [0, 0, 1, 21 << 1, 1, 0xaf];
        let idr = [0, 0, 1, 19 << 1, 1, 0xaf];
        let trail = [0, 0, 1, 1 << 1, 1, 0xaf];
        assert!(is_random_access(NalCodec::H265, &cra));
        assert!(is_random_access(NalCodec::H265, &idr));
        assert!(!is_random_access(NalCodec::H265, &trail));
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) % 3).collect();
            let _ = is_random_access(NalCodec::H264, &data);
            let _ = is_random_access(NalCodec::H265, &data);
        }
        assert!(!is_random_access(
            NalCodec::H264,
            &[0, 0, 1, 0x06, 0xff, 0xff]
        ));
    }
}
