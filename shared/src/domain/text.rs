//! Bounded text values. Lengths count characters (Unicode scalar values), not bytes.

use std::fmt;

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, trim: $trim:expr, min: $min:expr, max: $max:expr, allowed: $allowed:expr, rule: $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, &'static str> {
                let value = if $trim { raw.trim() } else { raw };
                let chars = value.chars().count();
                let allowed: fn(char) -> bool = $allowed;
                if !($min..=$max).contains(&chars) || !value.chars().all(allowed) {
                    return Err($rule);
                }
                // PostgreSQL text cannot hold NUL; refuse it here rather than fail there.
                if value.contains('\0') {
                    return Err("must not contain NUL characters");
                }
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a value read back from the database, where it was stored after parsing.
            pub fn from_db(value: String) -> Self {
                Self(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_type!(
    /// A product's name: 1–200 characters after trimming.
    ProductName, trim: true, min: 1, max: 200, allowed: |_| true,
    rule: "must be 1 to 200 characters (surrounding whitespace is trimmed)"
);
text_type!(
    /// A product's description: at most 2000 characters.
    Description, trim: false, min: 0, max: 2000, allowed: |_| true,
    rule: "must be at most 2000 characters"
);
text_type!(
    /// A stock-keeping unit: 1–64 of `A-Za-z0-9._-`, unique among products.
    Sku, trim: false, min: 1, max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    rule: "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
);
text_type!(
    /// The caller's own customer reference: 1–128 characters.
    CustomerId, trim: false, min: 1, max: 128, allowed: |_| true,
    rule: "must be 1 to 128 characters"
);
text_type!(
    /// Why stock was adjusted, kept in the inventory ledger: 1–200 characters after trimming.
    AdjustmentReason, trim: true, min: 1, max: 200, allowed: |_| true,
    rule: "must be 1 to 200 characters (surrounding whitespace is trimmed)"
);
text_type!(
    /// The `Idempotency-Key` header: 1–255 printable ASCII characters.
    IdempotencyKey, trim: false, min: 1, max: 255, allowed: |c| c.is_ascii_graphic() || c == ' ',
    rule: "must be 1 to 255 printable ASCII characters"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(ProductName::parse("  Mug ").unwrap().as_str(), "Mug");
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse(&"é".repeat(200)).is_ok());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn nul_characters_are_refused_in_every_text() {
        assert!(ProductName::parse("a\0b").is_err());
        assert!(Description::parse("\0").is_err());
        assert!(CustomerId::parse("c\0").is_err());
        assert!(AdjustmentReason::parse("r\0").is_err());
    }

    #[test]
    fn skus_allow_only_their_alphabet() {
        assert!(Sku::parse("MUG-01.blue_2").is_ok());
        for bad in ["", "has space", "ümlaut", &"x".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert!(IdempotencyKey::parse("order-123 retry").is_ok());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }
}
