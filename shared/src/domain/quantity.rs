/// Units of one product on one order line: 1–10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u16);

impl Quantity {
    pub const MAX: u16 = 10_000;
    const RULE: &'static str = "must be an integer between 1 and 10000";

    /// Parses the literal of a JSON number.
    pub fn parse_number(literal: &str) -> Result<Self, &'static str> {
        let value: i64 = literal.parse().map_err(|_| Self::RULE)?;
        Self::try_from(value)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// Sums merged lines for one product; the merged quantity obeys the same bound.
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        let sum = self.0.checked_add(other.0)?;
        (sum <= Self::MAX).then_some(Quantity(sum))
    }
}

impl TryFrom<i64> for Quantity {
    type Error = &'static str;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u16))
        } else {
            Err(Self::RULE)
        }
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}
