//! AgentKit's webhook signature (docs/api.md §1.1), pure: no clock, no I/O.
//!
//! Header `X-AgentKit-Timestamp` holds whole Unix seconds (or an RFC 3339
//! time), `X-AgentKit-Signature` the lowercase hex HMAC-SHA256, keyed with
//! the shared secret, of `timestamp + "." + raw body`. The check is over the
//! raw bytes, in constant time, and refuses a timestamp too far from now.
//! The webhook (`http::webhook`) checks with it; the client and the
//! simulator sign with it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "x-agentkit-timestamp";
/// Header carrying the hex signature.
pub const SIGNATURE_HEADER: &str = "x-agentkit-signature";

/// Why a webhook signature was refused. Each says what was wrong, never what
/// the right value would have been.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// One of the two headers is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The timestamp header is neither Unix seconds nor RFC 3339.
    #[error("X-AgentKit-Timestamp is not Unix seconds or an RFC 3339 time")]
    BadTimestamp,
    /// The timestamp is outside the tolerance window.
    #[error("X-AgentKit-Timestamp is {0} seconds from the server's clock (limit {1})")]
    Stale(i64, u64),
    /// The signature header is not hex of the right length.
    #[error("X-AgentKit-Signature is not a hex HMAC-SHA256 digest")]
    BadEncoding,
    /// The signature does not match.
    #[error("signature does not match")]
    Mismatch,
}

/// Parse a webhook timestamp header into Unix seconds.
pub fn parse_webhook_timestamp(raw: &str) -> Result<i64, SignatureError> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().map_err(|_| SignatureError::BadTimestamp);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|dt| dt.timestamp())
        .map_err(|_| SignatureError::BadTimestamp)
}

/// Compute the signature AgentKit sends for `body` at `timestamp` (the
/// header's exact text). Used by the check below, and by the simulator and
/// tests to sign as AgentKit does.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Verify a webhook's signature headers against `body` at time `now` (Unix
/// seconds). Pure: no clock, no I/O.
pub fn verify_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    verify_signature_any(&[secret], timestamp, signature, body, now, tolerance).map(|_| ())
}

/// A signature that verified: what the replay guard remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The signature bytes.
    pub signature: [u8; 32],
    /// The signed timestamp, in Unix seconds.
    pub timestamp: i64,
}

/// Everything about a webhook's signature headers that can be checked
/// without the body: both present, the timestamp readable and within
/// `tolerance` of `now`, the signature well formed. Returns them parsed
/// (not yet verified). The webhook runs this before it reads the body, so
/// a caller that cannot pass it never gets to send one.
pub fn check_signature_headers(
    timestamp: Option<&str>,
    signature: Option<&str>,
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedSignature, SignatureError> {
    let ts_raw = timestamp.ok_or(SignatureError::MissingHeader("X-AgentKit-Timestamp"))?;
    let sig_raw = signature.ok_or(SignatureError::MissingHeader("X-AgentKit-Signature"))?;
    let ts = parse_webhook_timestamp(ts_raw)?;
    let skew = now.saturating_sub(ts);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::Stale(skew, tolerance.as_secs()));
    }
    let sig_hex = sig_raw.trim();
    let sig_hex = sig_hex.strip_prefix("sha256=").unwrap_or(sig_hex);
    let sig: [u8; 32] = hex::decode(sig_hex)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(SignatureError::BadEncoding)?;
    Ok(VerifiedSignature {
        signature: sig,
        timestamp: ts,
    })
}

/// Verify as [`verify_signature`] against several secrets: any one of them
/// verifies (rotation keeps the old and the new secret at once). Also says
/// which secret verified: its index in `secrets` (what the audit trail
/// names, never the secret).
pub fn verify_signature_any(
    secrets: &[&[u8]],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(usize, VerifiedSignature), SignatureError> {
    let VerifiedSignature {
        signature: sig,
        timestamp: ts,
    } = check_signature_headers(timestamp, signature, now, tolerance)?;
    let ts_raw = timestamp.unwrap_or_default();
    // verify_slice compares in constant time.
    let which = secrets
        .iter()
        .position(|secret| mac(secret, ts_raw, body).verify_slice(&sig).is_ok())
        .ok_or(SignatureError::Mismatch)?;
    Ok((
        which,
        VerifiedSignature {
            signature: sig,
            timestamp: ts,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const BODY: &[u8] = br#"{"event_type":"REGISTER","agent_details":{"agentId":"a1"}}"#;
    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"key", "1700000000", b"{}"),
            "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn accepts_valid_and_rfc3339() {
        let now = 1_700_000_000;
        let sig = sign(SECRET, "1700000000", BODY);
        assert_eq!(
            verify_signature(SECRET, Some("1700000000"), Some(&sig), BODY, now, TOL),
            Ok(())
        );
        let ts = "2023-11-14T22:13:20Z"; // the same instant
        let sig = sign(SECRET, ts, BODY);
        assert_eq!(
            verify_signature(SECRET, Some(ts), Some(&sig), BODY, now, TOL),
            Ok(())
        );
    }

    #[test]
    fn refuses_tampering_staleness_and_wrong_secret() {
        let now = 1_700_000_000;
        let sig = sign(SECRET, "1700000000", BODY);
        let mut tampered = BODY.to_vec();
        tampered[5] ^= 1;
        assert_eq!(
            verify_signature(SECRET, Some("1700000000"), Some(&sig), &tampered, now, TOL),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature(SECRET, Some("1700000000"), Some(&sig), BODY, now + 301, TOL),
            Err(SignatureError::Stale(301, 300))
        ));
        assert!(matches!(
            verify_signature(SECRET, Some("1700000000"), Some(&sig), BODY, now - 301, TOL),
            Err(SignatureError::Stale(-301, 300))
        ));
        assert_eq!(
            verify_signature(b"other", Some("1700000000"), Some(&sig), BODY, now, TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(SECRET, Some("1700000000"), Some("zz"), BODY, now, TOL),
            Err(SignatureError::BadEncoding)
        );
        assert_eq!(
            verify_signature(SECRET, Some("yesterday"), Some(&sig), BODY, now, TOL),
            Err(SignatureError::BadTimestamp)
        );
        assert!(matches!(
            verify_signature(SECRET, None, Some(&sig), BODY, now, TOL),
            Err(SignatureError::MissingHeader(_))
        ));
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let now = 1_700_000_000;
        let sig = sign(b"old", "1700000000", BODY);
        let secrets: [&[u8]; 2] = [b"new", b"old"];
        let (which, v) =
            verify_signature_any(&secrets, Some("1700000000"), Some(&sig), BODY, now, TOL).unwrap();
        assert_eq!(which, 1);
        assert_eq!(v.timestamp, now);
        assert_eq!(hex::encode(v.signature), sig);
        assert_eq!(
            verify_signature_any(&[b"new"], Some("1700000000"), Some(&sig), BODY, now, TOL),
            Err(SignatureError::Mismatch)
        );
    }
}
