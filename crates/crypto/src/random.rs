use zeroize::Zeroizing;

use crate::CryptoError;

/// `count` bytes from the operating system's CSPRNG (through aws-lc), in a
/// buffer that is wiped when dropped.
pub fn random_bytes(count: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut buffer = Zeroizing::new(vec![0u8; count]);
    aws_lc_rs::rand::fill(buffer.as_mut_slice()).map_err(|_| CryptoError::Random)?;
    Ok(buffer)
}

pub(crate) fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buffer = [0u8; N];
    aws_lc_rs::rand::fill(&mut buffer).map_err(|_| CryptoError::Random)?;
    Ok(buffer)
}
