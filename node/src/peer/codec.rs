//! Peer-plane frames: bincode 1.3 with a size limit, so a hostile or broken
//! peer cannot make a decoder allocate without bound.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MAX_FRAME;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME as u64)
        .reject_trailing_bytes()
}

/// Encodes a frame.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(value)
}

/// Decodes a frame, refusing one that claims more than [`MAX_FRAME`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_frames_are_refused_without_panicking() {
        let good = encode(&vec![1u32, 2, 3]).unwrap();
        assert_eq!(decode::<Vec<u32>>(&good).unwrap(), vec![1, 2, 3]);
        // A length prefix claiming 2^60 elements.
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u32>>(&huge).is_err());
        assert!(decode::<Vec<u32>>(&good[..5]).is_err());
        let mut trailing = good;
        trailing.push(0);
        assert!(decode::<Vec<u32>>(&trailing).is_err());
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let junk: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let _ = decode::<super::super::Request>(&junk);
        }
    }
}
