//! W3C trace context (`traceparent`), carried into and out of every call.
//!
//! Every call gets a trace id: the caller's when it sent a valid
//! `traceparent`, a fresh one otherwise. Outgoing calls made on its behalf
//! carry the same trace id with a new parent span id, so a call and the calls
//! it causes share one trace, and the audit events record it.

use std::fmt;

pub const TRACEPARENT_HEADER: &str = "traceparent";

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Parses `00-{32 hex trace id}-{16 hex span id}-{2 hex flags}`. All-zero
    /// ids and version `ff` are invalid, as the specification says.
    pub fn parse_traceparent(header: &str) -> Option<Self> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        if version.len() != 2 || version == "ff" {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(fields.next()?)?;
        let span_id: [u8; 8] = decode_hex(fields.next()?)?;
        let [flags]: [u8; 1] = decode_hex(fields.next()?)?;
        if version == "00" && fields.next().is_some() {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The same trace, a new span beneath this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: crate::random_id_bytes(),
            ..*self
        }
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            encode_hex(&self.trace_id),
            encode_hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        encode_hex(&self.trace_id)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.traceparent())
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    crate::hex_lower(bytes)
}

/// `N` bytes from `2N` lowercase hex digits.
pub(crate) fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (index, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_valid_header() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse_traceparent(header);
        assert_eq!(parsed.map(|c| c.traceparent()).as_deref(), Some(header));
        let child = parsed.map(|c| c.child());
        assert_eq!(
            child.map(|c| c.trace_id_hex()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn rejects_invalid_headers() {
        for header in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(
                TraceContext::parse_traceparent(header).is_none(),
                "{header}"
            );
        }
    }
}
