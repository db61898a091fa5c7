//! Webhook signature verification (docs/api.md §1.1) against arbitrary headers,
//! bodies, secrets and clocks.
//!
//! Input, as text lines so the seeds are readable AgentKit calls:
//!
//! ```text
//! <secret>\n<X-AgentKit-Timestamp>\n<X-AgentKit-Signature>\n<now, Unix seconds>\n<raw body...>
//! ```
//!
//! A missing line is a missing header. Properties checked, beyond "no panic":
//! - the verifier accepts exactly when both headers are present, the
//!   timestamp parses and is within tolerance, and the signature (trimmed,
//!   optional `sha256=`, any hex case) is the HMAC of `timestamp.body`; each
//!   refusal names the first rule broken;
//! - a correct signature made with `sign` verifies at the signing time and
//!   at either edge of the tolerance window, and stops verifying once the
//!   body, the secret or the timestamp text changes, or the clock moves past
//!   the window.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use opscore::domain::signature::{parse_webhook_timestamp, sign, verify_signature, SignatureError};

/// The service's default tolerance (OPSCORE_WEBHOOK_TOLERANCE_SECS).
const TOL: Duration = Duration::from_secs(300);
const TOL_SECS: i64 = 300;

struct Call<'a> {
    secret: &'a [u8],
    timestamp: Option<&'a str>,
    signature: Option<&'a str>,
    now: i64,
    body: &'a [u8],
}

fn split(data: &[u8]) -> Call<'_> {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let secret = parts.next().unwrap_or_default();
    // A header value that is not UTF-8 reaches the verifier as "", as in
    // the handler (HeaderValue::to_str failing).
    let mut header = || parts.next().map(|l| std::str::from_utf8(l).unwrap_or(""));
    let timestamp = header();
    let signature = header();
    let now = header().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let body = parts.next().unwrap_or_default();
    Call {
        secret,
        timestamp,
        signature,
        now,
        body,
    }
}

/// What docs/api.md §1.1 says the verifier must answer, rule by rule.
fn model(c: &Call<'_>) -> Result<(), &'static str> {
    let ts = c.timestamp.ok_or("missing")?;
    let sig = c.signature.ok_or("missing")?;
    let t = parse_webhook_timestamp(ts).map_err(|_| "bad timestamp")?;
    if (i128::from(c.now) - i128::from(t)).abs() > i128::from(TOL_SECS) {
        return Err("stale");
    }
    let hex = sig.trim();
    let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("encoding");
    }
    if hex.to_ascii_lowercase() != sign(c.secret, ts, c.body) {
        return Err("mismatch");
    }
    Ok(())
}

fn kind(r: &Result<(), SignatureError>) -> Result<(), &'static str> {
    match r {
        Ok(()) => Ok(()),
        Err(SignatureError::MissingHeader(_)) => Err("missing"),
        Err(SignatureError::BadTimestamp) => Err("bad timestamp"),
        Err(SignatureError::Stale(..)) => Err("stale"),
        Err(SignatureError::BadEncoding) => Err("encoding"),
        Err(SignatureError::Mismatch) => Err("mismatch"),
    }
}

fn verify(secret: &[u8], ts: &str, sig: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    verify_signature(secret, Some(ts), Some(sig), body, now, TOL)
}

fuzz_target!(|data: &[u8]| {
    let call = split(data);
    let got = verify_signature(
        call.secret,
        call.timestamp,
        call.signature,
        call.body,
        call.now,
        TOL,
    );
    assert_eq!(
        kind(&got),
        model(&call),
        "verdict differs from docs/api.md §1.1"
    );

    // Sign as AgentKit does, with the input's timestamp when it parses, or
    // else with `now` in Unix seconds.
    let fallback = call.now.max(0).to_string();
    let ts = match call.timestamp {
        Some(t) if parse_webhook_timestamp(t).is_ok() => t,
        _ => &fallback,
    };
    let Ok(t) = parse_webhook_timestamp(ts) else {
        unreachable!("Unix seconds always parse: {ts:?}");
    };
    let (secret, body) = (call.secret, call.body);
    let sig = sign(secret, ts, body);
    assert_eq!(sig.len(), 64);
    assert_eq!(verify(secret, ts, &sig, body, t), Ok(()));
    assert_eq!(
        verify(
            secret,
            ts,
            &format!(" sha256={} ", sig.to_ascii_uppercase()),
            body,
            t
        ),
        Ok(())
    );
    for edge in [t.checked_sub(TOL_SECS), t.checked_add(TOL_SECS)]
        .into_iter()
        .flatten()
    {
        assert_eq!(verify(secret, ts, &sig, body, edge), Ok(()), "edge {edge}");
    }
    for past in [t.checked_sub(TOL_SECS + 1), t.checked_add(TOL_SECS + 1)]
        .into_iter()
        .flatten()
    {
        assert!(
            matches!(
                verify(secret, ts, &sig, body, past),
                Err(SignatureError::Stale(..))
            ),
            "accepted {} s away",
            past.abs_diff(t)
        );
    }
    // One flipped bit anywhere in the body or the secret breaks it. (Same
    // length on purpose: HMAC pads short keys with zeros, so appending a NUL
    // to a secret is the same key.)
    let bit = usize::try_from(call.now.unsigned_abs() % 4096).unwrap_or(0);
    if !body.is_empty() {
        let mut tampered = body.to_vec();
        tampered[bit / 8 % body.len()] ^= 1 << (bit % 8);
        assert_eq!(
            verify(secret, ts, &sig, &tampered, t),
            Err(SignatureError::Mismatch)
        );
    }
    if !secret.is_empty() {
        let mut other = secret.to_vec();
        other[bit / 8 % secret.len()] ^= 1 << (bit % 8);
        assert_eq!(
            verify(&other, ts, &sig, body, t),
            Err(SignatureError::Mismatch)
        );
    }
    // The timestamp text is signed as sent: "0170…" and "170…" are the same
    // instant but not the same signature.
    let padded = format!("0{ts}");
    if parse_webhook_timestamp(&padded) == Ok(t) {
        assert_eq!(
            verify(secret, &padded, &sig, body, t),
            Err(SignatureError::Mismatch)
        );
    }
});
