//! Typed condition values: exact decimals, instants and CIDR blocks, parsed
//! once from the policy and on the fly (without allocating) from the request.

use std::cmp::Ordering;
use std::net::IpAddr;

/// An exact decimal number: `-?digits(.digits)?`. Compared exactly, so
/// integers beyond 2^53 and decimals like `0.1` behave as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    negative: bool,
    /// Integer digits without leading zeros (empty for zero).
    integer: &'a str,
    /// Fraction digits without trailing zeros (empty for none).
    fraction: &'a str,
}

impl<'a> Decimal<'a> {
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (integer_digits, fraction_digits) = match unsigned.split_once('.') {
            Some((before_point, after_point)) => {
                if after_point.is_empty() {
                    return None;
                }
                (before_point, after_point)
            }
            None => (unsigned, ""),
        };
        let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if integer_digits.is_empty() || !all_digits(integer_digits) || !all_digits(fraction_digits)
        {
            return None;
        }
        let integer = integer_digits.trim_start_matches('0');
        let fraction = fraction_digits.trim_end_matches('0');
        let is_zero = integer.is_empty() && fraction.is_empty();
        Some(Self {
            negative: negative && !is_zero,
            integer,
            fraction,
        })
    }

    fn compare_magnitude(&self, other: &Self) -> Ordering {
        self.integer
            .len()
            .cmp(&other.integer.len())
            .then_with(|| self.integer.cmp(other.integer))
            .then_with(|| self.fraction.cmp(other.fraction))
    }
}

impl Ord for Decimal<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.compare_magnitude(other),
            (true, true) => other.compare_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A point in time as nanoseconds since the Unix epoch (UTC).
pub(crate) type Instant = i128;

const NANOS_PER_SECOND: i128 = 1_000_000_000;
/// Epoch seconds beyond this (about 31 million years) are refused.
const MAX_EPOCH_SECONDS: i128 = 1_000_000_000_000_000;

/// Parses a date the way AWS date operators accept it:
///
/// - epoch seconds: `1700000000`, `-5`, `1700000000.25` (all digits means
///   epoch, so ISO 8601 basic format like `20240101` is *not* a date);
/// - an ISO 8601 / RFC 3339 date `YYYY-MM-DD` (midnight UTC);
/// - a date-time `YYYY-MM-DDThh:mm[:ss[.fraction]]` followed by `Z`, an
///   offset `±hh:mm`, `±hhmm` or `±hh`, or nothing (read as UTC). `t`/`z`
///   may be lowercase.
pub(crate) fn parse_instant(text: &str) -> Option<Instant> {
    let looks_like_epoch = text
        .strip_prefix('-')
        .unwrap_or(text)
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.');
    if looks_like_epoch {
        return parse_epoch(text);
    }
    parse_iso8601(text)
}

fn parse_epoch(text: &str) -> Option<Instant> {
    let decimal = Decimal::parse(text)?;
    if decimal.integer.len() > 18 {
        return None;
    }
    let whole: i128 = if decimal.integer.is_empty() {
        0
    } else {
        decimal.integer.parse().ok()?
    };
    if whole > MAX_EPOCH_SECONDS {
        return None;
    }
    let mut nanos: i128 = 0;
    for (index, digit) in decimal.fraction.bytes().take(9).enumerate() {
        let place = 8_u32.checked_sub(u32::try_from(index).ok()?)?;
        nanos += i128::from(digit - b'0') * 10_i128.pow(place);
    }
    let magnitude = whole * NANOS_PER_SECOND + nanos;
    Some(if decimal.negative {
        -magnitude
    } else {
        magnitude
    })
}

fn parse_iso8601(text: &str) -> Option<Instant> {
    let mut cursor = Cursor { text, position: 0 };
    let year = cursor.digits(4)?;
    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if cursor.at_end() {
        return Some(i128::from(days) * 86_400 * NANOS_PER_SECOND);
    }
    match cursor.next()? {
        b'T' | b't' => {}
        _ => return None,
    }
    let hour = cursor.digits(2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2)?;
    let mut second = 0;
    let mut nanos: i128 = 0;
    if cursor.peek() == Some(b':') {
        cursor.next();
        second = cursor.digits(2)?;
        if cursor.peek() == Some(b'.') {
            cursor.next();
            let fraction = cursor.take_while(|byte| byte.is_ascii_digit());
            if fraction.is_empty() {
                return None;
            }
            for (index, digit) in fraction.bytes().take(9).enumerate() {
                let place = 8_u32.checked_sub(u32::try_from(index).ok()?)?;
                nanos += i128::from(digit - b'0') * 10_i128.pow(place);
            }
        }
    }
    // Second 60 is a leap second, as RFC 3339 allows.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset_seconds = cursor.zone_offset_seconds()?;
    if !cursor.at_end() {
        return None;
    }
    let seconds = i128::from(days) * 86_400
        + i128::from(hour) * 3600
        + i128::from(minute) * 60
        + i128::from(second)
        - i128::from(offset_seconds);
    Some(seconds * NANOS_PER_SECOND + nanos)
}

struct Cursor<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn at_end(&self) -> bool {
        self.position >= self.text.len()
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn digits(&mut self, count: usize) -> Option<i64> {
        let slice = self.text.get(self.position..self.position + count)?;
        if !slice.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        self.position += count;
        slice.parse().ok()
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.position;
        while self.peek().is_some_and(&keep) {
            self.position += 1;
        }
        self.text.get(start..self.position).unwrap_or("")
    }

    /// `Z`, `±hh:mm`, `±hhmm`, `±hh`, or nothing (UTC).
    fn zone_offset_seconds(&mut self) -> Option<i64> {
        let sign = match self.peek() {
            None => return Some(0),
            Some(b'Z' | b'z') => {
                self.next();
                return Some(0);
            }
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(_) => return None,
        };
        self.next();
        let hours = self.digits(2)?;
        let minutes = match self.peek() {
            None => 0,
            Some(b':') => {
                self.next();
                self.digits(2)?
            }
            Some(_) => self.digits(2)?,
        };
        if hours > 23 || minutes > 59 {
            return None;
        }
        Some(sign * (hours * 3600 + minutes * 60))
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// An IPv4 or IPv6 network. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cidr {
    V4 { network: u32, prefix: u32 },
    V6 { network: u128, prefix: u32 },
}

impl Cidr {
    /// Parses `203.0.113.0/24`, `2001:db8::/32` or a bare address. Host bits
    /// set below the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as
    /// AWS does.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address_text.parse().ok()?;
        let maximum = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix_text {
            None => maximum,
            Some(digits) => {
                if digits.is_empty()
                    || digits.len() > 3
                    || !digits.bytes().all(|byte| byte.is_ascii_digit())
                {
                    return None;
                }
                let prefix: u32 = digits.parse().ok()?;
                if prefix > maximum {
                    return None;
                }
                prefix
            }
        };
        Some(match address {
            IpAddr::V4(v4) => Self::V4 {
                network: u32::from(v4) & mask_v4(prefix),
                prefix,
            },
            // An IPv4-mapped block (`::ffff:203.0.113.0/120`) is the IPv4
            // block it spells, as a request from a mapped address is the
            // IPv4 address it carries (`contains`).
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                let v4 = v6.to_ipv4_mapped().map_or(0, u32::from);
                Self::V4 {
                    network: v4 & mask_v4(prefix - 96),
                    prefix: prefix - 96,
                }
            }
            IpAddr::V6(v6) => Self::V6 {
                network: u128::from(v6) & mask_v6(prefix),
                prefix,
            },
        })
    }

    /// Whether `address` lies in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) is treated as the IPv4 address it carries.
    pub(crate) fn contains(&self, address: IpAddr) -> bool {
        match (self, address.to_canonical()) {
            (Self::V4 { network, prefix }, IpAddr::V4(v4)) => {
                u32::from(v4) & mask_v4(*prefix) == *network
            }
            (Self::V6 { network, prefix }, IpAddr::V6(v6)) => {
                u128::from(v6) & mask_v6(*prefix) == *network
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u32) -> u32 {
    u32::MAX.checked_shl(32 - prefix).unwrap_or(0)
}

fn mask_v6(prefix: u32) -> u128 {
    u128::MAX.checked_shl(128 - prefix).unwrap_or(0)
}

/// Parses a request-side address; `None` when it is not a bare IP address.
pub(crate) fn parse_request_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Decimal<'_> {
        Decimal::parse(text).unwrap()
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(decimal("10"), decimal("010"));
        assert_eq!(decimal("1.50"), decimal("1.5"));
        assert_eq!(decimal("-0"), decimal("0.000"));
        assert!(decimal("9") < decimal("10"));
        assert!(decimal("-10") < decimal("-9"));
        assert!(decimal("0.1") < decimal("0.15"));
        assert!(decimal("-0.1") > decimal("-0.15"));
        assert!(decimal("9007199254740993") > decimal("9007199254740992"));
        assert!(decimal("-1") < decimal("0"));
        for bad in [
            "", "-", "1.", ".5", "+1", "1e3", "0x10", "1.2.3", " 1", "1 ", "--1", "١",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn dates_in_every_accepted_form() {
        let midnight_2024 = 1_704_067_200 * NANOS_PER_SECOND;
        assert_eq!(parse_instant("2024-01-01"), Some(midnight_2024));
        assert_eq!(parse_instant("2024-01-01T00:00:00Z"), Some(midnight_2024));
        assert_eq!(parse_instant("2024-01-01t00:00:00z"), Some(midnight_2024));
        assert_eq!(parse_instant("2024-01-01T00:00Z"), Some(midnight_2024));
        assert_eq!(parse_instant("2024-01-01T00:00:00"), Some(midnight_2024));
        assert_eq!(
            parse_instant("2024-01-01T01:00:00+01:00"),
            Some(midnight_2024)
        );
        assert_eq!(
            parse_instant("2024-01-01T01:00:00+0100"),
            Some(midnight_2024)
        );
        assert_eq!(parse_instant("2024-01-01T01:00:00+01"), Some(midnight_2024));
        assert_eq!(
            parse_instant("2023-12-31T23:00:00-01:00"),
            Some(midnight_2024)
        );
        assert_eq!(parse_instant("1704067200"), Some(midnight_2024));
        assert_eq!(
            parse_instant("2024-01-01T00:00:00.5Z"),
            Some(midnight_2024 + NANOS_PER_SECOND / 2)
        );
        assert_eq!(
            parse_instant("1704067200.5"),
            Some(midnight_2024 + NANOS_PER_SECOND / 2)
        );
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_instant("-1"), Some(-NANOS_PER_SECOND));
        assert_eq!(
            parse_instant("1969-12-31T23:59:59Z"),
            Some(-NANOS_PER_SECOND)
        );
        assert_eq!(
            parse_instant("2000-02-29"),
            Some(951_782_400 * NANOS_PER_SECOND)
        );
        // All digits is epoch seconds, not an ISO 8601 basic-format year.
        assert_eq!(parse_instant("2024"), Some(2024 * NANOS_PER_SECOND));
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in [
            "",
            "2024-1-01",
            "2024-13-01",
            "2024-00-10",
            "2023-02-29",
            "1900-02-29",
            "2024-04-31",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+25:00",
            "2024-01-01T00:00:00ZZ",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00Z",
            "yesterday",
            "9999999999999999999999",
            "1.2.3",
            "-",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let block = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(block.contains("203.0.113.7".parse().unwrap()));
        assert!(!block.contains("203.0.114.7".parse().unwrap()));
        assert!(block.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!block.contains("2001:db8::1".parse().unwrap()));
        let host_bits = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(host_bits, Cidr::parse("10.0.0.0/8").unwrap());
        let everything = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(everything.contains("255.255.255.255".parse().unwrap()));
        let single = Cidr::parse("192.0.2.1").unwrap();
        assert!(single.contains("192.0.2.1".parse().unwrap()));
        assert!(!single.contains("192.0.2.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:DB8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all_v6 = Cidr::parse("::/0").unwrap();
        assert!(all_v6.contains("::1".parse().unwrap()));
        // An IPv4-mapped block holds the IPv4 addresses it spells, however
        // the request's address is written.
        let mapped = Cidr::parse("::ffff:203.0.113.0/120").unwrap();
        assert_eq!(mapped, block);
        assert!(mapped.contains("203.0.113.7".parse().unwrap()));
        assert!(mapped.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!mapped.contains("203.0.114.7".parse().unwrap()));
        let mapped_host = Cidr::parse("::ffff:192.0.2.1").unwrap();
        assert!(mapped_host.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn malformed_cidr_blocks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "::/129",
            "host.example/8",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad:?} should not parse");
        }
    }
}
