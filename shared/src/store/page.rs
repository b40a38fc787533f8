use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::FieldError;

/// Which listing a cursor belongs to: a products cursor is refused on orders and the other
/// way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Products,
    /// Keyed on `(created_at, id)`: the order every search filter's index keeps.
    Orders,
    /// A product's ledger, keyed on its sequence.
    StockMovements,
}

impl Listing {
    fn tag(self) -> u8 {
        match self {
            Listing::Products => b'p',
            // 'o' was the id-only orders cursor: one of those is refused, not misread.
            Listing::Orders => b'c',
            Listing::StockMovements => b'm',
        }
    }

    fn decode(self, key: &[u8]) -> Option<Position> {
        match self {
            Listing::Products => Uuid::from_slice(key).ok().map(Position::Id),
            Listing::Orders => {
                let (micros, id) = key.split_first_chunk::<8>()?;
                let at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))?;
                Some(Position::Created(at, Uuid::from_slice(id).ok()?))
            }
            Listing::StockMovements => {
                let seq: [u8; 8] = key.try_into().ok()?;
                Some(Position::Seq(i64::from_be_bytes(seq)))
            }
        }
    }
}

/// Where a page starts: the key of the last item of the previous page, in its listing's
/// shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Id(Uuid),
    Created(DateTime<Utc>, Uuid),
    Seq(i64),
}

impl Position {
    fn to_bytes(self) -> Vec<u8> {
        match self {
            Position::Id(id) => id.as_bytes().to_vec(),
            Position::Created(at, id) => {
                let mut bytes = at.timestamp_micros().to_be_bytes().to_vec();
                bytes.extend_from_slice(id.as_bytes());
                bytes
            }
            Position::Seq(seq) => seq.to_be_bytes().to_vec(),
        }
    }
}

/// A page of a listing: at most `limit` (1–200, default 50) items after `after`.
///
/// The cursor is opaque to clients: the key of the last item of the previous page. Keys
/// follow creation (UUID v7 ids, creation times, ledger sequence), so a keyset returns every
/// item once, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    limit: i64,
    after: Option<Position>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: i64 = 50;

    pub fn first(limit: i64) -> Self {
        Self {
            limit: limit.clamp(1, 200),
            after: None,
        }
    }

    /// Parses the `limit` and `cursor` query parameters, naming each one that is wrong.
    pub fn parse(
        listing: Listing,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let limit = match limit {
            None => Self::DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=200).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        "must be an integer between 1 and 200",
                    ));
                    Self::DEFAULT_LIMIT
                }
            },
        };
        let after = match cursor {
            None => None,
            Some(raw) => match decode(listing, raw) {
                Some(id) => Some(id),
                None => {
                    errors.push(FieldError::new(
                        "cursor",
                        "is not a cursor this listing returned",
                    ));
                    None
                }
            },
        };
        if errors.is_empty() {
            Ok(Self { limit, after })
        } else {
            Err(errors)
        }
    }

    pub fn limit(&self) -> i64 {
        self.limit
    }

    pub fn after(&self) -> Option<Position> {
        self.after
    }

    /// The id after which a listing keyed on ids starts.
    pub fn after_id(&self) -> Option<Uuid> {
        match self.after {
            Some(Position::Id(id)) => Some(id),
            _ => None,
        }
    }

    /// The `(created_at, id)` after which a listing keyed on creation starts.
    pub fn after_created(&self) -> Option<(DateTime<Utc>, Uuid)> {
        match self.after {
            Some(Position::Created(at, id)) => Some((at, id)),
            _ => None,
        }
    }

    /// The sequence number after which a ledger listing starts.
    pub fn after_seq(&self) -> Option<i64> {
        match self.after {
            Some(Position::Seq(seq)) => Some(seq),
            _ => None,
        }
    }
}

fn encode(listing: Listing, after: Position) -> String {
    let mut bytes = vec![listing.tag()];
    bytes.extend(after.to_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(listing: Listing, raw: &str) -> Option<Position> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let (tag, key) = bytes.split_first()?;
    if *tag != listing.tag() {
        return None;
    }
    listing.decode(key)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` were fetched with one more than the limit, to know whether a next page exists.
    pub(crate) fn from_rows(
        mut rows: Vec<T>,
        request: PageRequest,
        listing: Listing,
        key: impl Fn(&T) -> Position,
    ) -> Self {
        let limit = request.limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode(listing, key(last)))
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_keep_their_listing() {
        let id = Uuid::now_v7();
        let cursor = encode(Listing::Products, Position::Id(id));
        let page = PageRequest::parse(Listing::Products, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_id(), Some(id));
        assert!(PageRequest::parse(Listing::Orders, None, Some(&cursor)).is_err());

        let at = DateTime::from_timestamp_micros(1_764_650_000_123_456).unwrap();
        let cursor = encode(Listing::Orders, Position::Created(at, id));
        let page = PageRequest::parse(Listing::Orders, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_created(), Some((at, id)));
        assert!(PageRequest::parse(Listing::StockMovements, None, Some(&cursor)).is_err());

        let cursor = encode(Listing::StockMovements, Position::Seq(42));
        let page = PageRequest::parse(Listing::StockMovements, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_seq(), Some(42));
        assert!(PageRequest::parse(Listing::Products, None, Some(&cursor)).is_err());

        assert!(PageRequest::parse(Listing::Orders, None, Some("not a cursor")).is_err());
        assert!(PageRequest::parse(Listing::Orders, None, Some("")).is_err());
    }

    #[test]
    fn limits_are_bounded_and_every_bad_parameter_is_named() {
        let errors = PageRequest::parse(Listing::Products, Some("0"), Some("x")).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "cursor"]);
        assert!(PageRequest::parse(Listing::Products, Some("201"), None).is_err());
        assert_eq!(
            PageRequest::parse(Listing::Products, Some("200"), None)
                .unwrap()
                .limit(),
            200
        );
        assert_eq!(
            PageRequest::parse(Listing::Products, None, None)
                .unwrap()
                .limit(),
            50
        );
    }
}
