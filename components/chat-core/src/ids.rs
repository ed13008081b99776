//! Message ids on the wire: 64-bit integers as decimal strings, because
//! JavaScript numbers cannot hold 64 bits.

/// Parses a message id sent as a decimal string (digits only, fits in u64).
pub fn parse_message_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only plain decimal digits that fit in 64 bits are ids.
    #[test]
    fn parses_decimal_ids_only() {
        assert_eq!(parse_message_id("0"), Some(0));
        assert_eq!(parse_message_id("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "1e3", "0x10", "18446744073709551616", " 1"] {
            assert_eq!(parse_message_id(bad), None, "{bad}");
        }
    }
}
