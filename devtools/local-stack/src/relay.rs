//! The schedule of the outbox relay: in AWS an EventBridge schedule invokes it every minute;
//! locally it runs every few seconds so that a message left in the outbox (broker down at
//! commit) is published soon after the broker is back.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::apigw::ACCOUNT_ID;
use crate::invoke::Invoker;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub function: String,
    pub every: Duration,
    pub timeout: Duration,
}

/// The event an EventBridge schedule delivers; the relay ignores its content.
pub fn scheduled_event(rule: &str) -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::now_v7().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:{ACCOUNT_ID}:rule/{rule}")],
        "detail": {},
    })
}

/// Invokes the relay every `every`, one run at a time (as its reserved concurrency of 1
/// does in AWS), until `shutdown` turns true.
pub async fn run(config: RelayConfig, invoker: Invoker, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(config.every);
    // A run longer than the period delays the next one instead of bunching them up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        let event = scheduled_event(&format!("local-stack-{}", config.function));
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            outcome = invoker.invoke(&config.function, Bytes::from(event.to_string()), config.timeout) => outcome,
        };
        match outcome {
            Ok(answer) => {
                let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                match answer.get("published").and_then(Value::as_u64) {
                    Some(0) | None => tracing::debug!("{}: {answer}", config.function),
                    Some(n) => tracing::info!("{} published {n} outbox messages", config.function),
                }
                if failing {
                    tracing::info!("{} runs again", config.function);
                }
                failing = false;
            }
            // Log a failure once, not every few seconds while the database is down.
            Err(e) if !failing => {
                tracing::warn!("{e}");
                failing = true;
            }
            Err(e) => tracing::debug!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_an_eventbridge_scheduled_event() {
        let event = scheduled_event("r");
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(event["source"], "aws.events");
        assert_eq!(
            event["resources"][0],
            "arn:aws:events:us-east-1:123456789012:rule/r"
        );
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
    }
}
