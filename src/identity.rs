//! The identity proof: with `discovery.identity_secret`, every probe carries a fresh random
//! nonce, and a backend proves it holds the secret by answering with an HMAC-SHA256 of that
//! nonce bound to the address the probe reached it on. The prober verifies (in `probe.rs`);
//! the demo webapp answers (in `webapp.rs`); both use this one definition.
//!
//! What it does not do: it authenticates one health answer, not the connections that later
//! carry users' requests (that would take TLS), so an attacker who can take over a member's
//! address while the member lives, or who holds the secret, is not kept out.

use std::net::SocketAddr;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// On a probe: the nonce, [`NONCE_BYTES`] random bytes in lowercase hex.
pub(crate) const NONCE_HEADER: &str = "x-sweeplb-nonce";
/// On a health answer: the proof, 64 hex digits of [`proof`].
pub(crate) const PROOF_HEADER: &str = "x-sweeplb-proof";
/// 128 bits: never repeated in practice, so a recorded answer never fits a later probe.
const NONCE_BYTES: usize = 16;
/// The shortest secret accepted, as for `balance.pin_secret`.
pub(crate) const MIN_SECRET: usize = 16;
/// Domain separation, and a version: an HMAC made with the same secret for anything else can
/// never be taken for a proof.
const LABEL: &[u8] = b"sweeplb identity proof v1";

/// A fresh nonce from the operating system's generator: unpredictable, unlike `fastrand`,
/// so that nobody can collect a member's answers to future nonces in advance.
pub(crate) fn nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Whether `text` has the shape of a nonce this prober sends; a backend answers no other.
pub(crate) fn is_nonce(text: &str) -> bool {
    text.len() == NONCE_BYTES * 2 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The HMAC over the label, the nonce and the address, each on a line of its own. The
/// address is the one the probe was sent to, as the backend sees it arrive: a proof for one
/// address is worthless at another, so an impostor cannot pass off a member's answer, relayed
/// live, as its own. IPv4-mapped IPv6 is written as IPv4, so a dual-stack listener agrees.
fn mac(secret: &[u8], nonce: &str, addr: SocketAddr) -> Hmac<Sha256> {
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(LABEL);
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(addr.to_string().as_bytes());
    mac
}

/// The proof a backend at `addr` holding `secret` answers to `nonce`: lowercase hex.
pub(crate) fn proof(secret: &[u8], nonce: &str, addr: SocketAddr) -> String {
    hex(&mac(secret, nonce, addr).finalize().into_bytes())
}

/// Whether `proof` is the one for `nonce` at `addr`; the comparison takes the same time
/// wherever the first wrong byte is (`Mac::verify_slice`).
pub(crate) fn verify(secret: &[u8], nonce: &str, addr: SocketAddr, proof: &[u8]) -> bool {
    let Some(tag) = unhex(proof) else {
        return false;
    };
    mac(secret, nonce, addr).verify_slice(&tag).is_ok()
}

/// A secret as written in the config or a file: surrounding whitespace (a file's trailing
/// newline) is not part of it. `Err` says what is wrong and what is accepted.
pub(crate) fn secret(text: &str) -> Result<&str, String> {
    let secret = text.trim();
    if secret.chars().count() < MIN_SECRET {
        return Err(format!(
            "shorter than {MIN_SECRET} characters (surrounding whitespace ignored); expected a \
             long random string, the same on the balancer and every backend"
        ));
    }
    Ok(secret)
}

/// Reads a secret file: UTF-8 text holding the secret, as [`secret`] takes it. The error names
/// the file, never its content.
pub(crate) fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; expected a readable file holding the secret",
            path.display()
        )
    })?;
    secret(&text)
        .map(str::to_string)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// 64 hex digits, either case, as 32 bytes; anything else is no proof.
fn unhex(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        *o = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: the primitive is HMAC-SHA256 and nothing else.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A known answer, computed outside this crate (Python's `hmac`) from the documented
    /// message: `sweeplb identity proof v1\n` + nonce + `\n` + address. A backend written in
    /// another language must reproduce it.
    #[test]
    fn known_answer() {
        let secret = b"0123456789abcdef-lab-secret";
        let nonce = "00112233445566778899aabbccddeeff";
        let addr: SocketAddr = "192.168.42.3:3000".parse().unwrap();
        let expected = "9c2e750a814ee8803bd43a690c202ee91a8777340843f980a4d6e5f458d993c4";
        assert_eq!(proof(secret, nonce, addr), expected);
        let v6: SocketAddr = "[fd00::3]:3000".parse().unwrap();
        assert_eq!(
            proof(secret, nonce, v6),
            "29dbbdd509cd36fbaaf03a7841a4d29dcf4e8b5221c01cb45fed9d4909f6241c"
        );
        // A dual-stack listener sees an IPv4 probe as IPv4-mapped IPv6: the same proof.
        let mapped: SocketAddr = "[::ffff:192.168.42.3]:3000".parse().unwrap();
        assert_eq!(proof(secret, nonce, mapped), expected);
    }

    #[test]
    fn only_the_proof_for_this_secret_nonce_and_address_verifies() {
        let secret = b"0123456789abcdef-lab-secret";
        let nonce = "00112233445566778899aabbccddeeff";
        let addr: SocketAddr = "127.77.0.10:3000".parse().unwrap();
        let good = proof(secret, nonce, addr);
        assert!(verify(secret, nonce, addr, good.as_bytes()));
        assert!(verify(secret, nonce, addr, good.to_uppercase().as_bytes()));
        let other_nonce = "ffeeddccbbaa99887766554433221100";
        let cases: &[(&[u8], &str, &str, &[u8])] = &[
            (
                b"another secret, as long",
                nonce,
                "127.77.0.10:3000",
                good.as_bytes(),
            ),
            (secret, other_nonce, "127.77.0.10:3000", good.as_bytes()),
            (secret, nonce, "127.77.0.11:3000", good.as_bytes()),
            (secret, nonce, "127.77.0.10:3001", good.as_bytes()),
            (secret, nonce, "127.77.0.10:3000", &good.as_bytes()[..63]),
            (secret, nonce, "127.77.0.10:3000", b""),
            (secret, nonce, "127.77.0.10:3000", &[b'g'; 64]),
        ];
        for (secret, nonce, addr, proof) in cases {
            let addr = addr.parse().unwrap();
            assert!(
                !verify(secret, nonce, addr, proof),
                "{nonce} {addr} {proof:?}"
            );
        }
    }

    #[test]
    fn nonces_are_fresh_and_well_formed() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert!(is_nonce(&a) && is_nonce(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(!is_nonce("00112233"));
        assert!(!is_nonce("0011223344556677889gaabbccddeeff"));
    }

    #[test]
    fn secrets_are_trimmed_and_long() {
        assert_eq!(secret("  0123456789abcdef\n"), Ok("0123456789abcdef"));
        assert!(secret("0123456789abcde\n").is_err());
    }
}
