use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::domain::FieldError;

/// Which listing a cursor belongs to: a products cursor is refused on orders and the other
/// way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Products,
    Orders,
}

impl Listing {
    fn tag(self) -> u8 {
        match self {
            Listing::Products => b'p',
            Listing::Orders => b'o',
        }
    }
}

/// A page of a listing: at most `limit` (1–200, default 50) items after `after`.
///
/// The cursor is opaque to clients: the last id of the previous page. Ids are UUID v7, so id
/// order is creation order and a keyset on the id returns every item exactly once, even
/// while items are being added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    limit: i64,
    after: Option<Uuid>,
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

    pub fn after(&self) -> Option<Uuid> {
        self.after
    }
}

fn encode(listing: Listing, after: Uuid) -> String {
    let mut bytes = [0u8; 17];
    bytes[0] = listing.tag();
    bytes[1..].copy_from_slice(after.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(listing: Listing, raw: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let (tag, id) = bytes.split_first()?;
    (*tag == listing.tag()).then(|| Uuid::from_slice(id).ok())?
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
        id: impl Fn(&T) -> Uuid,
    ) -> Self {
        let limit = request.limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode(listing, id(last)))
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
        let cursor = encode(Listing::Orders, id);
        let page = PageRequest::parse(Listing::Orders, None, Some(&cursor)).unwrap();
        assert_eq!(page.after(), Some(id));
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
