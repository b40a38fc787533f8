use std::fmt;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Processed,
    Shipped,
    Delivered,
    Cancelled,
    Rejected,
}

/// Who may make a transition: clients through the API, or the processor alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Client,
    Processor,
}

/// What a status change does to the order's reserved stock, applied by the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockEffect {
    /// `inventory -= q`, `reserved -= q`.
    Commit,
    /// `reserved -= q`.
    Release,
}

use OrderStatus::*;

/// The order state machine: the only transitions there are, and who may make each.
const TRANSITIONS: &[(OrderStatus, OrderStatus, Actor)] = &[
    (Pending, Processed, Actor::Processor),
    (Pending, Rejected, Actor::Processor),
    (Pending, Cancelled, Actor::Client),
    (Processed, Shipped, Actor::Client),
    (Processed, Cancelled, Actor::Client),
    (Shipped, Delivered, Actor::Client),
];

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [Pending, Processed, Shipped, Delivered, Cancelled, Rejected];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Processed => "processed",
            Shipped => "shipped",
            Delivered => "delivered",
            Cancelled => "cancelled",
            Rejected => "rejected",
        }
    }

    pub fn can_become(self, to: OrderStatus, actor: Actor) -> bool {
        TRANSITIONS.contains(&(self, to, actor))
    }

    /// The statuses `actor` may move an order in this status to, for error messages.
    pub fn next_for(self, actor: Actor) -> Vec<OrderStatus> {
        TRANSITIONS
            .iter()
            .filter(|(from, _, who)| *from == self && *who == actor)
            .map(|(_, to, _)| *to)
            .collect()
    }

    /// The one stock path an order in this status takes: a delivered order was shipped,
    /// so its stock is committed too.
    pub fn stock_effect(self) -> Option<StockEffect> {
        match self {
            Shipped | Delivered => Some(StockEffect::Commit),
            Cancelled | Rejected => Some(StockEffect::Release),
            Pending | Processed => None,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_only_make_the_documented_transitions() {
        let allowed: Vec<_> = OrderStatus::ALL
            .iter()
            .flat_map(|from| OrderStatus::ALL.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to, Actor::Client))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Cancelled),
                (Processed, Shipped),
                (Processed, Cancelled),
                (Shipped, Delivered)
            ]
        );
    }

    #[test]
    fn processing_is_the_processors_alone() {
        assert!(!Pending.can_become(Processed, Actor::Client));
        assert!(Pending.can_become(Processed, Actor::Processor));
        assert!(Pending.can_become(Rejected, Actor::Processor));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("PENDING"), None);
    }
}
