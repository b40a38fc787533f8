//! Order events on RabbitMQ: the message contract, the topology, publishing from the
//! outbox, and the processor that applies them.

mod broker;
mod event;
mod publisher;
mod relay;
mod topology;

pub use broker::{headers, Broker, BrokerError, Outgoing};
pub use event::{EventType, OrderEvent};
pub use publisher::Publisher;
pub use relay::{relay_once, relay_outbox, RelayError};
pub use topology::{Topology, MAX_ATTEMPTS, PROCESSOR_BINDINGS, RETRY_DELAYS};
