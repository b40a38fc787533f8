use shared::config::BrokerConfig;
use shared::messaging::{Broker, Topology};

/// An exchange and queues of the test's own on the real RabbitMQ, deleted when the test ends.
pub struct TestBroker {
    pub config: BrokerConfig,
    pub topology: Topology,
}

impl TestBroker {
    pub async fn new() -> Self {
        let suffix = crate::unique_suffix();
        let config = BrokerConfig {
            url: crate::amqp_url(),
            exchange: format!("test.{suffix}.orders"),
            queue_prefix: format!("test.{suffix}."),
        };
        let topology = Topology::new(&config);
        let broker = Broker::new(config.clone());
        topology
            .declare(&broker)
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README)");
        broker.reset().await;
        Self { config, topology }
    }

    pub fn broker(&self) -> Broker {
        Broker::new(self.config.clone())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let config = self.config.clone();
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let broker = Broker::new(config);
                let result = topology.delete(&broker).await.ok();
                broker.reset().await;
                result
            })
        })
        .join();
    }
}
