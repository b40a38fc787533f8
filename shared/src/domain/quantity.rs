bounded_count! {
    /// Units of one product on one order line: 1–10,000.
    Quantity(u16), max = 10_000, rule = "must be an integer between 1 and 10000"
}

impl Quantity {
    /// Sums merged lines for one product; the merged quantity obeys the same bound.
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        let sum = self.0.checked_add(other.0)?;
        (sum <= Self::MAX).then_some(Quantity(sum))
    }
}
