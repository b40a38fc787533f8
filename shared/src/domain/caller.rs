//! Who is asking: the role and identity the JWT authorizer vouched for, as a type. The HTTP
//! layer builds it once per request from the authorizer's claims; use cases receive it and
//! never see claims.

use std::fmt;

use super::CustomerId;

/// The scope that makes a token's holder staff (a Cognito resource server `oms` with the
/// custom scope `staff`).
pub const STAFF_SCOPE: &str = "oms/staff";

/// What `statusHistory[].by` and the ledger's actor say for the processor's own decisions.
pub const SYSTEM: &str = "system";

/// A staff member: may do everything. Holds the token's `sub`, recorded on what they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff(String);

impl Staff {
    pub fn subject(&self) -> &str {
        &self.0
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Staff(Staff),
    /// A customer, identified by its `sub`: its orders are those with this `customerId`.
    Customer(CustomerId),
}

/// Why a token's claims do not make a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerError {
    /// No `sub`, or one no customer id can hold.
    Subject,
}

impl fmt::Display for CallerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerError::Subject => f.write_str("the token names no usable subject (sub)"),
        }
    }
}

/// Longest `sub` recorded as an actor (the history and ledger columns' bound).
const MAX_SUBJECT: usize = 255;

impl Caller {
    /// The caller a token's `sub` and scopes describe: staff when one scope is
    /// [`STAFF_SCOPE`], a customer otherwise.
    pub fn from_token<'s>(
        subject: Option<&str>,
        mut scopes: impl Iterator<Item = &'s str>,
    ) -> Result<Self, CallerError> {
        let subject = subject
            .filter(|s| !s.is_empty() && s.chars().count() <= MAX_SUBJECT && !s.contains('\0'))
            .ok_or(CallerError::Subject)?;
        if scopes.any(|scope| scope == STAFF_SCOPE) {
            Ok(Caller::Staff(Staff(subject.to_owned())))
        } else {
            CustomerId::parse(subject)
                .map(Caller::Customer)
                .map_err(|_| CallerError::Subject)
        }
    }

    /// The name recorded for what this caller changes.
    pub fn subject(&self) -> &str {
        match self {
            Caller::Staff(staff) => staff.subject(),
            Caller::Customer(customer) => customer.as_str(),
        }
    }

    /// The only customer whose orders this caller may see, or `None` for staff (all).
    pub fn own_orders_only(&self) -> Option<&CustomerId> {
        match self {
            Caller::Staff(_) => None,
            Caller::Customer(customer) => Some(customer),
        }
    }

    pub fn as_staff(&self) -> Option<&Staff> {
        match self {
            Caller::Staff(staff) => Some(staff),
            Caller::Customer(_) => None,
        }
    }
}

/// Scopes as the claims carry them: `scope` space-separated (Cognito access tokens), `scp`
/// as a JSON array, which API Gateway hands on rendered as `[a b]`, or as a plain list.
pub fn scopes_in_claim(value: &str) -> impl Iterator<Item = &str> {
    let inner = value
        .trim()
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    inner
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|s| s.trim_matches('"'))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staff_scope_makes_staff_and_anything_else_a_customer() {
        let staff = Caller::from_token(Some("u-1"), scopes_in_claim("openid oms/staff")).unwrap();
        assert_eq!(staff.as_staff().map(Staff::subject), Some("u-1"));
        assert_eq!(staff.own_orders_only(), None);
        let customer = Caller::from_token(Some("u-2"), scopes_in_claim("openid profile")).unwrap();
        assert_eq!(
            customer.own_orders_only().map(CustomerId::as_str),
            Some("u-2")
        );
        // A scope that merely contains the staff scope is not it.
        let lookalike = Caller::from_token(Some("u-3"), scopes_in_claim("oms/staff-x")).unwrap();
        assert!(lookalike.as_staff().is_none());
    }

    #[test]
    fn scp_arrays_are_read_in_every_form_they_arrive_in() {
        for claim in ["[oms/staff email]", r#"["oms/staff","email"]"#, "oms/staff"] {
            let scopes: Vec<_> = scopes_in_claim(claim).collect();
            assert!(scopes.contains(&"oms/staff"), "{claim}: {scopes:?}");
        }
    }

    #[test]
    fn a_token_without_a_usable_subject_is_no_caller() {
        assert!(Caller::from_token(None, std::iter::empty()).is_err());
        assert!(Caller::from_token(Some(""), std::iter::empty()).is_err());
        // A customer's sub becomes its customer id, which holds at most 128 characters.
        assert!(Caller::from_token(Some(&"x".repeat(129)), std::iter::empty()).is_err());
        assert!(Caller::from_token(Some(&"x".repeat(129)), ["oms/staff"].into_iter()).is_ok());
    }
}
