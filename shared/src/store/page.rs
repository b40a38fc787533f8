use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::FieldError;

/// Which listing a cursor belongs to: a products cursor is refused on orders and the other
/// way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Keyed on `(created_at, id)`.
    Products,
    /// Keyed on `(created_at, id)`: the order every search filter's index keeps.
    Orders,
    /// A product's ledger, keyed on `(at, seq)`.
    StockMovements,
}

impl Listing {
    fn tag(self) -> u8 {
        match self {
            // Tags of earlier cursor shapes ('p' and 'o': ids; 'm': sequences) are refused,
            // not misread.
            Listing::Products => b'q',
            Listing::Orders => b'c',
            Listing::StockMovements => b'n',
        }
    }

    fn decode(self, key: &[u8]) -> Option<Position> {
        let (micros, rest) = key.split_first_chunk::<8>()?;
        let at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))?;
        match self {
            Listing::Products | Listing::Orders => {
                Some(Position::Created(at, Uuid::from_slice(rest).ok()?))
            }
            Listing::StockMovements => {
                let seq: [u8; 8] = rest.try_into().ok()?;
                Some(Position::Entry(at, i64::from_be_bytes(seq)))
            }
        }
    }
}

/// Where a page starts: the key of the last item of the previous page, in its listing's
/// shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A row's creation time and id.
    Created(DateTime<Utc>, Uuid),
    /// A ledger entry's time and sequence.
    Entry(DateTime<Utc>, i64),
}

impl Position {
    fn to_bytes(self) -> Vec<u8> {
        match self {
            Position::Created(at, id) => {
                let mut bytes = at.timestamp_micros().to_be_bytes().to_vec();
                bytes.extend_from_slice(id.as_bytes());
                bytes
            }
            Position::Entry(at, seq) => {
                let mut bytes = at.timestamp_micros().to_be_bytes().to_vec();
                bytes.extend_from_slice(&seq.to_be_bytes());
                bytes
            }
        }
    }
}

/// A page of a listing: at most `limit` (1–200, default 50) items after `after`.
///
/// The cursor is opaque to clients: the key of the last item of the previous page. Keys are
/// times the database gives each row (its transaction's start) with a tie-breaker, and
/// listings read only below `listing_horizon()` (migration V8), under which no row can
/// still appear: a client paging on, or polling from its last cursor, sees every item once,
/// in order, also one whose transaction committed after a later one.
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

    /// The `(created_at, id)` after which a listing keyed on creation starts.
    pub fn after_created(&self) -> Option<(DateTime<Utc>, Uuid)> {
        match self.after {
            Some(Position::Created(at, id)) => Some((at, id)),
            _ => None,
        }
    }

    /// The `(at, seq)` after which a ledger listing starts.
    pub fn after_entry(&self) -> Option<(DateTime<Utc>, i64)> {
        match self.after {
            Some(Position::Entry(at, seq)) => Some((at, seq)),
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
        let at = DateTime::from_timestamp_micros(1_764_650_000_123_456).unwrap();
        let cursor = encode(Listing::Products, Position::Created(at, id));
        let page = PageRequest::parse(Listing::Products, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_created(), Some((at, id)));
        assert!(PageRequest::parse(Listing::Orders, None, Some(&cursor)).is_err());

        let cursor = encode(Listing::Orders, Position::Created(at, id));
        let page = PageRequest::parse(Listing::Orders, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_created(), Some((at, id)));
        assert!(PageRequest::parse(Listing::StockMovements, None, Some(&cursor)).is_err());

        let cursor = encode(Listing::StockMovements, Position::Entry(at, 42));
        let page = PageRequest::parse(Listing::StockMovements, None, Some(&cursor)).unwrap();
        assert_eq!(page.after_entry(), Some((at, 42)));
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
