//! Sizes written the way people write them: "2GiB", "512MiB", "100M".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (number, multiplier) = UNITS
            .iter()
            .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim(), *m)))
            .unwrap_or((t, 1));
        let n: u64 = number.parse().map_err(|_| {
            format!("`{s}` is not a size: write a whole number with a unit, e.g. \"4GiB\" or \"512MiB\"")
        })?;
        n.checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, m) in &UNITS[..4] {
            if self.0 >= *m && self.0 % m == 0 {
                return write!(f, "{}{suffix}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("512 MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("100M".parse::<ByteSize>().unwrap().0, 100 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let e = "two gigs".parse::<ByteSize>().unwrap_err();
        assert!(e.contains("\"4GiB\""), "{e}");
    }

    #[test]
    fn displays_in_largest_exact_unit() {
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MiB");
    }
}
