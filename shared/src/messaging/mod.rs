//! Order events on RabbitMQ: the message contract, the topology, publishing from the
//! outbox, and the processor that applies them.

mod broker;
mod connect;
mod processor;
mod publisher;
mod redrive;
mod relay;
mod topology;

pub use crate::domain::{EventType, OrderEvent};
pub use broker::{headers, Broker, BrokerError, Outgoing};
pub use processor::{
    AmazonMqEvent, BatchSummary, ProcessError, Processor, ATTEMPTS_HEADER, DLQ_REASON_HEADER,
    LAST_ERROR_HEADER, OUTAGE_WAITS_HEADER,
};
pub use publisher::{Publisher, MARK_WINDOW};
pub use redrive::{redrive_parked, RedriveReport, RedriveRequest};
pub use relay::{relay_once, relay_outbox, OutboxRelay, RelayError, RelayReport};
pub use topology::{Topology, PROCESSOR_BINDINGS};
